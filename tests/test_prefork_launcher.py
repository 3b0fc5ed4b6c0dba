"""`PreforkRunLauncher` (launchers/prefork.py) on a real instance and code server: runs are forks
of one warm worker that imported the code once; cancel, crash detection, stale code, fallback."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

from dagster_deepfake.config import REPO_ROOT
from launchers.prefork import PID_TAG, WORKER_TAG, PreforkRunLauncher
from tests import prefork_jobs

TIMEOUT_S = 60


@contextmanager
def prefork_instance(preload: list[str]) -> Iterator[tuple[dg.DagsterInstance, object]]:
    overrides = {
        "run_launcher": {
            "module": "launchers.prefork",
            "class": "PreforkRunLauncher",
            "config": {"preload_modules": preload, "ready_timeout_seconds": 120},
        }
    }
    with (
        dg.instance_for_test(overrides=overrides) as instance,
        WorkspaceProcessContext(
            instance,
            ModuleTarget(
                module_name="tests.prefork_jobs",
                attribute="defs",
                working_directory=str(REPO_ROOT),
                location_name="prefork_test",
            ),
        ) as process_context,
    ):
        try:
            yield instance, process_context.create_request_context()
        finally:
            instance.run_launcher.dispose()


def submit(instance: dg.DagsterInstance, workspace, out: Path, **config) -> str:
    location = workspace.get_code_location("prefork_test")
    remote_job = location.get_repository("__repository__").get_full_job("which_process")
    run = instance.create_run_for_job(
        job_def=prefork_jobs.which_process,
        run_config={"ops": {"report_process": {"config": {"out": str(out), **config}}}},
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace)
    return run.run_id


def wait_for(instance: dg.DagsterInstance, run_id: str, statuses: set[dg.DagsterRunStatus]) -> dg.DagsterRun:
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in statuses:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} not in {statuses} after {TIMEOUT_S}s: {run.status if run else None}")


def wait_for_file(path: Path) -> Path:
    """`path` once the run's op has written it (the op is then inside its compute)."""
    deadline = time.time() + TIMEOUT_S
    while not path.exists():
        assert time.time() < deadline, f"{path} not written after {TIMEOUT_S}s"
        time.sleep(0.1)
    return path


def engine_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id) if e.message]


def test_runs_are_forks_of_one_warm_worker_that_imported_the_code_once(tmp_path: Path):
    with prefork_instance(["tests.prefork_jobs"]) as (instance, workspace):
        assert isinstance(instance.run_launcher, PreforkRunLauncher)
        seen = []
        for i in range(2):
            run_id = submit(instance, workspace, tmp_path / f"run{i}.json")
            run = wait_for(instance, run_id, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE})
            assert run.status == dg.DagsterRunStatus.SUCCESS, engine_messages(instance, run_id)
            seen.append((run, json.loads((tmp_path / f"run{i}.json").read_text())))
        worker_pids = {int(run.tags[WORKER_TAG]) for run, _ in seen}
        assert len(worker_pids) == 1, "both runs come from the same warm worker"
        (worker_pid,) = worker_pids
        for run, proc in seen:
            assert proc["pid"] == int(run.tags[PID_TAG]) != worker_pid
            assert proc["ppid"] == worker_pid, "the run process is the worker's child"
            # The job module was imported once, in the worker, not again by the run process.
            assert proc["imported_by"] == worker_pid
        assert seen[0][1]["pid"] != seen[1][1]["pid"], "each run is its own process"
        assert any(
            f"from warm worker {worker_pid}" in m for m in engine_messages(instance, seen[0][0].run_id)
        )


def test_terminate_cancels_a_forked_run_and_health_tracks_its_process(tmp_path: Path):
    with prefork_instance(["tests.prefork_jobs"]) as (instance, workspace):
        launcher = instance.run_launcher
        out = tmp_path / "held.json"
        run_id = submit(instance, workspace, out, hold_until=str(tmp_path / "never"), hold_seconds=60)
        wait_for(instance, run_id, {dg.DagsterRunStatus.STARTED})
        wait_for_file(out)
        run = instance.get_run_by_id(run_id)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert launcher.terminate(run_id)
        run = wait_for(instance, run_id, {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE})
        assert run.status == dg.DagsterRunStatus.CANCELED

        # A run process killed outright (OOM killer, kill -9) is reported failed, so that run
        # monitoring marks the run failed instead of leaving it STARTED for ever.
        out2 = tmp_path / "killed.json"
        run_id = submit(instance, workspace, out2, hold_until=str(tmp_path / "never"), hold_seconds=60)
        wait_for(instance, run_id, {dg.DagsterRunStatus.STARTED})
        pid = json.loads(wait_for_file(out2).read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        run = instance.get_run_by_id(run_id)
        while launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING and time.time() < deadline:
            time.sleep(0.1)  # the worker reaps its child on SIGCHLD
        health = launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED and str(pid) in (health.msg or "")
        assert run.status == dg.DagsterRunStatus.STARTED  # until monitoring acts on the health


def test_a_changed_source_file_restarts_the_worker(tmp_path: Path):
    with prefork_instance(["tests.prefork_jobs"]) as (instance, workspace):
        first = wait_for(
            instance, submit(instance, workspace, tmp_path / "a.json"), {dg.DagsterRunStatus.SUCCESS}
        )
        source = Path(prefork_jobs.__file__)
        stat = source.stat()
        os.utime(source, (stat.st_atime, stat.st_mtime + 1))  # as an edit would
        try:
            second = wait_for(
                instance, submit(instance, workspace, tmp_path / "b.json"), {dg.DagsterRunStatus.SUCCESS}
            )
        finally:
            os.utime(source, (stat.st_atime, stat.st_mtime))
        assert first.tags[WORKER_TAG] != second.tags[WORKER_TAG]
        proc = json.loads((tmp_path / "b.json").read_text())
        assert proc["imported_by"] == int(second.tags[WORKER_TAG]), "the new worker imported the edited code"


def test_a_worker_that_cannot_preload_falls_back_to_a_fresh_process(tmp_path: Path):
    with prefork_instance(["tests.prefork_jobs", "no_such_module_for_prefork"]) as (instance, workspace):
        run_id = submit(instance, workspace, tmp_path / "fallback.json")
        run = wait_for(instance, run_id, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE})
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert PID_TAG not in run.tags
        messages = engine_messages(instance, run_id)
        assert any(
            "Warm run worker unavailable" in m and "no_such_module_for_prefork" in m for m in messages
        ), messages
        proc = json.loads((tmp_path / "fallback.json").read_text())
        assert proc["imported_by"] == proc["pid"], "a fresh process imported the code itself"
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING


@pytest.mark.parametrize("state", ["Z", "S"])
def test_pid_alive_reads_zombies_as_gone(monkeypatch, state: str):
    from launchers import prefork

    monkeypatch.setattr(prefork.os, "kill", lambda pid, sig: None)
    monkeypatch.setattr(prefork.Path, "read_text", lambda self: f"4242 (python -m x) {state} 1 2 3")
    assert prefork._pid_alive(4242) is (state != "Z")


def test_the_forked_child_runs_dagsters_command_line_and_returns_its_exit_code(monkeypatch, capsys):
    from launchers.prefork import _execute_forked_run

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the child sets it; keep pytest's
    assert _execute_forked_run({"command": ["api", "execute_run", "--help"]}) == 0
    assert "execute_run" in capsys.readouterr().out
    assert _execute_forked_run({"command": ["api", "no_such_command"]}) == 2  # click's usage error
