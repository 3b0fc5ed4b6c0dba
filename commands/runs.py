"""Commands that drive Dagster from a terminal: add partitions, run training, read run stats.

Upper layer (docs/ARCHITECTURE.md): used by `dagster-deepfake register-dataset`, `train`, the
demo and the benchmark.
"""

from __future__ import annotations

import dagster as dg

from code_location.definitions import defs, train_job
from sensors.datasets import add_video_partitions
from sensors.job_status import step_error


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


def format_training_summary(metadata: dict[str, dict[str, object]]) -> str:
    """The few numbers a person wants after training: AUC, calibration, where the weights are."""
    train = metadata.get("trained_model", {})
    cal = metadata.get("calibration", {})
    ev = metadata.get("evaluation", {})

    def num(x: object) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    return "\n".join(
        [
            f"trained on {train.get('trained_on')}: {train.get('train_videos')} train / "
            f"{train.get('val_videos')} val videos, {train.get('epochs')} epochs, "
            f"best val AUC {num(train.get('best_val_auc'))}",
            f"calibration: T = {num(cal.get('temperature'))}, val ECE {num(cal.get('ece_before'))} → "
            f"{num(cal.get('ece_after'))}",
            f"test ({ev.get('test_videos')} videos): AUC {num(ev.get('auc'))}, accuracy "
            f"{num(ev.get('accuracy'))}, FPR@0.5 {num(ev.get('fpr_at_0.5'))}, EER {num(ev.get('eer'))}",
            f"checkpoint: {train.get('checkpoint')} (serves predictions from now on)",
        ]
    )
