"""The audio-visual deepfake detector (docs/ARCHITECTURE.md §1): configs, modules, weights, checkpoints, inference.

The names below load on first use (PEP 562): importing one submodule, say `models.serving` from
a sensor, must not import torch, transformers and timm with it. The code location imports such
submodules, and the Dagster daemon starts a fresh code server every minute to refresh its
workspace: with eager imports each one spent about 10 s of CPU and 1 GB on them (issue 20).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "AudioEncoder": "audio",
    "CheckpointManifest": "checkpoint",
    "ModelStore": "checkpoint",
    "build_untrained": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_store": "checkpoint",
    "save_checkpoint": "checkpoint",
    "DetectorConfig": "configuration",
    "ModelConfig": "configuration",
    "BlockSummary": "describe",
    "describe_model": "describe",
    "format_description": "describe",
    "DeepfakeDetector": "detector",
    "DetectorOutput": "detector",
    "ClassificationHead": "fusion",
    "CrossModalFusion": "fusion",
    "VideoPrediction": "inference",
    "predict_video": "inference",
    "get_model_config": "registry",
    "list_model_configs": "registry",
    "register_model_config": "registry",
    "resolve_model_config": "registry",
    "FrameEncoder": "video",
    "VideoEncoder": "video",
    "PretrainedFlags": "weights",
    "build_detector": "weights",
    "load_pretrained_weights": "weights",
}

__all__ = [
    "AudioEncoder",
    "BlockSummary",
    "CheckpointManifest",
    "ClassificationHead",
    "CrossModalFusion",
    "DeepfakeDetector",
    "DetectorConfig",
    "DetectorOutput",
    "FrameEncoder",
    "ModelConfig",
    "ModelStore",
    "PretrainedFlags",
    "VideoEncoder",
    "VideoPrediction",
    "build_detector",
    "build_untrained",
    "describe_model",
    "format_description",
    "get_model_config",
    "list_model_configs",
    "load_checkpoint",
    "load_pretrained_weights",
    "model_store",
    "predict_video",
    "register_model_config",
    "resolve_model_config",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:
    from .audio import AudioEncoder
    from .checkpoint import (
        CheckpointManifest,
        ModelStore,
        build_untrained,
        load_checkpoint,
        model_store,
        save_checkpoint,
    )
    from .configuration import DetectorConfig, ModelConfig
    from .describe import BlockSummary, describe_model, format_description
    from .detector import DeepfakeDetector, DetectorOutput
    from .fusion import ClassificationHead, CrossModalFusion
    from .inference import VideoPrediction, predict_video
    from .registry import get_model_config, list_model_configs, register_model_config, resolve_model_config
    from .video import FrameEncoder, VideoEncoder
    from .weights import PretrainedFlags, build_detector, load_pretrained_weights
