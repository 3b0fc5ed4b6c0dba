"""Typed configuration: the model contract plus the operational `platform` section.

Defaults here equal ``config/config.yaml``; the YAML file only overrides them. Nothing
else in the library reads YAML or environment variables for settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "config.yaml"
CONFIG_ENV = "DAGSTER_DEEPFAKE_CONFIG"

# Platform keys that an environment variable may override (tests, containers).
_PLATFORM_ENV = {
    "upload_uri": "DAGSTER_DEEPFAKE_UPLOAD_URI",
    "artifact_root": "DAGSTER_DEEPFAKE_ARTIFACT_ROOT",
    "postgres_url": "DAGSTER_DEEPFAKE_POSTGRES_URL",
    "postgres_data_dir": "DAGSTER_DEEPFAKE_POSTGRES_DATA_DIR",
    "s3_endpoint_url": "DAGSTER_DEEPFAKE_S3_ENDPOINT_URL",
    "s3_region": "DAGSTER_DEEPFAKE_S3_REGION",
    "upload_settle_seconds": "DAGSTER_DEEPFAKE_UPLOAD_SETTLE_SECONDS",
    "device": "DAGSTER_DEEPFAKE_DEVICE",
    "checkpoint": "DAGSTER_DEEPFAKE_CHECKPOINT",
    "model_dir": "DAGSTER_DEEPFAKE_MODEL_DIR",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioModelConfig(_Section):
    encoder: str = "facebook/wav2vec2-base"
    sample_rate: int = 16000
    hidden_size: int = 768
    num_encoder_blocks: int = 12
    freeze_feature_encoder: bool = True
    freeze_encoder_blocks: int = 8
    fine_tune_blocks: int = 4
    projection_dim: int = 512


class VideoModelConfig(_Section):
    backbone: str = "efficientnet_b3"
    backbone_weights: str | None = None
    feature_dim: int = 1536
    flow_features: int = 2
    input_size: int = 224


class TemporalConfig(_Section):
    encoder_type: Literal["conv1d", "transformer"] = "conv1d"
    window_frames: int = 5
    output_dim: int = 2048


class FusionConfig(_Section):
    type: Literal["cross_modal_attention"] = "cross_modal_attention"
    hidden_dim: int = 512
    num_heads: int = 4
    output_dim: int = 2560


class HeadConfig(_Section):
    dropout: float = 0.2
    num_classes: int = 2
    threshold: float = 0.5


class ModelConfig(_Section):
    registry_config: str = "contract"
    audio: AudioModelConfig = Field(default_factory=AudioModelConfig)
    video: VideoModelConfig = Field(default_factory=VideoModelConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)


class AudioDataConfig(_Section):
    sample_rate: int = 16000
    channels: int = 1
    sample_format: Literal["s16"] = "s16"
    vad_aggressiveness: int = Field(2, ge=0, le=3)
    vad_frame_ms: Literal[10, 20, 30] = 30


class FacesConfig(_Section):
    detector: str = "retinaface"
    confidence_threshold: float = 0.95
    landmarks: Literal[5] = 5
    aligned_size: int = 224
    max_faces: int = 1
    detect_max_side: int = 640


class DataConfig(_Section):
    frame_rate: float = Field(5.0, ge=5, le=10)
    audio: AudioDataConfig = Field(default_factory=AudioDataConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    min_height: int = 240
    max_height: int = 1080


class AugmentationConfig(_Section):
    color_jitter: bool = True
    random_crop: bool = True
    horizontal_flip: bool = True


class TrainingConfig(_Section):
    train_dataset: str = "faceforensics++"
    validation_dataset: str = "celeb-df-v2"
    optimizer: Literal["adamw"] = "adamw"
    learning_rate: float = 1e-4
    scheduler: Literal["cosine"] = "cosine"
    warmup_steps: int = 1000
    batch_size: int = 32
    epochs: int = 20
    temporal_consistency_weight: float = 0.1
    modality_dropout: float = 0.2
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)


class CalibrationConfig(_Section):
    method: Literal["temperature_scaling"] = "temperature_scaling"
    fit_on: Literal["validation"] = "validation"


class ExplainConfig(_Section):
    method: Literal["grad_cam"] = "grad_cam"
    top_k_frames: int = 5


class InferenceConfig(_Section):
    ensemble_size: int = Field(1, ge=1)


class TargetsConfig(_Section):
    auc: float = 0.85
    false_positive_rate: float = 0.05
    max_inference_seconds: float = 120


class PlatformConfig(_Section):
    upload_uri: str = "file://./.bucket/uploads"
    upload_suffixes: list[str] = Field(
        default_factory=lambda: [".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"]
    )
    upload_settle_seconds: float = 2
    sensor_max_objects_per_tick: int = 200
    sensor_interval_seconds: int = 15
    artifact_root: str = "./.artifacts"
    postgres_url: str | None = None
    postgres_data_dir: str = "./.pgdata"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Trained checkpoint folder (model.safetensors + manifest.json); null = the newest under
    # model_dir/current, else an untrained model of `model.registry_config` (flagged everywhere).
    checkpoint: str | None = None
    model_dir: str = "./.models"
    max_duration_seconds: float = 900
    max_upload_bytes: int = 2 * 1024**3
    # Bytes all uploads in flight may spool to the API's temp folder together; an upload that
    # would go over it answers 503 with Retry-After (docs/API.md).
    upload_spool_budget_bytes: int = 4 * 1024**3


class Settings(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    platform: PlatformConfig = Field(default_factory=PlatformConfig)

    def contract_hash(self) -> str:
        """Short hash of everything but `platform`: two runs with the same hash used the same science."""
        payload = self.model_dump(exclude={"platform"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _resolve_local(value: str, base: Path) -> str:
    """Make a relative local path (or file:// URL) absolute against `base`; leave other URLs alone."""
    if value.startswith("file://"):
        rest = value[len("file://") :]
        return "file://" + str((base / rest).resolve()) if not rest.startswith("/") else value
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from YAML (default: $DAGSTER_DEEPFAKE_CONFIG or config/config.yaml).

    Relative platform paths are resolved against the project root (the folder holding
    `config/`), so commands behave the same from any working directory. `overrides`
    replace top-level platform keys, e.g. ``load_settings(artifact_root="/tmp/a")``.
    """
    config_path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    raw: dict[str, Any] = {}
    if config_path.exists():
        raw = yaml.safe_load(config_path.read_text()) or {}
    elif path is not None or os.environ.get(CONFIG_ENV):
        raise FileNotFoundError(f"config file not found: {config_path}")
    platform = dict(raw.get("platform") or {})
    for key, env in _PLATFORM_ENV.items():
        if os.environ.get(env):
            platform[key] = os.environ[env]
    platform.update(overrides)
    raw["platform"] = platform
    settings = Settings.model_validate(raw)
    base = config_path.resolve().parent.parent if config_path.parent.name == "config" else Path.cwd()
    p = settings.platform
    p.upload_uri = _resolve_local(p.upload_uri, base)
    p.artifact_root = _resolve_local(p.artifact_root, base)
    p.postgres_data_dir = _resolve_local(p.postgres_data_dir, base)
    p.model_dir = _resolve_local(p.model_dir, base)
    if p.checkpoint:
        p.checkpoint = _resolve_local(p.checkpoint, base)
    return settings


@lru_cache(maxsize=1)
def default_settings() -> Settings:
    """Settings for this process, read once."""
    return load_settings()
