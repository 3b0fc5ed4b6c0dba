"""The detector's typed configuration: the very classes of `Settings.model` (one tree).

`ModelConfig` (alias `DetectorConfig`) is to this package what `Wav2Vec2Config` is to
transformers: one object that fully determines the architecture, is serialised into every
checkpoint manifest, and hashes to the `config_hash` that prediction rows carry. The classes
live in `dagster_deepfake.config` (cheap to import: no torch); the variants that layer under
them are in `registry.py`.
"""

from __future__ import annotations

from dagster_deepfake.config import (
    AudioModelConfig,
    ClassificationConfig,
    DetectorConfig,
    FusionModelConfig,
    KeyValueError,
    ModelConfig,
    TemporalModelConfig,
    VideoModelConfig,
    resolve_model_config,
)

__all__ = [
    "AudioModelConfig",
    "ClassificationConfig",
    "DetectorConfig",
    "FusionModelConfig",
    "KeyValueError",
    "ModelConfig",
    "TemporalModelConfig",
    "VideoModelConfig",
    "resolve_model_config",
]
