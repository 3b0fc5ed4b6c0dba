"""Every reduced-precision or exported path against fp32 torch on the same inputs: |ΔP(fake)| ≤ 0.01
(`models.inference.BF16_MAX_P_FAKE_SHIFT`, issue 20).

The reduced paths are bf16 autocast for the face backbone and wav2vec2 (the default on CPUs
with native bf16, `default_bf16`), both through `predict_video` encoding the audio itself and
through the Dagster path's precomputed `audio_embeddings` stage. Emulated bf16 computes the same
numbers as native bf16 (only slower), so the check holds on any CPU. The bench repeats it on the
full-size contract model (`make bench`: |ΔP(fake)| on the 30 s 720p clip). The exported path
is the face backbone through ONNX Runtime in fp32 (`platform.cpu_backbone`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dagster_deepfake import stages
from dagster_deepfake.models import build_detector, get_model_config, inference
from dagster_deepfake.models.inference import BF16_MAX_P_FAKE_SHIFT, default_bf16, predict_video
from dagster_deepfake.models.onnx_backbone import FACES_PER_CALL, ONNX_SUBDIR, use_onnx_backbone
from dagster_deepfake.report import Provenance

SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    return model.eval()


def _video(seed: int, faces: int = 12, seconds: float = 3.0):
    """Face-like crops (smooth blobs, not noise), flow, speech-like audio and a partial VAD mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.exp(-(((yy - 32) / 18.0) ** 2 + ((xx - 32) / 14.0) ** 2))
    crops = np.stack(
        [
            np.clip(
                255 * (base[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 0.05, (64, 64, 3))), 0, 255
            )
            for _ in range(faces)
        ]
    ).astype(np.uint8)
    flow = rng.gamma(2.0, 0.5, size=(faces, 2)).astype(np.float32)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    waveform = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    waveform += rng.normal(0, 0.01, waveform.shape).astype(np.float32)
    mask = np.zeros(len(t), bool)
    mask[SAMPLE_RATE // 2 : int(2.5 * SAMPLE_RATE)] = True
    return crops, flow, waveform, mask, np.arange(faces) / 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_predict_video_matches_fp32(tiny, seed):
    crops, flow, waveform, mask, timestamps = _video(seed)
    kwargs = {"timestamps": timestamps, "frame_rate": 5.0, "batch_size": 5}
    fp32 = predict_video(tiny, crops, flow, waveform, mask, bf16=False, **kwargs)
    bf16 = predict_video(tiny, crops, flow, waveform, mask, bf16=True, **kwargs)
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    assert not np.array_equal(bf16.window_logits, fp32.window_logits)  # the reduced path really ran
    assert abs(bf16.p_fake - fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT
    assert abs(bf16.p_fake_video_only - fp32.p_fake_video_only) <= BF16_MAX_P_FAKE_SHIFT
    assert np.abs(bf16.window_probs - fp32.window_probs).max() <= BF16_MAX_P_FAKE_SHIFT
    assert bf16.audio_used and fp32.audio_used


def test_bf16_audio_embeddings_stage_matches_fp32(tiny):
    """The Dagster path: audio encoded once by the audio_embeddings stage, then the predictions."""
    crops, flow, waveform, mask, timestamps = _video(3)
    audio_in = stages.AudioInput(waveform, mask, [(0.5, 2.5)])
    reference = stages.audio_embeddings_stage(tiny, audio_in, "cpu", bf16=False)
    reduced = stages.audio_embeddings_stage(tiny, audio_in, "cpu", bf16=True)
    assert reference.features.dtype == reduced.features.dtype == np.float32
    assert (reference.valid == reduced.valid).all() and reference.used

    def p(emb, bf16):
        return predict_video(
            tiny,
            crops,
            flow,
            timestamps=timestamps,
            bf16=bf16,
            audio_features=emb.features,
            audio_valid=emb.valid,
        )

    fp32, bf16 = p(reference, False), p(reduced, True)
    assert abs(bf16.p_fake - fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT
    assert np.abs(bf16.window_probs - fp32.window_probs).max() <= BF16_MAX_P_FAKE_SHIFT


def test_the_default_precision_is_within_tolerance_of_fp32(tiny):
    """Whatever this machine picks by default (bf16 on native-bf16 CPUs, else fp32) agrees with fp32."""
    crops, flow, waveform, mask, timestamps = _video(4)
    default = predict_video(tiny, crops, flow, waveform, mask, timestamps=timestamps)
    fp32 = predict_video(tiny, crops, flow, waveform, mask, timestamps=timestamps, bf16=False)
    assert default.precision == ("bf16" if default_bf16("cpu") else "fp32")
    assert abs(default.p_fake - fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT


# -- The exported path: the face backbone through ONNX Runtime (models/onnx_backbone.py) ---------


@pytest.mark.parametrize("seed", [0, 5])
def test_onnx_backbone_predict_video_matches_torch_fp32(tiny, tmp_path, seed):
    crops, flow, waveform, mask, timestamps = _video(seed)
    kwargs = {"timestamps": timestamps, "frame_rate": 5.0, "batch_size": 5, "keep_feature_maps": True}
    torch_fp32 = predict_video(tiny, crops, flow, waveform, mask, bf16=False, **kwargs)
    exported = predict_video(
        tiny,
        crops,
        flow,
        waveform,
        mask,
        bf16=False,
        cpu_backbone="onnxruntime",
        model_dir=tmp_path,
        **kwargs,
    )
    assert (torch_fp32.backbone_runtime, exported.backbone_runtime) == ("torch", "onnxruntime")
    assert exported.precision == "fp32"
    assert len(list((tmp_path / ONNX_SUBDIR).glob("*.onnx"))) == 1  # the graph it ran
    assert abs(exported.p_fake - torch_fp32.p_fake) <= BF16_MAX_P_FAKE_SHIFT
    assert abs(exported.p_fake_video_only - torch_fp32.p_fake_video_only) <= BF16_MAX_P_FAKE_SHIFT
    assert np.abs(exported.window_probs - torch_fp32.window_probs).max() <= BF16_MAX_P_FAKE_SHIFT
    # Grad-CAM reads these maps: the same as torch's up to float rounding
    np.testing.assert_allclose(exported.feature_maps.numpy(), torch_fp32.feature_maps.numpy(), atol=1e-4)


def test_the_face_graph_runs_more_faces_than_one_call_takes(tiny, tmp_path):
    """predict_video hands over up to 30 faces; ONNX Runtime takes them FACES_PER_CALL at a time."""
    from dagster_deepfake.models.onnx_backbone import onnx_feature_maps

    crops = _video(11, faces=2 * FACES_PER_CALL + 3)[0]
    faces = tiny.preprocess_faces(crops)
    runner = onnx_feature_maps(tiny.frame_encoder, tmp_path, crops.shape[1])
    with torch.inference_mode():
        reference = tiny.frame_encoder.feature_maps(faces)
    maps = runner(faces)
    assert maps.shape == reference.shape
    np.testing.assert_allclose(maps.numpy(), reference.numpy(), atol=1e-4)
    assert not any(m.training for m in tiny.modules())  # exporting left the model in eval mode


def test_the_onnx_graph_is_exported_once_per_weights(tiny, tmp_path, monkeypatch):
    from dagster_deepfake.models import onnx_backbone

    crops, flow, _, _, _ = _video(6)
    predict_video(tiny, crops, flow, bf16=False, cpu_backbone="onnxruntime", model_dir=tmp_path)
    (graph,) = (tmp_path / ONNX_SUBDIR).glob("*.onnx")

    # A new process (no session cached) with the same weights finds the graph and exports nothing.
    monkeypatch.setattr(onnx_backbone, "_runners", onnx_backbone.weakref.WeakKeyDictionary())

    def no_export(*_args, **_kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backbone, "export_feature_maps", no_export)
    again = predict_video(tiny, crops, flow, bf16=False, cpu_backbone="onnxruntime", model_dir=tmp_path)
    assert again.backbone_runtime == "onnxruntime"
    monkeypatch.undo()

    other, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=1)  # other weights
    predict_video(other.eval(), crops, flow, bf16=False, cpu_backbone="onnxruntime", model_dir=tmp_path)
    graphs = sorted((tmp_path / ONNX_SUBDIR).glob("*.onnx"))
    assert len(graphs) == 2 and graph in graphs
    assert not list((tmp_path / ONNX_SUBDIR).glob("*.tmp"))  # written under a temp name, renamed


def test_exporting_keeps_the_graphs_used_last_and_drops_the_rest(tiny, tmp_path):
    """Graphs of checkpoints retrained away do not pile up: a new export keeps the KEEP_GRAPHS
    used last (loading one touches it) and deletes the rest and dead exports' temp files."""
    import os
    import time

    from dagster_deepfake.models.onnx_backbone import KEEP_GRAPHS, onnx_feature_maps

    folder = tmp_path / ONNX_SUBDIR
    folder.mkdir()
    old = time.time() - 7200
    stale = [folder / f"other-{i}.onnx" for i in range(KEEP_GRAPHS + 2)]
    for i, path in enumerate(stale):  # other-0 used longest ago
        path.write_bytes(b"not a graph")
        os.utime(path, (old + i, old + i))
    dead_export = folder / "x.onnx.123.456.tmp"
    dead_export.write_bytes(b"")
    os.utime(dead_export, (old, old))
    running_export = folder / "y.onnx.789.1.tmp"  # another process exporting right now
    running_export.write_bytes(b"")

    assert onnx_feature_maps(tiny.frame_encoder, tmp_path, 64) is not None
    left = set(folder.iterdir())
    (graph,) = left - set(stale) - {running_export}
    assert graph.suffix == ".onnx"
    assert left == {graph, running_export, *stale[-(KEEP_GRAPHS - 1) :]}
    assert not dead_export.exists()


def test_the_backbone_runtime_follows_the_setting_and_the_precision():
    assert use_onnx_backbone("auto", "cpu", reduced_precision=False)  # fp32 CPU: no native bf16
    assert not use_onnx_backbone("auto", "cpu", reduced_precision=True)  # native bf16: torch bf16
    assert use_onnx_backbone("onnxruntime", "cpu", reduced_precision=False)
    assert not use_onnx_backbone("torch", "cpu", reduced_precision=False)
    assert not use_onnx_backbone("onnxruntime", "cuda", reduced_precision=True)
    assert not use_onnx_backbone("auto", "cuda", reduced_precision=False)


def test_the_predictions_stage_takes_the_backbone_runtime_from_the_settings(tiny, tmp_path, monkeypatch):
    from dagster_deepfake.config import load_settings
    from dagster_deepfake.models.checkpoint import CheckpointManifest

    crops, flow, _, _, timestamps = _video(7)
    members = [(tiny, CheckpointManifest.for_model(tiny, model_version="tiny-test"))]
    no_audio = [stages.AudioEmbeddings(np.zeros((0, 1), np.float32), np.zeros(0, bool))]
    monkeypatch.setenv("DAGSTER_DEEPFAKE_MODEL_DIR", str(tmp_path))
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)  # a CPU without native bf16
    for setting, made_graph in (("torch", False), ("onnxruntime", True)):
        monkeypatch.setenv("DAGSTER_DEEPFAKE_CPU_BACKBONE", setting)
        settings = load_settings()
        assert settings.platform.cpu_backbone == setting
        scored = stages.predictions_stage(members, crops, flow, timestamps, no_audio, settings, "cpu")
        assert (tmp_path / ONNX_SUBDIR).is_dir() == made_graph
        # The document says what ran the backbone (additions.provenance.runtime, report.Runtime).
        runtime = Provenance.model_validate(scored.provenance).runtime
        assert runtime is not None
        assert (runtime.device, runtime.precision, runtime.backbone) == ("cpu", "fp32", setting)


def test_a_backbone_onnx_cannot_take_is_served_by_torch_with_one_warning(tmp_path, monkeypatch, caplog):
    from dagster_deepfake.models import onnx_backbone

    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=2)
    model.eval()
    crops, flow, _, _, _ = _video(8)

    def unsupported(*_args, **_kwargs):
        raise RuntimeError("Exporting the operator 'aten::odd_op' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(onnx_backbone, "export_feature_maps", unsupported)
    with caplog.at_level("WARNING", logger=onnx_backbone.__name__):
        served = predict_video(model, crops, flow, bf16=False, cpu_backbone="onnxruntime", model_dir=tmp_path)
        again = predict_video(model, crops, flow, bf16=False, cpu_backbone="onnxruntime", model_dir=tmp_path)
    assert served.backbone_runtime == again.backbone_runtime == "torch"
    assert served.p_fake == predict_video(model, crops, flow, bf16=False).p_fake
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "aten::odd_op" in warnings[0] and "using torch" in warnings[0]
