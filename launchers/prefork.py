"""`PreforkRunLauncher`: each run is a fork of a warm process instead of a new Python.

Why: a run of `analyze_video` needs torch, transformers, timm and grad-cam. A new process
spends about 6 s of a 2-core machine importing them, plus about 2.5 s for Dagster and the code
location, which is most of a short video's run (the benchmark measured 11 s of overhead per
run). This launcher keeps one *warm worker* that has imported those modules once; each run is a
`fork()` of it (copy-on-write, milliseconds) that runs the command any run launcher gives its
run worker, `dagster api execute_run ARGS`, through Dagster's own command line. Runs stay
separate processes: a crash, a leak or a kill takes one run, nothing else.

Fork safety: the warm worker only imports. It runs no torch op (so no OpenMP pool exists to be
lost in the child), opens no database or network connection (the child builds its own
instance from the ref) and starts no Python thread.

The worker restarts when a project source file it imported changes, so edited code is never
run stale. When the worker cannot start, the run goes through Dagster's `DefaultRunLauncher`
(a fresh process from the code server) and the run's log says why.

Configure it in dagster.yaml:

    run_launcher:
      module: launchers.prefork
      class: PreforkRunLauncher
      config:
        preload_modules: [code_location.definitions, torch, ...]
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dagster import Array, Field, IntSource
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData

# Run tags: which process runs the run, so terminate and run monitoring can find it.
PID_TAG = "dagster-deepfake/run_pid"
WORKER_TAG = "dagster-deepfake/run_worker"


class WarmWorkerError(RuntimeError):
    """The warm worker could not start or did not answer; the run falls back to a fresh process."""


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a finished child its parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces, so split after ')'.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs (macOS): kill(0) is all we know
    return state not in ("Z", "X")


class WarmWorker:
    """The launcher's handle on one warm worker process (stdin/stdout carry JSON lines)."""

    def __init__(self, preload_modules: Sequence[str], ready_timeout_s: float, instance_ref: str) -> None:
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "launchers.prefork", *preload_modules],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # stderr is the launcher's own (the daemon's log): import errors and run output show there
                cwd=os.getcwd(),
            )
        except OSError as exc:  # no memory for another process, executable gone
            raise WarmWorkerError(f"could not start the worker: {exc}") from exc
        # First line: the instance, so the worker also imports its storage classes (on stdin,
        # not argv: a literal database password in the instance file must not show in `ps`).
        self._write(instance_ref)
        hello = self._read(ready_timeout_s)
        if "error" in hello:
            self.stop()
            raise WarmWorkerError(f"preloading failed: {hello['error']}")
        self.pid: int = hello["pid"]
        self.preloaded: list[str] = hello["preloaded"]
        self.import_seconds: float = hello["import_seconds"]
        # The project's own source files the worker imported, with their mtimes at import time.
        self.sources: dict[str, float] = hello["sources"]

    def _read(self, timeout_s: float) -> dict[str, Any]:
        stdout: IO[bytes] = self.process.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([stdout], [], [], timeout_s)
        line = stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise WarmWorkerError(
                f"worker exited with code {self.process.returncode} (its traceback is in this log)"
                if ready
                else f"no answer within {timeout_s:.0f}s"
            )
        return json.loads(line)

    def is_usable(self) -> bool:
        """Alive, and no imported project source changed since it was imported."""
        if self.process.poll() is not None:
            return False
        for path, mtime in self.sources.items():
            try:
                if os.stat(path).st_mtime != mtime:
                    return False
            except OSError:
                return False
        return True

    def _write(self, line: str) -> None:
        stdin: IO[bytes] = self.process.stdin  # type: ignore[assignment]
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except OSError as exc:
            self.stop()
            raise WarmWorkerError(f"worker pipe closed: {exc}") from exc

    def fork_run(self, command: Sequence[str], timeout_s: float = 30) -> int:
        """Fork a child that runs `dagster COMMAND...` (`api execute_run ARGS`); its pid."""
        self._write(json.dumps({"command": list(command)}))
        return int(self._read(timeout_s)["pid"])

    def stop(self) -> None:
        """End the worker (closing its stdin ends its loop). Runs it forked go on to their end."""
        if self.process.stdin:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


class PreforkRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as a fork of a warm worker that has the heavy modules imported."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        preload_modules: Sequence[str] = (),
        ready_timeout_seconds: int = 300,
    ) -> None:
        self._inst_data = inst_data
        self.preload_modules = list(preload_modules)
        self.ready_timeout_seconds = ready_timeout_seconds
        self._worker: WarmWorker | None = None
        self._lock = threading.Lock()
        # Runs the warm worker cannot take go the standard way: the code server spawns them.
        self._fallback = DefaultRunLauncher()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "preload_modules": Field(
                Array(str),
                is_required=False,
                default_value=[],
                description="Modules the warm worker imports once, before any run is forked from it.",
            ),
            "ready_timeout_seconds": Field(
                IntSource,
                is_required=False,
                default_value=300,
                description="How long the worker may take to import them before runs fall back.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> PreforkRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: Any) -> None:
        super().register_instance(instance)
        self._fallback.register_instance(instance)

    # -- launching -------------------------------------------------------------------------

    def _usable_worker(self, instance_ref: str) -> WarmWorker:
        if self._worker is not None and not self._worker.is_usable():
            self._worker.stop()
            self._worker = None
        if self._worker is None:
            self._worker = WarmWorker(self.preload_modules, self.ready_timeout_seconds, instance_ref)
        return self._worker

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        if run.job_code_origin is None:  # nothing to execute it from; the default launcher says so
            self._fallback.launch_run(context)
            return
        args = ExecuteRunArgs(
            job_origin=run.job_code_origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        # [python, -m, dagster, api, execute_run, ARGS]: the interpreter is already running
        command = list(args.get_command_args())
        command = command[command.index("api") :]
        try:
            with self._lock:  # the daemon may launch from several threads; one pipe, one request at a time
                worker = self._usable_worker(serialize_value(self._instance.get_ref()))
                pid = worker.fork_run(command)
        except WarmWorkerError as exc:
            self._instance.report_engine_event(
                f"Warm run worker unavailable ({exc}); launching the run in a fresh process instead.",
                run,
                cls=self.__class__,
            )
            self._fallback.launch_run(context)
            return
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(pid), WORKER_TAG: str(worker.pid)})
        self._instance.report_engine_event(
            f"Forked run process {pid} from warm worker {worker.pid} "
            f"(preloaded {', '.join(worker.preloaded) or 'nothing'} in {worker.import_seconds:.1f}s once).",
            run,
            cls=self.__class__,
        )

    # -- after launch: cancel and health -------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        if PID_TAG not in run.tags:
            return self._fallback.terminate(run_id)
        self._instance.report_run_canceling(run)
        try:
            # The run process maps SIGTERM to an interrupt: the step stops and the run is CANCELED.
            os.kill(int(run.tags[PID_TAG]), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = run.tags.get(PID_TAG)
        if pid is None:  # launched through the fallback; the code server keeps no health signal
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not launched by the warm worker")
        if _pid_alive(int(pid)):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run process {pid} exited without finishing the run", run_worker_id=pid
        )

    def dispose(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
        self._fallback.dispose()


# -- the worker process (`python -m launchers.prefork MODULE ...`) ---------------------------------


def _send(out: IO[bytes], message: Mapping[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def _reap_children(_signo: int, _frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _project_sources(root: Path) -> dict[str, float]:
    """Imported modules' files under `root` (this project's code, not site-packages), with mtimes."""
    root = root.resolve()
    sources = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file)
        if not path.is_absolute():  # some extension modules carry a bare name (torch's "_ops.py")
            continue
        path = path.resolve()
        if root in path.parents and ".venv" not in path.parts and "site-packages" not in path.parts:
            sources[str(path)] = path.stat().st_mtime
    return sources


def _instance_modules(serialized_ref: str) -> list[str]:
    """The modules of the storage, log and coordinator classes an instance ref names."""
    from dagster._core.instance import InstanceRef
    from dagster._serdes import ConfigurableClassData, deserialize_value

    ref = deserialize_value(serialized_ref, InstanceRef)
    return sorted({v.module_name for v in ref._asdict().values() if isinstance(v, ConfigurableClassData)})


def _dagster_cli() -> Callable[[], Any]:
    """Dagster's console-script entry point (`dagster = ...` in its package metadata): the
    command line itself, found the way pip's `dagster` script finds it."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="dagster")
    return entry.load()


def _execute_forked_run(request: Mapping[str, Any]) -> int:
    """Run the run worker's command in the forked child and return its exit code.

    The command is `dagster api execute_run ARGS`, the one every Dagster run launcher gives
    its run worker (`ExecuteRunArgs.get_command_args()`, as the default, Celery, ECS and K8s
    launchers build it); here Dagster's own command line runs it without starting a process.
    """
    sys.argv = ["dagster", *request["command"]]
    try:
        _dagster_cli()()
    except SystemExit as exc:  # click ends every command this way
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def serve(preload_modules: Sequence[str]) -> int:
    """Import `preload_modules`, then fork one child per run request read from stdin."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log, never into the protocol pipe
    sys.stdout = sys.stderr
    start = time.perf_counter()
    name = "dagster's command line"  # what a forked run executes
    try:
        _dagster_cli()
        # The instance's storage classes: what every run opens first (SQLite/PostgreSQL storage,
        # alembic, SQLAlchemy dialects; ~0.3 s a run otherwise). Imported only, never opened.
        name = "the instance's storage classes"  # what the error names if the ref cannot be read
        for name in _instance_modules(sys.stdin.buffer.readline().decode()):
            importlib.import_module(name)
        for name in preload_modules:
            importlib.import_module(name)
    except BaseException as exc:  # any import failure means "use the fallback"
        traceback.print_exc()
        _send(protocol, {"error": f"import {name}: {type(exc).__name__}: {exc}"})
        return 1
    signal.signal(signal.SIGCHLD, _reap_children)
    _send(
        protocol,
        {
            "pid": os.getpid(),
            "preloaded": list(preload_modules),
            "import_seconds": round(time.perf_counter() - start, 2),
            "sources": _project_sources(Path.cwd()),
        },
    )
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                protocol.close()
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                code = _execute_forked_run(request)
            except BaseException:  # report, then leave without running the worker's cleanup
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _send(protocol, {"pid": pid})
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
