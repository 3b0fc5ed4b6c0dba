"""Typed configuration: ONE settings tree for the model contract and the `platform` section.

`Settings.model` *is* the detector's architecture config (`ModelConfig`, also exported as
`DetectorConfig`): the contract's keys under the contract's names, the project's own sizes
beside them. It is what the model registry resolves, what a checkpoint manifest stores and
what `config_hash` hashes. Defaults here equal ``config/config.yaml``; the YAML file only
overrides them. Nothing else in the library reads YAML or environment variables for settings.

Variants (`model.registry_config`: ``contract``, ``tiny``) are LAYERS of values applied over
the contract defaults, like timm's pretrained-cfg overlays: a key the YAML sets explicitly
wins over the variant, a key it leaves out takes the variant's value. Derived sizes
(`model.fusion.output_dim`, `model.audio.projection_dim`) follow their sources unless set.

This module stays cheap to import (pydantic and yaml only; no torch, no transformers).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dagster_deepfake.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "config.yaml"
#: Where the face backbone runs when the model is fp32 on the CPU (`platform.cpu_backbone`).
CpuBackbone = Literal["auto", "torch", "onnxruntime"]

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
    "cpu_backbone": "DAGSTER_DEEPFAKE_CPU_BACKBONE",
    "checkpoint": "DAGSTER_DEEPFAKE_CHECKPOINT",
    "model_dir": "DAGSTER_DEEPFAKE_MODEL_DIR",
    "side_by_side_runs": "DAGSTER_DEEPFAKE_SIDE_BY_SIDE_RUNS",
}

#: `training.optimizer` / `training.scheduler` values the training loop implements.
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "linear", "constant")
#: `model.fusion.strategy` values the detector implements (the contract's only).
FUSION_STRATEGIES = ("cross_attention",)
#: Short encoder names and the Hugging Face repositories they stand for.
AUDIO_ENCODER_ALIASES = {
    "wav2vec2-base": "facebook/wav2vec2-base",
    "wav2vec2-base-960h": "facebook/wav2vec2-base-960h",
    "wav2vec2-large": "facebook/wav2vec2-large",
    # The contract FAQ's secondary encoder: wav2vec2-base's architecture, HuBERT pre-training.
    "hubert-base": "facebook/hubert-base-ls960",
}


BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


class KeyValueError(ValueError):
    """A value error about a key below the section that raised it (`key` is dotted, relative)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- model: the detector's architecture ------------------------------------------------------


class AudioModelConfig(_Section):
    """wav2vec2 encoder + linear projection (contract: wav2vec2-base, 8 frozen + 4 fine-tuned)."""

    # contract keys
    encoder: str = "wav2vec2-base"
    pretrained: bool = True
    freeze_encoder_blocks: int = Field(8, ge=0)
    fine_tune_blocks: int = Field(4, ge=0)
    # the project's own
    sample_rate: int = 16000
    hidden_size: int = 768
    num_encoder_blocks: int = Field(12, ge=1)
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # CNN feature encoder: 7 conv layers, total stride 320 samples = 20 ms at 16 kHz.
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    freeze_feature_encoder: bool = True
    # Derived: equals model.fusion.hidden_dim unless set (audio frames are the attention keys).
    projection_dim: int = 512
    # wav2vec2-base was pre-trained on zero-mean, unit-variance waveforms (its feature
    # extractor has do_normalize=True), so the encoder normalises each clip itself.
    normalize_waveform: bool = True

    @property
    def source(self) -> str:
        """What `Wav2Vec2Model.from_pretrained` gets: a local folder, or the Hugging Face name
        (`wav2vec2-base` → `facebook/wav2vec2-base`; a name with a slash is used as is)."""
        if Path(self.encoder).expanduser().exists():
            return str(Path(self.encoder).expanduser())
        return AUDIO_ENCODER_ALIASES.get(self.encoder, self.encoder)

    @property
    def frame_stride(self) -> int:
        """Waveform samples per encoder frame (320 = 20 ms at 16 kHz for wav2vec2)."""
        stride = 1
        for s in self.conv_stride:
            stride *= s
        return stride

    def to_wav2vec2_config(self) -> Any:
        """The `transformers.Wav2Vec2Config` of these sizes (imported here: keeps this module light)."""
        from transformers import Wav2Vec2Config

        return Wav2Vec2Config(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_encoder_blocks,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            conv_dim=self.conv_dim,
            conv_kernel=self.conv_kernel,
            conv_stride=self.conv_stride,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
        )


class VideoModelConfig(_Section):
    """timm image backbone over aligned faces, concatenated with the per-frame flow summary."""

    # contract keys
    backbone: str = "efficientnet_b3"
    pretrained: bool = True
    freeze_backbone: bool = False
    # the project's own
    weights: str | None = None  # local weights file for the backbone; null = timm's (HF cache/hub)
    feature_dim: int = 1536
    flow_features: int = 2

    @property
    def frame_dim(self) -> int:
        """Per-frame feature size fed to the temporal encoder (1536 + 2 = 1538)."""
        return self.feature_dim + self.flow_features


class TemporalModelConfig(_Section):
    # contract keys
    encoder_type: Literal["conv1d", "transformer"] = "conv1d"
    window_frames: int = Field(5, ge=1)
    # the project's own
    output_dim: int = 2048
    conv_kernel_size: int = 3
    transformer_dim: int = 512
    transformer_layers: int = 2
    transformer_heads: int = 8
    dropout: float = 0.1


class FusionModelConfig(_Section):
    # contract keys
    strategy: str = "cross_attention"
    hidden_dim: int = Field(512, ge=1)
    attention_heads: int = Field(4, ge=1)
    # the project's own. Derived: temporal.output_dim + hidden_dim unless set.
    output_dim: int = 2560
    attention_dropout: float = 0.0

    @field_validator("strategy")
    @classmethod
    def _only_cross_attention(cls, value: str) -> str:
        if value not in FUSION_STRATEGIES:
            raise ValueError(f"only 'cross_attention' is implemented (got {value!r})")
        return value


class ClassificationConfig(_Section):
    # contract keys
    num_classes: int = 2
    dropout: float = Field(0.2, ge=0, lt=1)
    # the project's own: "fake" if P(fake) > threshold
    threshold: float = Field(0.5, gt=0, lt=1)

    @field_validator("num_classes")
    @classmethod
    def _two_classes(cls, value: int) -> int:
        if value != 2:
            raise ValueError(f"only 2 classes [real, fake] are implemented (got {value})")
        return value


#: The variants: layers over the contract defaults (the contract itself is the empty layer).
MODEL_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # docs/ARCHITECTURE.md §1: wav2vec2-base (8 frozen + 4 fine-tuned layers) → 512; EfficientNet-B3 1536 + 2
    # flow → 1538; Conv1d over 5-frame windows → 2048; cross attention 512 × 4 heads → 2560 → 2.
    "contract": {},
    # The same classes at toy sizes: tests and CPU demos. Never looks for pretrained weights.
    "tiny": {
        "audio": {
            "encoder": "tiny-wav2vec2",
            "pretrained": False,
            "hidden_size": 32,
            "num_encoder_blocks": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            # Same kernels and strides as wav2vec2-base (20 ms frames), narrow channels.
            "conv_dim": (32, 32, 32, 32, 32, 32, 32),
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
            "freeze_encoder_blocks": 1,
            "fine_tune_blocks": 1,
        },
        "video": {"backbone": "test_efficientnet", "pretrained": False, "feature_dim": 256},
        "temporal": {
            "output_dim": 64,
            "transformer_dim": 32,
            "transformer_layers": 1,
            "transformer_heads": 4,
        },
        "fusion": {"hidden_dim": 32},
    },
}

_MODEL_SECTIONS = ("audio", "video", "temporal", "fusion", "classification")


def _explicit(value: Any) -> dict[str, Any]:
    """A section given as a dict or a model, reduced to the keys its author set."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return dict(value or {})


class ModelConfig(_Section):
    """Everything that determines the detector's architecture (and nothing operational).

    Constructing one resolves it: the variant `registry_config` fills every key the input
    leaves out, derived sizes follow, and the invariants are checked (`KeyValueError` names
    the key). `ModelConfig(registry_config="tiny")` *is* the tiny detector's config.
    """

    registry_config: str = "contract"  # the variant (a layer over the contract): contract | tiny
    audio: AudioModelConfig = Field(default_factory=AudioModelConfig)
    video: VideoModelConfig = Field(default_factory=VideoModelConfig)
    temporal: TemporalModelConfig = Field(default_factory=TemporalModelConfig)
    fusion: FusionModelConfig = Field(default_factory=FusionModelConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_variant(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("registry_config", "contract")
        if not isinstance(name, str):
            return data  # field validation reports the type
        if name not in MODEL_VARIANTS:
            raise KeyValueError(
                "registry_config", f"unknown variant {name!r} (known: {', '.join(sorted(MODEL_VARIANTS))})"
            )
        layer = MODEL_VARIANTS[name]
        merged: dict[str, Any] = {k: v for k, v in data.items() if k not in _MODEL_SECTIONS}
        for section in _MODEL_SECTIONS:
            given = data.get(section)
            if given is not None and not isinstance(given, dict | BaseModel):
                merged[section] = given  # let field validation report the wrong type
                continue
            merged[section] = {**layer.get(section, {}), **_explicit(given)}
        audio, temporal, fusion = merged["audio"], merged["temporal"], merged["fusion"]
        hidden = fusion.get("hidden_dim", FusionModelConfig.model_fields["hidden_dim"].default)
        temporal_out = temporal.get("output_dim", TemporalModelConfig.model_fields["output_dim"].default)
        if isinstance(hidden, int) and isinstance(temporal_out, int):
            fusion.setdefault("output_dim", temporal_out + hidden)
            audio.setdefault("projection_dim", hidden)
        return merged

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        self.check()
        return self

    def check(self) -> None:
        """The invariants between sections (raises `KeyValueError` naming the key)."""
        a, t, f = self.audio, self.temporal, self.fusion
        if a.freeze_encoder_blocks + a.fine_tune_blocks != a.num_encoder_blocks:
            raise KeyValueError(
                "audio.freeze_encoder_blocks",
                f"freeze_encoder_blocks ({a.freeze_encoder_blocks}) + fine_tune_blocks "
                f"({a.fine_tune_blocks}) must add up to the encoder's depth, "
                f"audio.num_encoder_blocks ({a.num_encoder_blocks})",
            )
        if not (len(a.conv_dim) == len(a.conv_kernel) == len(a.conv_stride)):
            raise KeyValueError(
                "audio.conv_dim", "conv_dim, conv_kernel and conv_stride must have the same length"
            )
        if f.hidden_dim % f.attention_heads:
            raise KeyValueError(
                "fusion.attention_heads",
                f"hidden_dim ({f.hidden_dim}) must be divisible by attention_heads ({f.attention_heads})",
            )
        if a.projection_dim != f.hidden_dim:
            raise KeyValueError(
                "audio.projection_dim",
                f"must equal fusion.hidden_dim ({a.projection_dim} != {f.hidden_dim}): audio frames are "
                "the attention keys (leave it out to derive it)",
            )
        if f.output_dim != t.output_dim + f.hidden_dim:
            raise KeyValueError(
                "fusion.output_dim",
                f"must equal temporal.output_dim + fusion.hidden_dim ({t.output_dim} + {f.hidden_dim} = "
                f"{t.output_dim + f.hidden_dim}, got {f.output_dim}; leave it out to derive it)",
            )

    @property
    def name(self) -> str:
        """The variant's name (checkpoints call it `registry_config`)."""
        return self.registry_config

    def config_hash(self) -> str:
        """Short, stable hash of the architecture (the checkpoint's and prediction rows' `config_hash`)."""
        payload = self.model_dump(mode="json", exclude={"registry_config"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


#: The detector's config under the name the model package uses.
DetectorConfig = ModelConfig


def resolve_model_config(model: ModelConfig | str | None = None) -> ModelConfig:
    """THE detector config to build: training, serving's untrained fallback and `model describe`.

    A name gives that variant alone (`"tiny"`); a `ModelConfig` (e.g. `settings.model`, already
    layered when it was read) is re-validated, so values assigned after loading are checked
    too; None gives the contract.
    """
    if model is None or isinstance(model, str):
        return ModelConfig(registry_config=model or "contract")
    resolved = model.model_copy(deep=True)
    resolved.check()
    return resolved


# --- data -------------------------------------------------------------------------------------


class AudioDataConfig(_Section):
    sample_rate: int = 16000
    channels: int = 1
    sample_format: Literal["s16"] = "s16"
    vad_aggressiveness: int = Field(2, ge=0, le=3)
    vad_frame_ms: Literal[10, 20, 30] = 30


class FaceTrackingConfig(_Section):
    """How faces are linked into tracks when `max_faces` > 1 (dagster_deepfake/faces/tracks.py)."""

    iou_threshold: float = Field(0.3, ge=0, le=1)
    max_centre_distance: float = Field(1.0, ge=0)  # in face widths
    min_similarity: float = Field(0.5, ge=-1, le=1)
    reid_similarity: float = Field(0.85, ge=-1, le=1)
    max_gap_seconds: float = Field(10.0, ge=0)
    min_frames: int = Field(5, ge=1)  # one 1-second window at 5 FPS


class FacesConfig(_Section):
    detector: str = "retinaface"
    confidence_threshold: float = 0.95
    landmarks: Literal[5] = 5
    max_faces: int = Field(1, ge=1)  # > 1: every face is tracked and scored (faces as tracks)
    detect_max_side: int = 640
    tracking: FaceTrackingConfig = Field(default_factory=FaceTrackingConfig)
    # The aligned crop's side is `data.resolution`; `DataConfig` hands it to this section.
    _aligned_size: int = PrivateAttr(default=224)

    @property
    def aligned_size(self) -> int:
        """Side of the similarity-aligned face crops: `data.resolution` (224)."""
        return self._aligned_size


class AugmentationConfig(_Section):
    """Training-time augmentation of face windows; `enable: false` switches all of them off."""

    enable: bool = True
    color_jitter: bool = True
    random_crop: bool = True
    random_flip: bool = True

    @property
    def active(self) -> bool:
        return self.enable and (self.color_jitter or self.random_crop or self.random_flip)


class DataConfig(_Section):
    # contract keys
    dataset: str = "faceforensics++"  # default training set of `train` (a registered dataset)
    val_dataset: str = "celeb-df-v2"  # default validation set of `train`
    frame_rate: float = Field(5.0, ge=5, le=10)  # sampled FPS (5-10 allowed)
    resolution: int = Field(224, ge=16)  # aligned face size fed to the backbone
    vad_enabled: bool = True
    optical_flow_enabled: bool = True
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    # the project's own
    audio: AudioDataConfig = Field(default_factory=AudioDataConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    min_height: int = 240
    max_height: int = 1080

    @model_validator(mode="after")
    def _faces_resolution(self) -> DataConfig:
        self.faces._aligned_size = self.resolution
        return self


# --- training ---------------------------------------------------------------------------------


class TrainingConfig(_Section):
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    epochs: int = Field(20, ge=1)
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_steps: int = Field(1000, ge=0)
    temporal_consistency_weight: float = Field(0.1, ge=0)
    modality_dropout_prob: float = Field(0.2, ge=0, le=1)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r} (implemented: {', '.join(OPTIMIZERS)})")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r} (implemented: {', '.join(SCHEDULERS)})")
        return value


# --- everything else --------------------------------------------------------------------------


class CalibrationConfig(_Section):
    method: Literal["temperature_scaling"] = "temperature_scaling"
    fit_on: Literal["validation"] = "validation"


class ExplainConfig(_Section):
    method: Literal["grad_cam"] = "grad_cam"
    top_k_frames: int = 5
    # The project's own: heat-map frames are distinct moments, at least this far apart
    # (explain.gradcam.top_frames; docs/CONFIG.md "Heat maps: distinct moments").
    min_gap_seconds: float = Field(1.0, ge=0)


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
    # Videos per run when a sensor tick finds several (docs/ARCHITECTURE.md §3): one process, one
    # model load per batch, each video still its own partition. 1 = a run per video.
    batch_max_videos: int = Field(64, ge=1)
    # Batch runs a tick's videos are split into, to run side by side, each pinned to an equal share
    # of the host's cores (dagster_deepfake/runtime.py, docs/CONFIG.md). At most the instance's
    # max_concurrent_runs; 1 = one run at a time using every core (and on a cluster, where each run
    # has its own pod and the pods' cores are not this host's).
    side_by_side_runs: int = Field(1, ge=1)
    artifact_root: str = "./.artifacts"
    postgres_url: str | None = None
    postgres_data_dir: str = "./.pgdata"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The face backbone when the model runs fp32 on the CPU (no native bf16): auto = ONNX Runtime,
    # measured faster than torch's fp32 there, or torch (docs/CONFIG.md, models/onnx_backbone.py).
    cpu_backbone: CpuBackbone = "auto"
    # Trained checkpoint folder (model.safetensors + manifest.json); null = the newest under
    # model_dir/current, else an untrained model of `model.registry_config` (flagged everywhere).
    checkpoint: str | None = None
    model_dir: str = "./.models"
    max_duration_seconds: float = 900
    # Width x height of the coded frame, checked before any decoding (default: 4096x2160, so 4K
    # passes); frames are scaled to data.max_height inside ffmpeg either way (docs/RELIABILITY.md).
    max_pixels: int = Field(4096 * 2160, gt=0)
    max_upload_bytes: int = 2 * 1024**3
    # Bytes all uploads in flight may spool to the API's temp folder together; an upload that
    # would go over it answers 503 with Retry-After (docs/API.md).
    upload_spool_budget_bytes: int = 4 * 1024**3


class Settings(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    platform: PlatformConfig = Field(default_factory=PlatformConfig)

    def contract_hash(self) -> str:
        """Short hash of everything but `platform`: two runs with the same hash used the same science."""
        payload = self.model_dump(mode="json", exclude={"platform"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def overlay_explicit(base: BaseModelT, top: BaseModelT) -> BaseModelT:
    """`base` with every key `top`'s author set explicitly (recursively) taken from `top`.

    E.g. a run's training file that sets only `data.dataset` changes only that key of the
    platform's `data` section.
    """
    update: dict[str, Any] = {}
    for name in top.model_fields_set:
        mine, theirs = getattr(base, name), getattr(top, name)
        if isinstance(mine, BaseModel) and isinstance(theirs, BaseModel) and type(mine) is type(theirs):
            update[name] = overlay_explicit(mine, theirs)
        else:
            update[name] = theirs
    merged = base.model_copy(update=update, deep=True)
    return type(base).model_validate(merged.model_dump())


def _resolve_local(value: str, base: Path) -> str:
    """Make a relative local path (or file:// URL) absolute against `base`; leave other URLs alone."""
    if value.startswith("file://"):
        rest = value[len("file://") :]
        return "file://" + str((base / rest).resolve()) if not rest.startswith("/") else value
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _display(path: Path) -> str:
    """`config/config.yaml` for a file under the working directory, else the absolute path."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def config_error(exc: ValidationError, source: str) -> ConfigError:
    """One line for a validation error: `<file>: <dotted key>: <what is wrong>`."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, KeyValueError):
        loc.append(original.key)
        message = original.message
    elif first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        if isinstance(value, str | int | float | bool) and "got" not in message:
            message += f" (got {value!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{'.'.join(loc)}: {message}{more}", source=source)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from YAML (default: $DAGSTER_DEEPFAKE_CONFIG or config/config.yaml).

    Relative platform paths are resolved against the project root (the folder holding
    `config/`), so commands behave the same from any working directory. `overrides`
    replace top-level platform keys, e.g. ``load_settings(artifact_root="/tmp/a")``.
    Every problem with the file (unknown key, a value the code cannot honour, sizes that do
    not fit together) raises one `ConfigError` whose text is one line naming the file and key.
    """
    config_path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    source = _display(config_path)
    raw: dict[str, Any] = {}
    if config_path.exists():
        try:
            raw = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"not valid YAML{where}", source=source) from None
        if not isinstance(raw, dict):
            raise ConfigError(
                "the file must hold a mapping of sections (model, training, data, …)", source=source
            )
    elif path is not None or os.environ.get(CONFIG_ENV):
        raise ConfigError("config file not found", source=str(config_path))
    base = config_path.resolve().parent.parent if config_path.parent.name == "config" else Path.cwd()
    platform = dict(raw.get("platform") or {})
    for key, env in _PLATFORM_ENV.items():
        if os.environ.get(env):
            platform[key] = os.environ[env]
    platform.update(overrides)
    raw["platform"] = platform
    model = raw.get("model")
    if isinstance(model, dict):  # a local weights file or encoder folder, relative to the project
        video, audio = model.get("video"), model.get("audio")
        if isinstance(video, dict) and isinstance(video.get("weights"), str):
            video["weights"] = _resolve_local(video["weights"], base)
        encoder = audio.get("encoder") if isinstance(audio, dict) else None
        if isinstance(encoder, str) and not Path(encoder).is_absolute() and (base / encoder).exists():
            audio["encoder"] = str((base / encoder).resolve())
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, source) from None
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


def with_training_config(settings: Settings, path: str | os.PathLike[str]) -> Settings:
    """`settings` for one training run: the file's `model` and `training` sections replace the
    platform's, and its explicitly set `data` keys (dataset, val_dataset, augmentation …) apply
    over the platform's `data` (config/train-synthetic.yaml is such a file)."""
    run = load_settings(path)
    return settings.model_copy(
        update={
            "model": run.model,
            "training": run.training,
            "data": overlay_explicit(settings.data, run.data),
        }
    )
