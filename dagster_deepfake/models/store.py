"""Which checkpoint serves predictions, and an honest untrained fallback saved once.

Order: an explicit checkpoint folder → `<model_dir>/current` (where training publishes) →
`<model_dir>/untrained-<config>` (built once with a fixed seed and saved, so every process
and every run uses the very same random weights and says so: `trained: false`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from filelock import FileLock

from dagster_deepfake.models.checkpoint import (
    MANIFEST_FILE,
    CheckpointManifest,
    build_untrained,
    model_store,
    save_checkpoint,
)
from dagster_deepfake.models.detector import DeepfakeDetector

log = logging.getLogger(__name__)


def current_checkpoint_dir(model_dir: str) -> Path:
    """Where training publishes the checkpoint that serves predictions."""
    return Path(model_dir) / "current"


def resolve_checkpoint(checkpoint: str | None, model_dir: str, registry_config: str) -> Path:
    """The checkpoint folder to serve, creating the untrained fallback if needed."""
    if checkpoint:
        path = Path(checkpoint)
        if not (path / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {MANIFEST_FILE}")
        return path
    current = current_checkpoint_dir(model_dir)
    if (current / MANIFEST_FILE).is_file():
        return current
    fallback = Path(model_dir) / f"untrained-{registry_config}"
    if not (fallback / MANIFEST_FILE).is_file():
        fallback.parent.mkdir(parents=True, exist_ok=True)
        # Two runs starting together must not both write the same files.
        with FileLock(str(fallback.parent / f".untrained-{registry_config}.lock")):
            if not (fallback / MANIFEST_FILE).is_file():
                log.warning(
                    "no trained checkpoint: serving an UNTRAINED %s model (random init, pretrained: false) from %s",
                    registry_config,
                    fallback,
                )
                model, manifest = build_untrained(registry_config, seed=0)
                save_checkpoint(fallback, model, manifest)
    return fallback


def load_serving_model(
    checkpoint: str | None, model_dir: str, registry_config: str, device: str = "cpu"
) -> tuple[DeepfakeDetector, CheckpointManifest]:
    """The model that serves predictions, loaded once per process (see `ModelStore`)."""
    path = resolve_checkpoint(checkpoint, model_dir, registry_config)
    return model_store.get(path, map_location=device)


def load_ensemble(
    checkpoint: str | None, model_dir: str, registry_config: str, ensemble_size: int, device: str = "cpu"
) -> tuple[list[tuple[DeepfakeDetector, CheckpointManifest]], list[str]]:
    """The serving model plus up to `ensemble_size - 1` members from `<model_dir>/ensemble/*`.

    Returns the members and warnings (e.g. fewer checkpoints than asked for: the interval then
    falls back to the window bootstrap, and the report says so).
    """
    members = [load_serving_model(checkpoint, model_dir, registry_config, device)]
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
