"""The Dagster code location: every asset, check, job, sensor and resource of the platform.

Upper layer (docs/ARCHITECTURE.md): it wires `assets/`, `resources/` and `sensors/` together;
the `dagster_deepfake` library below never imports it.
"""

from __future__ import annotations

import warnings

import dagster as dg

import code_location.sqlite_commits  # noqa: F401  (registers the SQLite commit setting)
from assets import explain, ingest, model, perception, training
from assets.batch import WHOLE_MACHINE, build_batch_job
from dagster_deepfake.config import load_settings
from resources import default_resources
from sensors.datasets import build_dataset_backfill_sensor
from sensors.job_status import job_failure_recorder, job_success_recorder
from sensors.reanalysis import build_reanalysis_sensor
from sensors.uploads import build_upload_sensor

# Dagster 1.13 copies each sensor when it attaches resources (SensorDefinition.with_attributes)
# and passes the copy `owners=[]`, which trips the beta warning of a parameter this project never
# sets: every process that loads the code location (the code server, each run, the demo) printed it.
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `owners` of initializer `SensorDefinition.__init__`",
    category=dg.BetaWarning,
)

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


def build_jobs(
    executor_def: dg.ExecutorDefinition = dg.in_process_executor,
) -> tuple[dg.UnresolvedAssetJobDefinition, dg.UnresolvedAssetJobDefinition, dg.UnresolvedAssetJobDefinition]:
    """`analyze_video`, `extract_features` and `train_calibrate_evaluate`, run on `executor_def`.

    In-process by default: one process per run, so models load once and arrays stay warm in the
    OS cache (the multiprocess default re-imports torch and reloads the model in every step).
    code_location/celery.py builds the same jobs on dagster-celery's executor.
    """
    # A per-video run is retried once (what may pass next time) and holds the machine's cores.
    per_video_tags = {"dagster/max_retries": "1", **WHOLE_MACHINE}
    analyze = dg.define_asset_job(
        name="analyze_video",
        selection=dg.AssetSelection.assets(*PER_VIDEO_ASSETS),
        description="Every per-video stage for one uploaded video (one partition).",
        tags=per_video_tags,
        executor_def=executor_def,
    )
    features = dg.define_asset_job(
        name="extract_features",
        selection=dg.AssetSelection.assets(*FEATURE_ASSETS),
        description="The feature stages only (probe, frames, faces, flow, audio) for one dataset video: "
        "what `train_calibrate_evaluate` reads. Requested by the dataset backfill sensor.",
        tags=per_video_tags,
        executor_def=executor_def,
    )
    train = dg.define_asset_job(
        name="train_calibrate_evaluate",
        selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
        description="dataset_manifest → trained_model → calibration → evaluation on the cached "
        "per-video features.",
        executor_def=executor_def,
    )
    return analyze, features, train


analyze_video_job, extract_features_job, train_job = build_jobs()


def build_definitions(
    config_path: str | None = None, executor_def: dg.ExecutorDefinition | None = None
) -> dg.Definitions:
    """`executor_def`: run the same three jobs' steps on it instead (code_location/celery.py)."""
    settings = load_settings(config_path)
    jobs = (
        build_jobs(executor_def)
        if executor_def is not None
        else (analyze_video_job, extract_features_job, train_job)
    )
    analyze, features, _ = jobs
    built: list[dg.Definitions] = []  # the batch job runs the per-video jobs of these Definitions
    # Not on another executor: a batch runs its videos in-process, and Celery workers are warm already.
    batch_job = build_batch_job(lambda name: built[0].resolve_job_def(name)) if executor_def is None else None
    defs = dg.Definitions(
        assets=[*PER_VIDEO_ASSETS, *TRAINING_ASSETS],
        asset_checks=ASSET_CHECKS,
        jobs=[*jobs, *([batch_job] if batch_job else [])],
        sensors=[
            build_upload_sensor(analyze, settings.platform.sensor_interval_seconds, batch_job=batch_job),
            build_dataset_backfill_sensor(features, batch_job=batch_job),
            build_reanalysis_sensor(analyze),
            job_failure_recorder,
            job_success_recorder,
        ],
        # No settings object here: the run process reads the file and the environment itself,
        # so no secret from the environment is copied into resource config the UI displays.
        resources=default_resources(None, config_path),
    )
    built.append(defs)
    return defs


defs = build_definitions()
