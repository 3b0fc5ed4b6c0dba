"""Which checkpoint serves predictions, and an honest untrained fallback saved once.

Order: an explicit checkpoint folder → `<model_dir>/current` (where training publishes; with an
artifact store, first brought in line with the store's `models/current.json` by `models/sync.py`) →
`<model_dir>/untrained-<variant>-<config_hash>` (built once from `settings.model` resolved by
`resolve_model_config`, with a fixed seed and the weights `weights import` brought, and saved, so every process and every run uses the
very same random weights and says so: `trained: false`). The fallback is keyed by the config
hash, so `model.fusion.attention_heads: 8` in the YAML really serves 8 heads.

A trained checkpoint keeps the architecture stored in its manifest; when the YAML's resolved
`model` section describes another one, a WARNING names the keys that differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from dagster_deepfake.models.checkpoint import (
    MANIFEST_FILE,
    CheckpointManifest,
    build_untrained,
    model_store,
    read_manifest,
    save_checkpoint,
)
from dagster_deepfake.models.configuration import ModelConfig, resolve_model_config
from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.models.sync import sync_published_checkpoint
from dagster_deepfake.models.weights_store import imported_weights_dir

if TYPE_CHECKING:
    from dagster_deepfake.storage.artifacts import ArtifactStore

log = logging.getLogger(__name__)


def current_checkpoint_dir(model_dir: str) -> Path:
    """Where training publishes the checkpoint that serves predictions."""
    return Path(model_dir) / "current"


def synced_current_dir(model_dir: str, artifacts: ArtifactStore | None) -> Path:
    """`<model_dir>/current` after following the store's published checkpoint (`models/sync.py`):
    what a training step on any host (calibration, evaluation) reads."""
    sync_published_checkpoint(artifacts, model_dir)
    return current_checkpoint_dir(model_dir)


def untrained_checkpoint_dir(model_dir: str, config: ModelConfig) -> Path:
    """Where the untrained fallback of exactly this architecture is saved."""
    return Path(model_dir) / f"untrained-{config.registry_config}-{config.config_hash()}"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(wanted: ModelConfig, stored: ModelConfig) -> list[str]:
    """`model.<key>: yaml X, checkpoint Y` for every key where two configs differ (variant name aside)."""
    a = _flatten(wanted.model_dump(mode="json", exclude={"registry_config"}))
    b = _flatten(stored.model_dump(mode="json", exclude={"registry_config"}))
    return [
        f"model.{k}: yaml {a.get(k)!r}, checkpoint {b.get(k)!r}" for k in sorted(a) if a.get(k) != b.get(k)
    ]


def warn_if_config_differs(path: Path, wanted: ModelConfig, stored: ModelConfig) -> list[str]:
    """Log (and return) one WARNING when the checkpoint's architecture is not the YAML's."""
    diffs = config_differences(wanted, stored)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; … {len(diffs) - 5} more" if len(diffs) > 5 else "")
        log.warning(
            "checkpoint %s was built with another model config than the settings describe "
            "(it is served with its own): %s",
            path,
            shown,
        )
    return diffs


def resolve_checkpoint(
    checkpoint: str | None,
    model_dir: str,
    model_config: ModelConfig | str,
    artifacts: ArtifactStore | None = None,
) -> Path:
    """The checkpoint folder to serve, creating the untrained fallback if needed.

    `model_config`: `settings.model` (or a variant name), resolved by `resolve_model_config`.
    `artifacts`: the artifact store training publishes to; its published checkpoint is synced
    into `<model_dir>/current` first (one GET when up to date). An explicit `checkpoint` skips it.
    """
    config = resolve_model_config(model_config)
    if checkpoint:
        path = Path(checkpoint)
        if not (path / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {MANIFEST_FILE}")
        return path
    sync_published_checkpoint(artifacts, model_dir)
    current = current_checkpoint_dir(model_dir)
    if (current / MANIFEST_FILE).is_file():
        return current
    fallback = untrained_checkpoint_dir(model_dir, config)
    if not (fallback / MANIFEST_FILE).is_file():
        fallback.parent.mkdir(parents=True, exist_ok=True)
        # Two runs starting together must not both write the same files.
        with FileLock(str(fallback.parent / f".{fallback.name}.lock")):
            if not (fallback / MANIFEST_FILE).is_file():
                log.warning(
                    "no trained checkpoint: serving an UNTRAINED %s model from %s (random init, except "
                    "published backbone weights found locally where model.*.pretrained is true)",
                    config.registry_config,
                    fallback,
                )
                # Never downloads here: a run must not wait on the hub. The flags say what loaded.
                model, manifest = build_untrained(
                    config, seed=0, pretrained=True, weights_dir=imported_weights_dir(model_dir)
                )
                save_checkpoint(fallback, model, manifest)
    return fallback


def load_serving_model(
    checkpoint: str | None,
    model_dir: str,
    model_config: ModelConfig | str,
    device: str = "cpu",
    artifacts: ArtifactStore | None = None,
) -> tuple[DeepfakeDetector, CheckpointManifest]:
    """The model that serves predictions, loaded once per process (see `ModelStore`)."""
    config = resolve_model_config(model_config)
    path = resolve_checkpoint(checkpoint, model_dir, config, artifacts)
    model, manifest = model_store.get(path, map_location=device)
    if manifest.trained or checkpoint:
        warn_if_config_differs(path, config, manifest.detector_config)
    return model, manifest


def load_ensemble(
    checkpoint: str | None,
    model_dir: str,
    model_config: ModelConfig | str,
    ensemble_size: int,
    device: str = "cpu",
    artifacts: ArtifactStore | None = None,
) -> tuple[list[tuple[DeepfakeDetector, CheckpointManifest]], list[str]]:
    """The serving model plus up to `ensemble_size - 1` members from `<model_dir>/ensemble/*`.

    `artifacts`: where training publishes across hosts (see `resolve_checkpoint`).

    Returns the members and warnings (e.g. fewer checkpoints than asked for: the interval then
    falls back to the window bootstrap, and the report says so).
    """
    members = [load_serving_model(checkpoint, model_dir, model_config, device, artifacts)]
    warnings: list[str] = []
    if ensemble_size > 1:
        folder = Path(model_dir) / "ensemble"
        extra = (
            sorted(p for p in folder.glob("*") if (p / MANIFEST_FILE).is_file()) if folder.is_dir() else []
        )
        members += [model_store.get(p, map_location=device) for p in extra[: ensemble_size - 1]]
        if len(members) < ensemble_size:
            warnings.append(
                f"inference.ensemble_size is {ensemble_size} but only {len(members)} checkpoint(s) exist; "
                "the interval comes from the window bootstrap"
            )
    if not members[0][1].trained:
        warnings.append(
            "weights are untrained (random initialisation): this verdict carries no forensic meaning"
        )
    return members, warnings


__all__ = [
    "config_differences",
    "current_checkpoint_dir",
    "load_ensemble",
    "load_serving_model",
    "read_manifest",
    "resolve_checkpoint",
    "synced_current_dir",
    "untrained_checkpoint_dir",
    "warn_if_config_differs",
]
