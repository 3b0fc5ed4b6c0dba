"""Named detector configurations (the timm `_registry.py` pattern, for configs of one architecture).

>>> cfg = get_model_config("tiny")
>>> model = DeepfakeDetector(cfg)                         # doctest: +SKIP

`from_settings(settings.model)` picks the variant named by `model.registry_config` and applies
every contract key the YAML changed from its contract default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster_deepfake.config import ModelConfig, TrainingConfig

from .configuration import (
    AudioEncoderConfig,
    DetectorConfig,
    FrameEncoderConfig,
    FusionConfig,
    HeadConfig,
    TemporalEncoderConfig,
)

_MODEL_CONFIGS: dict[str, Callable[[], DetectorConfig]] = {}


def register_model_config(
    name: str,
) -> Callable[[Callable[[], DetectorConfig]], Callable[[], DetectorConfig]]:
    """Decorator: register a zero-argument factory returning a `DetectorConfig` under `name`."""

    def decorate(factory: Callable[[], DetectorConfig]) -> Callable[[], DetectorConfig]:
        if name in _MODEL_CONFIGS:
            raise ValueError(f"model config {name!r} is already registered")
        _MODEL_CONFIGS[name] = factory
        return factory

    return decorate


def list_model_configs() -> list[str]:
    return sorted(_MODEL_CONFIGS)


def get_model_config(name: str) -> DetectorConfig:
    """A fresh copy of the named configuration (callers may mutate it)."""
    try:
        factory = _MODEL_CONFIGS[name]
    except KeyError:
        raise KeyError(
            f"unknown model config {name!r}; registered: {', '.join(list_model_configs())}"
        ) from None
    config = factory()
    config.name = name
    return config


@register_model_config("contract")
def _contract() -> DetectorConfig:
    """DESIGN §1: wav2vec2-base (8 frozen + 4 fine-tuned layers) → 512; EfficientNet-B3 1536 + 2
    flow → 1538; Conv1d over 5-frame windows → 2048; cross-modal attention 512×4 heads → 2560 → 2."""
    return DetectorConfig()


@register_model_config("tiny")
def _tiny() -> DetectorConfig:
    """The same classes at toy sizes: tests and CPU demos. Never looks for pretrained weights."""
    return DetectorConfig(
        audio=AudioEncoderConfig(
            encoder="tiny-wav2vec2",
            hidden_size=32,
            num_encoder_blocks=2,
            num_attention_heads=4,
            intermediate_size=64,
            # Same kernels and strides as wav2vec2-base (20 ms frames), narrow channels.
            conv_dim=(32, 32, 32, 32, 32, 32, 32),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            freeze_encoder_blocks=1,
            fine_tune_blocks=1,
            projection_dim=32,
        ),
        video=FrameEncoderConfig(backbone="test_efficientnet", feature_dim=256),
        temporal=TemporalEncoderConfig(
            output_dim=64, transformer_dim=32, transformer_layers=1, transformer_heads=4
        ),
        fusion=FusionConfig(hidden_dim=32, num_heads=4, output_dim=96),
        head=HeadConfig(),
        allow_pretrained=False,
    )


# Contract keys (config.ModelConfig section → DetectorConfig section) that YAML may override.
_SECTIONS = {"audio": "audio", "video": "video", "temporal": "temporal", "fusion": "fusion", "head": "head"}


def from_settings(model: ModelConfig, training: TrainingConfig | None = None) -> DetectorConfig:
    """Resolve `settings.model` into a `DetectorConfig`.

    Starts from the registry entry `model.registry_config`, then applies each contract key
    whose value differs from its contract default (so `registry_config: tiny` keeps the toy
    sizes while e.g. `temporal.encoder_type: transformer` still takes effect). Passing
    `settings.training` also carries `modality_dropout`.
    """
    config = get_model_config(model.registry_config)
    defaults = ModelConfig()
    updates: dict[str, dict[str, Any]] = {}
    for section, target in _SECTIONS.items():
        given = getattr(model, section).model_dump()
        default = getattr(defaults, section).model_dump()
        changed = {k: v for k, v in given.items() if v != default[k]}
        if changed:
            updates.setdefault(target, {}).update(changed)
    if training is not None:
        updates.setdefault("fusion", {})["modality_dropout"] = training.modality_dropout
    if not updates:
        return config
    merged = config.model_dump()
    for section, changed in updates.items():
        merged[section].update(changed)
    # Re-validate so a changed key that breaks an invariant fails here, with its name.
    return DetectorConfig.model_validate(merged)
