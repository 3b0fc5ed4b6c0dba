"""The local instance's long-lived Dagster processes: one code server, and the daemon reading it.

Why (docs/ARCHITECTURE.md §7, "One code server"): `dagster-daemon run -w workspace.yaml` starts
the code location's server itself and, every 60 s, starts a fresh one and drops the old (its
controller reloads the workspace so that edited code shows), so a running instance re-imports
the code location once a minute (2.5 CPU-s, 2.3 s wall on these 2 cores) beside the runs. Started
here with `dagster api grpc`, Dagster's documented way to run your own server (workspace.yaml
reference, "Running your own gRPC server"), the server stays and the daemon only re-reads it:
an idle instance's code server spent 3.9 CPU-s in two minutes against 7.6. `make demo`, the
benchmark, the daemon tests and `dagster-deepfake daemon` all start it through `start_local_dagster`.

The server listens on a Unix socket in a private temporary folder (no port to collide); it and
the daemon share one process group, with the daemon's run workers, so `stop()` ends them all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dagster_deepfake.config import CONFIG_ENV, REPO_ROOT

# The name workspace.yaml's python_module entry gets: runs, sensors and their cursors stay with it.
LOCATION_NAME = "code_location.definitions"
BIN = Path(sys.executable).parent


class LocalDagsterError(RuntimeError):
    """The code server or the daemon did not come up."""


@dataclass
class LocalDagster:
    """A code server and a `dagster-daemon` on it (one process group)."""

    code_server: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes]
    run_dir: Path  # the socket and the workspace file pointing at it

    @property
    def workspace(self) -> Path:
        return self.run_dir / "workspace.yaml"

    def poll(self) -> str | None:
        """Why the instance is down (which process exited, with what), or None while both run."""
        for name, proc in (("dagster-daemon", self.daemon), ("code server", self.code_server)):
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def stop(self, timeout_s: float = 30) -> bool:
        """SIGTERM the group (server, daemon, run workers), SIGKILL what is left after `timeout_s`.

        Returns whether the daemon and the server had both exited on SIGTERM alone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.code_server.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        clean = True
        for proc in (self.daemon, self.code_server):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                clean = False
        _kill_group(self.code_server, self.run_dir)  # run workers left in the group, and the rest
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.daemon.wait(10)
        return clean


def _listening(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket `path` (bound is not enough)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def start_local_dagster(
    env: Mapping[str, str], log: IO[bytes], *, ready_timeout_s: float = 300
) -> LocalDagster:
    """Start the code server, wait until it serves, then the daemon on a workspace naming it.

    `env` is both processes' environment (DAGSTER_HOME, the config); `log` receives both outputs.
    Raises LocalDagsterError, leaving nothing running, when the server exits or does not serve
    within the timeout.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="ddf-dagster-"))  # short: a socket path has ~100 bytes
    sock = run_dir / "code_server.sock"
    code_server = subprocess.Popen(
        [
            str(BIN / "dagster"),
            "api",
            "grpc",
            "--module-name",
            LOCATION_NAME,
            "--attribute",
            "defs",
            "--working-directory",
            str(REPO_ROOT),
            "--socket",
            str(sock),
            "--location-name",
            LOCATION_NAME,
            # Runs are launched with this environment's `python -m dagster`, not whatever is on PATH.
            "--use-python-environment-entry-point",
        ],
        cwd=REPO_ROOT,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,  # a group of its own in this session, which the daemon joins
    )
    deadline = time.monotonic() + ready_timeout_s
    while not _listening(sock):
        if code_server.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {code_server.returncode}" if code_server.poll() is not None else "timed out"
            _kill_group(code_server, run_dir)
            raise LocalDagsterError(f"the code server did not start ({why}); see its log")
        time.sleep(0.2)
    (run_dir / "workspace.yaml").write_text(
        f"load_from:\n  - grpc_server:\n      socket: {sock}\n      location_name: {LOCATION_NAME}\n"
    )
    try:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(run_dir / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=code_server.pid,
        )
    except BaseException:
        _kill_group(code_server, run_dir)
        raise
    return LocalDagster(code_server, daemon, run_dir)


def _kill_group(code_server: subprocess.Popen[bytes], run_dir: Path) -> None:
    """SIGKILL the group the code server leads (the daemon and its run workers are in it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(code_server.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        code_server.wait(10)
    shutil.rmtree(run_dir, ignore_errors=True)


def ensure_dagster_home() -> Path:
    """$DAGSTER_HOME (default .dagster_home), given the embedded instance's dagster.yaml if it has none."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():
        shutil.copy(REPO_ROOT / "deploy" / "dagster.local.yaml", instance_yaml)
    return home


def run_in_foreground(config_path: str | None = None) -> int:
    """`dagster-deepfake daemon`: the code server and the daemon on $DAGSTER_HOME until Ctrl-C."""
    env = {**os.environ, "DAGSTER_HOME": str(ensure_dagster_home())}
    if config_path:
        env[CONFIG_ENV] = str(Path(config_path).resolve())
    print(f"code server and dagster-daemon on {env['DAGSTER_HOME']}; Ctrl-C stops both", flush=True)
    try:
        local = start_local_dagster(env, sys.stdout.buffer)
    except LocalDagsterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        while (down := local.poll()) is None:
            time.sleep(1)
        print(f"error: {down}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the children are in their own group: Ctrl-C reaches only us
        return 0
    finally:
        local.stop()
