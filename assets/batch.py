"""`analyze_batch`: several videos in one run, each still its own partition.

Why (docs/ARCHITECTURE.md §3, "Batched runs"): a run per video pays a process start, the imports
of torch and the model libraries and a model load every time; on two cores that was most of a
short clip's run. A batch run starts once and takes its videos one after another in one pass
each (`assets/one_pass.py`: the assets' own functions chained in memory, every asset's
materialization logged for the video's partition), so imports, the loaded model
(`models.checkpoint.model_store` caches it per process) and the ONNX face detector session are
shared by the whole batch.

A video whose pass raises (and every video when faces are tracked) runs the per-video job
(`analyze_video`, or `extract_features` for a dataset backfill) in this process with
`JobDefinition.execute_in_process`, tagged with the batch: that run fails its own partition and
its own job row, with its reason, as a run of its own would, while the batch goes on. Dagster's
own multi-partition runs (partition-range runs, `BackfillPolicy`) were not used: a range step
materializes every partition of the range when it returns and cannot mark one of them failed
(dagster-io/dagster#17836), so a bad video would either fail the whole batch or show as
materialized.

A tick with enough videos is split into `platform.side_by_side_runs` runs that run at once, each
pinned to its share of the host's cores (docs/CONFIG.md "Side by side", `runtime.claim_cpu_slot`):
one process leaves a quarter of two cores idle, and two unpinned ones fight over both.

Infrastructure failures (a database or the store down) fail the batch run after the other
videos, so the instance's `run_retries` re-run it; a retry skips the videos already completed and
those that failed on their own input (never retried, DESIGN §9).
"""

import hashlib
import math
from collections.abc import Callable, Sequence

import dagster as dg

from assets.common import RETRY_ON_ASSET_FAILURE_TAG
from assets.partitions import FILE_NAME_TAG, SOURCE_URI_TAG
from dagster_deepfake.config import Settings
from resources import (
    ArtifactStoreResource,
    ModelStoreResource,
    PostgresResource,
    SettingsResource,
    TorchDeviceResource,
    UploadBucketResource,
)

BATCH_JOB = "analyze_batch"
BATCH_OP = "analyze_videos"
# On each per-video run a batch executes: which batch run it belongs to (the job-status sensors
# leave these runs to the batch, which records their outcome itself).
BATCH_RUN_TAG = "dagster-deepfake/batch_run"
PER_VIDEO_JOBS = ("analyze_video", "extract_features")
# Dagster's run tags for retries: a per-video run inside a batch is never retried on its own.
MAX_RETRIES_TAG = "dagster/max_retries"
RETRY_NUMBER_TAG = "dagster/retry_number"
# On every analysis run: how many runs share this host's cores. "1" (the jobs' own tag) is a run
# that sizes its pools to every core, so the local instance runs those one at a time (two of them
# side by side fight: docs/CONFIG.md "Side by side"); k > 1 is a batch started beside k - 1
# others, which claims one share (dagster_deepfake/runtime.py claim_cpu_slot).
CPU_SLOTS_TAG = "dagster-deepfake/cpu_slots"
WHOLE_MACHINE = {CPU_SLOTS_TAG: "1"}


class BatchConfig(dg.Config):
    """What one batch run does: the per-video job and its videos (partition keys)."""

    video_ids: list[str]
    job_name: str = "analyze_video"


def batch_run_request(
    video_ids: Sequence[str], job_name: str, tags: dict[str, str] | None = None, cpu_slots: int = 1
) -> dg.RunRequest:
    """One `analyze_batch` run for `video_ids`; its run key is the batch's content, so a tick
    evaluated twice never starts the same batch twice."""
    digest = hashlib.sha256(f"{job_name}:{','.join(video_ids)}".encode()).hexdigest()[:16]
    return dg.RunRequest(
        job_name=BATCH_JOB,
        run_key=f"batch:{digest}",
        run_config={"ops": {BATCH_OP: {"config": {"video_ids": list(video_ids), "job_name": job_name}}}},
        tags={
            **(tags or {}),
            "dagster-deepfake/videos": str(len(video_ids)),
            CPU_SLOTS_TAG: str(cpu_slots),
        },
    )


def goes_as_batches(n_videos: int, settings: Settings, batch_job: dg.JobDefinition | None) -> bool:
    """The sensors' one rule: a tick's videos go as batch runs when there is a batch job, a batch
    may hold more than one video (`platform.batch_max_videos`) and the tick has more than one;
    otherwise each keeps a run of its own (a lone upload starts at once)."""
    return batch_job is not None and settings.platform.batch_max_videos > 1 and n_videos > 1


def batch_run_requests(
    video_ids: Sequence[str], job_name: str, settings: Settings, tags: dict[str, str] | None = None
) -> list[dg.RunRequest]:
    """A tick's videos as batch runs: at most `platform.batch_max_videos` each, and split in
    `platform.side_by_side_runs` runs (each pinned to its share of the cores) once every run
    gets two videos or more."""
    p = settings.platform
    n = len(video_ids)
    runs = math.ceil(n / p.batch_max_videos)
    side_by_side = p.side_by_side_runs > 1 and n >= 2 * p.side_by_side_runs
    if side_by_side:
        runs = max(runs, p.side_by_side_runs)
    slots = p.side_by_side_runs if side_by_side else 1
    return [batch_run_request(ids, job_name, tags, slots) for ids in chunks(video_ids, math.ceil(n / runs))]


def batch_video_ids(run: dg.DagsterRun) -> list[str]:
    """The videos a batch run was asked for (empty for any other run)."""
    if run.job_name != BATCH_JOB:
        return []
    config = (run.run_config or {}).get("ops", {}).get(BATCH_OP, {}).get("config", {})
    return list(config.get("video_ids", []))


def chunks(keys: Sequence[str], size: int) -> list[list[str]]:
    """`keys` in order, `size` at a time (the last batch may be shorter)."""
    return [list(keys[i : i + size]) for i in range(0, len(keys), max(1, size))]


def _failure_reason(result: dg.ExecuteInProcessResult) -> str:
    from sensors.job_status import step_error

    reasons = [
        f"{event.step_key}: {error.message.strip()}"
        for event in result.all_events
        if event.is_step_failure and (error := step_error(event)) is not None
    ]
    return "; ".join(reasons) or "run failed"


def _failed_on_its_input(instance: dg.DagsterInstance, run_id: str | None) -> bool:
    """Whether the run that failed a video's job row failed on the video's own fault (the asset
    tagged it not to be retried, assets/common.py)."""
    run = instance.get_run_by_id(run_id) if run_id else None
    return run is not None and run.tags.get(RETRY_ON_ASSET_FAILURE_TAG) == "false"


def build_batch_job(per_video_job: Callable[[str], dg.JobDefinition]) -> dg.JobDefinition:
    """The batch job; `per_video_job(name)` returns the resolved per-video job (with resources)."""

    @dg.op(
        name=BATCH_OP,
        description="Each video of the batch in one pass (assets/one_pass.py), its assets reported "
        "materialized for its partition; a video whose pass fails runs the per-video job on its own.",
    )
    def analyze_videos(
        context: dg.OpExecutionContext,
        config: BatchConfig,
        postgres: PostgresResource,
        settings: SettingsResource,
        artifacts: ArtifactStoreResource,
        upload_bucket: UploadBucketResource,
        model_store: ModelStoreResource,
        torch_device: TorchDeviceResource,
    ) -> None:
        from assets.one_pass import OnePass
        from dagster_deepfake.runtime import claim_cpu_slot, collector_paused, in_background
        from sensors.job_status import record_success

        if config.job_name not in PER_VIDEO_JOBS:
            raise dg.Failure(f"unknown per-video job {config.job_name!r}; one of {', '.join(PER_VIDEO_JOBS)}")
        # Before any thread pool exists (runtime.py, "Cores"): a run started beside others takes its share.
        slots = int(context.run.tags.get(CPU_SLOTS_TAG, "1"))
        if slots > 1:
            cores = claim_cpu_slot(slots)
            context.log.info(
                f"side by side with {slots - 1} other run(s): pinned to cores {cores}"
                if cores
                else f"every one of the {slots} core shares is taken: sharing all cores"
            )
        job = per_video_job(config.job_name)
        db = postgres.db()

        def load_model() -> tuple:
            with collector_paused():  # the model code's imports (dagster_deepfake/runtime.py)
                device = torch_device.torch_device()
            return (*model_store.load(device), device)

        # Loaded beside the first video's decoding and face detection (runtime.py); a feature
        # backfill (extract_features) needs no model.
        loading = in_background(load_model) if config.job_name == "analyze_video" else None
        one_pass = OnePass(
            artifacts.store(),
            db,
            settings.get(),
            upload_bucket.bucket().storage_options,
            loading.result if loading else load_model,
            context.log.warning,
        )
        done, failed, infra = [], {}, {}
        for video_id in dict.fromkeys(config.video_ids):  # a key twice in one batch runs once
            row = db.get_job(video_id)
            if row and row["status"] == "completed":
                context.log.info(f"{video_id}: already completed (an earlier attempt of this batch); skipped")
                done.append(video_id)
                continue
            if (
                row
                and row["status"] == "failed"
                and _failed_on_its_input(context.instance, row.get("run_id"))
            ):
                # DESIGN §9: a failure caused by the input is final, even when the batch is retried
                # because another of its videos met an infrastructure failure.
                context.log.info(
                    f"{video_id}: failed on its input earlier ({row.get('reason')}); not retried"
                )
                failed[video_id] = str(row.get("reason") or "failed on its input")
                continue
            if one_pass.handles():
                try:
                    events = one_pass.run(video_id, config.job_name, context.run_id)
                except Exception as exc:  # the video's own run records the failure (or passes)
                    context.log.info(f"{video_id}: {type(exc).__name__}: {exc}; running it on its own")
                else:
                    for event in events:
                        context.log_event(event)
                    record_success(db, video_id, config.job_name, context.run_id)
                    done.append(video_id)
                    continue
            video = db.get_video(video_id) or {}
            tags = {
                BATCH_RUN_TAG: context.run_id,
                MAX_RETRIES_TAG: "0",  # the batch run is the unit of retry
                SOURCE_URI_TAG: str(video.get("source_uri", ""))[:4000],
                FILE_NAME_TAG: str(video.get("file_name", ""))[:255],
                **{k: v for k, v in context.run.tags.items() if k.startswith("dagster-deepfake/dataset")},
            }
            result = job.execute_in_process(
                partition_key=video_id, instance=context.instance, tags=tags, raise_on_error=False
            )
            if result.success:
                record_success(db, video_id, config.job_name, result.run_id)
                done.append(video_id)
                continue
            reason = _failure_reason(result)[:2000]
            if _failed_on_its_input(context.instance, result.run_id):
                # The video's own fault (the asset recorded the job row and its reason): final.
                failed[video_id] = reason
                job_row = db.get_job(video_id)
                if not job_row or job_row["status"] != "failed":
                    db.set_job_status(video_id, "failed", reason=reason, run_id=result.run_id)
            else:
                infra[video_id] = reason
            context.log.warning(f"{video_id}: run {result.run_id} failed: {reason}")
        context.log.info(
            f"batch of {len(config.video_ids)}: {len(done)} completed, {len(failed)} failed on their input, "
            f"{len(infra)} failed on the infrastructure"
        )
        if infra:
            retries_left = int(context.run.tags.get(MAX_RETRIES_TAG, "0")) > int(
                context.run.tags.get(RETRY_NUMBER_TAG, "0")
            )
            if not retries_left:
                for video_id, reason in infra.items():
                    db.set_job_status(video_id, "failed", reason=reason, run_id=context.run_id)
            raise dg.Failure(
                description=f"{len(infra)} of {len(config.video_ids)} videos failed on the infrastructure: "
                + "; ".join(f"{k}: {v}" for k, v in infra.items())[:2000],
                metadata={"videos": dg.MetadataValue.json(sorted(infra))},
            )

    @dg.job(
        name=BATCH_JOB,
        description="Several videos in one run, one pass each (one start-up and one model load per "
        "batch; each video its own partition, a failing one its own run with its reason).",
        tags={MAX_RETRIES_TAG: "1", **WHOLE_MACHINE},
        executor_def=dg.in_process_executor,
    )
    def analyze_batch() -> None:
        analyze_videos()

    return analyze_batch
