"""The audio-visual deepfake detector (docs/ARCHITECTURE.md §1): configs, modules, weights, checkpoints, inference."""

from __future__ import annotations

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

__all__ = [
    "AudioEncoder",
    "BlockSummary",
    "CheckpointManifest",
    "ClassificationHead",
    "CrossModalFusion",
    "DeepfakeDetector",
    "DetectorConfig",
    "DetectorOutput",
    "ModelConfig",
    "FrameEncoder",
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
