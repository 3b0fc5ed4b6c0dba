"""Dagster's SQLite storage stops syncing the disk several times for every event.

Why: the local instance (deploy/dagster.local.yaml) keeps runs and events in SQLite files in WAL
mode, and Dagster opens a fresh connection for every write and closes it after (NullPool).
Closing the last connection to a WAL file checkpoints it and deletes the WAL; with SQLite's
default `synchronous=FULL` each commit syncs too. strace counted 4 fdatasyncs per file per
event plus 2 of the folder, and an event touches two files (its run's and the asset index): a
batch run's 11 events a video waited 0.18 s of the video's 2.5 s on the disk (py-spy --native on
the run processes, two runs side by side; issue 20).

Two settings, both SQLite's own, for files already in WAL mode:
- `synchronous=NORMAL`, SQLite's recommended setting for WAL: a commit is appended without a
  sync and the WAL is synced before each checkpoint. A power loss can drop the last
  transactions, never corrupt the file (https://sqlite.org/pragma.html#pragma_synchronous,
  https://sqlite.org/wal.html). What a run produced is in the artifacts and PostgreSQL anyway,
  and Dagster's run monitoring fails a run whose end was lost.
- one idle connection kept open per file (an *anchor*), so Dagster's short connections are
  never the last one: the WAL is checkpointed when it reaches SQLite's 1000 pages rather than
  at every close (https://sqlite.org/wal.html#automatic_checkpoint). It holds no transaction,
  so it blocks no reader, writer or checkpoint of any process.

Dagster creates these connections itself, so this hooks in the way SQLAlchemy documents for
pragmas on connections one does not create: a `connect` listener on `Engine`. Importing the
module registers it; the code location imports it, so the runs and the code server have it.
Files not in WAL mode, other databases and instances on PostgreSQL (deploy/dagster.yaml) are
left as they are.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict

from sqlalchemy import event
from sqlalchemy.engine import Engine

# A run writes its own event file, the asset index and the run storage; a long-lived code server
# reads more files over the days, so the oldest anchors are closed beyond this many.
MAX_ANCHORS = 8

_anchors: OrderedDict[str, sqlite3.Connection] = OrderedDict()
_lock = threading.Lock()
# Anchors a forked child inherited: never used or closed there (SQLite forbids carrying a
# connection across fork(), and closing one could checkpoint a WAL the parent still writes).
_inherited: list[sqlite3.Connection] = []


def _forget_inherited() -> None:
    _inherited.extend(_anchors.values())
    _anchors.clear()


os.register_at_fork(after_in_child=_forget_inherited)


def _anchor(path: str) -> None:
    with _lock:
        if path in _anchors:
            _anchors.move_to_end(path)
            return
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            # A first read maps the WAL index; autocommit, so no transaction stays open.
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error:
            conn.close()
            return
        _anchors[path] = conn
        while len(_anchors) > MAX_ANCHORS:
            _anchors.popitem(last=False)[1].close()


@event.listens_for(Engine, "connect")
def relax_wal_commits(dbapi_connection: object, _connection_record: object) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            return
        cursor.execute("PRAGMA synchronous=NORMAL")
        path = next((row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), "")
    finally:
        cursor.close()
    if path:  # "" for an in-memory or temporary database
        _anchor(path)
