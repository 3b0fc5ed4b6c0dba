"""Pretrained weights: real loading code that never hangs and falls back to random init loudly.

Order for each branch: a local source named in the config (`model.audio.encoder` as a folder,
`model.video.weights`), then weights brought in by `dagster-deepfake weights import`
(`<model_dir>/pretrained`, found by the architecture's signature, `weights_store.py`), then the
Hugging Face cache, then — only when `allow_download` and the hub is not offline — a download with a short
timeout, else random initialisation with a WARNING. The returned `PretrainedFlags` travel into
the checkpoint manifest, every prediction row and the report (docs/ARCHITECTURE.md §5).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from pydantic import BaseModel
from torch import nn
from transformers import HubertModel, Wav2Vec2Model

from .audio import SpeechEncoder, apply_freeze_policy, encoder_family
from .configuration import AudioModelConfig, DetectorConfig, VideoModelConfig
from .detector import DeepfakeDetector
from .weights_store import Branch, WeightsProvenance, find_imported

logger = logging.getLogger(__name__)

DEFAULT_DOWNLOAD_TIMEOUT = 10.0


class PretrainedFlags(BaseModel):
    """Which branches started from published weights (False = random initialisation)."""

    audio_encoder: bool = False
    video_backbone: bool = False
    # Provenance (source, SHA-256) of the branches loaded from `weights import`'s store.
    sources: dict[str, WeightsProvenance] = {}

    @property
    def any(self) -> bool:
        return self.audio_encoder or self.video_backbone

    @property
    def all(self) -> bool:
        return self.audio_encoder and self.video_backbone

    @property
    def version_tag(self) -> str:
        """`-w<8 hex>` over the imported weights' SHA-256 ('' without any): in model versions, so
        a model built on other imported weights is another model version."""
        if not self.sources:
            return ""
        joined = "+".join(self.sources[k].stored_sha256 for k in sorted(self.sources))
        return "-w" + hashlib.sha256(joined.encode()).hexdigest()[:8]


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap TCP probe of the hub endpoint, so an unreachable hub costs seconds, not minutes."""
    from huggingface_hub import constants

    parsed = urlparse(constants.ENDPOINT)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _may_download(allow_download: bool, timeout: float) -> bool:
    return allow_download and not hub_offline() and hub_reachable(min(timeout, 3.0))


def load_wav2vec2(
    config: AudioModelConfig, *, allow_download: bool = False, timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
) -> SpeechEncoder | None:
    """`Wav2Vec2Model.from_pretrained(config.source)` (`HubertModel` for HuBERT encoders) from a
    local folder or the HF cache, or (when allowed and reachable) the hub; None when no weights
    can be had.

    `config.source` is `model.audio.encoder` resolved: a local folder as is, `wav2vec2-base`
    as `facebook/wav2vec2-base`, `hubert-base` as `facebook/hubert-base-ls960`."""
    source = config.source
    model_class = HubertModel if encoder_family(config) == "hubert" else Wav2Vec2Model
    try:
        return model_class.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        local_error: Exception = exc
    if Path(source).exists() or not _may_download(allow_download, timeout):
        logger.debug("wav2vec2 %r not available locally: %s", source, local_error)
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            source,
            allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"],
            etag_timeout=timeout,
        )
        return model_class.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # network errors come in many types; any of them means "no weights"
        logger.debug("wav2vec2 %r download failed: %s", source, exc)
        return None


def _cached_timm_weights(name: str, allow_download: bool, timeout: float) -> str | None:
    """Path of the timm weights file for `name` (HF cache first, then a bounded download)."""
    from huggingface_hub import hf_hub_download

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(pretrained_cfg, "hf_hub_id", None) if pretrained_cfg else None
    if not repo:
        return None
    filenames = ["model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, local_files_only=True)
        except Exception:
            continue
    if not _may_download(allow_download, timeout):
        return None
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, etag_timeout=timeout)
        except Exception as exc:
            logger.debug("timm weights %s/%s download failed: %s", repo, filename, exc)
    return None


def load_timm_backbone(
    config: VideoModelConfig, *, allow_download: bool = False, timeout: float = DEFAULT_DOWNLOAD_TIMEOUT
) -> nn.Module | None:
    """`timm.create_model(backbone, pretrained=True, num_classes=0)` from `video.weights`
    (a local checkpoint file), the HF cache, or a bounded download; None when unavailable."""
    if config.weights:
        path = Path(config.weights).expanduser()
        if not path.is_file():
            logger.warning("model.video.weights %s does not exist", path)
            return None
        weights_file: str | None = str(path)
    else:
        weights_file = _cached_timm_weights(config.backbone, allow_download, timeout)
    if weights_file is None:
        return None
    try:
        return timm.create_model(
            config.backbone,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay={"file": weights_file},
        )
    except Exception as exc:
        logger.warning("could not load %s weights from %s: %s", config.backbone, weights_file, exc)
        return None


def _copy_weights(target: nn.Module, source: nn.Module, what: str) -> bool:
    """Copy `source`'s weights into `target`; False (with a WARNING) when their shapes differ,
    e.g. published wav2vec2-base weights for the sizes of the tiny variant."""
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        logger.warning("%s: published weights do not fit the configured sizes (%s)", what, first)
        return False
    return True


def _load_imported(
    module: nn.Module, weights_dir: str | Path | None, branch: Branch, flags: PretrainedFlags
) -> bool:
    """Load `weights import`'s tensors for exactly this architecture into `module`, if any."""
    found = find_imported(weights_dir, branch, module)
    if found is None:
        return False
    tensors, provenance = found
    module.load_state_dict(tensors, strict=True)  # names and shapes were checked at import
    flags.sources[branch] = provenance
    logger.info(
        "%s: imported weights from %s (sha256 %s)", branch, provenance.source, provenance.stored_sha256
    )
    return True


def load_pretrained_weights(
    model: DeepfakeDetector,
    config: DetectorConfig,
    *,
    allow_download: bool = False,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    weights_dir: str | Path | None = None,
) -> PretrainedFlags:
    """Copy published weights into a `DeepfakeDetector` where they can be had.

    Never raises for missing weights: each branch that stays random is named in one WARNING.
    A branch whose `pretrained` is false (`model.audio.pretrained`, `model.video.pretrained`;
    both false in the tiny variant) is not looked for at all: no file, no cache, no network.
    `weights_dir` is `<model_dir>/pretrained` (`imported_weights_dir`): what `weights import`
    accepted is used there unless the config names a local source of its own.
    """
    flags = PretrainedFlags()
    audio_local = Path(config.audio.encoder).expanduser().exists()
    if (
        config.audio.pretrained
        and not audio_local
        and _load_imported(model.audio_encoder.wav2vec2, weights_dir, "audio_encoder", flags)
    ):
        apply_freeze_policy(model.audio_encoder.wav2vec2, config.audio)
        flags.audio_encoder = True
    if (
        config.video.pretrained
        and not config.video.weights
        and _load_imported(model.frame_encoder.backbone, weights_dir, "video_backbone", flags)
    ):
        if config.video.freeze_backbone:
            model.frame_encoder.backbone.requires_grad_(False)
        flags.video_backbone = True
    if config.audio.pretrained and not flags.audio_encoder:
        wav2vec2 = load_wav2vec2(config.audio, allow_download=allow_download, timeout=timeout)
        if wav2vec2 is not None and _copy_weights(
            model.audio_encoder.wav2vec2, wav2vec2, f"audio encoder {config.audio.source}"
        ):
            apply_freeze_policy(model.audio_encoder.wav2vec2, config.audio)
            flags.audio_encoder = True
    if config.video.pretrained and not flags.video_backbone:
        backbone = load_timm_backbone(config.video, allow_download=allow_download, timeout=timeout)
        if backbone is not None and _copy_weights(
            model.frame_encoder.backbone, backbone, f"video backbone {config.video.backbone}"
        ):
            if config.video.freeze_backbone:
                model.frame_encoder.backbone.requires_grad_(False)
            flags.video_backbone = True
    missing = [
        f"{what} ({source})"
        for what, source, wanted, ok in [
            ("audio encoder", config.audio.source, config.audio.pretrained, flags.audio_encoder),
            (
                "video backbone",
                config.video.weights or config.video.backbone,
                config.video.pretrained,
                flags.video_backbone,
            ),
        ]
        if wanted and not ok
    ]
    if missing:
        logger.warning(
            "PRETRAINED WEIGHTS UNAVAILABLE for %s: using RANDOM INITIALISATION. Predictions of "
            "this model are not meaningful until it is trained (pretrained=false is recorded). "
            "Bring weights with `dagster-deepfake weights import`, name a local folder/file "
            "(model.audio.encoder, model.video.weights) or allow downloads from a reachable hub.",
            ", ".join(missing),
        )
    return flags


def build_detector(
    config: DetectorConfig,
    *,
    pretrained: bool = True,
    allow_download: bool = False,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    seed: int | None = None,
    weights_dir: str | Path | None = None,
) -> tuple[DeepfakeDetector, PretrainedFlags]:
    """`DeepfakeDetector(config)` (seeded if `seed`), then pretrained weights where available
    (`weights_dir`: `<model_dir>/pretrained`, what `weights import` stored)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = DeepfakeDetector(config)
    flags = (
        load_pretrained_weights(
            model, config, allow_download=allow_download, timeout=timeout, weights_dir=weights_dir
        )
        if pretrained
        else PretrainedFlags()
    )
    return model, flags
