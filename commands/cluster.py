"""`dagster-deepfake cluster`: a Celery fleet on one host (broker, workers, daemon, webserver).

The same processes a lab runs on several hosts (docs/DEPLOY.md, "Celery workers"), started
here side by side: the project's Redis (`dagster_deepfake/broker.py`), the embedded PostgreSQL
holding both the results and Dagster's own storage (database `dagster`), the workers of
deploy/celery.yaml's `workers:` list, each in its own working directory and temp folder (so
nothing relies on a shared current directory), and the daemon and webserver on the Celery code
location. tests/test_celery_fleet.py drives the same functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.errors import DeepfakeError

CELERY_INSTANCE = REPO_ROOT / "deploy" / "dagster.celery.yaml"
CELERY_WORKSPACE = REPO_ROOT / "deploy" / "workspace.celery.yaml"
BIN = Path(sys.executable).parent


def dagster_storage_url(results_url: str, database: str = "dagster") -> str:
    """Dagster's own database beside the results one (created if missing), psycopg2 named
    (dagster-postgres needs it; docs/ARCHITECTURE.md §6)."""
    url = make_url(results_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first():
            conn.execute(text(f'CREATE DATABASE "{database}"'))  # a fixed identifier, not input
    admin.dispose()
    return url.set(drivername="postgresql+psycopg2", database=database).render_as_string(hide_password=False)


def make_home(folder: Path, instance: Path = CELERY_INSTANCE) -> Path:
    """A DAGSTER_HOME holding the Celery instance file (every host needs the same one)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance, folder / "dagster.yaml")
    return folder


def create_dagster_storage(home: Path, env: Mapping[str, str]) -> None:
    """Create (or upgrade) Dagster's own tables once, before any fleet process starts.

    Every Dagster process creates missing tables when it first loads the instance, and two
    doing so at once on a fresh database race: one dies on `relation "instance_info" already
    exists` (seen as a daemon exiting at start-up; docs/DEPLOY.md §2b).
    `dagster instance migrate` (public CLI) creates them and stamps the schema, so the
    processes started afterwards find everything in place.
    """
    done = subprocess.run(
        [str(BIN / "dagster"), "instance", "migrate"],
        cwd=home,
        env={**env, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeepfakeError(f"could not create Dagster's storage (dagster instance migrate): {tail[0]}")


def base_env(env: Mapping[str, str], *, broker_url: str, dagster_pg_url: str) -> dict[str, str]:
    """What every process of the fleet shares (README, "Which settings must be shared")."""
    out = dict(env)
    out.update(
        DAGSTER_CELERY_BROKER_URL=broker_url,
        DAGSTER_CELERY_BACKEND_URL=broker_url.rsplit("/", 1)[0] + "/1",
        DAGSTER_PG_URL=dagster_pg_url,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # dagster-celery runs `celery` from PATH
        PYTHONUNBUFFERED="1",
    )
    return out


@dataclass
class Worker:
    name: str
    home: Path  # its own working directory, DAGSTER_HOME and TMPDIR
    proc: subprocess.Popen
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """SIGTERM goes to the main process alone: Celery's warm shutdown finishes the task it
        runs and acknowledges it, and hands back the ones it prefetched. Sent to the whole group,
        it would also end the pool process mid-task (Celery resets SIGTERM there), and the
        unacknowledged task would run again elsewhere. Any other signal goes to the group."""
        if sig == signal.SIGTERM and self.alive():
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        stop_group(self.proc, sig)


def start_worker(
    name: str,
    home: Path,
    env: Mapping[str, str],
    *,
    queues: Sequence[str] = ("cpu", "gpu"),
    concurrency: int = 1,
    celery_config: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Worker:
    """`dagster-celery worker start` in `home` (its cwd, DAGSTER_HOME and TMPDIR), own process group."""
    from code_location.celery import celery_config_path

    make_home(home / "dagster_home")
    (home / "tmp").mkdir(exist_ok=True)
    config = celery_config or celery_config_path()
    wenv = {
        **env,
        "DAGSTER_HOME": str(home / "dagster_home"),
        "TMPDIR": str(home / "tmp"),
        "DAGSTER_DEEPFAKE_CELERY_CONFIG": str(config),
        **(extra_env or {}),
    }
    cmd = [str(BIN / "dagster-celery"), "worker", "start", "-A", "launchers.celery_worker"]
    cmd += ["-y", str(config), "-n", name, "-l", "INFO"]
    # One comma-separated -q: dagster-celery turns each -q into its own `-Q`, and Celery 5 keeps
    # only the last one (two -q cpu -q gpu listen on gpu alone).
    cmd += ["-q", ",".join(queues)]
    # prefork: pool processes live across tasks (models stay loaded); "celery@name" = its hostname
    cmd += ["--", f"--concurrency={concurrency}", "--pool=prefork", "--without-gossip", "--without-mingle"]
    log = home / "worker.log"
    proc = subprocess.Popen(
        cmd, cwd=home, env=wenv, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    return Worker(name, home, proc, log, dict(extra_env or {}))


def start_dagster(
    kind: str, home: Path, env: Mapping[str, str], log: Path, port: int = 3000
) -> subprocess.Popen:
    """`dagster-daemon run` or `dagster-webserver` on the Celery workspace, own process group."""
    cmd = [str(BIN / "dagster-daemon"), "run", "-w", str(CELERY_WORKSPACE)]
    if kind == "webserver":
        cmd = [
            str(BIN / "dagster-webserver"),
            "-w",
            str(CELERY_WORKSPACE),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
    return subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process and everything in its process group (pool processes, run workers)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def run_cluster(config_path: str | None, root: Path, port: int, broker_port: int) -> int:
    """Start everything, print where to look, and stop it all on Ctrl-C."""
    from code_location.celery import load_celery_config
    from dagster_deepfake.broker import start_redis
    from dagster_deepfake.config import load_settings
    from dagster_deepfake.storage.postgres import embedded_postgres_url

    settings = load_settings(config_path)
    p = settings.platform
    results_url = p.postgres_url or embedded_postgres_url(p.postgres_data_dir)
    broker = start_redis(root / "redis", broker_port)
    env = base_env(os.environ, broker_url=broker, dagster_pg_url=dagster_storage_url(results_url))
    env["DAGSTER_DEEPFAKE_POSTGRES_URL"] = results_url  # workers must not start their own database
    if config_path:
        env["DAGSTER_DEEPFAKE_CONFIG"] = str(Path(config_path).resolve())
    home = make_home(root / "dagster_home")
    create_dagster_storage(home, env)  # before anything below loads the instance
    workers = [
        start_worker(w["name"], root / w["name"], env, queues=w["queues"], concurrency=int(w["concurrency"]))
        for w in load_celery_config().get("workers", [])
    ]
    daemon = start_dagster("daemon", home, env, root / "daemon.log")
    web = start_dagster("webserver", home, env, root / "webserver.log", port)
    print(f"broker     {broker}   (data in {root / 'redis'})")
    print(f"results    {make_url(results_url).render_as_string(hide_password=True)}   (+ database `dagster`)")
    for w in workers:
        print(f"worker     {w.name}@{socket.gethostname()}   pid {w.proc.pid}, log {w.log}")
    print(f"daemon     log {root / 'daemon.log'}")
    print(f"webserver  http://127.0.0.1:{port}   (a run's log names the worker of each step)")
    print(f"uploads    drop videos into {p.upload_uri}")
    if not p.artifact_root.startswith("s3://"):
        print(
            f"note: artifact_root {p.artifact_root} is a local folder: fine on one host; workers on "
            "other hosts need s3:// (docs/DEPLOY.md)"
        )
    print("Ctrl-C stops the workers, the daemon and the webserver (`dagster-deepfake stop` the databases)")
    procs = [daemon, web, *(w.proc for w in workers)]

    def _interrupt(*_):  # SIGTERM (a supervisor, `timeout`) stops the fleet like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(1)
        print("error: a fleet process exited; see its log above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for worker in workers:
            worker.stop()
        for proc in (daemon, web):
            stop_group(proc)
