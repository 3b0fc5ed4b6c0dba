"""The Dagster code location: every asset, check, job, sensor and resource of the platform.

This is the only module of the `dagster_deepfake` package that imports Dagster.
"""

from __future__ import annotations

import dagster as dg

from assets import explain, ingest, model, perception, training
from assets.partitions import videos_partitions
from dagster_deepfake.config import load_settings
from resources import default_resources
from sensors.datasets import add_video_partitions, build_dataset_backfill_sensor
from sensors.job_status import job_failure_recorder, job_success_recorder, step_error
from sensors.uploads import build_upload_sensor

PER_VIDEO_ASSETS = [
    ingest.raw_video,
    ingest.frames,
    perception.aligned_faces,
    perception.optical_flow,
    perception.audio,
    model.audio_embeddings,
    model.predictions,
    explain.saliency,
    explain.report,
]
# What training reads (faces, flow, audio): a dataset backfill stops here, because a verdict
# from the model being trained is worth nothing and costs most of a run.
FEATURE_ASSETS = [
    ingest.raw_video,
    ingest.frames,
    perception.aligned_faces,
    perception.optical_flow,
    perception.audio,
]
ASSET_CHECKS = [perception.face_coverage_check]
TRAINING_ASSETS = [
    training.dataset_manifest,
    training.trained_model,
    training.calibration,
    training.evaluation,
]

train_job = dg.define_asset_job(
    name="train_calibrate_evaluate",
    selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
    description="dataset_manifest → trained_model → calibration → evaluation on the cached per-video features.",
    executor_def=dg.in_process_executor,
)

analyze_video_job = dg.define_asset_job(
    name="analyze_video",
    selection=dg.AssetSelection.assets(*PER_VIDEO_ASSETS),
    partitions_def=videos_partitions,
    description="Every per-video stage for one uploaded video (one partition).",
    tags={"dagster/max_retries": "1"},
    # One process per run: models load once and arrays stay warm in the OS cache; the
    # multiprocess default re-imports torch and reloads the model in every step.
    executor_def=dg.in_process_executor,
)


extract_features_job = dg.define_asset_job(
    name="extract_features",
    selection=dg.AssetSelection.assets(*FEATURE_ASSETS),
    partitions_def=videos_partitions,
    description="The feature stages only (probe, frames, faces, flow, audio) for one dataset video: "
    "what `train_calibrate_evaluate` reads. Requested by the dataset backfill sensor.",
    tags={"dagster/max_retries": "1"},
    executor_def=dg.in_process_executor,
)


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    settings = load_settings(config_path)
    return dg.Definitions(
        assets=[*PER_VIDEO_ASSETS, *TRAINING_ASSETS],
        asset_checks=ASSET_CHECKS,
        jobs=[analyze_video_job, extract_features_job, train_job],
        sensors=[
            build_upload_sensor(analyze_video_job, settings.platform.sensor_interval_seconds),
            build_dataset_backfill_sensor(extract_features_job),
            job_failure_recorder,
            job_success_recorder,
        ],
        # No settings object here: the run process reads the file and the environment itself,
        # so no secret from the environment is copied into resource config the UI displays.
        resources=default_resources(None, config_path),
    )


defs = build_definitions()


def add_partitions_to_instance(keys: list[str], batch_size: int = 1000) -> int:
    """Add video partitions to the instance at $DAGSTER_HOME (used by `register-dataset`)."""
    with dg.DagsterInstance.get() as instance:
        return add_video_partitions(instance, keys, batch_size=batch_size)


def run_training(training_config: str | None = None) -> tuple[bool, dict[str, dict[str, object]]]:
    """Run `train_calibrate_evaluate` in this process on the instance at $DAGSTER_HOME.

    The run is recorded like any other (it shows in the UI with its logs and per-epoch curves).
    Returns whether it succeeded and each training asset's materialization metadata, as plain
    values; a failure's reason is in the second value under "error".
    """
    run_config = {
        "ops": {"trained_model": {"config": {"training_config": training_config}}},
        # The console shows the epochs (INFO), not every engine event (DEBUG); the UI keeps all.
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(train_job.name).execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False
        )
    metadata: dict[str, dict[str, object]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    if not result.success:
        events = result.get_step_failure_events()
        error = step_error(events[0]) if events else None
        message = error.message.strip() if error else f"run {result.run_id} failed; see it in the UI"
        if error is not None and error.cls_name == "Failure":  # our own words: drop the class path
            message = message.split(": ", 1)[-1]
        metadata["error"] = {"step": ", ".join(e.step_key or "?" for e in events) or "?", "message": message}
    return result.success, metadata


def run_stats(job_name: str) -> dict[str, object]:
    """Successful runs of `job_name` on $DAGSTER_HOME's instance: each one's wall seconds
    (start → end) and how many were forked from the warm worker (launchers/prefork.py)."""
    from launchers.prefork import PID_TAG

    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS])
        )
    timed = [r for r in records if r.start_time and r.end_time]
    return {
        "durations": [r.end_time - r.start_time for r in timed],
        "forked_from_warm_worker": sum(PID_TAG in r.dagster_run.tags for r in timed),
    }
