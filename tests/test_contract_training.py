"""The contract model trains: two real optimizer steps of the full-size architecture on CPU.

EfficientNet-B3 (tuned) + wav2vec2-base (CNN and layers 0–7 frozen, 8–11 tuned), random init (no
hub), through `training.loop.train_step` — the very step `train_detector` takes — on a batch of
2 clips × 5 faces of 224² and 1 s of speech built by the training collator. Also: HuBERT as the
audio encoder, and the CUDA path's precision logic (loss scaling, bf16) exercised on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import HubertModel

from commands.bench_training import contract_training_setup, synthetic_batch
from dagster_deepfake.config import ModelConfig, TrainingConfig
from dagster_deepfake.models.audio import encoder_family
from dagster_deepfake.models.weights import build_detector
from dagster_deepfake.training.loop import (
    build_optimizer,
    build_scheduler,
    needs_loss_scaling,
    plan_training,
    train_step,
)

FROZEN_PREFIXES = (
    "feature_extractor.",
    "feature_projection.",
    "encoder.pos_conv_embed.",
    "encoder.layer_norm.",
    "masked_spec_embed",
    *(f"encoder.layers.{i}." for i in range(8)),
)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_two_steps_of_the_contract_model_train_exactly_the_tuned_parts() -> None:
    # 2 planned steps: no warm-up (10 % of 2), so both steps have a non-zero learning rate.
    model, optimizer, scheduler, trainable = contract_training_setup(seed=0, total_steps=2)
    w2v, backbone = model.audio_encoder.wav2vec2, model.frame_encoder.backbone
    # wav2vec2's LayerDrop (p = 0.1, transformers' default) skips whole layers in a training step;
    # a tuned layer skipped in both steps (1 % per layer) could not show that it trains.
    w2v.config.layerdrop = 0.0
    # The real architecture at full size, not a stand-in.
    assert len(w2v.encoder.layers) == 12 and w2v.config.hidden_size == 768
    assert sum(p.numel() for p in backbone.parameters()) > 10_000_000  # EfficientNet-B3: 10.7 M
    assert model.config.fusion.output_dim == 2560

    frozen = {n for n, p in w2v.named_parameters() if n.startswith(FROZEN_PREFIXES)}
    assert frozen and all(not p.requires_grad for n, p in w2v.named_parameters() if n in frozen)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for n, p in w2v.named_parameters() if n in frozen}

    w2v_before, backbone_before = _snapshot(w2v), _snapshot(backbone)
    batch = synthetic_batch(model, 2)  # 2 clips × 5 faces × 3 × 224 × 224, 1 s of speech each
    assert batch.faces.shape == (2, 5, 3, 224, 224) and batch.waveform.shape == (2, 16000)
    lam = TrainingConfig().temporal_consistency_weight
    losses = [train_step(model, batch, optimizer, scheduler, trainable, lambda_tc=lam).loss for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)

    after = dict(w2v.named_parameters())
    unchanged = [n for n in frozen if not torch.equal(after[n], w2v_before[n])]
    assert unchanged == [], "frozen wav2vec2 parameters moved"
    for layer in range(8, 12):
        names = [n for n in after if n.startswith(f"encoder.layers.{layer}.")]
        moved = [n for n in names if not torch.equal(after[n], w2v_before[n])]
        assert len(moved) >= len(names) // 2, f"tuned layer {layer}: only {len(moved)}/{len(names)} moved"
    moved = [n for n, p in backbone.named_parameters() if not torch.equal(p, backbone_before[n])]
    assert "conv_stem.weight" in moved and len(moved) > 0.9 * len(backbone_before)


def test_hubert_is_an_audio_encoder_choice_with_the_same_interface_and_freeze_policy() -> None:
    assert encoder_family(ModelConfig(audio={"encoder": "hubert-base"}).audio) == "hubert"
    assert ModelConfig(audio={"encoder": "hubert-base"}).audio.source == "facebook/hubert-base-ls960"
    config = ModelConfig(registry_config="tiny", audio={"encoder": "tiny-hubert"})
    model, _ = build_detector(config, pretrained=False, seed=0)
    hubert = model.audio_encoder.wav2vec2
    assert isinstance(hubert, HubertModel)

    batch = synthetic_batch(model, 2, frames=5, size=64)
    model.eval()
    with torch.no_grad():
        out = model(batch.faces, batch.flow, batch.frame_mask, batch.waveform, batch.speech_mask)
    assert out.video_logits.shape == (2, 2) and bool(out.audio_used.all())
    features, valid = model.encode_audio(batch.waveform, batch.speech_mask)
    assert features.shape == (2, 49, config.fusion.hidden_dim) and valid.shape == (2, 49)

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    training = TrainingConfig(learning_rate=1e-3)
    optimizer = build_optimizer(trainable, training)
    scheduler = build_scheduler(optimizer, training, plan_training(2, training, max_steps=2))
    before = _snapshot(hubert)
    result = train_step(model, batch, optimizer, scheduler, trainable, lambda_tc=0.1)
    assert math.isfinite(result.loss)
    after = dict(hubert.named_parameters())
    assert all(
        torch.equal(after[n], before[n])
        for n in after
        if n.startswith(("feature_extractor.", "encoder.layers.0."))
    )
    assert any(not torch.equal(after[n], before[n]) for n in after if n.startswith("encoder.layers.1."))


def test_fp16_amp_gets_loss_scaling_and_bf16_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert needs_loss_scaling("cuda", bf16=True)  # V100/T4: fp16 autocast
    assert not needs_loss_scaling("cuda", bf16=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert not needs_loss_scaling("cuda:0", bf16=True)  # A100/H100: bf16, same range as fp32
    assert not needs_loss_scaling("cpu", bf16=True)


@pytest.mark.parametrize("mode", ["scaler", "bf16"])
def test_the_reduced_precision_step_paths_run_on_cpu(mode: str) -> None:
    """The loss-scaled step (what fp16 CUDA runs) and the bf16 autocast step, on the tiny model."""
    model, _ = build_detector(ModelConfig(registry_config="tiny"), pretrained=False, seed=0)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    training = TrainingConfig(learning_rate=1e-3)
    optimizer = build_optimizer(trainable, training)
    scheduler = build_scheduler(optimizer, training, plan_training(2, training, max_steps=2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True) if mode == "scaler" else None
    batch = synthetic_batch(model, 2, size=64)
    head = model.head.classifier.weight.detach().clone()
    result = train_step(
        model, batch, optimizer, scheduler, trainable, lambda_tc=0.1, bf16=mode == "bf16", scaler=scaler
    )
    assert math.isfinite(result.loss)
    assert not torch.equal(model.head.classifier.weight, head)  # the step was taken, not skipped
    assert all(p.dtype == torch.float32 for p in trainable)  # master weights stay fp32
    if scaler is not None:
        assert scaler.get_scale() == 2.0**10  # finite gradients: the scale is kept


def test_the_batch_32_figures_and_the_ffpp_estimate_follow_from_the_measured_numbers() -> None:
    from commands.bench_training import _line, ffpp_estimate

    assert _line([(2, 10.0), (4, 18.0)], 32) == pytest.approx(130.0)  # 6 + 4 per clip
    assert _line([(4, 8.0)], 32) == pytest.approx(64.0)
    report = {
        "target_batch": 32,
        "frames": 5,
        "at_target": {"tflop_per_step": 2.0, "forward_tflop": 0.8, "cpu_s": 36.0},
    }
    lines = ffpp_estimate(report, gpus=(1, 2), sustained_tflops=10.0)
    # 3600 videos at batch 32 → 113 steps × 20 epochs; validation: 20 × 518 videos × 13 s × 5 FPS faces.
    work = 2260 * 2.0 + 20 * 518 * 13 * 5 * 0.8 / 160
    assert "2260 steps" in lines[0]
    assert f"{work / 10 / 3600 * 60:.1f} min" in lines[1]
    assert f"{work / (10 * 2 * 0.9) / 3600 * 60:.1f} min" in lines[2]
    assert f"{2260 * 36 / 3600:.0f} CPU-core hours" in lines[3]
