"""Job routes and models: list, detail, saliency heat maps, and access to the stored result document."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, status
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from dagster_deepfake.api.context import _ERRORS, ApiContext, Context, ErrorBody, Identity
from dagster_deepfake.report import JobStatus, ResultDocument
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.keys import PARTITION_KEY_RE

log = logging.getLogger(__name__)

JOB_ID_PATTERN = PARTITION_KEY_RE.pattern
# Saliency files are named by the pipeline (`frame_000123_face.png`); nothing else is ever served.
SALIENCY_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,128}\.png$"
_SALIENCY_NAME_RE = re.compile(SALIENCY_NAME_PATTERN)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="`v_` + 16 hex digits of the SHA-256")]


# -- response models --------------------------------------------------------------------------------
class JobLinks(BaseModel):
    self: str = Field(description="this job (JSON, with the result document once completed)")
    view: str = Field(description="an HTML page for a person")


class JobSummary(BaseModel):
    job_id: str
    status: JobStatus
    reason: str | None = Field(None, description="why the job failed")
    submitted_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    links: JobLinks


class JobDetail(JobSummary):
    file_name: str | None = None
    uploader: str | None = None
    result: ResultDocument | None = Field(None, description="the contract's result document once completed")


class JobPage(BaseModel):
    items: list[JobSummary]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


# -- job rendering ----------------------------------------------------------------------------------
def _links(job_id: str) -> JobLinks:
    return JobLinks(self=f"/jobs/{job_id}", view=f"/jobs/{job_id}/view")


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


def _result_document(row: dict[str, Any]) -> ResultDocument | None:
    if not row.get("result"):
        return None
    try:
        return ResultDocument.model_validate(row["result"])
    except ValidationError as exc:
        log.error("stored result of %s does not match the result schema: %s", row["job_id"], exc)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, "the stored result does not match the result schema"
        ) from None


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
        offset: Annotated[int, Query(ge=0)] = 0,
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
        summary="One job: status, failure reason, and the result document once completed",
    )
    def get_job(ctx: Context, _: Identity, job_id: JobId) -> JobDetail:
        row = _get_job_or_404(ctx, job_id)
        video = ctx.db.get_video(job_id) or {}
        return JobDetail(
            **_summary(row).model_dump(),
            file_name=video.get("file_name"),
            uploader=video.get("uploader"),
            result=_result_document(row),
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
