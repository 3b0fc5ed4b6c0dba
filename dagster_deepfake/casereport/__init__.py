"""The case report of one job: verdict, evidence and chain of custody, to hand over (docs/API.md "Case report").

One renderer for every path: `GET /jobs/{id}/report` (HTML), `GET /jobs/{id}/report.pdf` and
`dagster-deepfake report JOB_ID --out FILE` all call `render_case` here. The HTML is one
self-contained file (inline CSS, heat maps as data: URIs, no script runs, nothing fetched);
the PDF is that file printed by headless Chromium (`casereport.pdf`).

What the report says comes from where the platform already keeps it: the stored result document
(`jobs.result`), the `videos` row (SHA-256, size, name, uploader, upload time), the `jobs` row
(run times, failure reason), and for the model the provenance the document recorded when the
verdict was made (`additions.provenance`; an older document: the checkpoint manifest found by its
model version at report time, said as such; `casereport.custody`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
import re
from base64 import b64encode
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from dagster_deepfake.casereport.custody import Custody, custody_of
from dagster_deepfake.casereport.template import TEMPLATE
from dagster_deepfake.config import Settings
from dagster_deepfake.errors import DeepfakeError
from dagster_deepfake.media.images import decode_image, thumbnail
from dagster_deepfake.provenance import canonical_bytes
from dagster_deepfake.report import ResultDocument, runtime_label
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.keys import is_partition_key
from dagster_deepfake.storage.postgres import ResultsDB, videos

__all__ = [
    "CaseFile",
    "CaseReportError",
    "JobNotFinishedError",
    "UnknownJobError",
    "canonical_json",
    "document_sha256",
    "gather_case",
    "render_case",
    "render_html",
]

_INLINE_PNG_BYTES, _INLINE_WIDTH = 400_000, 960
_IMAGE_URI_RE = re.compile(r"^data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+$")


class CaseReportError(DeepfakeError):
    """A case report cannot be made (unknown job, job not finished, stored result unreadable)."""


class UnknownJobError(CaseReportError):
    pass


class JobNotFinishedError(CaseReportError):
    pass


def canonical_json(document: dict[str, Any]) -> bytes:
    """The document as canonical JSON: keys sorted, no spaces, UTF-8, no NaN.

    Any copy of the document (from `GET /jobs/{id}/history`, `report --document`, the JSON
    embedded in the report) hashes to the same SHA-256 once written this way.
    """
    return canonical_bytes(document)


def document_sha256(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


@dataclass
class CaseFile:
    """Everything one case report states, gathered before anything is rendered."""

    job: dict[str, Any]
    video: dict[str, Any]
    document: dict[str, Any] | None  # the stored result document, as stored
    custody: Custody = field(default_factory=lambda: Custody(recorded=False))

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])

    @property
    def features_only(self) -> bool:
        return isinstance(self.job.get("result"), dict) and self.job["result"].get("stage") == "features"


def gather_case(settings: Settings, db: ResultsDB, job_id: str) -> CaseFile:
    """The job's rows, its stored document and the custody of its model (recorded, or looked up)."""
    if not is_partition_key(job_id):
        raise UnknownJobError(f"not a job id (expected v_ + 16 hex digits): {job_id!r}")
    job = db.get_job(job_id)
    if job is None:
        raise UnknownJobError(f"no job {job_id}")
    if job["status"] in ("queued", "running"):
        raise JobNotFinishedError(f"job {job_id} is {job['status']}: its report exists once it has finished")
    result = job.get("result")
    document = result if isinstance(result, dict) and result.get("stage") != "features" else None
    if job["status"] != "completed":
        document = None  # a failed job's report states its reason, not a stale verdict
    # A job whose video row is gone still gets a report: every custody field then reads "–".
    video = {c.name: None for c in videos.columns} | (db.get_video(job_id) or {})
    return CaseFile(job=job, video=video, document=document, custody=custody_of(settings, document))


def render_case(settings: Settings, db: ResultsDB, store: ArtifactStore, job_id: str) -> str:
    """The self-contained HTML case report of one finished job."""
    return render_html(gather_case(settings, db, job_id), settings, store)


def render_html(case: CaseFile, settings: Settings, store: ArtifactStore) -> str:
    # Reused from the job page so the two never disagree: the timeline's plot and the banners.
    from dagster_deepfake.api.page import _banners, _timeline

    doc = _validated(case)
    pred = doc.prediction if doc else None
    adds = doc.additions if doc else None
    top_k = settings.explain.top_k_frames
    frames = sorted(pred.anomalous_frames, key=lambda f: f.confidence, reverse=True)[:top_k] if pred else []
    windows = adds.windows if adds else []
    moments = []
    for n, f in enumerate(frames, 1):
        face_name = _heat_map_name(f.saliency_url)
        window = next((w for w in windows if w.start <= f.timestamp < w.end), None)
        moments.append(
            {
                "n": n,
                "frame_id": f.frame_id,
                "timestamp": f.timestamp,
                "confidence": f.confidence,
                "window": window,
                "face_src": _inline(store, case.job_id, face_name),
                "frame_src": _inline(store, case.job_id, _frame_name(face_name)),
            }
        )
    banners = _banners(doc)
    return _template().render(
        case=case,
        job=case.job,
        video=case.video,
        doc=doc,
        pred=pred,
        meta=doc.metadata if doc else None,
        adds=adds,
        banners=banners,
        moments=moments,
        faces=_faces(case.document, store, case.job_id),
        timeline=_timeline(doc, settings.model.classification.threshold, frames) if doc else None,
        # "<" escaped so the JSON can never close its <script> block; it parses back the same.
        document_json=canonical_json(case.document).decode().replace("<", "\\u003c")
        if case.document
        else None,
        document_sha256=document_sha256(case.document) if case.document else None,
        rendered_at=_when(dt.datetime.now(dt.UTC)),
        software=_software(),
        when=_when,
        fmt=_fmt,
        pct=lambda v: f"{100 * v:.1f} %",
        size=_size,
    )


# -- pieces -----------------------------------------------------------------------------------------
def _validated(case: CaseFile) -> ResultDocument | None:
    if case.document is None:
        return None
    try:
        return ResultDocument.model_validate(case.document)
    except ValueError as exc:
        raise CaseReportError(
            f"job {case.job_id}: the stored result does not match the result schema"
        ) from exc


def _heat_map_name(url: str | None) -> str | None:
    name = posixpath.basename(urlparse(url).path) if url else None
    return name if name and layout.SALIENCY_NAME_RE.match(name) else None


def _frame_name(face_name: str | None) -> str | None:
    """The whole-frame heat map beside a face heat map (`…_face.png` → `…_frame.png`)."""
    if not face_name or not face_name.endswith("_face.png"):
        return None
    return face_name.removesuffix("_face.png") + "_frame.png"


def _inline(store: ArtifactStore, job_id: str, name: str | None) -> str | None:
    """A heat map from the artifact store as a data: URI; None if it is not there.

    A whole-frame map of a large video (a 1080p PNG is megabytes) is shown as a 960-px JPEG so
    the report stays small enough to mail and print; the PNG itself stays in the artifact store.
    """
    if name is None:
        return None
    try:
        data = store.read_bytes(layout.saliency_rel(job_id, name))
    except (FileNotFoundError, ValueError):
        return None
    image = decode_image(data) if len(data) > _INLINE_PNG_BYTES else None
    if image is not None and image.shape[1] > _INLINE_WIDTH:
        return "data:image/jpeg;base64," + b64encode(thumbnail(image, width=_INLINE_WIDTH)).decode()
    return "data:image/png;base64," + b64encode(data).decode()


# What the faces table reads of each `additions.faces` entry (report.FaceTrack); absent keys read "–".
_FACE_KEYS = dict.fromkeys(
    ("track_id", "primary", "frames", "first_timestamp", "last_timestamp", "p_fake", "confidence_interval")
    + ("overall_class", "reason")
)


def _faces(document: dict[str, Any] | None, store: ArtifactStore, job_id: str) -> list[dict[str, Any]]:
    """`additions.faces` (faces as tracks) read from the stored document, each track's heat maps
    inlined; [] under the one-face rule."""
    faces = ((document or {}).get("additions") or {}).get("faces") or []
    rows = []
    for face in faces if isinstance(faces, list) else []:
        if not isinstance(face, dict):
            continue
        thumb = face.get("thumbnail")
        maps = [
            {"src": src, "timestamp": f.get("timestamp"), "confidence": f.get("confidence")}
            for f in face.get("anomalous_frames") or []
            if isinstance(f, dict) and (src := _inline(store, job_id, _heat_map_name(f.get("saliency_url"))))
        ]
        thumb_ok = isinstance(thumb, str) and _IMAGE_URI_RE.match(thumb)
        rows.append({**_FACE_KEYS, **face, "thumbnail": thumb if thumb_ok else None, "maps": maps})
    return rows


def _software() -> str:
    from dagster_deepfake.report import _software_version

    return _software_version() or "dagster-deepfake (version unknown)"


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "–" if value is None else str(value)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n:,} bytes"


_compiled = None


def _template():
    global _compiled
    if _compiled is None:
        import jinja2

        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters["runtime_label"] = runtime_label
        _compiled = env.from_string(TEMPLATE)
    return _compiled
