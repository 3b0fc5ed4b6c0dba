"""Checkpoints: `model.safetensors` + `manifest.json` in one folder, and a per-process store.

The manifest says what the weights are (architecture, whether anything was pretrained or
trained, calibration temperature, training data hash, metrics) so a prediction can always
state honestly which model produced it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, PrivateAttr, model_validator
from safetensors.torch import load_file, load_model, save_model

from dagster_deepfake.provenance import weights_sha256
from dagster_deepfake.runtime import keep_freed_memory
from dagster_deepfake.storage.keys import sha256_file

from .configuration import DetectorConfig
from .detector import DeepfakeDetector
from .registry import resolve_model_config
from .weights import PretrainedFlags, build_detector

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


def upgrade_legacy_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """A manifest's `detector_config` written before the one settings tree (keys `name`, `head`,
    `fusion.num_heads`, `fusion.type`, `video.backbone_weights`, `allow_pretrained` …) in
    today's keys; None when it is already current. The architecture is unchanged."""
    legacy = {"name", "head", "allow_pretrained"} & set(config) or "num_heads" in (config.get("fusion") or {})
    if not legacy:
        return None
    new = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    new["registry_config"] = new.pop("name", "contract")
    new["classification"] = new.pop("head", {})
    fusion, video = new.setdefault("fusion", {}), new.setdefault("video", {})
    if "num_heads" in fusion:
        fusion["attention_heads"] = fusion.pop("num_heads")
    fusion.pop("type", None)
    fusion.pop("modality_dropout", None)  # a training setting now (training.modality_dropout_prob)
    if "backbone_weights" in video:
        video["weights"] = video.pop("backbone_weights")
    video.pop("input_size", None)  # data.resolution now; the backbone pools globally
    allow = bool(new.pop("allow_pretrained", True))
    new.setdefault("audio", {})["pretrained"] = allow
    video["pretrained"] = allow
    return new


class CheckpointManifest(BaseModel):
    model_version: str
    registry_config: str
    detector_config: DetectorConfig
    config_hash: str
    pretrained: PretrainedFlags = Field(default_factory=PretrainedFlags)
    trained: bool = False
    temperature: float = Field(1.0, gt=0)
    training_data_hash: str | None = None
    # What the weights were trained on, in words (the registered dataset names, e.g.
    # "synthetic-demo"): reports say "trained on …" so synthetic-only training is never hidden.
    training_data: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    # `settings.training` of the run that trained the weights (optimizer, lr, λ, modality dropout …).
    training: dict[str, Any] | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # SHA-256 and size of `model.safetensors`, written by `save_checkpoint` (None in checkpoints
    # saved before; `load_checkpoint` then hashes the file once per process).
    weights_sha256: str | None = None
    weights_bytes: int | None = None
    _hashed_at_load: bool = PrivateAttr(default=False)

    @property
    def weights_sha256_from(self) -> str | None:
        """'manifest' (recorded when the checkpoint was saved), 'file' (hashed when it was loaded)."""
        if self.weights_sha256 is None:
            return None
        return "file" if self._hashed_at_load else "manifest"

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Read checkpoints written before the one settings tree (their hash is recomputed)."""
        if isinstance(data, dict) and isinstance(data.get("detector_config"), dict):
            upgraded = upgrade_legacy_config(data["detector_config"])
            if upgraded is not None:
                config = DetectorConfig.model_validate(upgraded)
                data = {**data, "detector_config": config, "config_hash": config.config_hash()}
        return data

    @classmethod
    def for_model(cls, model: DeepfakeDetector, **fields: Any) -> CheckpointManifest:
        """A manifest describing `model`'s architecture; `fields` fill in the rest."""
        config = model.config
        fields.setdefault("model_version", f"{config.name}-{config.config_hash()}")
        return cls(
            registry_config=config.name,
            detector_config=config,
            config_hash=config.config_hash(),
            **fields,
        )

    @property
    def trained_on(self) -> str | None:
        """'<datasets> (data <hash>)' for a trained checkpoint, else None."""
        if not self.trained:
            return None
        short = (self.training_data_hash or "unknown")[:12]
        return f"{self.training_data} (data {short})" if self.training_data else f"data {short}"

    @property
    def weights_label(self) -> str:
        """'trained', 'pretrained-backbones' or 'untrained' – what the report shows."""
        if self.trained:
            return "trained"
        return "pretrained-backbones" if self.pretrained.any else "untrained"


def save_checkpoint(directory: str | Path, model: DeepfakeDetector, manifest: CheckpointManifest) -> Path:
    """Write `model.safetensors` and `manifest.json` into `directory` (created if needed).

    The manifest written records the weights file's SHA-256 and size (`manifest` itself is left
    as it was given)."""
    if manifest.config_hash != model.config.config_hash():
        raise ValueError(
            f"manifest config_hash {manifest.config_hash} does not describe this model "
            f"({model.config.config_hash()})"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so a crashed save never leaves a half checkpoint behind.
    tmp_weights = directory / (WEIGHTS_FILE + ".tmp")
    save_model(model, str(tmp_weights), metadata={"config_hash": manifest.config_hash})
    digest, size = sha256_file(str(tmp_weights)), tmp_weights.stat().st_size
    tmp_weights.replace(directory / WEIGHTS_FILE)
    recorded = manifest.model_copy(update={"weights_sha256": digest, "weights_bytes": size})
    tmp_manifest = directory / (MANIFEST_FILE + ".tmp")
    tmp_manifest.write_text(recorded.model_dump_json(indent=2))
    tmp_manifest.replace(directory / MANIFEST_FILE)
    return directory


def read_manifest(directory: str | Path) -> CheckpointManifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint manifest at {path}")
    return CheckpointManifest.model_validate(json.loads(path.read_text()))


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[DeepfakeDetector, CheckpointManifest]:
    """Rebuild the model from the manifest's config and load its weights (eval mode)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.detector_config.config_hash() != manifest.config_hash:
        raise ValueError(f"{directory}: manifest config does not match its config_hash")
    # Built on the meta device, then given the file's tensors: random initialisation of the
    # contract model costs ~2 s on 2 cores and would be overwritten anyway (this takes ~0.3 s).
    with torch.device("meta"):
        model = DeepfakeDetector(manifest.detector_config)
    model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the file does not hold (a non-persistent buffer): build it for real
        model = DeepfakeDetector(manifest.detector_config)
        load_model(model, str(directory / WEIGHTS_FILE), strict=True)
    model.to(map_location)
    model.eval()
    return model, _with_weights_hash(directory / WEIGHTS_FILE, manifest)


def _with_weights_hash(weights: Path, manifest: CheckpointManifest) -> CheckpointManifest:
    """`manifest` with its weights' SHA-256: as recorded at save time, else (an older checkpoint, or
    a file whose size is not the recorded one) hashed now, once per process (`weights_sha256`)."""
    size = weights.stat().st_size
    if manifest.weights_sha256 and manifest.weights_bytes == size:
        return manifest
    hashed = manifest.model_copy(update={"weights_sha256": weights_sha256(weights), "weights_bytes": size})
    hashed._hashed_at_load = True
    return hashed


def build_untrained(
    config_name: str | DetectorConfig,
    *,
    seed: int = 0,
    pretrained: bool = False,
    weights_dir: str | Path | None = None,
) -> tuple[DeepfakeDetector, CheckpointManifest]:
    """A random-init model and its honest manifest (`trained: false`).

    With `pretrained=True` published backbone weights are used where locally available
    (`weights_dir`: what `weights import` stored); the manifest's flags say which, with the
    imported weights' provenance. Useful before any training has run (demo, pipeline tests).
    """
    config = resolve_model_config(config_name)
    model, flags = build_detector(config, pretrained=pretrained, seed=seed, weights_dir=weights_dir)
    model.eval()
    manifest = CheckpointManifest.for_model(
        model,
        model_version=f"{config.name}-untrained-{config.config_hash()}{flags.version_tag}",
        pretrained=flags,
    )
    return model, manifest


MODEL_CACHE_SIZE_ENV = "DAGSTER_DEEPFAKE_MODEL_CACHE_SIZE"


class ModelStore:
    """Loads each checkpoint once per process (thread-safe), keeping the `max_models` used last.

    Keyed by resolved path, the manifest's modification time (a re-trained checkpoint written
    to the same folder is picked up) and the device. Bounded because a long-lived process (a
    Celery worker, launchers/celery_worker.py) sees every checkpoint training publishes: the
    least recently used model is dropped (`DAGSTER_DEEPFAKE_MODEL_CACHE_SIZE`, default 4).

    `get(None, config_name=...)` returns a cached untrained model of that config instead.
    """

    def __init__(self, max_models: int | None = None) -> None:
        self.max_models = max(1, max_models or int(os.environ.get(MODEL_CACHE_SIZE_ENV, "4")))
        self._cache: OrderedDict[tuple[str, str], tuple[DeepfakeDetector, CheckpointManifest]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        checkpoint_dir: str | Path | None,
        *,
        map_location: str = "cpu",
        config_name: str = "contract",
    ) -> tuple[DeepfakeDetector, CheckpointManifest]:
        if checkpoint_dir:
            manifest_path = Path(checkpoint_dir).resolve() / MANIFEST_FILE
            stamp = manifest_path.stat().st_mtime_ns if manifest_path.exists() else 0
            key = (f"{manifest_path.parent}@{stamp}", str(map_location))
        else:
            key = (f"untrained:{config_name}", str(map_location))
        with self._lock:
            if key not in self._cache:
                keep_freed_memory()  # this process runs a model: its activations reuse memory (runtime.py)
                if checkpoint_dir:
                    self._cache[key] = load_checkpoint(checkpoint_dir, map_location)
                else:
                    model, manifest = build_untrained(config_name)
                    self._cache[key] = (model.to(map_location), manifest)
                while len(self._cache) > self.max_models:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


#: The process-wide store (assets/resources share it).
model_store = ModelStore()
