"""Job routes and models: list, detail, saliency heat maps, and access to the stored result document."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path, Query, status
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from dagster_deepfake.api.context import _ERRORS, ApiContext, Context, ErrorBody, Identity
from dagster_deepfake.models.serving import serving_model_version
from dagster_deepfake.report import Additions, JobStatus, Metadata, Prediction, ResultDocument
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.keys import PARTITION_KEY_RE

log = logging.getLogger(__name__)

JOB_ID_PATTERN = PARTITION_KEY_RE.pattern
# PostgreSQL's OFFSET is a bigint; far above any real page, far below 2**63 with the limit added.
MAX_OFFSET = 2**62
# Saliency files are named by the pipeline (`frame_000123_face.png`); nothing else is ever served.
SALIENCY_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,128}\.png$"
_SALIENCY_NAME_RE = re.compile(SALIENCY_NAME_PATTERN)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="`v_` + 16 hex digits of the SHA-256")]


# -- response models --------------------------------------------------------------------------------
class JobLinks(BaseModel):
    self: str = Field(description="this job: the result document with the platform's extras")
    view: str = Field(description="an HTML page for a person")
    history: str = Field(description="every analysis of this video, one per model version")


class JobSummary(BaseModel):
    job_id: str
    status: JobStatus
    reason: str | None = Field(None, description="why the job failed")
    submitted_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    links: JobLinks


class JobDetail(BaseModel):
    """The contract's result document at the top level, the platform's extras beside it.

    `prediction` and `metadata` are null until the job is completed (and stay null for a
    dataset video, whose job caches training features and gives no verdict: `stage`).
    """

    job_id: str
    status: JobStatus
    prediction: Prediction | None = None
    metadata: Metadata | None = None
    additions: Additions | None = None
    reason: str | None = Field(None, description="why the job failed")
    stage: Literal["verdict", "features"] = Field(
        "verdict", description="features: a dataset video's job, which caches what training reads"
    )
    file_name: str | None = None
    uploader: str | None = None
    submitted_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    model_version: str | None = Field(None, description="the model that gave the verdict shown")
    serving_model_version: str | None = Field(None, description="the model that serves new analyses now")
    verdict_is_current: bool | None = Field(
        None, description="false: the verdict came from another model than the one serving now"
    )
    links: JobLinks


class AnalysisRecord(BaseModel):
    """One analysis of a video: the video under one model version."""

    model_version: str
    status: Literal["requested", "launched", "completed", "failed"]
    requested_by: str | None = None
    requested_at: dt.datetime
    finished_at: dt.datetime | None = None
    verdict: str | None = None
    p_fake: float | None = None
    serving: bool = Field(description="this model serves new analyses now")
    result: ResultDocument | None = None


class JobHistory(BaseModel):
    job_id: str
    serving_model_version: str | None
    items: list[AnalysisRecord] = Field(description="newest first")


class ReanalysisRequested(BaseModel):
    job_id: str
    status: JobStatus
    model_version: str = Field(description="the model the new analysis will use")
    links: JobLinks


class JobPage(BaseModel):
    items: list[JobSummary]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


# -- job rendering ----------------------------------------------------------------------------------
def _links(job_id: str) -> JobLinks:
    return JobLinks(self=f"/jobs/{job_id}", view=f"/jobs/{job_id}/view", history=f"/jobs/{job_id}/history")


def _summary(row: dict[str, Any]) -> JobSummary:
    return JobSummary(
        job_id=row["job_id"],
        status=row["status"],
        reason=row.get("reason"),
        submitted_at=row["submitted_at"],
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
        links=_links(row["job_id"]),
    )


def _is_features_only(row: dict[str, Any]) -> bool:
    return isinstance(row.get("result"), dict) and row["result"].get("stage") == "features"


def _result_document(row: dict[str, Any]) -> ResultDocument | None:
    """The stored result document; None while pending and for a dataset video's features-only job."""
    if not row.get("result") or _is_features_only(row):
        return None
    try:
        return ResultDocument.model_validate(row["result"])
    except ValidationError as exc:
        log.error("stored result of %s does not match the result schema: %s", row["job_id"], exc)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, "the stored result does not match the result schema"
        ) from None


def job_detail(ctx: ApiContext, row: dict[str, Any]) -> JobDetail:
    """A job as the API answers it: the result document's keys, then the extras."""
    video = ctx.db.get_video(row["job_id"]) or {}
    doc = _result_document(row) if row["status"] == "completed" else None
    serving = serving_model_version(ctx.settings)
    verdict_model = doc.metadata.model_version if doc and doc.metadata else None
    return JobDetail(
        job_id=row["job_id"],
        status=row["status"],
        prediction=doc.prediction if doc else None,
        metadata=doc.metadata if doc else None,
        additions=doc.additions if doc else None,
        reason=row.get("reason"),
        stage="features" if _is_features_only(row) else "verdict",
        file_name=video.get("file_name"),
        uploader=video.get("uploader"),
        submitted_at=row["submitted_at"],
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
        model_version=verdict_model,
        serving_model_version=serving,
        verdict_is_current=None if verdict_model is None or serving is None else verdict_model == serving,
        links=_links(row["job_id"]),
    )


def _get_job_or_404(ctx: ApiContext, job_id: str) -> dict[str, Any]:
    row = ctx.db.get_job(job_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return row


def add_routes(app: FastAPI) -> None:
    @app.get(
        "/jobs", tags=["jobs"], response_model=JobPage, responses=_ERRORS, summary="List jobs, newest first"
    )
    def list_jobs(
        ctx: Context,
        _: Identity,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    ) -> JobPage:
        # One row more than asked tells whether there is a next page without a COUNT.
        rows = ctx.db.list_jobs(limit=limit + 1, offset=offset, status=status_filter)
        return JobPage(
            items=[_summary(r) for r in rows[:limit]],
            limit=limit,
            offset=offset,
            next_offset=offset + limit if len(rows) > limit else None,
        )

    @app.get(
        "/jobs/{job_id}",
        tags=["jobs"],
        response_model=JobDetail,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown job"}},
        summary="One job: the contract's result document (prediction null until completed) and its extras",
    )
    def get_job(ctx: Context, _: Identity, job_id: JobId) -> JobDetail:
        return job_detail(ctx, _get_job_or_404(ctx, job_id))

    @app.get(
        "/jobs/{job_id}/history",
        tags=["jobs"],
        response_model=JobHistory,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown job"}},
        summary="Every analysis of this video, one per model version, newest first",
    )
    def get_history(ctx: Context, _: Identity, job_id: JobId) -> JobHistory:
        _get_job_or_404(ctx, job_id)
        serving = serving_model_version(ctx.settings)
        return JobHistory(
            job_id=job_id,
            serving_model_version=serving,
            items=[
                AnalysisRecord(
                    **{k: r[k] for k in AnalysisRecord.model_fields if k in r and k != "result"},
                    serving=r["model_version"] == serving,
                    result=_result_document({"job_id": job_id, "result": r["result"]}),
                )
                for r in ctx.db.list_analyses(job_id)
            ],
        )

    @app.post(
        "/jobs/{job_id}/reanalyze",
        tags=["jobs"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=ReanalysisRequested,
        responses={
            **_ERRORS,
            404: {"model": ErrorBody, "description": "unknown job"},
            409: {"model": ErrorBody, "description": "the job is already queued or running"},
            503: {"model": ErrorBody, "description": "the serving model cannot be determined"},
        },
        summary="Analyse this video again with the model serving now (earlier results stay in the history)",
    )
    def reanalyze(ctx: Context, identity: Identity, job_id: JobId) -> ReanalysisRequested:
        row = _get_job_or_404(ctx, job_id)
        if row["status"] in ("queued", "running"):
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is already {row['status']}")
        serving = serving_model_version(ctx.settings)
        if serving is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "the configured checkpoint has no readable manifest"
            )
        ctx.db.request_analysis(job_id, serving, requested_by=f"rerun:{identity}")
        return ReanalysisRequested(
            job_id=job_id, status="queued", model_version=serving, links=_links(job_id)
        )

    @app.get(
        "/jobs/{job_id}/saliency/{name}",
        tags=["jobs"],
        response_class=Response,
        responses={
            **_ERRORS,
            200: {"content": {"image/png": {}}, "description": "a Grad-CAM heat map"},
            404: {"model": ErrorBody, "description": "no such heat map"},
        },
        summary="A Grad-CAM heat map PNG of a job",
    )
    def get_saliency(
        ctx: Context,
        _: Identity,
        job_id: JobId,
        name: Annotated[str, Path(pattern=SALIENCY_NAME_PATTERN, description="e.g. frame_000123_face.png")],
    ) -> Response:
        rel = layout.saliency_rel(job_id, name)
        try:
            data = ctx.store.read_bytes(rel)
        except FileNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no heat map {name} for job {job_id}") from None
        return Response(
            data,
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
        )
