"""`GET /jobs/{id}/report` (HTML) and `/report.pdf`: the case report, from the one renderer in `casereport`."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, status
from fastapi.responses import HTMLResponse, Response

from dagster_deepfake.api.context import _ERRORS, ApiContext, Context, ErrorBody, Identity
from dagster_deepfake.api.jobs import JobId
from dagster_deepfake.casereport import CaseReportError, JobNotFinishedError, UnknownJobError, render_case
from dagster_deepfake.casereport.pdf import ChromiumUnavailableError, PdfRenderError, html_to_pdf

# Inline CSS and data: images only: the report fetches nothing and runs no script.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"

_REPORT_ERRORS = {
    **_ERRORS,
    404: {"model": ErrorBody, "description": "unknown job"},
    409: {"model": ErrorBody, "description": "the job is still queued or running"},
}


def _html(ctx: ApiContext, job_id: str) -> str:
    try:
        return render_case(ctx.settings, ctx.db, ctx.store, job_id)
    except UnknownJobError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except JobNotFinishedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except CaseReportError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from None


def add_routes(app: FastAPI) -> None:
    @app.get(
        "/jobs/{job_id}/report",
        tags=["jobs"],
        response_class=HTMLResponse,
        responses=_REPORT_ERRORS,
        summary="The case report: verdict, evidence and chain of custody (self-contained HTML)",
    )
    def case_report(ctx: Context, _: Identity, job_id: JobId) -> HTMLResponse:
        return HTMLResponse(
            _html(ctx, job_id),
            headers={
                "Content-Security-Policy": REPORT_CSP,
                "Content-Disposition": f'inline; filename="case-report-{job_id}.html"',
            },
        )

    @app.get(
        "/jobs/{job_id}/report.pdf",
        tags=["jobs"],
        response_class=Response,
        responses={
            **_REPORT_ERRORS,
            200: {"content": {"application/pdf": {}}, "description": "the case report as PDF"},
            503: {"model": ErrorBody, "description": "Chromium is not installed, or did not print in time"},
        },
        summary="The case report as PDF (printed by headless Chromium)",
    )
    def case_report_pdf(ctx: Context, _: Identity, job_id: JobId) -> Response:
        html = _html(ctx, job_id)
        try:
            pdf = html_to_pdf(html)
        except (ChromiumUnavailableError, PdfRenderError) as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="case-report-{job_id}.pdf"'},
        )
