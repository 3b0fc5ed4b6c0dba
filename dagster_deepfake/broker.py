"""The project's own Redis: the Celery broker for a local fleet and the tests.

Like the embedded PostgreSQL (`storage/postgres.py`), the server is the real one (Debian's
`redis-server`, installed by `make setup`), started in its own folder on a loopback port and left
running after this process exits, so the daemon, the workers and the run processes share it;
`stop_redis` (and `make stop`) shut it down. Its append-only file is written on every command
(`appendfsync always`), so a broker restart loses no queued or unacknowledged task
(docs/DEPLOY.md, "Celery workers").
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

DEFAULT_PORT = 6379
CONF_FILE = "redis.conf"
PID_FILE = "redis.pid"


class BrokerError(RuntimeError):
    """The broker could not be started or reached; the message says why in one line."""


def redis_url(port: int, host: str = "127.0.0.1", db: int = 0) -> str:
    return f"redis://{host}:{port}/{db}"


def _conf(data_dir: Path, port: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {data_dir}",
            f"pidfile {data_dir / PID_FILE}",
            f"logfile {data_dir / 'redis.log'}",
            "daemonize yes",
            # Queued and unacknowledged Celery messages survive a restart (and a crash).
            "appendonly yes",
            "appendfsync always",
            'save ""',
            "",
        ]
    )


def ping(url: str, timeout: float = 1.0) -> bool:
    import redis  # the client; imported lazily like pgserver

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(data_dir: str | os.PathLike, port: int = DEFAULT_PORT, timeout: float = 15.0) -> str:
    """Start (or reuse) redis-server for `data_dir` on 127.0.0.1:`port`; return its URL."""
    folder = Path(data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    url = redis_url(port)
    if ping(url):
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise BrokerError("redis-server not found: run `make setup` (installs Debian's redis-server)")
    (folder / CONF_FILE).write_text(_conf(folder, port))
    subprocess.run([binary, str(folder / CONF_FILE)], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(url):
            return url
        time.sleep(0.05)
    log = folder / "redis.log"
    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    raise BrokerError(f"redis-server on port {port} did not answer within {timeout:.0f} s: {' '.join(tail)}")


def redis_pid(data_dir: str | os.PathLike) -> int | None:
    try:
        pid = int((Path(data_dir) / PID_FILE).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_redis(data_dir: str | os.PathLike, timeout: float = 15.0) -> bool:
    """Stop the redis-server of `data_dir` (SIGTERM: it flushes its append-only file first)."""
    pid = redis_pid(data_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and redis_pid(data_dir) == pid:
        time.sleep(0.05)
    if redis_pid(data_dir) == pid:
        os.kill(pid, signal.SIGKILL)
    return True
