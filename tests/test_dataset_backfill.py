"""Dataset registration: videos hashed into partitions, batched partition adds, the backfill sensor."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd

from dagster_deepfake.datasets import register_manifest
from dagster_deepfake.definitions import analyze_video_job
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from resources import default_resources
from sensors.datasets import add_video_partitions, build_dataset_backfill_sensor


def _tick(instance, resources, cursor=None, batch_size=2):
    sensor = build_dataset_backfill_sensor(analyze_video_job, batch_size=batch_size)
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
