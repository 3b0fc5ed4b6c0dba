"""The HTML page of one job (`GET /jobs/{id}/view`): status while pending, the report once completed."""

from __future__ import annotations

import math
import posixpath
from base64 import b64encode
from typing import Any
from urllib.parse import urlparse

import jinja2
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from dagster_deepfake.api.context import _ERRORS, ApiContext, Context, ErrorBody, Identity
from dagster_deepfake.api.jobs import (
    _SALIENCY_NAME_RE,
    JobId,
    _get_job_or_404,
    _is_features_only,
    _result_document,
)
from dagster_deepfake.models.serving import serving_model_version
from dagster_deepfake.report import AnomalousFrame, ResultDocument, runtime_label, synthetic_training
from dagster_deepfake.storage import layout

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
{% elif status == "completed" and features_only %}<p>A dataset video: its features (faces, flow, audio)
are cached for training. Dataset videos get no verdict unless someone asks for one
(<code>POST /jobs/{{ job_id }}/reanalyze</code>).</p>
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

{% if faces %}<h2>Faces ({{ faces | length }})</h2>
<div class="card"><table class="faces">
<tr class="muted"><td></td><td>face</td><td>seen</td><td>P(fake)</td><td>interval</td><td>verdict</td><td>heat maps</td></tr>
{% for f in faces %}<tr{% if f.primary %} style="font-weight:600"{% endif %}>
 <td><img src="{{ f.thumbnail }}" alt="face {{ f.track_id }}" width="56" height="56"></td>
 <td>#{{ f.track_id }}{% if f.primary %}<br><span class="muted">the verdict</span>{% endif %}</td>
 <td>{{ fmt(f.first_timestamp, 1) }}–{{ fmt(f.last_timestamp, 1) }} s<br><span class="muted">{{ f.frames }} frames</span></td>
 {% if f.scored %}<td class="{{ f.overall_class }}">{{ fmt(f.p_fake) }}</td>
 <td>{{ fmt(f.confidence_interval[0]) }} – {{ fmt(f.confidence_interval[1]) }}</td>
 <td class="{{ f.overall_class }}">{{ f.overall_class | upper }}</td>
 <td>{% for m in f.maps %}<img src="{{ m.src }}" alt="heat map of frame {{ m.frame_id }}" width="40" height="40"
   title="frame {{ m.frame_id }} · {{ fmt(m.timestamp, 2) }} s · P(fake) {{ fmt(m.confidence) }}"> {% endfor %}</td>
 {% else %}<td colspan="4" class="muted">not scored: {{ f.reason }}</td>{% endif %}
</tr>{% endfor %}
</table>
<div class="muted">faces as tracks (data.faces.max_faces &gt; 1): each face is scored on its own; the video's verdict,
 timeline and heat maps below are those of its most suspicious face</div></div>
{% endif %}

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
 {% for f in timeline.frames %}<circle cx="{{ f.x }}" cy="{{ f.y }}" r="4" fill="#b91c1c"><title>{{ f.label }}</title></circle>
 <text x="{{ f.x }}" y="{{ f.y - 7 }}" text-anchor="middle" style="fill:#b91c1c;font-weight:600">{{ f.n }}</text>{% endfor %}
</svg>
<div class="muted">blue: P(fake) of each window · dashed: threshold {{ timeline.threshold }} ·
 shaded: {{ timeline.anomalies | length }} audio anomal{{ "y" if timeline.anomalies | length == 1 else "ies" }} ·
 red dots: heat-map frames, numbered as below · seconds on the x axis</div>
{% else %}<span class="muted">no per-window scores in this result</span>{% endif %}</div>

<h2>Most suspicious frames (Grad-CAM)</h2>
{% if maps %}<div class="maps">{% for m in maps %}<figure><img src="{{ m.src }}" alt="heat map of frame {{ m.frame_id }}">
<figcaption><strong>{{ m.n }}</strong> · frame {{ m.frame_id }} · {{ fmt(m.timestamp, 2) }} s · P(fake) {{ fmt(m.confidence) }}</figcaption></figure>{% endfor %}</div>
{% else %}<p class="muted">no heat maps in this result</p>{% endif %}

<h2>Model and run</h2>
<div class="card"><table>
{% if meta %}<tr><td>model version</td><td><code>{{ meta.model_version }}</code>{% if serving and serving != meta.model_version %}
 <span class="muted">(serving now: <code>{{ serving }}</code>)</span>{% endif %}</td></tr>
<tr><td>ensemble size</td><td>{{ meta.ensemble_size }}</td></tr>
<tr><td>video duration</td><td>{{ fmt(meta.video_duration_sec, 1) }} s, {{ meta.frames_analyzed }} frames analysed</td></tr>
<tr><td>processing time</td><td>{{ fmt(meta.processing_time_sec, 1) }} s</td></tr>{% endif %}
{% if adds %}<tr><td>weights</td><td>{{ adds.weights }}{% if adds.trained_on %} (trained on {{ adds.trained_on }}){% endif %}</td></tr>
<tr><td>pretrained encoders</td><td>{% for k, v in adds.pretrained.items() %}{{ k }}: {{ "yes" if v else "no (random init)" }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
<tr><td>modalities used</td><td>{{ adds.modalities_used | join(", ") or "none" }}</td></tr>
<tr><td>temperature</td><td>{{ fmt(adds.temperature) }}</td></tr>
{% set runtime = adds.provenance.runtime if adds.provenance else none %}
{% if runtime %}<tr><td>computed with</td><td>{{ runtime | runtime_label }}</td></tr>{% endif %}{% endif %}
</table>
{% if adds and adds.warnings %}<h2>Warnings</h2><ul>{% for w in adds.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% endif %}
</div>
{% endif %}
<p class="muted">JSON: <a href="/jobs/{{ job_id }}">/jobs/{{ job_id }}</a></p>
</main></body></html>
"""

_jinja = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_jinja.filters["runtime_label"] = runtime_label
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
                "n": n,
                "x": x(f.timestamp),
                "y": y(f.confidence),
                "label": f"frame {f.frame_id} at {f.timestamp:.2f} s, P(fake) {f.confidence:.3f}",
            }
            for n, f in enumerate(frames, 1)
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
        rel = layout.saliency_rel(job_id, name)
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
    synthetic = synthetic_training(adds)  # from the recorded checkpoints' training data
    if synthetic:
        # Weights trained only on generated clips, said as loudly as untrained ones (docs/API.md).
        banners.append(
            f"TRAINED ON SYNTHETIC DATA ({synthetic}): the model has never seen a real manipulated "
            "face; this verdict shows the pipeline working, not a forensic finding."
        )
    random_init = sorted(k for k, v in adds.pretrained.items() if not v)
    if random_init:
        banners.append(
            "Randomly initialised encoder(s): "
            + ", ".join(random_init)
            + " (pretrained weights were not loaded)."
        )
    return banners


def _faces(ctx: ApiContext, job_id: str, doc: ResultDocument | None) -> list[dict[str, Any]]:
    """One row per face track (faces as tracks), heat maps inlined; empty under the one-face rule."""
    tracks = doc.additions.faces if doc and doc.additions else None
    rows = []
    for face in tracks or []:
        maps = [
            {"src": src, "frame_id": f.frame_id, "timestamp": f.timestamp, "confidence": f.confidence}
            for f in face.anomalous_frames
            if (src := _heat_map_src(ctx, job_id, f.saliency_url))
        ]
        rows.append({**face.model_dump(exclude={"windows", "anomalous_frames"}), "maps": maps})
    return rows


def render_view(ctx: ApiContext, row: dict[str, Any], video: dict[str, Any] | None) -> str:
    """The HTML page of one job: status while pending, the full report once completed."""
    doc = _result_document(row) if row["status"] == "completed" else None
    job_id = row["job_id"]
    serving = serving_model_version(ctx.settings)
    banners = _banners(doc)
    if doc and doc.metadata and serving and doc.metadata.model_version != serving:
        banners.insert(
            0,
            f"This verdict came from model {doc.metadata.model_version}, not from the model serving now "
            f"({serving}). Earlier and later analyses: /jobs/{job_id}/history; analyse again: "
            f"POST /jobs/{job_id}/reanalyze.",
        )
    pred = doc.prediction if doc else None
    top_k = ctx.settings.explain.top_k_frames
    frames = sorted(pred.anomalous_frames, key=lambda f: f.confidence, reverse=True)[:top_k] if pred else []
    maps = [
        {"n": n, "src": src, "frame_id": f.frame_id, "timestamp": f.timestamp, "confidence": f.confidence}
        for n, f in enumerate(frames, 1)
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
        banners=banners,
        serving=serving,
        features_only=_is_features_only(row),
        timeline=_timeline(doc, ctx.settings.model.classification.threshold, frames) if doc else None,
        maps=maps,
        faces=_faces(ctx, job_id, doc),
        fmt=_fmt,
        pct=_pct,
    )


def add_routes(app: FastAPI) -> None:
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
