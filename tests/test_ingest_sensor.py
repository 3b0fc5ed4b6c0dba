"""The upload sensor and the raw_video / frames assets against an ephemeral Dagster instance,
a real PostgreSQL and a local bucket folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.ingest import frames, raw_video
from code_location.definitions import analyze_video_job
from dagster_deepfake.ingest import ScanCursor, select_new_objects
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import BucketObject, UploadBucket
from dagster_deepfake.storage.keys import is_partition_key, partition_key_for_sha256, sha256_file
from resources import default_resources
from sensors.uploads import build_upload_sensor
from tests.conftest import shared_clip


def _obj(key: str, mtime: float) -> BucketObject:
    return BucketObject(uri=f"file:///b/{key}", key=key, size=1, mtime=mtime)


def test_cursor_same_mtime_is_neither_skipped_nor_repeated():
    objs = [_obj("a.mp4", 100.0), _obj("b.mp4", 100.0), _obj("c.mp4", 100.0)]
    first = select_new_objects(objs, ScanCursor(), now=1000, settle_seconds=0, limit=2)
    assert [o.key for o in first.objects] == ["a.mp4", "b.mp4"] and first.waiting == 1
    # a new object with the very same mtime arrives before the next tick
    objs.append(_obj("aa.mp4", 100.0))
    second = select_new_objects(
        objs, ScanCursor.from_json(first.cursor.to_json()), now=1000, settle_seconds=0, limit=10
    )
    assert [o.key for o in second.objects] == ["aa.mp4", "c.mp4"]
    third = select_new_objects(objs, second.cursor, now=1000, settle_seconds=0, limit=10)
    assert third.objects == []


def test_cursor_waits_for_settling_objects():
    """Taken once seen with the same size and mtime for the settle period, not on first sight."""
    objs = [_obj("old.mp4", 100.0), _obj("fresh.mp4", 999.5)]
    first = select_new_objects(objs, ScanCursor(), now=1000.0, settle_seconds=2, limit=10)
    assert first.objects == [] and first.waiting == 2
    cursor = ScanCursor.from_json(first.cursor.to_json())  # the states travel in the cursor
    assert cursor.pending == {"old.mp4": (1, 100.0, 1000.0), "fresh.mp4": (1, 999.5, 1000.0)}
    early = select_new_objects(objs, cursor, now=1001.0, settle_seconds=2, limit=10)
    assert early.objects == []
    scan = select_new_objects(objs, early.cursor, now=1002.0, settle_seconds=2, limit=10)
    assert [o.key for o in scan.objects] == ["old.mp4", "fresh.mp4"] and scan.cursor.pending == {}
    # an object that changed between ticks starts its settle period again
    grown = [
        _obj("old.mp4", 100.0),
        BucketObject(uri="file:///b/fresh.mp4", key="fresh.mp4", size=2, mtime=999.5),
    ]
    moved = select_new_objects(grown, early.cursor, now=1002.0, settle_seconds=2, limit=10)
    assert [o.key for o in moved.objects] == ["old.mp4"] and moved.cursor.pending["fresh.mp4"][2] == 1002.0


def test_bucket_lists_only_finished_videos(tmp_path):
    root = tmp_path / "bucket"
    (root / "sub dir").mkdir(parents=True)
    for name in ["a.mp4", "sub dir/b, ünï.MOV", "c.mp4.part", ".hidden.mp4", "notes.txt"]:
        (root / name).write_bytes(b"x")
    keys = [o.key for o in UploadBucket(f"file://{root}", [".mp4", ".mov"]).list_objects()]
    assert sorted(keys) == ["a.mp4", "sub dir/b, ünï.MOV"]


def test_artifact_store_refuses_paths_outside_root(tmp_path):
    store = ArtifactStore(str(tmp_path / "art"))
    for bad in ["../x", "a/../../x", "/etc/passwd", "a//b"]:
        with pytest.raises(ValueError):
            store.write_bytes(bad, b"x")
    with pytest.raises(ValueError):
        layout.video_rel("../../etc")


def _sensor_tick(instance, resources, cursor=None):
    sensor = build_upload_sensor(analyze_video_job, 15)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        result = sensor(ctx)
    return result


def test_sensor_registers_partitions_and_requests_runs(settings, db, ffmpeg_video):
    bucket = Path(settings.platform.upload_uri.removeprefix("file://"))
    a = ffmpeg_video("a.mp4", duration=1.0)
    b = ffmpeg_video("b.mp4", duration=1.5)
    shutil.copy(a, bucket / "first, video.mp4")
    shutil.copy(b, bucket / "second.mp4")
    same = time.time() - 60
    for f in bucket.iterdir():
        os.utime(f, (same, same))  # identical mtimes
    resources = default_resources(settings)
    instance = dg.DagsterInstance.ephemeral()

    result = _sensor_tick(instance, resources)
    keys = {r.partition_key for r in result.run_requests}
    assert keys == {
        partition_key_for_sha256(sha256_file(str(a))),
        partition_key_for_sha256(sha256_file(str(b))),
    }
    assert all(is_partition_key(k) for k in keys)
    assert {r.run_key for r in result.run_requests} == keys
    assert set(result.dynamic_partitions_requests[0].partition_keys) == keys
    assert db.get_video(partition_key_for_sha256(sha256_file(str(a))))["file_name"] == "first, video.mp4"
    assert {db.get_job(k)["status"] for k in keys} == {"queued"}

    # Dagster applies the add request; the next tick sees nothing new.
    instance.add_dynamic_partitions("videos", list(keys))
    again = _sensor_tick(instance, resources, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)

    # Re-upload of identical bytes under another name: no second partition, no second run.
    shutil.copy(a, bucket / "copy-of-first.mp4")
    dup = _sensor_tick(instance, resources, cursor=result.cursor)
    assert dup.run_requests == [] and dup.dynamic_partitions_requests == []
    assert json.loads(dup.cursor)["mtime"] > json.loads(result.cursor)["mtime"]


def _materialize(settings, video_path: Path, db) -> tuple[str, dg.ExecuteInProcessResult]:
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    obj = bucket.put_file(str(video_path), video_path.name)
    from dagster_deepfake.ingest import register_object

    reg = register_object(bucket, obj, db)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [reg.video_id])
    result = dg.materialize(
        [raw_video, frames],
        partition_key=reg.video_id,
        resources=default_resources(settings),
        instance=instance,
        raise_on_error=False,
    )
    return reg.video_id, result


def test_assets_materialize_shared_clip(settings, db):
    clip = shared_clip("svls_wav2lip_fake.mp4")
    video_id, result = _materialize(settings, clip, db)
    assert result.success
    store = ArtifactStore(settings.platform.artifact_root)
    videos = store.read_table("videos", video_id)
    assert videos.loc[0, "width"] == 700 and bool(videos.loc[0, "has_audio"])
    table = store.read_table("frames", video_id)
    assert len(table) == 27 and table.frame_id.tolist() == list(range(27))
    assert all(store.exists(p) for p in table.path)
    mats = result.asset_materializations_for_node("frames")
    assert mats[0].metadata["frame_count"].value == 27
    assert "data:image/jpeg;base64," in mats[0].metadata["thumbnail"].value
    row = db.get_video(video_id)
    assert row["probe"]["codec"] == "h264" and row["probe"]["has_audio"] is True
    assert db.get_job(video_id)["status"] == "running"  # completed is set by the run-success sensor

    # Idempotent: re-materializing replaces, never duplicates.
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [video_id])
    dg.materialize(
        [raw_video, frames], partition_key=video_id, resources=default_resources(settings), instance=instance
    )
    assert len(store.read_table("frames", video_id)) == 27
    assert len(store.list(f"videos/{video_id}/frames")) == 27


def test_bad_video_fails_only_its_partition(settings, db, tmp_path, ffmpeg_video):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(os.urandom(4096))
    bad_id, bad_result = _materialize(settings, bad, db)
    assert not bad_result.success
    job = db.get_job(bad_id)
    assert job["status"] == "failed" and "not a readable media file" in job["reason"]
    good_id, good_result = _materialize(settings, ffmpeg_video("good.mp4"), db)
    assert good_result.success and db.get_job(good_id)["status"] == "running"
    assert db.get_job(bad_id)["status"] == "failed"
