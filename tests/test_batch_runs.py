"""Batched runs (assets/batch.py): several videos in one `analyze_batch` run, each still its own
partition and its own run. A bad video fails only its own partition and job row, with its reason;
the others complete and show as materialized; every table holds exactly one row per video, and a
second attempt of the same batch duplicates nothing. Real PostgreSQL, ffmpeg, face detector; the
`tiny` model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import func, select

from assets.batch import BATCH_JOB, BATCH_OP, BATCH_RUN_TAG, build_batch_job, chunks
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


def _run_batch(defs, instance, ids):
    return defs.resolve_job_def(BATCH_JOB).execute_in_process(
        run_config={"ops": {BATCH_OP: {"config": {"video_ids": ids, "job_name": "analyze_video"}}}},
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

    # Dagster: each video is a run of analyze_video of its own partition, inside this batch run.
    runs = instance.get_runs(filters=dg.RunsFilter(tags={BATCH_RUN_TAG: batch.run_id}))
    by_partition = {r.tags["dagster/partition"]: r for r in runs}
    assert sorted(by_partition) == sorted(ids) and len(runs) == 3
    assert {r.job_name for r in runs} == {"analyze_video"}
    assert by_partition[b].status == dg.DagsterRunStatus.FAILURE
    assert by_partition[a].status == by_partition[c].status == dg.DagsterRunStatus.SUCCESS
    for asset in PER_VIDEO_ASSETS:
        materialized = instance.get_materialized_partitions(asset.key)
        assert {a, c} <= materialized, asset.key
        if asset.key.to_user_string() in ("aligned_faces", "optical_flow", "predictions", "report"):
            assert b not in materialized, asset.key  # the failed stage and everything after it

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
    assert db.get_job(a)["run_id"] == by_partition[a].run_id  # untouched by the retry
    assert db.get_job(b)["run_id"] == by_partition[b].run_id and db.get_job(b)["status"] == "failed"


def test_sensor_sends_a_tick_of_uploads_as_batches_and_a_lone_upload_alone(tiny_settings, db, tmp_path):
    tiny_settings.platform.batch_max_videos = 2
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
