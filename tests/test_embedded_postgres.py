"""The embedded PostgreSQL (dagster_deepfake/storage/postgres.py): started from the settings'
data folder, quietly, with the same start lock in every process whatever XDG_RUNTIME_DIR says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from sqlalchemy import create_engine, text

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.storage.postgres import stop_embedded_postgres


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_command_starts_the_embedded_server_without_printing_a_warning():
    data_dir = tempfile.mkdtemp(prefix="ddfpg-")  # short: unix socket paths are length-limited
    try:
        # The Makefile's XDG_RUNTIME_DIR (/tmp, mode 0777) made platformdirs warn in every
        # command and every run's log.
        done = _python(
            "from dagster_deepfake.storage.postgres import embedded_postgres_url\n"
            f"print(embedded_postgres_url({data_dir!r}))\n",
            XDG_RUNTIME_DIR="/tmp",
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        url = done.stdout.strip()
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
    finally:
        assert stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_every_process_takes_the_same_start_lock_whatever_xdg_runtime_dir_says():
    code = "from dagster_deepfake.storage.postgres import _pgserver\nprint(_pgserver().PostgresServer.lock_path)\n"
    from_make = _python(code, XDG_RUNTIME_DIR="/tmp")
    unset = _python(code)
    assert from_make.returncode == unset.returncode == 0, (from_make.stderr, unset.stderr)
    assert from_make.stdout == unset.stdout != ""
