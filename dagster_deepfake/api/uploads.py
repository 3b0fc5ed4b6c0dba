"""`POST /analyze-video`: the streaming multipart receiver, content sniffing, safe names, accept."""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header

from dagster_deepfake.api.context import _ERRORS, ApiContext, Context, ErrorBody, Identity
from dagster_deepfake.api.jobs import JobLinks, _links
from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media import gate
from dagster_deepfake.media.probe import VideoProbe, probe_video, validate_probe
from dagster_deepfake.models.serving import reanalyze_if_stale
from dagster_deepfake.report import JobStatus
from dagster_deepfake.stages import scope_limits
from dagster_deepfake.storage.keys import partition_key_for_sha256

log = logging.getLogger(__name__)

UPLOAD_FIELD = "file"
# Room for the multipart envelope (boundaries, part headers, small extra fields) above the file limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class JobSubmitted(BaseModel):
    job_id: str
    status: JobStatus
    duplicate: bool = Field(description="true when these bytes were already a job; nothing new was stored")
    file_name: str | None
    size_bytes: int
    links: JobLinks


# -- upload: spool space ---------------------------------------------------------------------------
SPOOL_RETRY_AFTER_SECONDS = 10


class SpoolBudget:
    """Bytes that uploads in flight may spool to the temp folder together (one per app).

    Each upload reserves its Content-Length (the size limit when chunked) before reading the
    body and gives it back when done, so concurrent uploads never fill the disk together.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.in_use = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.in_use + size > self.budget:
                return False
            self.in_use += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.in_use -= size


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
# What the probe gate's sniff calls each container (`media.gate.Container.demuxer`) → a suffix.
_CONTAINER_SUFFIX = {"mov": ".mp4", "matroska": ".mkv", "avi": ".avi", "mpegts": ".ts"}


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
    # The probe gate's own sniff (media/gate.py): the API refuses exactly what every other path does.
    try:
        container = gate.sniff(path).demuxer
    except InvalidVideoError as exc:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"the upload is not a supported video: {exc.reason} (the file name's extension is not trusted)",
        ) from None
    try:
        probe = probe_video(path, max_pixels=ctx.settings.platform.max_pixels)
    except InvalidVideoError as exc:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"the upload is not a usable video: {exc.reason}"
        ) from None
    try:
        validate_probe(probe, **scope_limits(ctx.settings))
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
        # Known bytes: a new analysis only if the verdict came from another model than the serving one.
        if reanalyze_if_stale(ctx.db, ctx.settings, job_id, requested_by=f"re-upload:{uploader}"):
            return _Accepted(job_id, "queued", duplicate=True)
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


def add_routes(app: FastAPI) -> None:
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
            400: {
                "model": ErrorBody,
                "description": "malformed multipart body, no `file` field, empty file, control "
                "characters in the file name",
            },
            413: {"model": ErrorBody, "description": "larger than `platform.max_upload_bytes`"},
            503: {
                "model": ErrorBody,
                "description": "uploads in flight fill `platform.upload_spool_budget_bytes`; see Retry-After",
            },
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
        # Reserve what this body may spool (its length, or the limit when chunked) before a byte.
        spool: SpoolBudget = request.app.state.spool
        reserved = int(declared) if declared and declared.isdigit() else limit + MULTIPART_OVERHEAD_BYTES
        if not spool.reserve(reserved):
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"too many uploads in flight: {spool.in_use} of {spool.budget} bytes of spool space are "
                f"taken (platform.upload_spool_budget_bytes); retry in {SPOOL_RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(SPOOL_RETRY_AFTER_SECONDS)},
            )
        try:
            return await _receive(request, ctx, identity, boundary, limit)
        finally:
            spool.release(reserved)


async def _receive(
    request: Request, ctx: ApiContext, identity: str, boundary: bytes, limit: int
) -> JSONResponse:
    """Spool the body to a temporary file, check it, accept it (the body of `analyze_video`)."""
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
                raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}") from None
        if not receiver.found:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"no multipart part named '{UPLOAD_FIELD}'")
        if receiver.size == 0:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the uploaded file is empty")
        if receiver.file_name is not None and _has_control_characters(receiver.file_name):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                "the file name contains control characters (such as NUL or a line break); "
                "rename the file and upload it again",
            )
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
    return JSONResponse(body.model_dump(mode="json"), status_code=code, headers={"Location": body.links.self})


def _has_control_characters(name: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in name)


def _too_large(limit: int) -> str:
    return f"the upload is larger than the maximum of {limit} bytes ({limit / 1024**2:.1f} MiB)"
