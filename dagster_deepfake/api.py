"""The REST API: upload a video for analysis, poll its job, read the result, look at it.

`POST /analyze-video` streams a multipart upload to a temporary file (the size limit is
enforced while streaming), sniffs the content (container signature, then ffprobe, then the
v1 scope), hashes it into the content-addressed job id and drops it into the upload bucket
under ``api/<job_id>/<sanitised name>``. The bucket sensor then starts the run exactly as
for any other bucket drop; the API never talks to Dagster.

A job id is the video's partition key (``v_`` + 16 hex of the SHA-256), so the same bytes
uploaded twice are one job: the second upload answers 200 with the job's current status
and stores nothing.

Auth: with a token configured, every endpoint except ``/healthz`` and the OpenAPI docs
needs ``Authorization: Bearer <token>``. `serve` refuses to bind a non-loopback address
without a token. The token is never logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import posixpath
import re
import tempfile
import unicodedata
from base64 import b64encode
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO
from urllib.parse import urlparse

import jinja2
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header

from dagster_deepfake.config import Settings
from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.probe import VideoProbe, probe_video, validate_probe
from dagster_deepfake.report import AnomalousFrame, JobStatus, ResultDocument
from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.keys import PARTITION_KEY_RE, partition_key_for_sha256
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url
from dagster_deepfake.storage.postgres import jobs as jobs_table

log = logging.getLogger(__name__)

API_VERSION = "1"
TOKEN_ENV = "DAGSTER_DEEPFAKE_API_TOKEN"  # read by the CLI, never by this module
UPLOAD_FIELD = "file"
# Room for the multipart envelope (boundaries, part headers, small extra fields) above the file limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
JOB_ID_PATTERN = PARTITION_KEY_RE.pattern
# Saliency files are named by the pipeline (`frame_000123_face.png`); nothing else is ever served.
SALIENCY_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,128}\.png$"
_SALIENCY_NAME_RE = re.compile(SALIENCY_NAME_PATTERN)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="`v_` + 16 hex digits of the SHA-256")]


class InsecureBindError(ValueError):
    """Refusing to serve on a non-loopback address without a bearer token."""


# -- response models --------------------------------------------------------------------------------
class JobLinks(BaseModel):
    self: str = Field(description="this job (JSON, with the result document once completed)")
    view: str = Field(description="an HTML page for a person")


class JobSubmitted(BaseModel):
    job_id: str
    status: JobStatus
    duplicate: bool = Field(description="true when these bytes were already a job; nothing new was stored")
    file_name: str | None
    size_bytes: int
    links: JobLinks


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


class ErrorBody(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
}


# -- app wiring -------------------------------------------------------------------------------------
@dataclass
class ApiContext:
    """Everything a request needs; built once per app."""

    settings: Settings
    db: ResultsDB
    bucket: UploadBucket
    store: ArtifactStore
    token: str | None


def _s3_options(settings: Settings, url: str) -> dict[str, Any]:
    return s3_storage_options(url, settings.platform.s3_endpoint_url, settings.platform.s3_region)


def _context(request: Request) -> ApiContext:
    return request.app.state.ctx


Context = Annotated[ApiContext, Depends(_context)]
_bearer = HTTPBearer(auto_error=False, description="the token given to `dagster-deepfake serve --token`")


def _authenticate(
    ctx: Context, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The caller's identity (recorded as the uploader); 401 when a token is configured and not given."""
    if ctx.token is None:
        return "api"
    given = credentials.credentials.encode() if credentials else b""
    # Constant-time compare so response timing says nothing about how much of a guess was right.
    if not credentials or not hmac.compare_digest(given, ctx.token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return "api:token"


Identity = Annotated[str, Depends(_authenticate)]


def create_app(settings: Settings, *, token: str | None, db: ResultsDB | None = None) -> FastAPI:
    """The FastAPI app over these settings' bucket, artifact store and results database."""
    p = settings.platform
    if db is None:
        db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    bucket = UploadBucket(p.upload_uri, p.upload_suffixes, _s3_options(settings, p.upload_uri))
    store = ArtifactStore(p.artifact_root, _s3_options(settings, p.artifact_root))
    app = FastAPI(
        title="dagster-deepfake",
        version=API_VERSION,
        description=(
            "Upload a talking-face video, poll its job, read the deepfake verdict. "
            "See docs/API.md for curl examples, auth and limits."
        ),
    )
    app.state.ctx = ApiContext(settings=settings, db=db, bucket=bucket, store=store, token=token or None)
    _add_routes(app)
    return app


# -- upload: streaming multipart receiver -----------------------------------------------------------
class UploadTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"upload exceeds the maximum of {limit} bytes")


class _UploadReceiver:
    """Feeds the raw request body through python-multipart and writes the `file` part to `sink`.

    Only the first part named `file` is kept; its bytes are hashed as they arrive, so the
    file is read once. Anything over `max_bytes` raises UploadTooLargeError at once.
    """

    def __init__(self, boundary: bytes, sink: BinaryIO, max_bytes: int) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()
        self.file_name: str | None = None
        self.found = False
        self._in_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_cb,
                "on_header_value": self._header_value_cb,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def _header_field_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == UPLOAD_FIELD and not self.found:
            self.found = self._in_file = True
            raw = params.get(b"filename")
            self.file_name = raw.decode("utf-8", "replace") if raw is not None else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise UploadTooLargeError(self.max_bytes)
        self.digest.update(chunk)
        self.sink.write(chunk)

    def _part_end(self) -> None:
        self._in_file = False

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def finish(self) -> None:
        self.parser.finalize()


# -- upload: content checks -------------------------------------------------------------------------
# ISO-BMFF / QuickTime top-level boxes a file may open with (at byte 4).
_QT_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
# What common non-video uploads look like, to say so in the error.
_NOT_VIDEO_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
    (b"OggS", "an Ogg file"),
)


def sniff_container(head: bytes) -> str | None:
    """The video container family from the first bytes, or None when it is not one we accept.

    Only the containers of `platform.upload_suffixes` (MP4/MOV/M4V, Matroska/WebM, AVI) pass;
    ffprobe then decides whether the file really holds a decodable video.
    """
    if len(head) >= 8 and head[4:8] in _QT_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def describe_content(head: bytes) -> str:
    """A short human guess at what the bytes are, for 415 messages."""
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "a WAV audio file"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, what in _NOT_VIDEO_SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The 64-byte cut may split one multi-byte character; anything earlier is binary.
        if exc.start < len(head) - 3:
            return "unrecognised binary data"
        text = head[: exc.start].decode("utf-8")
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unrecognised binary data"


_CONTAINER_SUFFIX = {"mp4": ".mp4", "matroska": ".mkv", "avi": ".avi"}


def safe_file_name(client_name: str | None, container: str, allowed_suffixes: list[str]) -> str:
    """A bucket-safe name: the client's base name reduced to [A-Za-z0-9._-], with an accepted suffix.

    The client's name never becomes a path: directories are dropped and only a sanitised base
    name is kept, below a folder the server chooses.
    """
    base = re.split(r"[\\/]", client_name or "")[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    stem, suffix = posixpath.splitext(base)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:100] or "upload"
    allowed = [s.lower() for s in allowed_suffixes]
    suffix = suffix.lower()
    if allowed and suffix not in allowed:
        # The sensor only takes accepted suffixes; name the file after what it really is.
        suffix = _CONTAINER_SUFFIX.get(container, allowed[0])
        if suffix not in allowed:
            suffix = allowed[0]
    return stem + (suffix or _CONTAINER_SUFFIX.get(container, ".mp4"))


@dataclass(frozen=True)
class _Accepted:
    job_id: str
    status: JobStatus
    duplicate: bool


def _check_video(ctx: ApiContext, path: str) -> tuple[str, VideoProbe]:
    """(container, probe) of an acceptable video; HTTPException 415/422 with the reason otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    container = sniff_container(head)
    if container is None:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"the upload is not a supported video: its content looks like {describe_content(head)} "
            "(accepted: MP4/MOV/M4V, Matroska/WebM, AVI; the file name's extension is not trusted)",
        )
    try:
        probe = probe_video(path)
    except InvalidVideoError as exc:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"the upload is not a usable video: {exc.reason}"
        ) from None
    d, p = ctx.settings.data, ctx.settings.platform
    try:
        validate_probe(
            probe,
            min_height=d.min_height,
            max_height=d.max_height,
            max_duration_seconds=p.max_duration_seconds,
        )
    except InvalidVideoError as exc:
        raise HTTPException(422, f"the video is outside the supported scope: {exc.reason}") from None
    return container, probe


def _accept_upload(
    ctx: ApiContext, path: str, sha256: str, size: int, client_name: str | None, uploader: str
) -> _Accepted:
    """Validate, then record the video and its queued job and drop the file into the bucket."""
    container, _ = _check_video(ctx, path)
    job_id = partition_key_for_sha256(sha256)
    existing = ctx.db.get_job(job_id)
    if existing is not None:
        return _Accepted(job_id, existing["status"], duplicate=True)
    key = f"api/{job_id}/{safe_file_name(client_name, container, ctx.settings.platform.upload_suffixes)}"
    ctx.bucket.ensure()
    # The video row goes in first so that the sensor, whenever it sees the object, finds the
    # client's file name and the uploader already recorded (first registration wins them).
    source_uri = ctx.bucket.fs.unstrip_protocol(posixpath.join(ctx.bucket.root, key))
    if ctx.db.get_video(job_id) is None:
        ctx.db.upsert_video(
            video_id=job_id,
            sha256=sha256,
            source_uri=source_uri,
            file_name=(client_name or posixpath.basename(key))[:1000],
            uploader=uploader,
            size_bytes=size,
        )
    # The job row is the claim: of two simultaneous uploads of the same bytes only the one that
    # inserts it stores the object; the other answers as a duplicate.
    if not ctx.db.create_job(job_id, job_id, source_uri):
        existing = ctx.db.get_job(job_id) or {"status": "queued"}
        return _Accepted(job_id, existing["status"], duplicate=True)
    try:
        ctx.bucket.put_file(path, key)
    except Exception:
        ctx.db.delete_queued_job(job_id)  # nothing stored: a later upload may claim it again
        raise
    log.info("accepted upload %s (%d bytes) as %s", key, size, job_id)
    return _Accepted(job_id, "queued", duplicate=False)


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


# -- view page --------------------------------------------------------------------------------------
_VIEW_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<title>{{ job_id }} · dagster-deepfake</title>
<style>
 body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
 main{max-width:960px;margin:0 auto;padding:24px}
 h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
 .muted{color:#5b6572} .card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:16px 20px;margin:12px 0}
 .banner{background:#b91c1c;color:#fff;padding:12px 16px;border-radius:8px;font-weight:600;margin:12px 0}
 .verdict{font-size:32px;font-weight:700;letter-spacing:.02em}
 .fake{color:#b91c1c} .real{color:#15803d} .status{font-size:22px;font-weight:600}
 table{border-collapse:collapse} td{padding:2px 14px 2px 0;vertical-align:top}
 .maps{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px}
 figure img{width:168px;height:168px;object-fit:cover;display:block} figcaption{font-size:12px;color:#5b6572;margin-top:4px}
 svg text{font-size:11px;fill:#5b6572}
</style></head>
<body><main>
<h1>Deepfake analysis</h1>
<div class="muted">job <code>{{ job_id }}</code>{% if file_name %} · {{ file_name }}{% endif %}
 · submitted {{ submitted_at }}</div>
{% for text in banners %}<div class="banner" role="alert">⚠ {{ text }}</div>{% endfor %}

{% if doc is none %}
<div class="card"><div class="status">Status: {{ status }}</div>
{% if status == "failed" %}<p>The analysis failed: <strong>{{ reason or "no reason recorded" }}</strong></p>
{% elif status == "completed" %}<p>Completed, but no result document was stored.</p>
{% else %}<p>The video is {{ "waiting to be analysed" if status == "queued" else "being analysed" }}.
This page reloads every {{ refresh }} s.</p>{% endif %}
</div>
{% else %}
<div class="card">
{% if pred %}
 <div class="verdict {{ pred.overall_class }}">{{ pred.overall_class | upper }}</div>
 <div>calibrated confidence <strong>{{ pct(pred.overall_confidence) }}</strong></div>
 <div>P(fake) = <strong>{{ fmt(pred.manipulation_confidence) }}</strong>,
  interval {{ fmt(pred.confidence_interval[0]) }} – {{ fmt(pred.confidence_interval[1]) }}
  {% if adds %}<span class="muted">({{ adds.interval_method }})</span>{% endif %}</div>
 {% if pred.modality_agreement is not none %}<div>modality agreement {{ fmt(pred.modality_agreement) }}</div>{% endif %}
{% else %}<div class="status">Status: {{ status }}</div>{% if reason %}<p>{{ reason }}</p>{% endif %}{% endif %}
</div>

<h2>Timeline: P(fake) per window</h2>
<div class="card">{% if timeline %}
<svg viewBox="0 0 {{ timeline.width }} {{ timeline.height }}" width="100%" role="img"
     aria-label="P(fake) per window over time, audio anomalies shaded">
 {% for a in timeline.anomalies %}<rect x="{{ a.x }}" y="{{ timeline.top }}" width="{{ a.w }}" height="{{ timeline.plot_h }}"
   fill="#f59e0b" fill-opacity="0.28"><title>audio anomaly {{ a.kind }} {{ a.label }}</title></rect>{% endfor %}
 {% for t in timeline.yticks %}<line x1="{{ timeline.left }}" x2="{{ timeline.right }}" y1="{{ t.y }}" y2="{{ t.y }}" stroke="#e5e7eb"/>
 <text x="{{ timeline.left - 6 }}" y="{{ t.y + 4 }}" text-anchor="end">{{ t.label }}</text>{% endfor %}
 <line x1="{{ timeline.left }}" x2="{{ timeline.right }}" y1="{{ timeline.threshold_y }}" y2="{{ timeline.threshold_y }}"
   stroke="#6b7280" stroke-dasharray="4 3"><title>decision threshold {{ timeline.threshold }}</title></line>
 {% for t in timeline.xticks %}<text x="{{ t.x }}" y="{{ timeline.height - 6 }}" text-anchor="middle">{{ t.label }}</text>{% endfor %}
 <polyline points="{{ timeline.points }}" fill="none" stroke="#2563eb" stroke-width="1.5"/>
 {% for w in timeline.windows %}<line x1="{{ w.x1 }}" x2="{{ w.x2 }}" y1="{{ w.y }}" y2="{{ w.y }}" stroke="#1d4ed8" stroke-width="3">
   <title>window {{ w.id }}: {{ w.label }}</title></line>{% endfor %}
 {% for f in timeline.frames %}<circle cx="{{ f.x }}" cy="{{ f.y }}" r="4" fill="#b91c1c"><title>{{ f.label }}</title></circle>{% endfor %}
</svg>
<div class="muted">blue: P(fake) of each window · dashed: threshold {{ timeline.threshold }} ·
 shaded: {{ timeline.anomalies | length }} audio anomal{{ "y" if timeline.anomalies | length == 1 else "ies" }} ·
 red dots: heat-map frames · seconds on the x axis</div>
{% else %}<span class="muted">no per-window scores in this result</span>{% endif %}</div>

<h2>Most suspicious frames (Grad-CAM)</h2>
{% if maps %}<div class="maps">{% for m in maps %}<figure><img src="{{ m.src }}" alt="heat map of frame {{ m.frame_id }}">
<figcaption>frame {{ m.frame_id }} · {{ fmt(m.timestamp, 2) }} s · P(fake) {{ fmt(m.confidence) }}</figcaption></figure>{% endfor %}</div>
{% else %}<p class="muted">no heat maps in this result</p>{% endif %}

<h2>Model and run</h2>
<div class="card"><table>
{% if meta %}<tr><td>model version</td><td><code>{{ meta.model_version }}</code></td></tr>
<tr><td>ensemble size</td><td>{{ meta.ensemble_size }}</td></tr>
<tr><td>video duration</td><td>{{ fmt(meta.video_duration_sec, 1) }} s, {{ meta.frames_analyzed }} frames analysed</td></tr>
<tr><td>processing time</td><td>{{ fmt(meta.processing_time_sec, 1) }} s</td></tr>{% endif %}
{% if adds %}<tr><td>weights</td><td>{{ adds.weights }}{% if adds.trained_on %} (trained on {{ adds.trained_on }}){% endif %}</td></tr>
<tr><td>pretrained encoders</td><td>{% for k, v in adds.pretrained.items() %}{{ k }}: {{ "yes" if v else "no (random init)" }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
<tr><td>modalities used</td><td>{{ adds.modalities_used | join(", ") or "none" }}</td></tr>
<tr><td>temperature</td><td>{{ fmt(adds.temperature) }}</td></tr>{% endif %}
</table>
{% if adds and adds.warnings %}<h2>Warnings</h2><ul>{% for w in adds.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% endif %}
</div>
{% endif %}
<p class="muted">JSON: <a href="/jobs/{{ job_id }}">/jobs/{{ job_id }}</a></p>
</main></body></html>
"""

_jinja = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_view_template = _jinja.from_string(_VIEW_TEMPLATE)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _timeline(doc: ResultDocument, threshold: float, frames: list[AnomalousFrame]) -> dict[str, Any] | None:
    """Plot coordinates for the SVG timeline (x: seconds, y: P(fake)), or None without windows.

    `frames` are the heat-map frames shown below the plot; each gets a dot at its time.
    """
    adds = doc.additions
    if adds is None or not adds.windows:
        return None
    width, height, left, right, top, bottom = 800, 220, 40, 790, 10, 190
    duration = max(
        [doc.metadata.video_duration_sec if doc.metadata else 0.0]
        + [w.end for w in adds.windows]
        + [a.end for a in adds.audio_anomalies]
    )
    duration = duration if duration > 0 else 1.0

    def x(t: float) -> float:
        return round(left + (right - left) * min(max(t, 0.0), duration) / duration, 2)

    def y(p: float) -> float:
        return round(bottom - (bottom - top) * min(max(p, 0.0), 1.0), 2)

    step = _nice_step(duration / 6)
    windows = sorted(adds.windows, key=lambda w: w.start)
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "top": top,
        "plot_h": bottom - top,
        "threshold": threshold,
        "threshold_y": y(threshold),
        "yticks": [{"y": y(v), "label": f"{v:.2f}"} for v in (0.0, 0.25, 0.5, 0.75, 1.0)],
        "xticks": [{"x": x(i * step), "label": f"{i * step:g}"} for i in range(int(duration / step) + 1)],
        "points": " ".join(f"{x((w.start + w.end) / 2)},{y(w.p_fake)}" for w in windows),
        "windows": [
            {
                "id": w.window_id,
                "x1": x(w.start),
                "x2": x(w.end),
                "y": y(w.p_fake),
                "label": f"{w.start:.2f}–{w.end:.2f} s, P(fake) {w.p_fake:.3f}",
            }
            for w in windows
        ],
        "anomalies": [
            {
                "x": x(a.start),
                "w": max(x(a.end) - x(a.start), 1.0),
                "kind": a.kind,
                "label": f"{a.start:.2f}–{a.end:.2f} s, score {a.score:.2f}",
            }
            for a in adds.audio_anomalies
        ],
        "frames": [
            {
                "x": x(f.timestamp),
                "y": y(f.confidence),
                "label": f"frame {f.frame_id} at {f.timestamp:.2f} s, P(fake) {f.confidence:.3f}",
            }
            for f in frames
        ],
    }


def _nice_step(raw: float) -> float:
    """1, 2 or 5 × 10^k at or above `raw`: readable axis ticks."""
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _heat_map_src(ctx: ApiContext, job_id: str, url: str | None) -> str | None:
    """The heat map inlined as a data: URI (the page stays self-contained and works behind auth)."""
    if not url:
        return None
    name = posixpath.basename(urlparse(url).path)
    if _SALIENCY_NAME_RE.match(name):
        rel = ArtifactStore.video_rel(job_id, "saliency", name)
        try:
            return "data:image/png;base64," + b64encode(ctx.store.read_bytes(rel)).decode()
        except FileNotFoundError:
            pass
    return url  # a presigned URL, or a file that is not there (the browser shows a broken image)


def _banners(doc: ResultDocument | None) -> list[str]:
    adds = doc.additions if doc else None
    if adds is None:
        return []
    banners = []
    if adds.weights == "untrained":
        banners.append(
            "UNTRAINED MODEL: this verdict comes from untrained weights and says nothing about the video."
        )
    random_init = sorted(k for k, v in adds.pretrained.items() if not v)
    if random_init:
        banners.append(
            "Randomly initialised encoder(s): "
            + ", ".join(random_init)
            + " (pretrained weights were not loaded)."
        )
    return banners


def render_view(ctx: ApiContext, row: dict[str, Any], video: dict[str, Any] | None) -> str:
    """The HTML page of one job: status while pending, the full report once completed."""
    doc = _result_document(row)
    job_id = row["job_id"]
    pred = doc.prediction if doc else None
    top_k = ctx.settings.explain.top_k_frames
    frames = sorted(pred.anomalous_frames, key=lambda f: f.confidence, reverse=True)[:top_k] if pred else []
    maps = [
        {"src": src, "frame_id": f.frame_id, "timestamp": f.timestamp, "confidence": f.confidence}
        for f in frames
        if (src := _heat_map_src(ctx, job_id, f.saliency_url))
    ]
    submitted = row.get("submitted_at")
    return _view_template.render(
        job_id=job_id,
        status=row["status"],
        reason=row.get("reason"),
        file_name=(video or {}).get("file_name")
        or (doc.additions.file_name if doc and doc.additions else None),
        submitted_at=submitted.strftime("%Y-%m-%d %H:%M:%S %Z") if submitted else "–",
        refresh=10 if row["status"] in ("queued", "running") else None,
        doc=doc,
        pred=pred,
        meta=doc.metadata if doc else None,
        adds=doc.additions if doc else None,
        banners=_banners(doc),
        timeline=_timeline(doc, ctx.settings.model.head.threshold, frames) if doc else None,
        maps=maps,
        fmt=_fmt,
        pct=_pct,
    )


# -- routes -----------------------------------------------------------------------------------------
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [UPLOAD_FIELD],
                "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}},
            }
        }
    },
}


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], summary="Liveness and database check (no auth)")
    def healthz(ctx: Context) -> JSONResponse:
        try:
            ctx.db.count(jobs_table)
        except Exception as exc:  # any database failure means "not healthy", whatever its type
            log.warning("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "unhealthy", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "auth": ctx.token is not None})

    @app.post(
        "/analyze-video",
        tags=["jobs"],
        summary="Upload a video for analysis",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobSubmitted,
        openapi_extra={"requestBody": _UPLOAD_BODY},
        responses={
            **_ERRORS,
            200: {"model": JobSubmitted, "description": "these bytes are already a job: its current status"},
            400: {"model": ErrorBody, "description": "malformed multipart body, no `file` field, empty file"},
            413: {"model": ErrorBody, "description": "larger than `platform.max_upload_bytes`"},
            415: {"model": ErrorBody, "description": "not a video (sniffed from the content, not the name)"},
            422: {
                "model": ErrorBody,
                "description": "a video outside the supported scope (too small, too long)",
            },
        },
    )
    async def analyze_video(request: Request, ctx: Context, identity: Identity) -> JSONResponse:
        """Multipart upload with one part named `file`. Answers 202 with the new job's id and links;
        the bucket sensor starts the analysis. The same bytes again answer 200 with that job's status."""
        limit = ctx.settings.platform.max_upload_bytes
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"send the video as multipart/form-data with a part named '{UPLOAD_FIELD}'",
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
            raise HTTPException(413, _too_large(limit))
        fd, tmp = tempfile.mkstemp(prefix="ddf-upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as sink:
                receiver = _UploadReceiver(boundary, sink, limit)
                try:
                    async for chunk in request.stream():
                        receiver.feed(chunk)
                    receiver.finish()
                except UploadTooLargeError:
                    raise HTTPException(413, _too_large(limit)) from None
                except Exception as exc:  # python-multipart raises several types for a malformed body
                    if isinstance(exc, HTTPException):
                        raise
                    raise HTTPException(
                        status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}"
                    ) from None
            if not receiver.found:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, f"no multipart part named '{UPLOAD_FIELD}'")
            if receiver.size == 0:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "the uploaded file is empty")
            accepted = await run_in_threadpool(
                _accept_upload,
                ctx,
                tmp,
                receiver.digest.hexdigest(),
                receiver.size,
                receiver.file_name,
                identity,
            )
        finally:
            os.unlink(tmp)
        body = JobSubmitted(
            job_id=accepted.job_id,
            status=accepted.status,
            duplicate=accepted.duplicate,
            file_name=receiver.file_name,
            size_bytes=receiver.size,
            links=_links(accepted.job_id),
        )
        code = status.HTTP_200_OK if accepted.duplicate else status.HTTP_202_ACCEPTED
        return JSONResponse(
            body.model_dump(mode="json"), status_code=code, headers={"Location": body.links.self}
        )

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
        rel = ArtifactStore.video_rel(job_id, "saliency", name)
        try:
            data = ctx.store.read_bytes(rel)
        except FileNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no heat map {name} for job {job_id}") from None
        return Response(
            data,
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    @app.get(
        "/jobs/{job_id}/view",
        tags=["jobs"],
        response_class=HTMLResponse,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown job"}},
        summary="A self-contained HTML report for a person",
    )
    def view_job(ctx: Context, _: Identity, job_id: JobId) -> HTMLResponse:
        row = _get_job_or_404(ctx, job_id)
        html = render_view(ctx, row, ctx.db.get_video(job_id))
        return HTMLResponse(html, headers={"Content-Security-Policy": _VIEW_CSP})


# Inline CSS and data: images only; no script, nothing fetched from elsewhere.
_VIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data: https:; base-uri 'none'"


def _too_large(limit: int) -> str:
    return f"the upload is larger than the maximum of {limit} bytes ({limit / 1024**2:.1f} MiB)"


# -- serving ----------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere: treat it as exposed


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the API beyond this machine without a bearer token."""
    if not token and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve on {host} without a bearer token: pass --token or set ${TOKEN_ENV} "
            "(only loopback addresses may run without one)"
        )


def build_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    **uvicorn_kwargs: Any,
) -> uvicorn.Server:
    """A configured uvicorn server for the app (not started): `serve` runs it, tests run it in a thread."""
    check_bind(host, token)
    app = create_app(settings, token=token)
    config = uvicorn.Config(app, host=host, port=port, **{"log_level": "info", **uvicorn_kwargs})
    return uvicorn.Server(config)


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    **uvicorn_kwargs: Any,
) -> None:
    """Run the API until interrupted (`dagster-deepfake serve`)."""
    server = build_server(settings, host, port, token, **uvicorn_kwargs)
    log.info(
        "serving the API on http://%s:%d (docs at /docs; bearer token %s)",
        host,
        port,
        "required" if token else "not required",
    )
    server.run()
