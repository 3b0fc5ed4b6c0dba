"""`analyze` (in-process) and the `analyze_video` assets run the same stages and the same document
builder: their result documents agree field by field, apart from timings and URLs.

The clip has speech, so the audio branch, VAD, modality agreement and audio anomalies are all
compared. Both paths serve the same untrained `tiny` checkpoint in fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dagster_deepfake.analyze import analyze_file, render_text
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.synthetic import generate_clip
from tests.test_pipeline_e2e import _run as run_per_video_assets

# Keys that say how long something took or where a file lies: they differ by nature.
VOLATILE = {"processing_time_sec", "timings_sec", "saliency_url"}


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            if key not in VOLATILE:
                out.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(value, list):
        out = {f"{prefix}[#]": len(value)}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


@pytest.mark.slow
def test_analyze_and_dagster_documents_agree(settings, db, tmp_path, monkeypatch):
    # fp32 on every CPU (this one may have native bf16): both paths then agree to 1e-5.
    monkeypatch.setattr("dagster_deepfake.models.inference.cpu_supports_bf16", lambda *a: False)
    settings.model = ModelConfig(
        registry_config="tiny"
    )  # the tiny variant alone (keys from the file would win)
    settings.platform.model_dir = str(tmp_path / "models")
    # Two members asked for, one checkpoint there: the model's own warnings are two (ensemble + untrained).
    settings.inference.ensemble_size = 2
    clip = generate_clip(tmp_path / "talk.mp4", seed=11, duration=3.0, width=320, height=240, audio="speech")

    analysis = analyze_file(clip.path, settings, device="cpu", out_dir=tmp_path / "heat")
    in_process = analysis.document
    video_id, result = run_per_video_assets(settings, db, clip.path)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    through_dagster = db.get_job(video_id)["result"]

    a, b = _flatten(in_process), _flatten(through_dagster)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    assert len(a) > 60  # the whole document, not a stub
    differ = []
    for key in sorted(a):
        x, y = a[key], b[key]
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=0, abs_tol=1e-5):
                differ.append((key, x, y))
        elif x != y:
            differ.append((key, x, y))
    assert not differ, differ[:10]

    # The provenance (checkpoints and settings of the verdict) is compared too, and it is there.
    assert (
        a["additions.provenance.checkpoints[#]"] == 1 and len(a["additions.provenance.settings_sha256"]) == 64
    )
    assert a["additions.provenance.checkpoints[0].weights_sha256_from"] == "manifest"
    # fp32 on the CPU: the backbone ran in ONNX Runtime (cpu_backbone auto), and the terminal says so
    # in the words the job page and the case report use (report.runtime_label).
    assert a["additions.provenance.runtime.backbone"] == "onnxruntime"
    assert "runtime    cpu, fp32, face backbone on ONNX Runtime (exported fp32 graph)\n" in render_text(
        analysis
    )
    # What the comparison rests on is there: speech was heard, windows and heat maps exist.
    assert in_process["additions"]["modalities_used"] == ["video", "audio"]
    assert in_process["prediction"]["modality_agreement"] is not None
    # One heat map per window (distinct moments, docs/CONFIG.md): 3 windows in a 3 s clip.
    windows = in_process["additions"]["windows"]
    assert len(in_process["prediction"]["anomalous_frames"]) == min(5, len(windows))
    assert in_process["additions"]["probe"]["codec"] == "h264"
    assert (
        len([w for w in in_process["additions"]["warnings"] if "ensemble_size" in w or "untrained" in w]) == 2
    )
    # The in-process heat maps are real files, the Dagster ones the API's route.
    for frame in in_process["prediction"]["anomalous_frames"]:
        assert Path(frame["saliency_url"].removeprefix("file://")).read_bytes()[:4] == b"\x89PNG"
    assert through_dagster["prediction"]["anomalous_frames"][0]["saliency_url"].startswith("/jobs/")
