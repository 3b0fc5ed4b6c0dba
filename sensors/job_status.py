"""Keep the `jobs` table honest when a run dies outside an asset's own error handling."""

from typing import TYPE_CHECKING

import dagster as dg

from assets.batch import BATCH_RUN_TAG, batch_video_ids
from dagster_deepfake.storage.keys import is_partition_key
from dagster_deepfake.storage.postgres import ResultsDB
from resources import PostgresResource
from sensors.reanalysis import REQUESTED_MODEL_TAG

if TYPE_CHECKING:
    from dagster._utils.error import SerializableErrorInfo

# Set by the Dagster instance on a failed run when run retries are on: "true" or "false".
WILL_RETRY_TAG = "dagster/will_retry"


def step_error(event: dg.DagsterEvent) -> "SerializableErrorInfo | None":
    """What a failed step's asset raised, without Dagster's step-execution wrapper around it."""
    data = event.step_failure_data
    error = data.error if data else None
    while (
        error is not None
        and error.cause is not None
        and error.cls_name == "DagsterExecutionStepExecutionError"
    ):
        error = error.cause
    return error


def _failure_reason(context: dg.RunFailureSensorContext) -> str:
    """The failed steps' own errors (what the asset raised), else the run's summary."""
    reasons = [
        f"{event.step_key}: {error.message.strip()}"
        for event in context.get_step_failure_events()
        if (error := step_error(event)) is not None
    ]
    return "; ".join(reasons) or context.failure_event.message or "run failed"


@dg.run_failure_sensor(
    name="job_failure_recorder",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks the video's job failed, with the run's error, when an analysis run fails.",
)
def job_failure_recorder(context: dg.RunFailureSensorContext, postgres: PostgresResource) -> None:
    if BATCH_RUN_TAG in context.dagster_run.tags:
        return  # a video's run inside a batch: the batch records its outcome (assets/batch.py)
    # The freshest tags: the instance sets `dagster/will_retry` as the run fails.
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    if batch_video_ids(run):
        _record_failed_batch(context, run, postgres.db())
        return
    video_id = context.dagster_run.tags.get("dagster/partition", "")
    if not is_partition_key(video_id):
        return
    if run.tags.get(WILL_RETRY_TAG) == "true":
        # An infrastructure failure the retry daemon re-runs: the job stays where it is (running),
        # so a client never sees failed → running; the last attempt's failure is recorded.
        context.log.info(f"{video_id}: run {run.run_id} failed and will be retried; job left as is")
        return
    db = postgres.db()
    if requested := run.tags.get(REQUESTED_MODEL_TAG):  # a reanalysis: a later request may try again
        db.set_analysis_status(video_id, requested, "failed")
    job = db.get_job(video_id)
    if job and job["status"] == "failed":
        return  # the asset already recorded a specific reason
    db.set_job_status(
        video_id, "failed", reason=_failure_reason(context)[:2000], run_id=context.dagster_run.run_id
    )


@dg.run_status_sensor(
    name="job_success_recorder",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Marks the video's job completed when its analysis run succeeds.",
)
def job_success_recorder(context: dg.RunStatusSensorContext, postgres: PostgresResource) -> None:
    video_id = context.dagster_run.tags.get("dagster/partition", "")
    if not is_partition_key(video_id) or BATCH_RUN_TAG in context.dagster_run.tags:
        return
    record_success(postgres.db(), video_id, context.dagster_run.job_name, context.dagster_run.run_id)


def record_success(db: ResultsDB, video_id: str, job_name: str, run_id: str) -> None:
    """A video's run succeeded: its job is completed (idempotent; the report asset may have done it)."""
    job = db.get_job(video_id)
    if job and job["status"] != "completed":
        # A dataset video's `extract_features` run caches what training reads and gives no verdict.
        result = (
            {"stage": "features", "note": "dataset video: features cached for training; no verdict"}
            if job_name == "extract_features"
            else None
        )
        db.set_job_status(video_id, "completed", result=result, run_id=run_id)


def _record_failed_batch(context: dg.RunFailureSensorContext, run: dg.DagsterRun, db: ResultsDB) -> None:
    """A batch run died (killed, out of memory) or gave up: its unfinished videos fail with the reason,
    and per-video runs it left in STARTED (the process was gone) are marked failed."""
    if run.tags.get(WILL_RETRY_TAG) == "true":
        return  # the retry runs the unfinished videos again
    left = context.instance.get_runs(
        filters=dg.RunsFilter(tags={BATCH_RUN_TAG: run.run_id}, statuses=[dg.DagsterRunStatus.STARTED])
    )
    for inner in left:
        context.instance.report_run_failed(inner, "its batch run ended before it did")
    reason = f"batch run failed: {_failure_reason(context)}"[:2000]
    for video_id in batch_video_ids(run):
        job = db.get_job(video_id)
        if job and job["status"] not in ("completed", "failed"):
            db.set_job_status(video_id, "failed", reason=reason, run_id=run.run_id)
