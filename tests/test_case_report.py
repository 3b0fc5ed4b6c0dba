"""The case report (docs/API.md "Case report"): a real job through the API, the upload sensor and every
per-video asset, then its report rendered in headless Chromium, printed to PDF and written by the CLI;
a failed job's report; Chromium missing or hanging."""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import dagster as dg
import httpx
import numpy as np
import pytest

from code_location.definitions import ASSET_CHECKS, PER_VIDEO_ASSETS, analyze_video_job
from commands.cli import main
from dagster_deepfake.casereport import render_case
from dagster_deepfake.casereport.pdf import CHROMIUM_ENV, PdfRenderError, chromium_args, html_to_pdf
from dagster_deepfake.config import ModelConfig, Settings
from dagster_deepfake.media.images import encode_jpeg, encode_png
from dagster_deepfake.report import Additions
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB
from dagster_deepfake.synthetic import generate_clip
from resources import default_resources
from sensors.uploads import build_upload_sensor
from tests.conftest import serving_api

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make setup installs it)"
)
_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


@pytest.fixture
def tiny(settings: Settings, tmp_path: Path) -> Settings:
    settings.model = ModelConfig(registry_config="tiny")  # the tiny variant alone
    settings.platform.model_dir = str(tmp_path / "models")
    return settings


def _upload_and_run(base: str, settings: Settings, clip: Path, name: str) -> str:
    """What a user and the daemon do: upload, one sensor tick, the requested run. Returns the job id."""
    with open(clip, "rb") as fh:
        response = httpx.post(f"{base}/analyze-video", files={"file": (name, fh, "video/mp4")}, timeout=60)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    resources = default_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        tick = build_upload_sensor(analyze_video_job, 15)(ctx)
    assert [r.partition_key for r in tick.run_requests] == [job_id]
    instance.add_dynamic_partitions("videos", [job_id])
    dg.materialize(
        [*PER_VIDEO_ASSETS, *ASSET_CHECKS],
        partition_key=job_id,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    return job_id


def _chromium_dom(url: str, tmp_path: Path) -> str:
    args = [*chromium_args(CHROMIUM, str(tmp_path / "chromium-profile")), "--dump-dom", url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


def _cell(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, element_id
    return html_lib.unescape(match.group(1)).strip()


def _canonical_sha(document: dict) -> str:
    """Written out here, not imported: the report's promise is checked against its documentation."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@needs_chromium
def test_case_report_of_a_completed_job(tiny: Settings, db: ResultsDB, tmp_path: Path, monkeypatch) -> None:
    clip = generate_clip(tmp_path / "talk.mp4", seed=44, duration=4.0, width=320, height=240, audio="speech")
    data = Path(clip.path).read_bytes()
    with serving_api(tiny) as base:
        job_id = _upload_and_run(base, tiny, Path(clip.path), "interview 1.mp4")
        job = db.get_job(job_id)
        assert job["status"] == "completed", job.get("reason")
        document = job["result"]
        frames = document["prediction"]["anomalous_frames"]
        assert 2 <= len(frames) <= 5

        served = httpx.get(f"{base}/jobs/{job_id}/report", timeout=60)
        assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in served.headers["content-security-policy"]
        dom = _chromium_dom(f"{base}/jobs/{job_id}/report", tmp_path)
        pdf = httpx.get(f"{base}/jobs/{job_id}/report.pdf", timeout=120)

    # Rendered by a real browser: the verdict, and the untrained model said before the first page break.
    verdict = document["prediction"]["overall_class"].upper()
    assert f'class="verdict {verdict.lower()}">{verdict}<' in dom
    first_page = dom.split('class="page"', 1)[0]
    assert "UNTRAINED MODEL" in first_page and "Chain of custody" in first_page

    # Heat maps: a face and a whole-frame map per moment, inlined, each a PNG that decodes.
    images = re.findall(r'<img [^>]*src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(images) == 2 * len(frames) and dom.count('class="moment heat-map"') == len(frames)
    for b64 in images:
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape[0] >= 64
    for f in frames:  # each moment with its time and its window's P(fake); the timeline numbers it
        assert f"frame {f['frame_id']} at <strong>{f['timestamp']:.2f} s</strong>" in dom
        assert f"window P(fake) <strong>{f['confidence']:.3f}</strong>" in dom
    assert len({f["timestamp"] for f in frames}) == len(frames)  # distinct moments

    # Custody: every field present and each checkable against the thing itself.
    assert _cell(dom, "input-sha256") == hashlib.sha256(data).hexdigest()
    assert _cell(dom, "input-size").startswith(f"{len(data):,} bytes")
    assert "interview 1.mp4" in dom and "<td>api</td>" in dom  # original name, uploader
    model_version = document["metadata"]["model_version"]
    assert model_version in dom
    weights = next(Path(tiny.platform.model_dir).glob("untrained-*/model.safetensors"))
    assert hashlib.sha256(weights.read_bytes()).hexdigest() in dom
    manifest = json.loads((weights.parent / "manifest.json").read_text())
    assert manifest["config_hash"] in dom and "untrained (random initialisation)" in dom
    # Recorded when the verdict was made (additions.provenance), and said to be.
    provenance = document["additions"]["provenance"]
    assert provenance["checkpoints"][0]["weights_sha256"] == manifest["weights_sha256"]
    assert _cell(dom, "settings-sha256") == provenance["settings_sha256"]
    assert 'id="custody-source"><strong>at analysis</strong>' in dom.split('class="page"', 1)[0]
    assert document["additions"]["software_version"].startswith("dagster-deepfake ")
    assert document["additions"]["software_version"] in dom
    for label in ("uploaded", "analysis", "config hash", "weights provenance", "software version"):
        assert f'<td class="k">{label}</td>' in dom
    assert _STAMP.search(dom.split("uploaded", 1)[1])  # the upload time, not a dash

    # The document's own SHA-256 matches the stored document and the copy embedded in the report.
    stated = _cell(dom, "document-sha256")
    assert stated == _canonical_sha(document)
    embedded = re.search(r'<script type="application/json" id="result-document">(.*?)</script>', dom, re.S)
    assert embedded and _canonical_sha(json.loads(embedded.group(1))) == stated

    # A real PDF.
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and pdf.content.rstrip().endswith(b"%%EOF")
    pages = re.findall(rb"/Type\s*/Page\b", pdf.content)
    assert len(pages) >= 2  # custody on page one, the evidence after its page break
    assert len(re.findall(rb"/Subtype\s*/Image", pdf.content)) >= 2 * len(frames)  # the heat maps are in it

    # The CLI writes the same report (apart from when it was made), the PDF and the document.
    monkeypatch.setenv("DAGSTER_DEEPFAKE_POSTGRES_URL", tiny.platform.postgres_url)
    monkeypatch.setenv("DAGSTER_DEEPFAKE_ARTIFACT_ROOT", tiny.platform.artifact_root)
    monkeypatch.setenv("DAGSTER_DEEPFAKE_MODEL_DIR", tiny.platform.model_dir)
    out_html, out_pdf, out_doc = tmp_path / "case.html", tmp_path / "case.pdf", tmp_path / "doc.json"
    assert main(["report", job_id, "--out", str(out_html), "--document", str(out_doc)]) == 0
    assert _STAMP.sub("T", out_html.read_text()) == _STAMP.sub("T", served.text)
    assert hashlib.sha256(out_doc.read_bytes()).hexdigest() == stated
    assert main(["report", job_id, "--out", str(out_pdf)]) == 0
    assert out_pdf.read_bytes().startswith(b"%PDF-")

    # For a person to look at once (docs: the note describes the first page).
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            *chromium_args(CHROMIUM, str(tmp_path / "p2")),
            "--window-size=900,1270",
            f"--screenshot={shot}",
            out_html.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000
    (tmp_path.parent / "last-case-report.png").write_bytes(shot.read_bytes())


@needs_chromium
def test_case_report_of_a_failed_job_states_the_reason(tiny: Settings, db: ResultsDB, tmp_path: Path) -> None:
    clip = generate_clip(tmp_path / "empty.mp4", seed=2, duration=2.0, width=320, height=240, num_faces=0)
    with serving_api(tiny) as base:
        job_id = _upload_and_run(base, tiny, Path(clip.path), "empty.mp4")
        job = db.get_job(job_id)
        assert job["status"] == "failed" and "no face" in job["reason"]
        dom = _chromium_dom(f"{base}/jobs/{job_id}/report", tmp_path)
        pdf = httpx.get(f"{base}/jobs/{job_id}/report.pdf", timeout=120)
    assert "ANALYSIS FAILED" in dom and html_lib.escape(job["reason"], quote=False) in dom
    assert _cell(dom, "input-sha256") == hashlib.sha256(Path(clip.path).read_bytes()).hexdigest()
    assert (
        "no result document" in _cell(dom, "document-sha256")
        and "application/json" not in dom  # no document to embed
    )
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")


def test_unknown_and_unfinished_jobs(tiny: Settings, db: ResultsDB, monkeypatch) -> None:
    job_id = "v_00000000000000ee"
    db.create_job(job_id, job_id, "file:///bucket/x.mp4")  # queued
    with serving_api(tiny) as base:
        assert httpx.get(f"{base}/jobs/v_00000000000000ef/report", timeout=10).status_code == 404
        queued = httpx.get(f"{base}/jobs/{job_id}/report", timeout=10)
        assert queued.status_code == 409 and "queued" in queued.json()["detail"]
        db.set_job_status(job_id, "failed", reason="not a video: a PNG image")
        # No Chromium: the HTML still comes, the PDF is a clear 503.
        monkeypatch.setenv(CHROMIUM_ENV, "/nonexistent/chromium")
        assert httpx.get(f"{base}/jobs/{job_id}/report", timeout=10).status_code == 200
        missing = httpx.get(f"{base}/jobs/{job_id}/report.pdf", timeout=10)
    assert missing.status_code == 503 and "Chromium" in missing.json()["detail"]
    assert "\n" not in missing.json()["detail"]


def test_a_hanging_browser_is_stopped_by_the_timeout(tmp_path: Path) -> None:
    fake, pid_file = tmp_path / "chromium", tmp_path / "child.pid"
    # A "browser" that never prints and leaves a helper process behind: the whole group must go.
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nexec sleep 300\n")
    fake.chmod(0o755)
    with pytest.raises(PdfRenderError, match="within 1 s"):
        html_to_pdf("<p>x</p>", timeout=1, chromium=str(fake))
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif("faces" not in Additions.model_fields, reason="faces as tracks not in the document yet")
def test_faces_as_tracks_are_a_table_with_their_heat_maps(tiny: Settings, db: ResultsDB) -> None:
    """`additions.faces` (another part of issue 18 fills it) renders as one row per face; what the
    document says is escaped (a file name or reason is data, never markup)."""
    job_id = "v_00000000000000fa"
    store = ArtifactStore(tiny.platform.artifact_root)
    face_png = encode_png(np.full((32, 32, 3), 200, np.uint8))
    store.write_bytes(layout.saliency_rel(job_id, "track001_frame_000004_face.png"), face_png)
    thumb = (
        "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(np.zeros((16, 16, 3), np.uint8))).decode()
    )
    frame = {
        "frame_id": 4,
        "timestamp": 0.8,
        "confidence": 0.91,
        "saliency_url": f"/jobs/{job_id}/saliency/track001_frame_000004_face.png",
    }
    track = {
        "primary": True,
        "scored": True,
        "frames": 25,
        "first_frame": 0,
        "last_frame": 24,
        "first_timestamp": 0.0,
        "last_timestamp": 4.8,
        "p_fake": 0.91,
        "confidence_interval": [0.88, 0.93],
        "overall_class": "fake",
        "bbox": [10.0, 10.0, 60.0, 60.0],
        "thumbnail": thumb,
        "windows": [{"window_id": 0, "start": 0.0, "end": 1.0, "p_fake": 0.91}],
        "anomalous_frames": [frame],
    }
    short = {
        **track,
        "track_id": 2,
        "primary": False,
        "scored": False,
        "reason": "<b>3 frames</b> < 5",
        "frames": 3,
        "p_fake": None,
        "confidence_interval": None,
        "overall_class": None,
        "thumbnail": "javascript:alert(1)",
        "windows": [],
        "anomalous_frames": [],
    }
    document = {
        "job_id": job_id,
        "status": "completed",
        "prediction": {
            "overall_class": "fake",
            "overall_confidence": 0.91,
            "manipulation_confidence": 0.91,
            "modality_agreement": None,
            "confidence_interval": [0.88, 0.93],
            "anomalous_frames": [frame],
        },
        "metadata": {
            "processing_time_sec": 2.0,
            "video_duration_sec": 5.0,
            "frames_analyzed": 25,
            "model_version": "tiny-trained-x",
            "ensemble_size": 1,
        },
        "additions": {
            "video_id": job_id,
            "file_name": "<script>x</script>.mp4",
            "modalities_used": ["video"],
            "pretrained": {"audio_encoder": True, "video_backbone": True},
            "weights": "trained",
            "trained_on": "synthetic-demo (data 0123)",
            "interval_method": "window_bootstrap",
            "windows": track["windows"],
            "faces": [{**track, "track_id": 1}, short],
        },
    }
    db.upsert_video(
        video_id=job_id,
        sha256="ab" * 32,
        source_uri="file:///b/x.mp4",
        file_name="<script>x</script>.mp4",
        uploader="api",
        size_bytes=1234,
    )
    db.create_job(job_id, job_id, "file:///b/x.mp4")
    db.set_job_status(job_id, "completed", result=document)
    page = render_case(tiny, db, store, job_id)
    assert (
        'class="grid faces"' in page and page.count('<tr><td><img class="thumb"') == 1
    )  # the bad URI dropped
    assert "(decides the verdict)" in page and "not scored: &lt;b&gt;3 frames&lt;/b&gt; &lt; 5" in page
    assert page.count('class="thumb track-map"') == 1 and base64.b64encode(face_png).decode() in page
    markup = page.split('<script type="application/json"', 1)[0]  # the embedded document is data
    assert "<script>x" not in markup and "javascript:" not in markup and "<script" not in markup
    first_page = page.split('class="page"', 1)[0]
    assert "TRAINED ON SYNTHETIC DATA (synthetic-demo (data 0123))" in first_page  # said on page one
    assert "tiny-trained-x: <strong>not found</strong>" in page  # a checkpoint it cannot find is said so
    assert "<strong>at report time</strong>" in page  # a document without recorded provenance


def test_the_demo_prints_where_each_report_is(tiny: Settings, db: ResultsDB, tmp_path: Path) -> None:
    from rich.console import Console

    from commands.report import print_case_reports

    failed, queued = "v_00000000000000da", "v_00000000000000db"
    for job_id in (failed, queued):
        db.create_job(job_id, job_id, "file:///bucket/x.mp4")
    db.set_job_status(failed, "failed", reason="no face found")
    console = Console(record=True, width=200)
    print_case_reports(tiny, {failed: "empty.mp4", queued: "late.mp4"}, tmp_path / "reports", console)
    said = console.export_text()
    assert (
        str(tmp_path / "reports" / f"{failed}.html") in said
        and "no face found" in (tmp_path / "reports" / f"{failed}.html").read_text()
    )
    assert "late.mp4" in said and "is queued" in said and "/jobs/<video_id>/report" in said


def test_a_large_frame_heat_map_is_inlined_as_a_smaller_jpeg(tiny: Settings) -> None:
    from dagster_deepfake.casereport import _inline

    store = ArtifactStore(tiny.platform.artifact_root)
    job_id = "v_00000000000000fb"
    noisy = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    store.write_bytes(layout.saliency_rel(job_id, "frame_000001_frame.png"), encode_png(noisy))
    small = np.full((240, 320, 3), 90, np.uint8)
    store.write_bytes(layout.saliency_rel(job_id, "frame_000001_face.png"), encode_png(small))
    big = _inline(store, job_id, "frame_000001_frame.png")
    assert big.startswith("data:image/jpeg;base64,")
    image = cv2.imdecode(np.frombuffer(base64.b64decode(big.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (540, 960)
    assert _inline(store, job_id, "frame_000001_face.png").startswith("data:image/png;base64,")  # as stored
    assert (
        _inline(store, job_id, "frame_000002_face.png") is None and _inline(store, job_id, "../x.png") is None
    )


def _trained_checkpoint(folder: Path, seed: int, data: str) -> None:
    """A tiny checkpoint whose manifest says it was trained on `data` (the weights are random)."""
    from dagster_deepfake.models.checkpoint import build_untrained, save_checkpoint

    model, manifest = build_untrained("tiny", seed=seed)
    fields = {"trained": True, "training_data": data, "training_data_hash": f"{seed}" * 12}
    save_checkpoint(
        folder, model, manifest.model_copy(update={**fields, "model_version": f"tiny-trained-{seed}"})
    )


def test_provenance_is_recorded_at_analysis_and_reported_after_the_checkpoints_are_gone(
    tiny: Settings, db: ResultsDB, tmp_path: Path
) -> None:
    from dagster_deepfake.analyze import analyze_file
    from dagster_deepfake.models.onnx_backbone import use_onnx_backbone
    from dagster_deepfake.provenance import settings_sha256

    models = Path(tiny.platform.model_dir)
    # An ensemble: the serving checkpoint trained on real data, a member on synthetic clips.
    folders = {"ffpp-real": models / "current", "synthetic-demo": models / "ensemble" / "m1"}
    for seed, (data, folder) in enumerate(folders.items()):
        _trained_checkpoint(folder, seed, data)
    tiny.inference.ensemble_size = 2
    clip = generate_clip(tmp_path / "talk.mp4", seed=5, duration=2.0, width=320, height=240, audio="speech")
    document = analyze_file(clip.path, tiny, device="cpu", out_dir=tmp_path / "heat").document

    provenance = document["additions"]["provenance"]
    assert [c["training_data"] for c in provenance["checkpoints"]] == list(folders)
    for record, folder in zip(provenance["checkpoints"], folders.values(), strict=True):
        weights = (folder / "model.safetensors").read_bytes()
        assert record["weights_sha256"] == hashlib.sha256(weights).hexdigest()
        assert record["weights_bytes"] == len(weights) and record["weights_sha256_from"] == "manifest"
        assert record["trained"] and record["model_version"] in document["metadata"]["model_version"]
    # The settings hash: over the verdict's sections, recomputable from the values recorded beside it.
    assert provenance["settings_sha256"] == settings_sha256(tiny) == _canonical_sha(provenance["settings"])
    assert provenance["settings_sections"] == ["model", "data", "inference", "explain"]
    assert "platform" not in provenance["settings"]
    # What computed it: this machine's precision, and the backbone runtime that follows from it.
    runtime = provenance["runtime"]
    assert runtime["device"] == "cpu" and runtime["precision"] == document["additions"]["precision"]
    onnx = use_onnx_backbone(
        tiny.platform.cpu_backbone, "cpu", reduced_precision=runtime["precision"] != "fp32"
    )
    assert runtime["backbone"] == ("onnxruntime" if onnx else "torch")
    stricter = tiny.model_copy(deep=True)
    stricter.model.classification.threshold = 0.7
    assert settings_sha256(stricter) != provenance["settings_sha256"]
    moved = tiny.model_copy(deep=True)
    moved.platform.model_dir, moved.platform.postgres_url = "/elsewhere/models", "postgresql://other/db"
    moved.model.video.weights = "/elsewhere/b3.pth"  # a host path inside `model`: left out too
    assert settings_sha256(moved) == provenance["settings_sha256"]

    # A report made where the checkpoints are not (they are deleted): the recorded facts are stated.
    job_id = document["job_id"]
    db.upsert_video(video_id=job_id, sha256="cd" * 32, source_uri="file:///b/talk.mp4", file_name="talk.mp4")
    db.create_job(job_id, job_id, "file:///b/talk.mp4")
    db.set_job_status(job_id, "completed", result=document)
    shutil.rmtree(models)
    store = ArtifactStore(tiny.platform.artifact_root)
    page = render_case(tiny, db, store, job_id)
    assert "<strong>at analysis</strong>" in page and "<strong>not found</strong>" not in page
    for record in provenance["checkpoints"]:
        assert (
            record["weights_sha256"] in page
            and "recorded in its manifest when the checkpoint was saved" in page
        )
    assert f'id="settings-sha256">{provenance["settings_sha256"]}<' in page
    backbone = {"torch": "torch", "onnxruntime": "ONNX Runtime (exported fp32 graph)"}[runtime["backbone"]]
    assert f'id="runtime">cpu, {runtime["precision"]}, face backbone on {backbone}<' in page
    first_page = page.split('class="page"', 1)[0]
    # The banner comes from the recorded training data of every member, not the first one's alone.
    assert "TRAINED ON SYNTHETIC DATA (synthetic-demo (data 111111111111))" in first_page

    # A document from before provenance was recorded: looked up at report time, and said so.
    del document["additions"]["provenance"]
    db.set_job_status(job_id, "completed", result=document)
    old = render_case(tiny, db, store, job_id)
    assert "<strong>at report time</strong>" in old and "tiny-trained-0: <strong>not found</strong>" in old
    assert "settings-sha256" not in old and provenance["checkpoints"][0]["weights_sha256"] not in old
    assert 'id="runtime"' not in old


def test_a_checkpoint_saved_before_hashes_were_recorded_is_hashed_when_loaded(tmp_path: Path) -> None:
    from dagster_deepfake.models.checkpoint import load_checkpoint
    from dagster_deepfake.provenance import checkpoint_record

    folder = tmp_path / "old"
    _trained_checkpoint(folder, 3, "ffpp")
    weights = (folder / "model.safetensors").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights_sha256"] == hashlib.sha256(weights).hexdigest()  # recorded at save time
    assert manifest["weights_bytes"] == len(weights)
    for key in ("weights_sha256", "weights_bytes"):  # as an older version wrote it
        del manifest[key]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _, loaded = load_checkpoint(folder)
    record = checkpoint_record(loaded)
    assert record["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert record["weights_sha256_from"] == "file" and record["weights_bytes"] == len(weights)
    assert record["training_data"] == "ffpp" and record["training_data_hash"] == "3" * 12
