"""code_location/sqlite_commits.py: Dagster's SQLite files commit without a sync and without a
checkpoint at every close; other SQLite files are left alone; a forked child never touches the
parent's anchors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from code_location import sqlite_commits


def _engine(path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)  # as Dagster opens them


def _wal_file(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x TEXT)")
    conn.close()
    assert not Path(f"{path}-wal").exists()  # closing the last connection checkpointed it
    return path


def test_a_wal_file_commits_without_sync_and_keeps_its_wal_across_closes(tmp_path: Path):
    engine = _engine(_wal_file(tmp_path / "wal.db"))
    for i in range(3):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", (str(i),))
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    # Every connection of the engine is closed; the anchor keeps the WAL from a checkpoint.
    assert Path(f"{tmp_path / 'wal.db'}-wal").stat().st_size > 0
    assert str(tmp_path / "wal.db") in sqlite_commits._anchors
    with sqlite3.connect(tmp_path / "wal.db") as other:  # what another process reads
        assert [r[0] for r in other.execute("SELECT x FROM t")] == ["0", "1", "2"]


def test_a_file_not_in_wal_mode_keeps_full_sync_and_gets_no_anchor(tmp_path: Path):
    engine = _engine(tmp_path / "plain.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL, SQLite's default
    assert str(tmp_path / "plain.db") not in sqlite_commits._anchors


def test_anchors_are_bounded(tmp_path: Path):
    for i in range(sqlite_commits.MAX_ANCHORS + 3):
        with _engine(_wal_file(tmp_path / f"f{i}.db")).connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    assert len(sqlite_commits._anchors) <= sqlite_commits.MAX_ANCHORS
    assert str(tmp_path / f"f{sqlite_commits.MAX_ANCHORS + 2}.db") in sqlite_commits._anchors
    assert str(tmp_path / "f0.db") not in sqlite_commits._anchors


def test_a_forked_child_starts_without_the_parents_anchors(tmp_path: Path):
    with _engine(_wal_file(tmp_path / "parent.db")).connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert sqlite_commits._anchors
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, f"{len(sqlite_commits._anchors)} {len(sqlite_commits._inherited)}".encode())
        os._exit(0)
    os.close(write)
    anchors, inherited = map(int, os.read(read, 64).split())
    os.waitpid(pid, 0)
    assert anchors == 0 and inherited >= 1
    assert str(tmp_path / "parent.db") in sqlite_commits._anchors  # the parent's are untouched


def test_dagsters_own_sqlite_storage_is_in_wal_mode_and_anchored(tmp_path: Path):
    """What the module relies on: Dagster's run, event and schedule files are WAL files."""

    @dg.asset
    def one() -> int:
        return 1

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([one], instance=instance)
        assert result.success
        files = sorted(tmp_path.rglob("*.db"))
        assert {f.name for f in files} >= {"runs.db", "index.db", f"{result.run_id}.db"}
        for f in files:
            with sqlite3.connect(f) as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", f.name
            conn.close()
        assert str(tmp_path / "history" / "runs" / "index.db") in sqlite_commits._anchors
