"""Dataset registration: videos hashed into partitions, batched partition adds, the backfill sensor."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd

from code_location.definitions import (
    ASSET_CHECKS,
    FEATURE_ASSETS,
    PER_VIDEO_ASSETS,
    extract_features_job,
)
from dagster_deepfake.datasets import register_manifest
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.synthetic import generate_clip
from dagster_deepfake.training.features import StoreFeatureSource
from resources import default_resources
from sensors.datasets import add_video_partitions, build_dataset_backfill_sensor


def _tick(instance, resources, cursor=None, batch_size=2):
    sensor = build_dataset_backfill_sensor(extract_features_job, batch_size=batch_size)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor(ctx)


def test_register_and_backfill_in_batches(settings, db, ffmpeg_video, tmp_path):
    clips = [ffmpeg_video(f"c{i}.mp4", duration=1.0 + 0.1 * i, audio=False) for i in range(3)]
    dup = tmp_path / "same_as_c0.mp4"
    shutil.copy(clips[0], dup)
    manifest = pd.DataFrame(
        {
            "path": [str(p) for p in [*clips, dup, tmp_path / "missing.mp4"]],
            "label": ["real", "fake", "real", "real", "fake"],
            "split": ["train", "train", "val", "train", "test"],
        }
    )
    reg = register_manifest(db, manifest, dataset_name="toy")
    expected = [partition_key_for_sha256(sha256_file(str(p))) for p in clips]
    assert reg.video_ids == expected
    assert reg.duplicates == 1 and reg.missing == [str(tmp_path / "missing.mp4")]
    assert db.get_video(expected[1])["label"] == "fake" and db.get_video(expected[1])["dataset"] == "toy"

    instance = dg.DagsterInstance.ephemeral()
    resources = default_resources(settings)
    # Before the partitions exist the sensor waits instead of skipping videos.
    assert isinstance(_tick(instance, resources), dg.SkipReason)
    assert add_video_partitions(instance, reg.video_ids, batch_size=2) == 3
    assert add_video_partitions(instance, reg.video_ids, batch_size=2) == 0

    first = _tick(instance, resources)
    second = _tick(instance, resources, cursor=first.cursor)
    third = _tick(instance, resources, cursor=second.cursor)
    requested = [r.partition_key for r in first.run_requests + second.run_requests]
    assert requested == expected  # registration order, two per tick, nothing twice
    assert isinstance(third, dg.SkipReason)
    assert {r.tags["dagster-deepfake/dataset"] for r in first.run_requests} == {"toy"}


def test_dataset_videos_run_the_feature_stages_only(settings, db, tmp_path):
    """A dataset video's run caches exactly what training reads and asks no verdict of the model."""
    clip = tmp_path / "lipsync.mp4"
    generate_clip(clip, seed=7, duration=2.0, width=320, height=240, audio="speech", manipulation="lip_sync")
    manifest = pd.DataFrame({"path": [str(clip)], "label": ["fake"], "split": ["train"]})
    (video_id,) = register_manifest(db, manifest, dataset_name="toy").video_ids
    instance = dg.DagsterInstance.ephemeral()
    add_video_partitions(instance, [video_id])

    sensor_job = build_dataset_backfill_sensor(extract_features_job).job_name
    assert sensor_job == "extract_features"
    defs = dg.Definitions(
        assets=PER_VIDEO_ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[extract_features_job],
        resources=default_resources(settings),
    )
    result = defs.resolve_job_def("extract_features").execute_in_process(
        partition_key=video_id, instance=instance
    )
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {a.key.to_user_string() for a in FEATURE_ASSETS}
    assert db.get_prediction(video_id) is None

    features = StoreFeatureSource(
        ArtifactStore(settings.platform.artifact_root), {video_id: (1, "lip_sync")}
    ).load(video_id)
    assert features.label_int == 1 and features.crops.shape[0] == len(features.flow) > 0
    assert features.waveform is not None and features.waveform.shape[0] > 16000
