"""The case report's jinja2 template: one page of verdict and custody, then the evidence (A4 in print)."""

# Everything is inline (CSS, images as data: URIs); the CSP meta forbids every fetch and every
# script, so the file shows the same wherever it is opened or printed.
TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Case report {{ case.job_id }} · dagster-deepfake</title>
<style>
 @page{size:A4;margin:14mm 14mm 16mm}
 body{font:12.5px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#fff}
 main{max-width:900px;margin:0 auto;padding:18px}
 h1{font-size:20px;margin:0} h2{font-size:15px;margin:18px 0 6px;border-bottom:1px solid #dde1e6;padding-bottom:3px}
 .muted{color:#5b6572} code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
 .banner{background:#b91c1c;color:#fff;padding:8px 12px;border-radius:6px;font-weight:600;margin:8px 0;
  -webkit-print-color-adjust:exact;print-color-adjust:exact}
 .box{border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;margin:8px 0}
 .verdict{font-size:28px;font-weight:700;letter-spacing:.02em} .fake{color:#b91c1c} .real{color:#15803d}
 .failed{color:#b45309}
 table{border-collapse:collapse;width:100%} td,th{padding:2px 10px 2px 0;vertical-align:top;text-align:left}
 th{font-weight:600;color:#374151} td.k{width:30%;color:#374151}
 table.grid td,table.grid th{border-bottom:1px solid #eef0f3;padding:3px 8px 3px 0}
 .page{break-before:page} .keep{break-inside:avoid}
 .moment{display:flex;gap:10px;align-items:flex-start;border:1px solid #dde1e6;border-radius:6px;padding:8px;margin:8px 0;break-inside:avoid}
 .moment img{height:150px;display:block} .moment .face{width:150px;object-fit:cover} .n{font-size:18px;font-weight:700;color:#b91c1c;min-width:22px}
 img.thumb{width:48px;height:48px;object-fit:cover}
 svg text{font-size:11px;fill:#5b6572}
 footer{margin-top:18px;font-size:11px}
</style></head>
<body><main>
<h1>Case report: deepfake analysis</h1>
<div class="muted">job <code>{{ case.job_id }}</code>{% if video.file_name %} · {{ video.file_name }}{% endif %}
 · report made {{ rendered_at }} by {{ software }}</div>
{% for text in banners %}<div class="banner" role="alert">⚠ {{ text }}</div>{% endfor %}

<div class="box">
{% if pred %}
 <div class="verdict {{ pred.overall_class }}">{{ pred.overall_class | upper }}</div>
 <div>calibrated confidence <strong>{{ pct(pred.overall_confidence) }}</strong> ·
  P(fake) <strong>{{ fmt(pred.manipulation_confidence) }}</strong>,
  interval {{ fmt(pred.confidence_interval[0]) }} – {{ fmt(pred.confidence_interval[1]) }}
  {% if adds %}<span class="muted">({{ adds.interval_method }})</span>{% endif %}</div>
 {% if pred.modality_agreement is not none %}<div>modality agreement {{ fmt(pred.modality_agreement) }}</div>{% endif %}
 {% if adds %}<div>weights: <strong>{{ adds.weights }}</strong>{% if adds.trained_on %}, trained on <strong>{{ adds.trained_on }}</strong>{% endif %}
  · encoders: {% for k, v in adds.pretrained.items() %}{{ k }} {{ "pretrained" if v else "random init" }}{% if not loop.last %}, {% endif %}{% endfor %}
  · modalities used: {{ adds.modalities_used | join(", ") or "none" }}</div>{% endif %}
{% elif job.status == "failed" %}
 <div class="verdict failed">ANALYSIS FAILED</div>
 <p>Reason: <strong>{{ job.reason or "no reason recorded" }}</strong></p>
 <p class="muted">No verdict was given. A failure caused by the input is final; the input's custody below
 still identifies exactly which file was refused.</p>
{% elif case.features_only %}
 <div class="verdict">NO VERDICT</div>
 <p>A dataset video: its features are cached for training; it was not given a verdict.</p>
{% else %}
 <div class="verdict">NO VERDICT</div><p>Status {{ job.status }}; no result document was stored.</p>
{% endif %}
</div>

<h2>Chain of custody</h2>
<table class="keep">
<tr><th colspan="2">Input</th></tr>
<tr><td class="k">SHA-256</td><td class="hash" id="input-sha256">{{ video.sha256 or "–" }}</td></tr>
<tr><td class="k">size</td><td id="input-size">{{ size(video.size_bytes) }}</td></tr>
<tr><td class="k">original name</td><td>{{ video.file_name or "–" }}</td></tr>
<tr><td class="k">uploader</td><td>{{ video.uploader or "–" }}</td></tr>
<tr><td class="k">source</td><td><code>{{ video.source_uri or job.source_uri or "–" }}</code></td></tr>
<tr><td class="k">uploaded</td><td>{{ when(video.created_at) }}</td></tr>
<tr><td class="k">analysis</td><td>job submitted {{ when(job.submitted_at) }} · started {{ when(job.started_at) }}
 · finished {{ when(job.finished_at) }}{% if job.run_id %} · Dagster run <code>{{ job.run_id }}</code>{% endif %}</td></tr>
<tr><th colspan="2">Model</th></tr>
{% if meta %}<tr><td class="k">model version</td><td><code>{{ meta.model_version }}</code>{% if meta.ensemble_size > 1 %} (ensemble of {{ meta.ensemble_size }}){% endif %}</td></tr>{% endif %}
{% set custody = case.custody %}
{% if meta %}<tr><td class="k">recorded</td><td id="custody-source">{% if custody.recorded %}<strong>at analysis</strong>: the checkpoints and settings
 below are those the verdict was made with, as the result document recorded them (<code>additions.provenance</code>){% else %}<strong>at report time</strong>:
 this result document predates recorded provenance; the checkpoint below is the one found now under the model folder by its model version,
 hashed when this report was made{% endif %}</td></tr>
<tr><td class="k">config hash</td><td>{% if custody.settings_sha256 %}<code class="hash" id="settings-sha256">{{ custody.settings_sha256 }}</code>
 <span class="muted">(SHA-256 of the settings {{ custody.settings_sections | join(", ") }} as canonical JSON; the values are in the embedded document)</span>
 {%- else %}not recorded <span class="muted">(only the architecture hash below is known)</span>{% endif %}</td></tr>{% endif %}
{% if custody.runtime %}<tr><td class="k">computed with</td><td id="runtime">{{ custody.runtime | runtime_label }}</td></tr>{% endif %}
{% for c in custody.checkpoints %}
<tr><td class="k">checkpoint{% if custody.checkpoints | length > 1 %} {{ loop.index }}{% endif %}</td><td><code>{{ c.model_version }}</code>{% if c.path %} at <code>{{ c.path }}</code>{% endif %}</td></tr>
<tr><td class="k">checkpoint SHA-256</td><td class="hash checkpoint-sha256">{{ c.weights_sha256 or ("not recorded" if custody.recorded else "weights file missing") }}
 <span class="muted">(model.safetensors{% if c.weights_bytes %}, {{ size(c.weights_bytes) }}{% endif %}{% if c.weights_sha256_from == "manifest" %};
 recorded in its manifest when the checkpoint was saved{% elif c.weights_sha256_from == "file" %}; hashed when it was loaded for the analysis{% elif c.weights_sha256_from == "report" %};
 hashed at report time{% endif %})</span></td></tr>
<tr><td class="k">architecture hash</td><td><code>{{ c.config_hash or "–" }}</code> <span class="muted">(model variant {{ c.registry_config or "–" }})</span></td></tr>
<tr><td class="k">weights provenance</td><td>{{ "trained" if c.trained else "untrained (random initialisation)" }}{% if c.trained %} on
 {{ c.training_data or "unnamed data" }} (training data hash <code>{{ (c.training_data_hash or "–")[:16] }}</code>){% endif %};
 encoders: {% for k in ("audio_encoder", "video_backbone") %}{{ k }} {{ "pretrained" if c.pretrained.get(k) else "not pretrained" }}{% if not loop.last %}, {% endif %}{% endfor %}
 {% for name, source, sha in c.sources %}<br>{{ name }} from <code>{{ source or "–" }}</code>{% if sha %} (SHA-256 <code>{{ sha }}</code>){% endif %}{% endfor %}
 {% if c.created_at %}<br><span class="muted">checkpoint written {{ c.created_at }}</span>{% endif %}</td></tr>
{% endfor %}
{% for v in custody.missing %}<tr><td class="k">checkpoint</td><td>{{ v }}: <strong>not found</strong> under the model folder
 (its SHA-256 cannot be stated)</td></tr>{% endfor %}
{% if not meta %}<tr><td class="k">model</td><td class="muted">no verdict, so no model to name</td></tr>{% endif %}
<tr><th colspan="2">Software and document</th></tr>
<tr><td class="k">software version</td><td>{{ adds.software_version if adds and adds.software_version else "not recorded" }} (analysis) · {{ software }} (this report)</td></tr>
<tr><td class="k">result document SHA-256</td><td class="hash" id="document-sha256">{{ document_sha256 or "– (no result document)" }}</td></tr>
{% if document_sha256 %}<tr><td class="k"></td><td class="muted">SHA-256 of the stored result document as canonical JSON (keys sorted,
 separators "," and ":", UTF-8). The document is embedded in this file (<code>id="result-document"</code>);
 <code>dagster-deepfake report {{ case.job_id }} --document FILE</code> writes it.</td></tr>{% endif %}
</table>

{% if doc %}
<h2 class="page">Timeline: P(fake) per window</h2>
{% if timeline %}
<svg viewBox="0 0 {{ timeline.width }} {{ timeline.height }}" width="100%" role="img" aria-label="P(fake) per window over time">
 {% for a in timeline.anomalies %}<rect x="{{ a.x }}" y="{{ timeline.top }}" width="{{ a.w }}" height="{{ timeline.plot_h }}" fill="#f59e0b" fill-opacity="0.28"/>{% endfor %}
 {% for t in timeline.yticks %}<line x1="{{ timeline.left }}" x2="{{ timeline.right }}" y1="{{ t.y }}" y2="{{ t.y }}" stroke="#e5e7eb"/>
 <text x="{{ timeline.left - 6 }}" y="{{ t.y + 4 }}" text-anchor="end">{{ t.label }}</text>{% endfor %}
 <line x1="{{ timeline.left }}" x2="{{ timeline.right }}" y1="{{ timeline.threshold_y }}" y2="{{ timeline.threshold_y }}" stroke="#6b7280" stroke-dasharray="4 3"/>
 {% for t in timeline.xticks %}<text x="{{ t.x }}" y="{{ timeline.height - 6 }}" text-anchor="middle">{{ t.label }}</text>{% endfor %}
 <polyline points="{{ timeline.points }}" fill="none" stroke="#2563eb" stroke-width="1.5"/>
 {% for w in timeline.windows %}<line x1="{{ w.x1 }}" x2="{{ w.x2 }}" y1="{{ w.y }}" y2="{{ w.y }}" stroke="#1d4ed8" stroke-width="3"/>{% endfor %}
 {% for f in timeline.frames %}<circle cx="{{ f.x }}" cy="{{ f.y }}" r="4" fill="#b91c1c"/>
 <text x="{{ f.x }}" y="{{ f.y - 7 }}" text-anchor="middle" style="fill:#b91c1c;font-weight:600">{{ f.n }}</text>{% endfor %}
</svg>
<div class="muted">blue: P(fake) of each 1-s window · dashed: threshold {{ timeline.threshold }} · shaded: audio anomalies ·
 red, numbered: the heat-map moments below · seconds on the x axis</div>
{% else %}<p class="muted">no per-window scores in this result</p>{% endif %}

<h2>Most suspicious moments (Grad-CAM)</h2>
{% for m in moments %}
<div class="moment heat-map">
 <div class="n">{{ m.n }}</div>
 {% if m.face_src %}<img class="face" src="{{ m.face_src }}" alt="face heat map, frame {{ m.frame_id }}">{% endif %}
 {% if m.frame_src %}<img src="{{ m.frame_src }}" alt="frame heat map, frame {{ m.frame_id }}">{% endif %}
 <div>frame {{ m.frame_id }} at <strong>{{ fmt(m.timestamp, 2) }} s</strong><br>
  window P(fake) <strong>{{ fmt(m.confidence) }}</strong>
  {% if m.window %}<br>window {{ m.window.window_id }}: {{ fmt(m.window.start, 2) }}–{{ fmt(m.window.end, 2) }} s{% endif %}
  {% if not m.face_src %}<br><span class="muted">heat map file not found in the artifact store</span>{% endif %}</div>
</div>
{% else %}<p class="muted">no heat maps in this result</p>{% endfor %}

<h2>Audio anomalies</h2>
{% if adds and adds.audio_anomalies %}<table class="grid"><tr><th>from</th><th>to</th><th>kind</th><th>score</th></tr>
{% for a in adds.audio_anomalies %}<tr><td>{{ fmt(a.start, 2) }} s</td><td>{{ fmt(a.end, 2) }} s</td><td>{{ a.kind }}</td><td>{{ fmt(a.score, 2) }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">none{% if adds and "audio" not in adds.modalities_used %} (no usable speech: the audio branch was not used){% endif %}</p>{% endif %}

<h2>Faces</h2>
{% if faces %}<table class="grid faces"><tr><th></th><th>track</th><th>frames</th><th>seen</th><th>P(fake)</th><th>interval</th><th>verdict</th><th></th></tr>
{% for f in faces %}<tr><td>{% if f.thumbnail %}<img class="thumb" src="{{ f.thumbnail }}" alt="face {{ f.track_id }}">{% endif %}</td>
 <td>{{ f.track_id }}{% if f.primary %} <strong>(decides the verdict)</strong>{% endif %}</td><td>{{ f.frames }}</td>
 <td>{{ fmt(f.first_timestamp, 2) }}–{{ fmt(f.last_timestamp, 2) }} s</td><td>{{ fmt(f.p_fake) }}</td>
 <td>{% if f.confidence_interval %}{{ fmt(f.confidence_interval[0]) }} – {{ fmt(f.confidence_interval[1]) }}{% else %}–{% endif %}</td>
 <td>{{ f.overall_class or "" }}</td><td>{% if f.reason %}<span class="muted">not scored: {{ f.reason }}</span>{% endif %}</td></tr>
 {% if f.maps %}<tr><td></td><td colspan="7">{% for m in f.maps %}<img class="thumb track-map" src="{{ m.src }}" alt="heat map of face {{ f.track_id }}"
  title="{{ fmt(m.timestamp, 2) }} s, window P(fake) {{ fmt(m.confidence) }}"> {% endfor %}
  <span class="muted">this face's heat maps</span></td></tr>{% endif %}{% endfor %}</table>
{% elif adds %}<p>One face analysed{% if adds.face_coverage is not none %}, found in {{ pct(adds.face_coverage) }} of the sampled frames{% endif %}
 {%- if adds.skipped_frames and adds.skipped_frames.total %}; {{ adds.skipped_frames.total }} frames skipped
 ({% for k, v in adds.skipped_frames.by_reason.items() %}{{ k }}: {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}){% endif %}.</p>{% endif %}

<h2>Warnings</h2>
{% if adds and adds.warnings %}<ul>{% for w in adds.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% else %}<p class="muted">none</p>{% endif %}

<h2>Input and run</h2>
<table class="keep">
{% if adds and adds.probe %}<tr><td class="k">video</td><td>{{ adds.probe.container }}, {{ adds.probe.codec }}, {{ adds.probe.width }}×{{ adds.probe.height }},
 {{ fmt(adds.probe.fps, 2) }} fps, {{ fmt(adds.probe.duration, 2) }} s{% if adds.probe.rotation %}, rotated {{ adds.probe.rotation }}°{% endif %};
 audio: {{ adds.probe.audio_codec if adds.probe.has_audio else "none" }}</td></tr>{% endif %}
{% if meta %}<tr><td class="k">frames analysed</td><td>{{ meta.frames_analyzed }} of {{ fmt(meta.video_duration_sec, 1) }} s · processing {{ fmt(meta.processing_time_sec, 1) }} s</td></tr>{% endif %}
{% if adds %}<tr><td class="k">calibration</td><td>temperature {{ fmt(adds.temperature) }}{% if adds.p_fake_uncalibrated is not none %}, uncalibrated P(fake) {{ fmt(adds.p_fake_uncalibrated) }}{% endif %}
 {% if adds.p_fake_video_only is not none %}, video-only P(fake) {{ fmt(adds.p_fake_video_only) }}{% endif %}{% if adds.precision %}, {{ adds.precision }}{% endif %}</td></tr>
<tr><td class="k">switches</td><td>VAD {{ "on" if adds.vad_enabled else "off" }}, optical flow {{ "on" if adds.optical_flow_enabled else "off" }}</td></tr>{% endif %}
</table>
{% endif %}

<footer class="muted">dagster-deepfake case report · job {{ case.job_id }} · {{ rendered_at }}</footer>
{% if document_json %}<script type="application/json" id="result-document">{{ document_json | safe }}</script>{% endif %}
</main></body></html>
"""
