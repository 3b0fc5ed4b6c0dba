"""`dagster-deepfake report JOB_ID --out FILE`: the case report (.html or .pdf) from the command line.

The same renderer as `GET /jobs/{id}/report` (dagster_deepfake.casereport), over the settings'
results database and artifact store; `--document FILE` also writes the stored result document
as canonical JSON, whose SHA-256 the report states.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dagster_deepfake.errors import DeepfakeError

if TYPE_CHECKING:
    from rich.console import Console

    from dagster_deepfake.config import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", help="the job id (v_ + 16 hex digits)")
    p.add_argument(
        "--out", required=True, metavar="FILE", help="where the report goes: FILE.html or FILE.pdf"
    )
    p.add_argument(
        "--document", default=None, metavar="FILE", help="also write the result document (canonical JSON)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds Chromium may take to print a PDF (default 60)",
    )


def write_report(
    settings: Settings,
    job_id: str,
    out: str | Path,
    *,
    document: str | Path | None = None,
    timeout: float | None = None,
) -> Path:
    """Render the job's case report into `out` (.html or .pdf); returns the path written."""
    from dagster_deepfake.casereport import canonical_json, gather_case, render_html
    from dagster_deepfake.casereport.pdf import DEFAULT_TIMEOUT_SECONDS, html_to_pdf
    from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
    from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise DeepfakeError(
            f"{out}: the report is written as .html or .pdf (got {out.suffix or 'no suffix'!r})"
        )
    p = settings.platform
    db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    store = ArtifactStore(
        p.artifact_root, s3_storage_options(p.artifact_root, p.s3_endpoint_url, p.s3_region)
    )
    case = gather_case(settings, db, job_id)
    html = render_html(case, settings, store)
    data = (
        html_to_pdf(html, timeout=timeout or DEFAULT_TIMEOUT_SECONDS)
        if suffix == ".pdf"
        else html.encode("utf-8")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    if document is not None:
        if case.document is None:
            raise DeepfakeError(f"job {job_id} has no result document (status {case.job['status']})")
        Path(document).write_bytes(canonical_json(case.document))
    return out


def run(args: argparse.Namespace) -> int:
    from dagster_deepfake.config import load_settings

    written = write_report(
        load_settings(args.config), args.job_id, args.out, document=args.document, timeout=args.timeout
    )
    print(f"case report of {args.job_id}: {written}")
    if args.document:
        print(f"result document (canonical JSON): {args.document}")
    return 0


def print_case_reports(settings: Settings, videos: dict[str, str], folder: Path, console: Console) -> None:
    """`make demo`: each finished video's case report as HTML in `folder`, and where else it is."""
    from dagster_deepfake.casereport import CaseReportError

    console.print(f"[bold]Case reports[/] (HTML written to {folder}; PDF: add --out FILE.pdf):")
    for video_id, name in videos.items():
        try:
            path = write_report(settings, video_id, folder / f"{video_id}.html")
        except CaseReportError as exc:
            console.print(f"  {name:<40} no report: {exc}")
            continue
        console.print(f"  {name:<40} {path}")
    console.print(
        "  or: `dagster-deepfake report <video_id> --out case.pdf`; with `dagster-deepfake serve`: "
        "http://127.0.0.1:8000/jobs/<video_id>/report (and /report.pdf)"
    )
