"""The upload bucket, artifact store, sensor and ingest assets over `s3://`, against moto's S3
server on loopback (real HTTP, real s3fs and botocore; no mocked client) and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest

from assets.ingest import frames, raw_video
from code_location.definitions import analyze_video_job
from dagster_deepfake.config import Settings, load_settings
from dagster_deepfake.ingest import ScanCursor, select_new_objects
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256
from dagster_deepfake.storage.postgres import ResultsDB
from resources import default_resources
from sensors.uploads import build_upload_sensor
from tests.s3_server import REGION, moto_s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, with dummy AWS credentials in the env."""
    with moto_s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3(s3_endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)


@pytest.fixture
def new_bucket(s3) -> Callable[[], str]:
    """Create a fresh, uniquely named bucket (tests never see each other's objects)."""

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    return make


def _options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}}


def _all_keys(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _put_many(s3, bucket: str, items: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items.items()))


def _vid(body: bytes) -> str:
    return partition_key_for_sha256(hashlib.sha256(body).hexdigest())


# -- artifact store --------------------------------------------------------------------------


def test_artifact_store_on_s3_round_trips_and_presigns(s3, s3_endpoint, new_bucket, tmp_path):
    bucket = new_bucket()
    store = ArtifactStore(f"s3://{bucket}/root", _options(s3_endpoint))
    assert not store.is_local
    video_id = "v_0123456789abcdef"
    frame = pd.DataFrame(
        {
            "video_id": [video_id] * 3,
            "frame_id": [0, 1, 2],
            "timestamp": [0.0, 0.2, 0.4],
            "path": [f"videos/{video_id}/frames/{i:06d}.png" for i in range(3)],
            "width": [64] * 3,
            "height": [48] * 3,
        }
    )
    store.write_table("frames", video_id, frame)
    store.write_table("frames", video_id, frame.iloc[:2])  # a re-run replaces its rows
    back = store.read_table("frames", video_id)
    assert back.frame_id.tolist() == [0, 1] and back.timestamp.tolist() == [0.0, 0.2]
    assert len(store.read_all("frames")) == 2

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.write_array(layout.video_rel(video_id, "emb.npy"), arr)
    np.testing.assert_array_equal(store.read_array(layout.video_rel(video_id, "emb.npy")), arr)

    png = b"\x89PNG\r\n\x1a\n" + os.urandom(256)
    rel = layout.saliency_rel(video_id, "frame_000001_face.png")
    store.write_bytes(rel, png)
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"movie bytes")
    store.put_file(str(src), layout.source_rel(video_id, "x.mp4"))
    with store.local_path(layout.source_rel(video_id, "x.mp4")) as local:
        assert Path(local).read_bytes() == b"movie bytes"
    assert store.list(f"videos/{video_id}/saliency") == ["frame_000001_face.png"]

    # Atomic writes: single PUTs, so no temp objects are ever left beside the real ones.
    assert _all_keys(s3, bucket) == sorted(
        [
            f"root/tables/frames/v1/{video_id}.parquet",
            f"root/videos/{video_id}/emb.npy",
            f"root/videos/{video_id}/saliency/frame_000001_face.png",
            f"root/videos/{video_id}/source.mp4",
        ]
    )

    # A presigned URL fetches the bytes with no credentials of its own.
    url = store.url_for(rel, expires=600)
    assert url is not None and url.startswith(s3_endpoint) and "Signature=" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == png
    unsigned = httpx.get(url.split("?", 1)[0])
    assert unsigned.status_code == 403  # the object itself is private
    assert ArtifactStore(str(tmp_path / "local")).url_for(rel) is None

    for bad in ["../x", "a/../../x", "/etc/passwd"]:
        with pytest.raises(ValueError):
            store.write_bytes(bad, b"x")


# -- upload bucket ---------------------------------------------------------------------------

AWKWARD_KEYS = [
    "in/with space.mp4",
    "in/ünïcödé 🎬.mp4",
    "in/a,b,c.MOV",
    "in/x/../y.mp4",  # a literal `..` segment: a valid S3 key, not a path to normalise
    "in/../escape.mp4",
]


def test_bucket_lists_awkward_keys_literally_and_filters(s3, s3_endpoint, new_bucket):
    bucket = new_bucket()
    bodies = {key: f"body of {key}".encode() for key in AWKWARD_KEYS}
    noise = {
        "other/outside-prefix.mp4": b"o",  # outside the configured prefix
        "income/looks-like-prefix.mp4": b"p",  # shares the prefix's characters, not its folder
        "in/notes.txt": b"t",  # suffix filter
        "in/big.mp4.part": b"u",  # client-side in-flight name
        "in/.hidden.mp4": b"h",
    }
    _put_many(s3, bucket, {**bodies, **noise})
    up = UploadBucket(f"s3://{bucket}/in", [".mp4", ".mov"], _options(s3_endpoint))
    listed = up.list_objects()
    assert sorted(o.key for o in listed) == sorted(k.removeprefix("in/") for k in AWKWARD_KEYS)
    for obj in listed:
        assert obj.uri == f"s3://{bucket}/in/{obj.key}"
        assert obj.size == len(bodies[f"in/{obj.key}"])
        # every key reads back the very object that was listed
        assert up.sha256(obj.key) == hashlib.sha256(bodies[f"in/{obj.key}"]).hexdigest()
        # LastModified (a timezone-aware datetime) becomes epoch seconds for the cursor
        head = s3.head_object(Bucket=bucket, Key=f"in/{obj.key}")
        assert obj.mtime == head["LastModified"].timestamp()


def test_bucket_listing_is_fresh_between_calls(s3, s3_endpoint, new_bucket):
    bucket = new_bucket()
    up = UploadBucket(f"s3://{bucket}/in", [".mp4"], _options(s3_endpoint))
    s3.put_object(Bucket=bucket, Key="in/a.mp4", Body=b"a")
    assert [o.key for o in up.list_objects()] == ["a.mp4"]
    s3.put_object(Bucket=bucket, Key="in/b.mp4", Body=b"b")  # written by another client
    again = UploadBucket(f"s3://{bucket}/in", [".mp4"], _options(s3_endpoint))
    assert [o.key for o in again.list_objects()] == ["a.mp4", "b.mp4"]


# -- the sensor ------------------------------------------------------------------------------


def _s3_settings(upload: str, artifacts: str, endpoint: str, pg_url: str, **extra) -> Settings:
    return load_settings(
        upload_uri=upload,
        artifact_root=artifacts,
        s3_endpoint_url=endpoint,
        postgres_url=pg_url,
        upload_settle_seconds=0,
        **extra,
    )


def _tick(instance: dg.DagsterInstance, resources: dict, cursor: str | None):
    sensor = build_upload_sensor(analyze_video_job, 15)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        result = sensor(ctx)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:  # what the daemon would apply
            instance.add_dynamic_partitions("videos", list(request.partition_keys))
    return result


def test_listing_and_cursor_over_more_than_1000_objects(s3, s3_endpoint, new_bucket):
    """Pagination and the cursor on a real listing: every object once, none skipped, none repeated.

    This is the sensor's own scan (`list_objects` + `select_new_objects`); registration (hashing,
    database rows) is covered on fewer objects below, where it costs less than a second.
    """
    bucket = new_bucket()
    keys = [f"in/batch/{i:05d}.mp4" for i in range(1150)]
    _put_many(s3, bucket, {k: b"v" for k in keys})
    first_page = s3.list_objects_v2(Bucket=bucket)
    assert first_page["IsTruncated"] and len(first_page["Contents"]) == 1000  # needs continuation
    mtimes = [o["LastModified"] for o in first_page["Contents"]]
    assert len(set(mtimes)) < len(mtimes) / 10  # second resolution: many objects share one time

    up = UploadBucket(f"s3://{bucket}/in", [".mp4"], _options(s3_endpoint))
    listed = up.list_objects()
    assert len(listed) == 1150
    cursor, taken = ScanCursor(), []
    now = max(o.mtime for o in listed) + 60
    for tick in range(10):
        if tick == 1:  # arrivals between ticks that share the cursor's second and sort before it
            _put_many(s3, bucket, {"in/a late.mp4": b"l", "in/batch/0000.mp4": b"m"})
            listed = up.list_objects()
        # ticks 5 s apart: an object is taken once seen unchanged for the 2 s settle period
        scan = select_new_objects(
            listed, ScanCursor.from_json(cursor.to_json()), now=now + 5 * tick, settle_seconds=2, limit=400
        )
        if not scan.objects and not scan.waiting:
            break
        taken += [o.key for o in scan.objects]
        cursor = scan.cursor
    assert len(taken) == len(set(taken)) == 1152
    assert set(taken) == {k.removeprefix("in/") for k in [*keys, "in/a late.mp4", "in/batch/0000.mp4"]}


def test_sensor_registers_awkward_keys_over_several_ticks(s3, s3_endpoint, new_bucket, pg_url, db):
    bucket = new_bucket()
    bodies = {key: f"body of {key}".encode() for key in AWKWARD_KEYS}
    bodies.update({f"in/more/{i}.mp4": f"more {i}".encode() for i in range(5)})
    bodies["in/dup of a,b,c.mp4"] = bodies["in/a,b,c.MOV"]  # same bytes under another name
    _put_many(s3, bucket, bodies)
    settings = _s3_settings(
        f"s3://{bucket}/in", f"s3://{bucket}/artifacts", s3_endpoint, pg_url, sensor_max_objects_per_tick=3
    )
    resources = default_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    cursor, requested, ticks = None, [], 0
    while ticks < 20:
        result = _tick(instance, resources, cursor)
        if isinstance(result, dg.SkipReason):
            break
        ticks += 1
        assert len(result.run_requests) <= 3
        requested += [r.partition_key for r in result.run_requests]
        cursor = result.cursor
    assert ticks == 4  # 11 objects at 3 a tick
    assert len(requested) == len(set(requested))  # nothing repeated, the duplicate upload included
    assert set(requested) == {_vid(b) for b in bodies.values()}  # nothing skipped
    assert set(instance.get_dynamic_partitions("videos")) == set(requested)
    assert db.get_video(_vid(bodies["in/x/../y.mp4"]))["source_uri"] == f"s3://{bucket}/in/x/../y.mp4"
    assert db.get_video(_vid(bodies["in/ünïcödé 🎬.mp4"]))["file_name"] == "ünïcödé 🎬.mp4"
    # The sensor writes nothing to the bucket: artifacts are the runs' business.
    assert _all_keys(s3, bucket) == sorted(bodies)


def test_multipart_upload_in_progress_is_not_registered(s3, s3_endpoint, new_bucket, pg_url, db):
    bucket = new_bucket()
    settings = _s3_settings(f"s3://{bucket}/in", f"s3://{bucket}/art", s3_endpoint, pg_url)
    resources = default_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    part1, part2 = os.urandom(5 * 1024 * 1024), os.urandom(1024)  # parts but the last are >= 5 MiB
    upload = s3.create_multipart_upload(Bucket=bucket, Key="in/big upload.mp4")
    etag1 = s3.upload_part(
        Bucket=bucket, Key="in/big upload.mp4", UploadId=upload["UploadId"], PartNumber=1, Body=part1
    )["ETag"]

    first = _tick(instance, resources, None)
    assert isinstance(first, dg.SkipReason)
    assert db.get_video(_vid(part1 + part2)) is None

    etag2 = s3.upload_part(
        Bucket=bucket, Key="in/big upload.mp4", UploadId=upload["UploadId"], PartNumber=2, Body=part2
    )["ETag"]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="in/big upload.mp4",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": etag1, "PartNumber": 1}, {"ETag": etag2, "PartNumber": 2}]},
    )
    second = _tick(instance, resources, None)
    assert [r.partition_key for r in second.run_requests] == [_vid(part1 + part2)]
    assert db.get_video(_vid(part1 + part2))["size_bytes"] == len(part1) + len(part2)


def test_object_rewritten_between_ticks_waits_until_settled(s3, s3_endpoint, new_bucket):
    """An object still changing is not taken; once it settles, the final bytes are."""
    bucket = new_bucket()
    up = UploadBucket(f"s3://{bucket}/in", [".mp4"], _options(s3_endpoint))
    s3.put_object(Bucket=bucket, Key="in/growing.mp4", Body=b"first half")
    (obj,) = up.list_objects()
    scan = select_new_objects([obj], ScanCursor(), now=obj.mtime + 1, settle_seconds=5, limit=10)
    assert scan.objects == [] and scan.waiting == 1 and scan.cursor.mtime == 0 and not scan.cursor.seen

    time.sleep(1.05)  # LastModified has one-second resolution
    s3.put_object(Bucket=bucket, Key="in/growing.mp4", Body=b"first half, second half")
    (rewritten,) = up.list_objects()
    assert rewritten.size != obj.size and rewritten.mtime > obj.mtime
    # seen again with a new size and mtime: its settle period starts again from this tick
    still = select_new_objects([rewritten], scan.cursor, now=rewritten.mtime + 1, settle_seconds=5, limit=10)
    assert still.objects == [] and still.cursor.pending["growing.mp4"][2] == rewritten.mtime + 1
    done = select_new_objects([rewritten], still.cursor, now=rewritten.mtime + 6, settle_seconds=5, limit=10)
    assert [o.size for o in done.objects] == [len(b"first half, second half")]
    assert up.sha256("growing.mp4") == hashlib.sha256(b"first half, second half").hexdigest()


def test_late_object_with_older_timestamp_is_taken_within_lookback(s3, s3_endpoint, new_bucket):
    """S3 stamps a multipart upload with its start time: it can appear behind the cursor."""
    bucket = new_bucket()
    up = UploadBucket(f"s3://{bucket}/in", [".mp4"], _options(s3_endpoint))
    s3.put_object(Bucket=bucket, Key="in/b.mp4", Body=b"b")
    (b,) = up.list_objects()
    first = select_new_objects(
        [b], ScanCursor(), now=b.mtime + 60, settle_seconds=0, limit=10, lookback_seconds=600
    )
    late = type(b)(uri=b.uri.replace("b.mp4", "a.mp4"), key="a.mp4", size=1, mtime=b.mtime - 30)
    cursor = ScanCursor.from_json(first.cursor.to_json())
    again = select_new_objects(
        [late, b], cursor, now=b.mtime + 60, settle_seconds=0, limit=10, lookback_seconds=600
    )
    assert [o.key for o in again.objects] == ["a.mp4"]  # b is not repeated
    assert (
        select_new_objects(
            [late, b], again.cursor, now=b.mtime + 60, settle_seconds=0, limit=10, lookback_seconds=600
        ).objects
        == []
    )
    # Without a lookback the late object would be lost behind the high-water mark.
    assert select_new_objects([late, b], cursor, now=b.mtime + 60, settle_seconds=0, limit=10).objects == []


# -- assets ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ingest_assets_from_s3_upload_into_s3_artifacts(
    s3, s3_endpoint, new_bucket, pg_url, db: ResultsDB, ffmpeg_video, tmp_path
):
    uploads, artifacts = new_bucket(), new_bucket()
    video = ffmpeg_video("clip.mp4", duration=1.0, size="320x240")
    key = "in/../../team a/ünï, clip.mp4"  # `..` in a key must not reach any artifact path
    s3.upload_file(str(video), uploads, key)
    settings = _s3_settings(f"s3://{uploads}/in", f"s3://{artifacts}/root", s3_endpoint, pg_url)
    resources = default_resources(settings)
    instance = dg.DagsterInstance.ephemeral()

    tick = _tick(instance, resources, None)
    (request,) = tick.run_requests
    video_id = request.partition_key
    assert video_id == _vid(video.read_bytes())
    assert db.get_video(video_id)["source_uri"] == f"s3://{uploads}/{key}"

    before = set(os.listdir(tmp_path))
    result = dg.materialize(
        [raw_video, frames],
        partition_key=video_id,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    store = ArtifactStore(f"s3://{artifacts}/root", _options(s3_endpoint))
    table = store.read_table("frames", video_id)
    assert len(table) == 5 and table.frame_id.tolist() == list(range(5))  # 1 s at 5 FPS
    assert all(store.exists(p) for p in table.path)
    assert store.read_table("videos", video_id).loc[0, "source_uri"] == f"s3://{uploads}/{key}"
    keys = _all_keys(s3, artifacts)
    assert keys and all(
        k.startswith((f"root/videos/{video_id}/", "root/tables/")) and ".." not in k.split("/") for k in keys
    )
    assert _all_keys(s3, uploads) == [key]  # the upload is read, never moved or rewritten
    assert set(os.listdir(tmp_path)) == before  # and nothing landed on the local disk


def test_register_dataset_stores_its_manifest_in_an_s3_artifact_root(
    s3, s3_endpoint, new_bucket, pg_url, db: ResultsDB, ffmpeg_video, tmp_path
):
    from dagster_deepfake.datasets import register_dataset
    from dagster_deepfake.training.manifests import read_manifest

    uploads, artifacts = new_bucket(), new_bucket()
    clips = [ffmpeg_video(f"c{i}.mp4", duration=1.0 + 0.1 * i, audio=False) for i in range(2)]
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label,split\n{clips[0]},real,train\n{clips[1]},fake,val\n")
    settings = _s3_settings(f"s3://{uploads}/in", f"s3://{artifacts}/root", s3_endpoint, pg_url)

    reg = register_dataset(settings, "csv", csv, name="toy")

    assert reg.manifest_path == f"s3://{artifacts}/root/datasets/toy/manifest.parquet"
    assert _all_keys(s3, artifacts) == ["root/datasets/toy/manifest.parquet"]
    with ArtifactStore(f"s3://{artifacts}/root", _options(s3_endpoint)).local_path(
        "datasets/toy/manifest.parquet"
    ) as local:
        stored = read_manifest(local)
    assert stored["label"].tolist() == ["real", "fake"] and stored["split"].tolist() == ["train", "val"]
    assert [db.get_video(v)["dataset"] for v in reg.video_ids] == ["toy", "toy"]
