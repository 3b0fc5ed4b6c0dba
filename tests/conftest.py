"""Shared fixtures: a real PostgreSQL for the session, per-test settings, generated media."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dagster_deepfake.config import REPO_ROOT, Settings, load_settings
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url, metadata

SHARED_MEDIA = Path(os.environ.get("DAGSTER_DEEPFAKE_SHARED_MEDIA", REPO_ROOT.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A real PostgreSQL 16 (pgserver) in a short temp dir (unix socket paths are length-limited)."""
    if os.environ.get("DAGSTER_DEEPFAKE_TEST_POSTGRES_URL"):
        yield os.environ["DAGSTER_DEEPFAKE_TEST_POSTGRES_URL"]
        return
    data_dir = tempfile.mkdtemp(prefix="ddfpg-")
    url = embedded_postgres_url(data_dir)
    yield url
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(data_dir, cleanup_mode=None)
    try:
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=Path(data_dir), user=server.system_user)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def db(pg_url: str) -> ResultsDB:
    """The results DB with empty tables for this test."""
    results = ResultsDB(pg_url)
    results.create_schema()
    with results.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    return results


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, db: ResultsDB) -> Settings:
    """Settings pointing at a fresh bucket folder, artifact root and the test database."""
    (tmp_path / "bucket").mkdir()
    return load_settings(
        upload_uri=f"file://{tmp_path / 'bucket'}",
        artifact_root=str(tmp_path / "artifacts"),
        postgres_url=pg_url,
        upload_settle_seconds=0,
    )


def shared_clip(name: str) -> Path:
    path = SHARED_MEDIA / name
    if not path.exists():
        pytest.skip(f"shared sample clip {path} is not available")
    return path


@pytest.fixture
def ffmpeg_video(tmp_path: Path) -> Callable[..., Path]:
    """Make a small test-pattern video with ffmpeg (for container/codec cases; no face)."""

    def make(
        name: str = "pattern.mp4",
        *,
        size: str = "320x240",
        duration: float = 2.0,
        rate: int = 25,
        audio: bool = True,
        extra: list[str] | None = None,
    ) -> Path:
        out = tmp_path / name
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={rate}",
        ]
        if audio:
            cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
        cmd += ["-t", str(duration), "-pix_fmt", "yuv420p", *(extra or []), str(out)]
        subprocess.run(cmd, check=True)
        return out

    return make
