"""Batched runs (assets/batch.py): several videos in one `analyze_batch` run, each still its own
partition; a video whose one pass fails runs on its own to record it. A bad video fails only its own partition and job row, with its reason;
the others complete and show as materialized; every table holds exactly one row per video, and a
second attempt of the same batch duplicates nothing. Real PostgreSQL, ffmpeg, face detector; the
`tiny` model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import func, select

from assets.batch import (
    BATCH_JOB,
    BATCH_OP,
    BATCH_RUN_TAG,
    CPU_SLOTS_TAG,
    batch_run_requests,
    build_batch_job,
    chunks,
    goes_as_batches,
)
from code_location.definitions import ASSET_CHECKS, PER_VIDEO_ASSETS, analyze_video_job, extract_features_job
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.ingest import register_object
from dagster_deepfake.storage import postgres as pg
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.synthetic import generate_clip
from resources import default_resources
from sensors.uploads import build_upload_sensor

# The per-video tables each completed analysis writes one file of (Parquet, one per partition).
PARQUET_TABLES = ("videos", "frames", "faces", "flow", "speech_segments", "windows", "predictions", "reports")


@pytest.fixture
def tiny_settings(settings, tmp_path):
    settings.model = ModelConfig(registry_config="tiny")
    settings.platform.model_dir = str(tmp_path / "models")
    return settings


def _definitions(settings) -> dg.Definitions:
    """The code location's per-video jobs and the batch job over them, on the test's resources."""
    built: list[dg.Definitions] = []
    batch = build_batch_job(lambda name: built[0].resolve_job_def(name))
    defs = dg.Definitions(
        assets=PER_VIDEO_ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[analyze_video_job, extract_features_job, batch],
        resources=default_resources(settings),
    )
    built.append(defs)
    return defs


def _register(settings, db, paths: list[Path]) -> list[str]:
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    return [register_object(bucket, bucket.put_file(str(p), p.name), db).video_id for p in paths]


def _rows(db, table, video_id: str) -> int:
    column = table.c.video_id if "video_id" in table.c else table.c.job_id
    with db.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(table).where(column == video_id)).scalar_one()
        )


def _run_batch(defs, instance, ids, job_name="analyze_video"):
    return defs.resolve_job_def(BATCH_JOB).execute_in_process(
        run_config={"ops": {BATCH_OP: {"config": {"video_ids": ids, "job_name": job_name}}}},
        instance=instance,
        raise_on_error=False,
    )


def test_bad_video_in_a_batch_fails_only_its_own_partition(tiny_settings, db, tmp_path):
    good_a = generate_clip(tmp_path / "a.mp4", seed=11, duration=2.0, width=320, height=240, audio="speech")
    no_face = generate_clip(tmp_path / "b.mp4", seed=12, duration=2.0, width=320, height=240, num_faces=0)
    good_c = generate_clip(tmp_path / "c.mp4", seed=13, duration=2.0, width=320, height=240)
    a, b, c = ids = _register(tiny_settings, db, [good_a.path, no_face.path, good_c.path])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", ids)
    defs = _definitions(tiny_settings)

    batch = _run_batch(defs, instance, ids)
    assert batch.success  # a video's own failure does not fail the batch

    # Job rows: the good ones completed with their document, the bad one failed with its reason.
    assert db.get_job(a)["status"] == db.get_job(c)["status"] == "completed"
    assert db.get_job(a)["result"]["job_id"] == a
    bad = db.get_job(b)
    assert bad["status"] == "failed" and "no face found" in bad["reason"]

    # Dagster: the good videos went through the batch's one pass (assets/one_pass.py), each asset
    # materialized for its partition by the batch run; the bad one failed its pass and then ran
    # on its own, so its own run records the failure of its partition.
    runs = instance.get_runs(filters=dg.RunsFilter(tags={BATCH_RUN_TAG: batch.run_id}))
    (bad_run,) = runs
    assert bad_run.job_name == "analyze_video" and bad_run.tags["dagster/partition"] == b
    assert bad_run.status == dg.DagsterRunStatus.FAILURE
    for asset in PER_VIDEO_ASSETS:
        materialized = instance.get_materialized_partitions(asset.key)
        assert {a, c} <= materialized, asset.key
        if asset.key.to_user_string() in ("aligned_faces", "optical_flow", "predictions", "report"):
            assert b not in materialized, asset.key  # the failed stage and everything after it
    for video_id in (a, c):
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("report"), asset_partitions=[video_id]), limit=1
        ).records[0]
        assert latest.run_id == batch.run_id
        assert latest.asset_materialization.metadata["verdict"].value in ("real", "fake")
    checks = [
        e.asset_check_evaluation_data
        for e in batch.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    assert sorted(c_.partition for c_ in checks) == sorted([a, c]) and all(c_.passed for c_ in checks)
    assert db.get_job(a)["run_id"] == db.get_job(c)["run_id"] == batch.run_id

    # Exactly one row per video in every results table; none for the bad video's verdict.
    store = ArtifactStore(tiny_settings.platform.artifact_root)
    for video_id in (a, c):
        assert _rows(db, pg.videos, video_id) == _rows(db, pg.jobs, video_id) == 1
        assert _rows(db, pg.analyses, video_id) == _rows(db, pg.predictions, video_id) == 1
        for table in PARQUET_TABLES:
            assert store.has_table(table, video_id), table
        assert len(store.read_table("predictions", video_id)) == 1
        assert len(store.read_table("reports", video_id)) == 1
    assert _rows(db, pg.predictions, b) == _rows(db, pg.analyses, b) == 0
    assert _rows(db, pg.jobs, b) == 1
    before = {t.name: db.count(t) for t in (pg.videos, pg.jobs, pg.analyses, pg.predictions)}

    # A second attempt of the same batch (a retry, e.g. after another video's infrastructure
    # failure): completed videos are skipped, and so is the bad one: a failure caused by the input
    # is final (DESIGN §9). Nothing runs again and nothing is duplicated.
    again = _run_batch(defs, instance, ids)
    assert again.success
    rerun = instance.get_runs(filters=dg.RunsFilter(tags={BATCH_RUN_TAG: again.run_id}))
    assert rerun == []
    assert {t.name: db.count(t) for t in (pg.videos, pg.jobs, pg.analyses, pg.predictions)} == before
    assert db.get_job(a)["run_id"] == batch.run_id  # untouched by the retry
    assert db.get_job(b)["run_id"] == bad_run.run_id and db.get_job(b)["status"] == "failed"


def _latest_metadata(instance, asset_key: dg.AssetKey, video_id: str) -> tuple[str, dict]:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[video_id]), limit=1
    ).records
    return record.run_id, record.asset_materialization.metadata


@pytest.mark.parametrize("job_name", ["analyze_video", "extract_features"])
def test_one_pass_writes_what_a_run_of_its_own_writes(tiny_settings, db, tmp_path, job_name, monkeypatch):
    """assets/one_pass.py against the per-video job on the same video: the same tables, rows,
    document and asset metadata (fp32 here, so both agree whatever this CPU has)."""
    monkeypatch.setattr("dagster_deepfake.models.inference.cpu_supports_bf16", lambda *a: False)
    clip = generate_clip(tmp_path / "p.mp4", seed=21, duration=3.0, width=320, height=240, audio="speech")
    (video_id,) = _register(tiny_settings, db, [clip.path])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [video_id])
    defs = _definitions(tiny_settings)
    store = ArtifactStore(tiny_settings.platform.artifact_root)
    assets = [a.key for a in (PER_VIDEO_ASSETS if job_name == "analyze_video" else PER_VIDEO_ASSETS[:5])]

    own = defs.resolve_job_def(job_name).execute_in_process(partition_key=video_id, instance=instance)
    assert own.success
    tables = [t for t in PARQUET_TABLES if store.has_table(t, video_id)]
    assert len(tables) == (8 if job_name == "analyze_video" else 5)
    before = {t: store.read_table(t, video_id) for t in tables}
    own_metadata = {k: _latest_metadata(instance, k, video_id) for k in assets}
    own_result = db.get_job(video_id)["result"]
    rows = {t.name: db.count(t) for t in (pg.videos, pg.jobs, pg.analyses, pg.predictions)}

    db.set_job_status(video_id, "queued")  # the batch takes the video again
    batch = _run_batch(defs, instance, [video_id], job_name)
    assert batch.success
    assert instance.get_runs(filters=dg.RunsFilter(tags={BATCH_RUN_TAG: batch.run_id})) == []  # one pass
    for table in tables:
        after, expected = store.read_table(table, video_id), before[table]
        when = [c for c in after.columns if c.endswith("_at")]  # ingested_at, created_at: when it ran
        after, expected = after.drop(columns=when), expected.drop(columns=when)
        if table == "reports":  # the document, compared below without its timings
            after, expected = after.drop(columns=["document"]), expected.drop(columns=["document"])
        pd.testing.assert_frame_equal(after, expected, check_exact=False, rtol=1e-5, obj=table)
    for key in assets:
        run_id, metadata = _latest_metadata(instance, key, video_id)
        assert run_id == batch.run_id, key
        assert sorted(metadata) == sorted(own_metadata[key][1]), key
        for name in ("faces_kept", "frame_count", "verdict", "speech_segments", "windows", "frames"):
            if name in metadata:
                assert metadata[name] == own_metadata[key][1][name], (key, name)
    assert {t.name: db.count(t) for t in (pg.videos, pg.jobs, pg.analyses, pg.predictions)} == rows
    job = db.get_job(video_id)
    assert job["status"] == "completed" and job["run_id"] == batch.run_id
    if job_name == "analyze_video":
        from tests.test_parity import _flatten

        ours, theirs = _flatten(job["result"]), _flatten(own_result)
        assert sorted(ours) == sorted(theirs)
        differ = [k for k in ours if ours[k] != theirs[k] and not _close(ours[k], theirs[k])]
        assert differ == [] or all(k.endswith(("created_at", "analyzed_at")) for k in differ), differ
    else:
        assert job["result"]["stage"] == "features"


def _close(a, b) -> bool:
    return isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-5


@pytest.mark.parametrize(
    ("videos", "max_videos", "side_by_side", "sizes", "slots"),
    [
        (40, 64, 2, [20, 20], "2"),  # a burst: two runs side by side, each on its share of the cores
        (3, 64, 2, [3], "1"),  # too few for two runs of two: one run on every core
        (200, 64, 2, [50, 50, 50, 50], "2"),  # more runs than shares: the later ones wait for a share
        (40, 64, 1, [40], "1"),
        (5, 2, 1, [2, 2, 1], "1"),
    ],
)
def test_a_tick_is_split_into_runs_side_by_side_only_when_each_gets_two_videos(
    tiny_settings, videos, max_videos, side_by_side, sizes, slots
):
    tiny_settings.platform.batch_max_videos = max_videos
    tiny_settings.platform.side_by_side_runs = side_by_side
    keys = [f"v_{i:016x}" for i in range(videos)]
    requests = batch_run_requests(keys, "analyze_video", tiny_settings, tags={"t": "x"})
    ids = [r.run_config["ops"][BATCH_OP]["config"]["video_ids"] for r in requests]
    assert [len(b) for b in ids] == sizes and sum(ids, []) == keys
    assert {r.tags.get(CPU_SLOTS_TAG) for r in requests} == {slots}
    assert all(r.tags["t"] == "x" for r in requests) and len({r.run_key for r in requests}) == len(requests)


@pytest.mark.parametrize(
    ("videos", "max_videos", "has_batch_job", "batched"),
    [
        (5, 64, True, True),
        (2, 64, True, True),
        (1, 64, True, False),
        (5, 1, True, False),
        (5, 64, False, False),
    ],
)
def test_both_sensors_decide_batches_by_one_rule(tiny_settings, videos, max_videos, has_batch_job, batched):
    """The upload and dataset sensors both ask `goes_as_batches`; what it answers, per case."""
    tiny_settings.platform.batch_max_videos = max_videos
    batch_job = build_batch_job(lambda name: analyze_video_job) if has_batch_job else None
    assert goes_as_batches(videos, tiny_settings, batch_job) is batched


def test_sensor_sends_a_tick_of_uploads_as_batches_and_a_lone_upload_alone(tiny_settings, db, tmp_path):
    tiny_settings.platform.batch_max_videos = 2
    tiny_settings.platform.side_by_side_runs = 1
    bucket = Path(tiny_settings.platform.upload_uri.removeprefix("file://"))
    clips = [
        generate_clip(tmp_path / f"u{i}.mp4", seed=30 + i, duration=1.0, width=320, height=240).path
        for i in range(4)
    ]
    for clip in clips[:3]:
        shutil.copy(clip, bucket / clip.name)
    old = time.time() - 60
    for f in bucket.iterdir():
        os.utime(f, (old, old))
    defs = _definitions(tiny_settings)
    sensor = build_upload_sensor(analyze_video_job, 15, batch_job=defs.resolve_job_def(BATCH_JOB))
    instance = dg.DagsterInstance.ephemeral()
    resources = default_resources(tiny_settings)
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = sensor(ctx)
    assert {r.job_name for r in first.run_requests} == {BATCH_JOB}
    batches = [r.run_config["ops"][BATCH_OP]["config"]["video_ids"] for r in first.run_requests]
    added = list(first.dynamic_partitions_requests[0].partition_keys)
    assert batches == chunks(added, 2) and sorted(sum(batches, [])) == sorted(added) and len(added) == 3
    assert len({r.run_key for r in first.run_requests}) == 2

    instance.add_dynamic_partitions("videos", added)
    shutil.copy(clips[3], bucket / clips[3].name)
    os.utime(bucket / clips[3].name, (old + 1, old + 1))
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor) as ctx:
        second = sensor(ctx)
    (lone,) = second.run_requests
    assert lone.job_name == "analyze_video" and lone.partition_key == lone.run_key


def test_runs_that_take_every_core_go_one_at_a_time_on_the_local_instance(tmp_path):
    """Per-video runs and unsplit batches size their pools to every core: the one-machine
    instance (deploy/dagster.local.yaml) queues those one at a time, beside at most one other
    run, while split batches (tagged with their share count) go two side by side."""
    from code_location.definitions import defs
    from dagster_deepfake.config import REPO_ROOT

    for job in ("analyze_video", "extract_features", BATCH_JOB):
        assert defs.resolve_job_def(job).tags[CPU_SLOTS_TAG] == "1", job
    shutil.copy(REPO_ROOT / "deploy" / "dagster.local.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 2
    assert [dict(limit) for limit in queue.tag_concurrency_limits] == [
        {"key": CPU_SLOTS_TAG, "value": "1", "limit": 1}
    ]
