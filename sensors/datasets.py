"""Dataset registration and its backfill: partitions added in batches, runs requested by a sensor.

`dagster-deepfake register-dataset` records the videos (library: `dagster_deepfake.datasets`)
and calls `add_video_partitions`; `dataset_backfill_sensor` then requests one run per queued
dataset video, a bounded batch per tick, in registration order, as batch runs (assets/batch.py)
where each video is still its own run, so one bad file fails only its partition and the rest go on.
"""

import datetime as dt
import json

import dagster as dg

from assets.batch import batch_run_requests, goes_as_batches
from assets.partitions import VIDEOS_PARTITION
from resources import PostgresResource, SettingsResource

DATASET_TAG = "dagster-deepfake/dataset"


def add_video_partitions(instance: dg.DagsterInstance, keys: list[str], batch_size: int = 1000) -> int:
    """Add the keys that are not partitions yet, `batch_size` per request; returns how many were new."""
    existing = set(instance.get_dynamic_partitions(VIDEOS_PARTITION))
    new = [k for k in dict.fromkeys(keys) if k not in existing]
    for start in range(0, len(new), batch_size):
        instance.add_dynamic_partitions(VIDEOS_PARTITION, new[start : start + batch_size])
    return len(new)


def build_dataset_backfill_sensor(
    job, batch_size: int = 50, batch_job: dg.JobDefinition | None = None
) -> dg.SensorDefinition:
    """With `batch_job`, each tick's videos go as `analyze_batch` runs of `platform.batch_max_videos`
    (assets/batch.py): one start-up and model load per batch, each video still its own partition."""

    @dg.sensor(
        name="dataset_backfill_sensor",
        jobs=[job] if batch_job is None else [job, batch_job],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests analysis runs for registered dataset videos, a batch per tick.",
    )
    def dataset_backfill_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresResource, settings: SettingsResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = json.loads(context.cursor) if context.cursor else None
        after = (dt.datetime.fromisoformat(cursor["ts"]), cursor["job_id"]) if cursor else None
        rows = postgres.db().queued_dataset_jobs(after=after, limit=batch_size)
        if not rows:
            return dg.SkipReason("no queued dataset videos")
        known = set(context.instance.get_dynamic_partitions(VIDEOS_PARTITION))
        taken = []
        for row in rows:
            if row["job_id"] not in known:
                break  # registration still adding partitions: take it on a later tick
            taken.append(row)
        if not taken:
            return dg.SkipReason("queued dataset videos are waiting for their partitions")
        if not goes_as_batches(len(taken), settings.get(), batch_job):
            requests = [
                dg.RunRequest(
                    job_name=job.name,
                    partition_key=r["job_id"],
                    run_key=r["job_id"],
                    tags={DATASET_TAG: r["dataset"]},
                )
                for r in taken
            ]
        else:  # a batch holds one dataset's videos, so the dataset tag (and its run limit) still holds
            by_dataset: dict[str, list[str]] = {}
            for r in taken:
                by_dataset.setdefault(r["dataset"], []).append(r["job_id"])
            requests = [
                request
                for name, keys in by_dataset.items()
                for request in batch_run_requests(keys, job.name, settings.get(), tags={DATASET_TAG: name})
            ]
        last = taken[-1]
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps({"ts": last["submitted_at"].isoformat(), "job_id": last["job_id"]}),
        )

    return dataset_backfill_sensor
