"""Which checkpoint gave a verdict: found by its model version among the checkpoints this platform
keeps, described from its manifest and hashed (no torch import; docs/API.md "Case report").

Serving and training keep every checkpoint they used: `platform.checkpoint`, `<model_dir>/current`
and everything it ever pointed at under `<model_dir>/published/`, ensemble members under
`<model_dir>/ensemble/`, the untrained fallbacks `<model_dir>/untrained-*`, and the training runs
under `<model_dir>/runs/` (models.publish, models.store). An ensemble's model version is its
members' versions joined with "+"; each member is looked up.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_deepfake.config import Settings

MANIFEST_FILE = "manifest.json"  # = models.checkpoint.MANIFEST_FILE (that module imports torch)
WEIGHTS_FILE = "model.safetensors"  # = models.checkpoint.WEIGHTS_FILE
_MAX_DEPTH = 4  # runs/<data-config>/<epoch or best>/manifest.json at most


@dataclass
class CheckpointFacts:
    """One checkpoint as the case report states it."""

    model_version: str
    path: str
    weights_sha256: str | None
    weights_bytes: int | None
    manifest: dict[str, Any]

    @property
    def pretrained(self) -> dict[str, Any]:
        return self.manifest.get("pretrained") or {}

    @property
    def trained(self) -> bool:
        return bool(self.manifest.get("trained"))


_hash_cache: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, streamed; cached per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(4 * 1024 * 1024):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def find_checkpoints(settings: Settings, model_version: str) -> tuple[list[CheckpointFacts], list[str]]:
    """(checkpoints found, member versions not found) for a document's `metadata.model_version`."""
    wanted = list(dict.fromkeys(model_version.split("+")))
    found: dict[str, CheckpointFacts] = {}
    for folder in _candidate_folders(settings):
        if len(found) == len(wanted):
            break
        manifest = _read_manifest(folder)
        version = str((manifest or {}).get("model_version", ""))
        if version in wanted and version not in found:
            weights = folder / WEIGHTS_FILE
            present = weights.is_file()
            found[version] = CheckpointFacts(
                model_version=version,
                path=str(folder),
                weights_sha256=weights_sha256(weights) if present else None,
                weights_bytes=weights.stat().st_size if present else None,
                manifest=manifest or {},
            )
    return [found[v] for v in wanted if v in found], [v for v in wanted if v not in found]


def _candidate_folders(settings: Settings) -> list[Path]:
    """Checkpoint folders, the ones serving reads first; symlinks inside model_dir are followed once."""
    p = settings.platform
    folders: list[Path] = []
    if p.checkpoint:
        folders.append(Path(p.checkpoint))
    root = Path(p.model_dir)
    folders.append(root / "current")
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).relative_to(root).parts)
            if depth >= _MAX_DEPTH:
                dirnames.clear()
            if MANIFEST_FILE in filenames:
                folders.append(Path(dirpath))
    seen, unique = set(), []
    for f in folders:
        key = str(f.resolve()) if f.exists() else str(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
