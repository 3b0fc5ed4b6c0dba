"""Detector modules, freeze policy, fusion fallbacks, checkpoints, weights loading, inference."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from transformers import Wav2Vec2Model

from dagster_deepfake.config import ModelConfig, TemporalModelConfig
from dagster_deepfake.models import weights as weights_module
from dagster_deepfake.models.audio import speech_mask_to_frames
from dagster_deepfake.models.checkpoint import (
    CheckpointManifest,
    ModelStore,
    build_untrained,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from dagster_deepfake.models.configuration import DetectorConfig
from dagster_deepfake.models.describe import describe_detector, describe_model, format_description
from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.models.inference import predict_video
from dagster_deepfake.models.registry import get_model_config, resolve_model_config
from dagster_deepfake.models.weights import PretrainedFlags, build_detector, load_pretrained_weights

SAMPLE_RATE = 16000
FACE = 64  # convnets accept any size; small faces keep the tiny tests fast


@pytest.fixture(scope="module")
def tiny() -> DeepfakeDetector:
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def contract() -> DeepfakeDetector:
    """The contract architecture with random init (≈5 s to build; no download attempted)."""
    model, _ = build_detector(get_model_config("contract"), pretrained=False, seed=0)
    return model.eval()


def make_inputs(batch: int = 2, frames: int = 10, seconds: float = 3.0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "faces": torch.randn(batch, frames, 3, FACE, FACE, generator=g),
        "flow": torch.randn(batch, frames, 2, generator=g),
        "frame_mask": torch.ones(batch, frames, dtype=torch.bool),
        "waveform": torch.randn(batch, int(seconds * SAMPLE_RATE), generator=g),
    }


def run(model: DeepfakeDetector, **inputs):
    with torch.inference_mode():
        return model(**inputs)


# -- shapes -----------------------------------------------------------------------------------


def test_tiny_forward_shapes_per_block(tiny: DeepfakeDetector) -> None:
    inputs = make_inputs(batch=2, frames=10, seconds=3.0)
    out = run(tiny, **inputs)
    cfg = tiny.config
    expected_t = tiny.audio_encoder.num_frames(3 * SAMPLE_RATE)
    assert abs(expected_t - 3 * SAMPLE_RATE / 320) <= 1  # 20 ms frames
    with torch.inference_mode():
        audio, valid = tiny.encode_audio(inputs["waveform"])
    assert audio.shape == (2, expected_t, cfg.fusion.hidden_dim) and valid.all()
    assert out.frame_features.shape == (2, 10, cfg.video.feature_dim)
    assert out.video_features.shape == (2, 2, cfg.temporal.output_dim)
    assert out.audio_context.shape == (2, 2, cfg.fusion.hidden_dim)
    assert out.window_logits.shape == (2, 2, 2)
    assert out.video_logits.shape == (2, 2)
    assert torch.isfinite(out.video_logits).all()


@pytest.mark.parametrize("frames", [1, 7, 11])
def test_window_count_and_padding_mask(tiny: DeepfakeDetector, frames: int) -> None:
    inputs = make_inputs(batch=1, frames=frames)
    out = run(tiny, **inputs)
    windows = math.ceil(frames / 5)
    assert out.window_logits.shape == (1, windows, 2)
    assert out.window_mask.all()
    # The padded tail of the last window must not leak: appending masked frames changes nothing.
    padded = make_inputs(batch=1, frames=frames)
    padded["faces"] = torch.cat([inputs["faces"], torch.randn(1, 2, 3, FACE, FACE)], dim=1)
    padded["flow"] = torch.cat([inputs["flow"], torch.full((1, 2, 2), 50.0)], dim=1)
    padded["frame_mask"] = torch.cat([inputs["frame_mask"], torch.zeros(1, 2, dtype=torch.bool)], dim=1)
    padded["waveform"] = inputs["waveform"]
    out_padded = run(tiny, **padded)
    assert torch.allclose(out_padded.window_logits[0, :windows], out.window_logits[0], atol=1e-5)
    assert torch.allclose(out_padded.video_logits, out.video_logits, atol=1e-5)


def test_video_logits_average_only_valid_windows(tiny: DeepfakeDetector) -> None:
    inputs = make_inputs(batch=1, frames=12)
    inputs["frame_mask"][0, 5:10] = False  # window 1 has no face at all
    out = run(tiny, **inputs)
    assert out.window_mask.tolist() == [[True, False, True]]
    expected = out.window_logits[0, [0, 2]].mean(dim=0)
    assert torch.allclose(out.video_logits[0], expected, atol=1e-6)


def test_transformer_temporal_encoder_from_settings() -> None:
    settings_model = ModelConfig(
        registry_config="tiny", temporal=TemporalModelConfig(encoder_type="transformer")
    )
    cfg = resolve_model_config(settings_model)
    assert cfg.temporal.encoder_type == "transformer"
    assert cfg.audio.hidden_size == 32  # tiny sizes survive: only explicitly set keys override
    model, _ = build_detector(cfg, pretrained=False, seed=0)
    model.eval()
    inputs = make_inputs(batch=1, frames=12)
    inputs["frame_mask"][0, 5:10] = False
    out = run(model, **inputs)
    assert type(model.video_encoder.temporal).__name__ == "TransformerTemporalEncoder"
    assert out.video_features.shape == (1, 3, cfg.temporal.output_dim)
    assert torch.isfinite(out.video_features).all() and torch.isfinite(out.video_logits).all()


def test_resolve_model_config_defaults_and_errors() -> None:
    assert resolve_model_config(ModelConfig()) == get_model_config("contract")
    with pytest.raises(ValidationError, match="must add up"):
        ModelConfig.model_validate({"audio": {"fine_tune_blocks": 3}})
    with pytest.raises(KeyError, match="registered"):
        get_model_config("nope")


# -- freeze policy ----------------------------------------------------------------------------


def _frozen_names(model: DeepfakeDetector) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def _check_freeze_policy(model: DeepfakeDetector) -> None:
    cfg = model.config.audio
    frozen_layers = {f"audio_encoder.wav2vec2.encoder.layers.{i}." for i in range(cfg.freeze_encoder_blocks)}
    frozen_prefixes = (
        "audio_encoder.wav2vec2.feature_extractor.",
        "audio_encoder.wav2vec2.feature_projection.",
        "audio_encoder.wav2vec2.encoder.pos_conv_embed.",
        "audio_encoder.wav2vec2.encoder.layer_norm.",
        "audio_encoder.wav2vec2.masked_spec_embed",
        *frozen_layers,
    )
    for name, param in model.named_parameters():
        should_freeze = name.startswith(frozen_prefixes)
        assert param.requires_grad != should_freeze, name
    trainable_layers = {
        int(n.split("layers.")[1].split(".")[0])
        for n, p in model.named_parameters()
        if ".encoder.layers." in n and p.requires_grad
    }
    assert trainable_layers == set(range(cfg.freeze_encoder_blocks, cfg.num_encoder_blocks))


def test_freeze_policy_tiny(tiny: DeepfakeDetector) -> None:
    _check_freeze_policy(tiny)
    frozen = _frozen_names(tiny)
    assert all(n.startswith("audio_encoder.wav2vec2.") for n in frozen)
    assert not any("frame_encoder" in n or "fusion" in n or "head" in n for n in frozen)


def test_freeze_policy_contract(contract: DeepfakeDetector) -> None:
    assert len(contract.audio_encoder.wav2vec2.encoder.layers) == 12
    _check_freeze_policy(contract)
    assert contract.audio_encoder.projection.weight.shape == (512, 768)


def test_backward_reaches_only_trainable_parameters() -> None:
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    model.train()
    out = model(**make_inputs(batch=2, frames=6, seconds=1.0))
    torch.nn.functional.cross_entropy(out.video_logits, torch.tensor([0, 1])).backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "audio_encoder.wav2vec2.encoder.layers.1.attention.q_proj.weight" in grads
    assert "frame_encoder.backbone.conv_stem.weight" in grads
    assert "head.classifier.weight" in grads


def test_freeze_policy_must_add_up() -> None:
    with pytest.raises(ValidationError, match="must add up to the encoder's depth"):
        ModelConfig(audio={"num_encoder_blocks": 12, "freeze_encoder_blocks": 8, "fine_tune_blocks": 3})


# -- audio fallbacks and modality dropout ----------------------------------------------------


def test_speech_mask_mapping() -> None:
    per_sample = torch.zeros(1, 320 * 10, dtype=torch.bool)
    per_sample[0, 320 * 3 : 320 * 6] = True
    assert speech_mask_to_frames(per_sample, 10, 320)[0].tolist() == [False] * 3 + [True] * 3 + [False] * 4
    per_30ms = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)  # a coarser VAD grid
    frames = speech_mask_to_frames(per_30ms, 8, 320)[0].tolist()
    assert frames == [False, False, True, True, True, True, False, False]


def test_no_audio_and_silence_use_no_audio_embedding(tiny: DeepfakeDetector) -> None:
    inputs = make_inputs(batch=1, frames=10)
    with_speech = run(tiny, **inputs)
    without = run(tiny, **{**inputs, "waveform": None})
    silence = torch.zeros_like(inputs["waveform"], dtype=torch.bool)
    silent = run(tiny, **inputs, speech_mask=silence)
    no_audio = tiny.fusion.no_audio.detach()
    assert with_speech.audio_used.tolist() == [True]
    for out in (without, silent):
        assert out.audio_used.tolist() == [False]
        assert torch.isfinite(out.video_logits).all()
        assert torch.allclose(out.audio_context[0], no_audio.expand_as(out.audio_context[0]))
    assert torch.allclose(without.video_logits, silent.video_logits)
    assert not torch.allclose(with_speech.video_logits, without.video_logits)
    assert torch.allclose(tiny.video_only_logits(with_speech), without.video_logits, atol=1e-6)


def test_non_speech_frames_are_not_attended(tiny: DeepfakeDetector) -> None:
    inputs = make_inputs(batch=1, frames=5)
    with torch.inference_mode():
        frame_features = tiny.encode_faces(inputs["faces"])
        audio, _ = tiny.encode_audio(inputs["waveform"])
        valid = torch.zeros(audio.shape[:2], dtype=torch.bool)
        valid[:, :20] = True
        changed = audio.clone()
        changed[:, 20:] = torch.randn_like(changed[:, 20:]) * 10
        a = tiny.forward_features(frame_features, inputs["flow"], inputs["frame_mask"], audio, valid)
        b = tiny.forward_features(frame_features, inputs["flow"], inputs["frame_mask"], changed, valid)
        changed[:, :20] += 1.0
        c = tiny.forward_features(frame_features, inputs["flow"], inputs["frame_mask"], changed, valid)
    assert torch.allclose(a.video_logits, b.video_logits, atol=1e-6)
    assert not torch.allclose(a.video_logits, c.video_logits, atol=1e-6)


def test_modality_dropout_only_in_training() -> None:
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    model.fusion.modality_dropout = 1.0  # what the trainer sets from training.modality_dropout_prob
    inputs = make_inputs(batch=3, frames=5, seconds=1.0)
    model.eval()
    assert run(model, **inputs).audio_used.all()
    model.train()
    out = model(**inputs)
    assert not out.audio_used.any()
    assert torch.allclose(out.audio_context, model.fusion.no_audio.expand_as(out.audio_context))


# -- determinism, checkpoints, weights ---------------------------------------------------------


def test_deterministic_for_fixed_seed() -> None:
    inputs = make_inputs(batch=1, frames=5, seconds=1.0)
    a, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=123)
    b, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=123)
    c, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=124)
    outs = [run(m.eval(), **inputs).video_logits for m in (a, b, c)]
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, manifest = build_untrained("tiny", seed=1)
    assert manifest.trained is False and manifest.pretrained == PretrainedFlags()
    assert manifest.weights_label == "untrained"
    manifest = manifest.model_copy(
        update={"trained": True, "temperature": 1.7, "training_data_hash": "abc123", "metrics": {"auc": 0.9}}
    )
    save_checkpoint(tmp_path / "ckpt", model, manifest)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "manifest.json"}
    loaded, loaded_manifest = load_checkpoint(tmp_path / "ckpt")
    # the backbone keeps its channels_last layout (the file holds contiguous tensors)
    convs = [p for p in loaded.frame_encoder.backbone.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    inputs = make_inputs(batch=1, frames=6, seconds=1.0)
    assert torch.equal(run(model.eval(), **inputs).video_logits, run(loaded, **inputs).video_logits)
    # The manifest written records its weights file's SHA-256 and size (read back, not re-hashed).
    weights = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    recorded = {"weights_sha256": hashlib.sha256(weights).hexdigest(), "weights_bytes": len(weights)}
    assert loaded_manifest == manifest.model_copy(update=recorded)
    assert loaded_manifest.weights_sha256_from == "manifest"
    assert loaded_manifest.detector_config == model.config
    assert loaded_manifest.config_hash == model.config.config_hash()

    store = ModelStore()
    first = store.get(tmp_path / "ckpt")
    assert store.get(tmp_path / "ckpt")[0] is first[0]


def test_checkpoint_rejects_mismatched_manifest(tmp_path: Path, tiny: DeepfakeDetector) -> None:
    other = get_model_config("tiny")
    other.temporal.window_frames = 10
    manifest = CheckpointManifest(
        model_version="x", registry_config="tiny", detector_config=other, config_hash=other.config_hash()
    )
    with pytest.raises(ValueError, match="config_hash"):
        save_checkpoint(tmp_path, tiny, manifest)
    save_checkpoint(tmp_path, tiny, CheckpointManifest.for_model(tiny))
    assert read_manifest(tmp_path).registry_config == "tiny"


def test_tiny_never_looks_for_weights(monkeypatch: pytest.MonkeyPatch, tiny: DeepfakeDetector) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tiny config must not look for pretrained weights")

    monkeypatch.setattr(weights_module, "load_wav2vec2", forbidden)
    monkeypatch.setattr(weights_module, "load_timm_backbone", forbidden)
    assert load_pretrained_weights(tiny, tiny.config, allow_download=True) == PretrainedFlags()


def test_weights_load_from_local_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = get_model_config("tiny")
    torch.manual_seed(7)
    source_audio = Wav2Vec2Model(cfg.audio.to_wav2vec2_config())
    source_audio.save_pretrained(tmp_path / "w2v")
    source_backbone = timm.create_model(cfg.video.backbone, num_classes=0)
    save_file(source_backbone.state_dict(), str(tmp_path / "backbone.safetensors"))

    local = cfg.model_copy(deep=True)
    local.audio.pretrained = local.video.pretrained = True
    local.audio.encoder = str(tmp_path / "w2v")
    local.video.weights = str(tmp_path / "backbone.safetensors")
    model, flags = build_detector(local, seed=0)
    assert flags == PretrainedFlags(audio_encoder=True, video_backbone=True)
    name = "encoder.layers.1.attention.k_proj.weight"
    assert torch.equal(model.audio_encoder.wav2vec2.state_dict()[name], source_audio.state_dict()[name])
    stem = model.frame_encoder.backbone.conv_stem.weight
    assert torch.equal(stem, source_backbone.conv_stem.weight)
    _check_freeze_policy(model)  # loading weights must not undo the freeze policy

    missing = cfg.model_copy(deep=True)
    missing.audio.pretrained = missing.video.pretrained = True
    missing.audio.encoder = str(tmp_path / "absent")
    missing.video.weights = str(tmp_path / "absent.safetensors")
    with caplog.at_level(logging.WARNING):
        _, flags = build_detector(missing, seed=0, allow_download=True)
    assert flags == PretrainedFlags()
    assert "RANDOM INITIALISATION" in caplog.text


# -- inference and description ----------------------------------------------------------------


def test_predict_video(tiny: DeepfakeDetector) -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (12, FACE, FACE, 3), dtype=np.uint8)
    flow = rng.normal(size=(12, 2)).astype(np.float32)
    waveform = rng.normal(size=SAMPLE_RATE * 2).astype(np.float32)
    timestamps = np.arange(12) / 5.0
    kwargs = {"timestamps": timestamps, "batch_size": 5, "bf16": False}
    p1 = predict_video(tiny, crops, flow, waveform, **kwargs)
    p2 = predict_video(tiny, crops, flow, waveform, temperature=3.0, **kwargs)
    assert len(p1.window_probs) == 3 and p1.window_frames == [(0, 5), (5, 10), (10, 12)]
    assert np.allclose(p1.window_spans, [(0.0, 1.0), (1.0, 2.0), (2.0, 2.4)])
    assert p1.audio_used and p1.precision == "fp32"
    assert p1.p_fake == pytest.approx(p1.p_fake_raw) and p2.p_fake_raw == pytest.approx(p1.p_fake_raw)
    assert abs(p2.p_fake - 0.5) < abs(p1.p_fake - 0.5)  # a higher temperature softens
    # Same as the batched module forward on the same inputs.
    faces = tiny.preprocess_faces(crops)[None]
    direct = run(
        tiny, faces=faces, flow=torch.from_numpy(flow)[None], waveform=torch.from_numpy(waveform)[None]
    )
    assert p1.p_fake_raw == pytest.approx(float(direct.p_fake[0]), abs=1e-5)

    silent = predict_video(tiny, crops, flow, None, **kwargs)
    assert not silent.audio_used and silent.p_fake == pytest.approx(silent.p_fake_video_only)
    assert silent.p_fake_video_only == pytest.approx(p1.p_fake_video_only, abs=1e-6)
    reduced = predict_video(tiny, crops, flow, waveform, timestamps=timestamps, bf16=True)
    assert reduced.precision == "bf16" and abs(reduced.p_fake - p1.p_fake) < 0.05


def test_preprocess_faces_uses_backbone_normalisation(tiny: DeepfakeDetector) -> None:
    crops = np.full((2, 8, 8, 3), 255, dtype=np.uint8)
    faces = tiny.preprocess_faces(crops)
    data = timm.data.resolve_data_config({}, model=tiny.frame_encoder.backbone)
    expected = (1.0 - torch.tensor(data["mean"])) / torch.tensor(data["std"])
    assert faces.shape == (2, 3, 8, 8)
    assert torch.allclose(faces[0, :, 0, 0], expected)


def test_describe_contract_shows_contract_dims(contract: DeepfakeDetector) -> None:
    description = describe_detector(contract)
    widths = {b.name: b.output_shape[-1] for b in description.blocks}
    assert widths["video.backbone"] == "1536"
    assert widths["video.frame_features (+flow)"] == "1538"
    assert widths["temporal.conv1d"] == "2048"
    assert widths["audio.projection"] == "512"
    assert widths["fusion.concat"] == "2560"
    assert widths["head"] == "2"
    frozen = sum(p.numel() for p in contract.parameters() if not p.requires_grad)
    assert description.frozen_params == frozen
    assert description.trainable_params + frozen == sum(p.numel() for p in contract.parameters())
    text = format_description(description)
    for dim in ("1536", "1538", "2048", "512", "2560"):
        assert dim in text


def test_describe_model_by_name() -> None:
    description = describe_model("tiny")
    text = format_description(description)
    assert "model tiny" in text and "audio_encoder=false" in text
    assert description.blocks[-1].output_shape == ("B", "W", "2")


def test_detector_config_validates_dims() -> None:
    with pytest.raises(ValidationError, match="fusion.output_dim"):
        DetectorConfig.model_validate({"fusion": {"output_dim": 2048}})
