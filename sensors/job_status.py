"""Keep the `jobs` table honest when a run dies outside an asset's own error handling."""

import dagster as dg

from dagster_deepfake.storage.keys import is_partition_key
from resources import PostgresResource


@dg.run_failure_sensor(
    name="job_failure_recorder",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks the video's job failed, with the run's error, when an analysis run fails.",
)
def job_failure_recorder(context: dg.RunFailureSensorContext, postgres: PostgresResource) -> None:
    video_id = context.dagster_run.tags.get("dagster/partition", "")
    if not is_partition_key(video_id):
        return
    db = postgres.db()
    job = db.get_job(video_id)
    if job and job["status"] == "failed":
        return  # the asset already recorded a specific reason
    message = context.failure_event.message or "run failed"
    db.set_job_status(video_id, "failed", reason=message[:2000], run_id=context.dagster_run.run_id)


@dg.run_status_sensor(
    name="job_success_recorder",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Marks the video's job completed when its analysis run succeeds.",
)
def job_success_recorder(context: dg.RunStatusSensorContext, postgres: PostgresResource) -> None:
    video_id = context.dagster_run.tags.get("dagster/partition", "")
    if not is_partition_key(video_id):
        return
    db = postgres.db()
    job = db.get_job(video_id)
    if job and job["status"] != "completed":
        db.set_job_status(video_id, "completed", run_id=context.dagster_run.run_id)
