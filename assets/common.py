"""Helpers shared by the thin per-video assets: failing one partition cleanly, thumbnails."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dagster_deepfake.errors import DeepfakeError
from dagster_deepfake.storage.postgres import ResultsDB


def image_md(png_or_jpeg: bytes, alt: str, mime: str = "image/jpeg") -> str:
    """Markdown with an inline image, the way Dagster's examples show thumbnails in the UI."""
    return f"![{alt}](data:{mime};base64,{base64.b64encode(png_or_jpeg).decode()})"


# The steps that run a model declare this pool, and with it dagster-celery's queue tag naming
# the Celery queue of the same name: dagster-celery's own executor sends them there, every other
# step to Celery's `task_default_queue` (deploy/celery.yaml; docs/DEPLOY.md "Celery workers").
# The in-process executor ignores the tag. A literal, not `dagster_celery.tags`: importing
# dagster_celery imports Celery, ~1 s in every run (tests/test_celery_units.py checks they agree).
GPU_POOL = "gpu"
CELERY_QUEUE_TAG = "dagster-celery/queue"
GPU_QUEUE_TAGS = {CELERY_QUEUE_TAG: GPU_POOL}

# Dagster's run retry daemon reads this run tag before the instance's `run_retries` setting.
RETRY_ON_ASSET_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"


def never_retry_this_run() -> None:
    """Tell the run retry daemon that this run's failure is final (it would only fail again).

    Sets `dagster/retry_on_asset_or_op_failure: false` on the current run, so the instance's
    retries (deploy/*.yaml) still cover what may pass next time: a killed process, a database or
    store that was down, an evicted pod.
    """
    try:
        context = dg.AssetExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return  # not inside a run (a direct call in a test): nothing to retry anyway
    context.instance.add_run_tags(context.run_id, {RETRY_ON_ASSET_FAILURE_TAG: "false"})


@contextmanager
def fail_video_on_bad_input(db: ResultsDB, video_id: str, stage: str) -> Iterator[None]:
    """Turn a user-actionable error into a failed job with its reason and a clean Dagster Failure.

    Only this partition fails; nothing else is touched. The failure is final: an error this
    project raises on purpose (the input is unreadable, out of scope, has no face; ffmpeg or
    the configured device is missing) fails the same way every time, so the run is marked not
    to be retried. Any other error (OSError, a database error) leaves the run to the retries.
    """
    try:
        yield
    except DeepfakeError as exc:
        reason = f"{stage}: {getattr(exc, 'reason', None) or exc}"
        db.set_job_status(video_id, "failed", reason=reason)
        never_retry_this_run()
        raise dg.Failure(
            description=reason, metadata={"video_id": video_id, "stage": stage}, allow_retries=False
        ) from exc
