"""The results database: PostgreSQL through SQLAlchemy Core (psycopg 3 driver).

Tables are created if missing. Every write is an upsert on the natural key, so re-running
a partition replaces its rows and never duplicates them. All SQL is parameterised by
SQLAlchemy; no value is ever formatted into a statement.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from functools import lru_cache
from types import ModuleType
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "running", "completed", "failed")

metadata = MetaData()

videos = Table(
    "videos",
    metadata,
    Column("video_id", String(32), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("source_uri", Text, nullable=False),
    Column("file_name", Text, nullable=False),
    Column("uploader", Text),
    Column("size_bytes", BigInteger),
    Column("dataset", Text),
    Column("label", Text),
    Column("probe", JSONB),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    # A job is the analysis of one content-addressed video, so its id is the partition key:
    # the same bytes uploaded twice are one job, processed once.
    Column("job_id", String(32), primary_key=True),
    Column("video_id", String(32), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("source_uri", Text),
    Column("run_id", String(64)),
    Column("result", JSONB),
    Column("submitted_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    CheckConstraint("status IN ('queued','running','completed','failed')", name="jobs_status_valid"),
)

predictions = Table(
    "predictions",
    metadata,
    Column("video_id", String(32), primary_key=True),
    Column("model_version", Text, nullable=False),
    Column("verdict", String(8), nullable=False),
    Column("p_fake", Float, nullable=False),
    Column("p_fake_uncalibrated", Float),
    Column("ci_low", Float),
    Column("ci_high", Float),
    Column("ensemble_size", Integer, nullable=False),
    Column("temperature", Float),
    Column("n_windows", Integer),
    Column("frames_analyzed", Integer),
    Column("modalities", JSONB),
    Column("pretrained", JSONB, nullable=False),
    Column("trained", Boolean, nullable=False),
    Column("trained_on", Text),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

# An analysis is a video under a model version (docs/ARCHITECTURE.md): a new serving model gives
# a new row and the earlier ones stay readable; `jobs.result` is the latest completed one.
ANALYSIS_STATUSES = ("requested", "launched", "completed", "failed")
analyses = Table(
    "analyses",
    metadata,
    Column("video_id", String(32), primary_key=True),
    Column("model_version", Text, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("requested_by", Text),
    Column("run_id", String(64)),
    Column("verdict", String(8)),
    Column("p_fake", Float),
    Column("result", JSONB),
    Column("requested_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('requested','launched','completed','failed')", name="analyses_status_valid"),
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("evaluation_id", String(64), primary_key=True),
    Column("model_version", Text, nullable=False),
    Column("dataset", Text),
    Column("split", Text),
    Column("metrics", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


def normalise_url(url: str) -> str:
    """Force the psycopg 3 driver (docs/ARCHITECTURE.md §6: SQLAlchemy 2 needs an explicit driver)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ResultsDB:
    """Typed access to the results tables of one PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = _engine(self.url)

    def __repr__(self) -> str:
        return f"ResultsDB({redact(self.url)})"

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    # -- generic upsert ------------------------------------------------------------------------
    def _upsert(self, table: Table, row: dict[str, Any], key: str, touch: bool = True) -> None:
        values = dict(row)
        if touch and "updated_at" in table.c:
            values["updated_at"] = _now()
        stmt = insert(table).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key], set_={k: stmt.excluded[k] for k in values if k != key}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    # -- videos --------------------------------------------------------------------------------
    def upsert_video(self, **row: Any) -> None:
        self._upsert(videos, row, "video_id")

    def get_video(self, video_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(videos).where(videos.c.video_id == video_id)).mappings().first()
        return dict(found) if found else None

    def video_ids_by_source(self, source_uris: list[str]) -> dict[str, str]:
        """source_uri → video_id for the given URIs (dataset registration records file:// URIs)."""
        if not source_uris:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(videos.c.source_uri, videos.c.video_id).where(videos.c.source_uri.in_(source_uris))
            )
            return {r.source_uri: r.video_id for r in rows}

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, job_id: str, video_id: str, source_uri: str) -> bool:
        """Insert a queued job unless it exists; True when it was new."""
        stmt = (
            insert(jobs)
            .values(job_id=job_id, video_id=video_id, status="queued", source_uri=source_uri)
            .on_conflict_do_nothing(index_elements=["job_id"])
            .returning(jobs.c.job_id)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def delete_queued_job(self, job_id: str) -> bool:
        """Withdraw a job that never started (its upload could not be stored); True if removed."""
        with self.engine.begin() as conn:
            stmt = jobs.delete().where(jobs.c.job_id == job_id, jobs.c.status == "queued")
            return conn.execute(stmt).rowcount > 0

    def set_job_status(
        self,
        job_id: str,
        status: str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; expected one of {JOB_STATUSES}")
        now = _now()
        values: dict[str, Any] = {"status": status, "updated_at": now, "reason": reason}
        if run_id is not None:
            values["run_id"] = run_id
        if result is not None:
            values["result"] = result
        if status == "running":
            values["started_at"] = now
            values["finished_at"] = None
            values.setdefault("result", None)  # a re-run must not show the previous run's result
        if status in ("completed", "failed"):
            values["finished_at"] = now
        with self.engine.begin() as conn:
            updated = conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(**values)).rowcount
            if updated == 0:
                conn.execute(insert(jobs).values(job_id=job_id, video_id=job_id, **values))

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(jobs).where(jobs.c.job_id == job_id)).mappings().first()
        return dict(found) if found else None

    def list_jobs(
        self, *, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> list[dict[str, Any]]:
        query = select(jobs).order_by(jobs.c.submitted_at.desc(), jobs.c.job_id).limit(limit).offset(offset)
        if status:
            query = query.where(jobs.c.status == status)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def queued_dataset_jobs(
        self, *, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Queued jobs of dataset videos in registration order, after the (submitted_at, job_id) cursor."""
        query = (
            select(jobs.c.job_id, jobs.c.submitted_at, videos.c.dataset)
            .join(videos, videos.c.video_id == jobs.c.video_id)
            .where(jobs.c.status == "queued", videos.c.dataset.is_not(None))
            .order_by(jobs.c.submitted_at, jobs.c.job_id)
            .limit(limit)
        )
        if after is not None:
            ts, job_id = after
            query = query.where(
                (jobs.c.submitted_at > ts) | ((jobs.c.submitted_at == ts) & (jobs.c.job_id > job_id))
            )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- analyses (a video under a model version) ---------------------------------------------
    def record_analysis(
        self, video_id: str, model_version: str, *, result: dict[str, Any], run_id: str | None
    ) -> None:
        """A completed analysis (replaces an earlier one of the same video under the same model)."""
        prediction = result.get("prediction") or {}
        values = {
            "status": "completed",
            "run_id": run_id,
            "verdict": prediction.get("overall_class"),
            "p_fake": prediction.get("manipulation_confidence"),
            "result": result,
            "finished_at": _now(),
        }
        stmt = insert(analyses).values(video_id=video_id, model_version=model_version, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["video_id", "model_version"], set_=values)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def request_analysis(self, video_id: str, model_version: str, requested_by: str) -> bool:
        """Ask for an analysis of `video_id` under `model_version` (the reanalysis sensor runs it).

        True when a run is now due: not when that analysis is already completed or on its way,
        unless `requested_by` is an explicit re-run ("rerun:…"), which always runs again.
        """
        forced = requested_by.startswith("rerun")
        values = {"status": "requested", "requested_by": requested_by, "requested_at": _now()}
        stmt = insert(analyses).values(video_id=video_id, model_version=model_version, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["video_id", "model_version"],
            set_=values,
            where=None if forced else analyses.c.status == "failed",
        ).returning(analyses.c.video_id)
        with self.engine.begin() as conn:
            due = conn.execute(stmt).first() is not None
            if due:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.job_id == video_id)
                    .values(status="queued", reason=None, finished_at=None, updated_at=_now())
                )
        return due

    def requested_analyses(self, limit: int = 100) -> list[dict[str, Any]]:
        query = (
            select(analyses.c.video_id, analyses.c.model_version, analyses.c.requested_at)
            .where(analyses.c.status == "requested")
            .order_by(analyses.c.requested_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def set_analysis_status(self, video_id: str, model_version: str, status: str) -> None:
        if status not in ANALYSIS_STATUSES:
            raise ValueError(f"unknown analysis status {status!r}; expected one of {ANALYSIS_STATUSES}")
        with self.engine.begin() as conn:
            conn.execute(
                analyses.update()
                .where(analyses.c.video_id == video_id, analyses.c.model_version == model_version)
                .values(status=status)
            )

    def list_analyses(self, video_id: str) -> list[dict[str, Any]]:
        """Every analysis of a video, newest first."""
        query = (
            select(analyses)
            .where(analyses.c.video_id == video_id)
            .order_by(analyses.c.requested_at.desc(), analyses.c.model_version)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- predictions / evaluations ---------------------------------------------------------------
    def upsert_prediction(self, **row: Any) -> None:
        self._upsert(predictions, row, "video_id", touch=False)

    def get_prediction(self, video_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            found = (
                conn.execute(select(predictions).where(predictions.c.video_id == video_id)).mappings().first()
            )
        return dict(found) if found else None

    def upsert_evaluation(self, **row: Any) -> None:
        self._upsert(evaluations, row, "evaluation_id", touch=False)


def _pgserver() -> ModuleType:
    """pgserver, imported lazily (only the embedded default needs it) and without platformdirs'
    warning about `XDG_RUNTIME_DIR` (unset, or the Makefile's /tmp, which is not 0700).

    pgserver keeps only its server-start lock there, and the fallback platformdirs takes instead
    (`/run/user/<uid>` or `<tmp>/runtime-<uid>`) is the same in every process, so nothing is
    lost; otherwise every command and every run's log would start with that warning.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*XDG_RUNTIME_DIR")
        import pgserver
    return pgserver


def embedded_postgres_url(data_dir: str) -> str:
    """Start (or reuse) the project's own PostgreSQL 16 in `data_dir` via pgserver; return its URL.

    pgserver keeps the server running after this process exits so that the Dagster daemon,
    webserver, run workers and the API all share it; `make stop` shuts it down.
    """
    os.makedirs(data_dir, exist_ok=True)
    server = _pgserver().get_server(data_dir, cleanup_mode=None)
    return normalise_url(server.get_uri())


def stop_embedded_postgres(data_dir: str) -> bool:
    """Stop the project's own PostgreSQL in `data_dir` if it runs; return whether one was stopped."""
    from pathlib import Path

    if not (Path(data_dir) / "postmaster.pid").exists():
        return False
    server = _pgserver().get_server(data_dir, cleanup_mode=None)
    from pgserver._commands import pg_ctl  # pgserver's bundled binaries

    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=Path(data_dir), user=server.system_user)
    return True
