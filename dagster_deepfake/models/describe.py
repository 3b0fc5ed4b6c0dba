"""A plain-text summary of a detector variant: each block's output shape and parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .configuration import DetectorConfig, ModelConfig
from .detector import DeepfakeDetector
from .registry import resolve_model_config
from .weights import PretrainedFlags, build_detector
from .weights_store import WeightsProvenance, match_imported

#: Side of the zero faces the shape probe runs (any size works: the backbone pools globally).
PROBE_SIZE = 224


@dataclass(frozen=True)
class BlockSummary:
    name: str
    output_shape: tuple[str, ...]  # symbolic batch dims + concrete feature sizes, e.g. ("B", "W", "2048")
    trainable_params: int
    frozen_params: int


@dataclass(frozen=True)
class ModelDescription:
    name: str
    config_hash: str
    blocks: list[BlockSummary]
    pretrained: PretrainedFlags
    # What `weights import` stored for exactly this architecture (used where `pretrained` is true).
    imported: dict[str, WeightsProvenance] = field(default_factory=dict)

    @property
    def trainable_params(self) -> int:
        return sum(b.trainable_params for b in self.blocks)

    @property
    def frozen_params(self) -> int:
        return sum(b.frozen_params for b in self.blocks)


def _counts(*modules: nn.Module | nn.Parameter) -> tuple[int, int]:
    trainable = frozen = 0
    for module in modules:
        params = [module] if isinstance(module, nn.Parameter) else list(module.parameters())
        for p in params:
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
    return trainable, frozen


def _probe_shapes(model: DeepfakeDetector) -> dict[str, int]:
    """Run one small forward (1 video × window_frames+1 faces, 1 s of speech) to read real widths."""
    config = model.config
    frames = config.temporal.window_frames + 1
    size = PROBE_SIZE
    faces = torch.zeros(1, frames, 3, size, size)
    flow = torch.zeros(1, frames, config.video.flow_features)
    waveform = torch.randn(1, config.audio.sample_rate, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        frame_features = model.encode_faces(faces)
        hidden = model.audio_encoder.wav2vec2(waveform).last_hidden_state
        audio, valid = model.encode_audio(waveform)
        out = model.forward_features(
            frame_features, flow, torch.ones(1, frames, dtype=torch.bool), audio, valid
        )
        fused, _, _ = model.fusion(out.video_features, audio, valid)
    model.train(was_training)
    return {
        "backbone": frame_features.shape[-1],
        "wav2vec2": hidden.shape[-1],
        "audio": audio.shape[-1],
        "frame": frame_features.shape[-1] + flow.shape[-1],
        "temporal": out.video_features.shape[-1],
        "context": out.audio_context.shape[-1],
        "fused": fused.shape[-1],
        "head": out.window_logits.shape[-1],
    }


def describe_detector(model: DeepfakeDetector, pretrained: PretrainedFlags | None = None) -> ModelDescription:
    dims = _probe_shapes(model)
    wav2vec2 = model.audio_encoder.wav2vec2
    config: DetectorConfig = model.config
    rows = [
        ("video.backbone", ("B·N", str(dims["backbone"])), model.frame_encoder),
        ("video.frame_features (+flow)", ("B", "N", str(dims["frame"])), None),
        (f"temporal.{config.temporal.encoder_type}", ("B", "W", str(dims["temporal"])), model.video_encoder),
        (
            "audio.feature_encoder (CNN)",
            ("B", "T", str(wav2vec2.config.conv_dim[-1])),
            wav2vec2.feature_extractor,
        ),
        (
            "audio.wav2vec2 (projection, pos. conv, layers)",
            ("B", "T", str(dims["wav2vec2"])),
            [m for n, m in wav2vec2.named_children() if n != "feature_extractor"]
            + (
                [wav2vec2.masked_spec_embed]
                if getattr(wav2vec2, "masked_spec_embed", None) is not None
                else []
            ),
        ),
        ("audio.projection", ("B", "T", str(dims["audio"])), model.audio_encoder.projection),
        ("fusion.cross_attention", ("B", "W", str(dims["context"])), model.fusion),
        ("fusion.concat", ("B", "W", str(dims["fused"])), None),
        ("head", ("B", "W", str(dims["head"])), model.head),
    ]
    blocks = []
    for name, shape, modules in rows:
        if modules is None:
            trainable, frozen = 0, 0
        else:
            items = modules if isinstance(modules, list) else [modules]
            trainable, frozen = _counts(*items)
        blocks.append(BlockSummary(name, shape, trainable, frozen))
    return ModelDescription(config.name, config.config_hash(), blocks, pretrained or PretrainedFlags())


def describe_model(
    model_config: ModelConfig | str | None = "contract",
    *,
    pretrained: bool = False,
    weights_dir: str | Path | None = None,
) -> ModelDescription:
    """Build a variant by name or a config (`settings.model`), random init unless `pretrained`
    (never downloads), and describe it, naming the imported weights in `weights_dir` that fit."""
    model, flags = build_detector(
        resolve_model_config(model_config), pretrained=pretrained, seed=0, weights_dir=weights_dir
    )
    description = describe_detector(model, flags)
    for branch, module in (
        ("audio_encoder", model.audio_encoder.wav2vec2),
        ("video_backbone", model.frame_encoder.backbone),
    ):
        match = match_imported(weights_dir, branch, module)  # type: ignore[arg-type]
        if match is not None:
            description.imported[branch] = match[1]
    return description


def format_description(description: ModelDescription) -> str:
    """A plain-text table, one row per block."""
    header = ("block", "output shape", "trainable", "frozen")
    rows = [
        (b.name, "(" + ", ".join(b.output_shape) + ")", f"{b.trainable_params:,}", f"{b.frozen_params:,}")
        for b in description.blocks
    ]
    rows.append(("total", "", f"{description.trainable_params:,}", f"{description.frozen_params:,}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(r)
        )

    flags = description.pretrained
    lines = [
        f"model {description.name}  config_hash {description.config_hash}",
        f"pretrained: audio_encoder={str(flags.audio_encoder).lower()} "
        f"video_backbone={str(flags.video_backbone).lower()}",
        *(
            f"imported {branch}: {p.source} (sha256 {p.stored_sha256[:16]}…, {p.naming} names, "
            f"{p.imported_at:%Y-%m-%d})"
            for branch, p in description.imported.items()
        ),
        line(header),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows[:-1]),
        line(tuple("-" * w for w in widths)),
        line(rows[-1]),
    ]
    return "\n".join(lines)
