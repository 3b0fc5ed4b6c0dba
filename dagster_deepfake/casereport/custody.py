"""Which checkpoints and settings gave a verdict (no torch import; docs/API.md "Case report").

A document made since provenance is recorded says it itself: `additions.provenance`, written when
the verdict was made (dagster_deepfake/provenance.py), names every serving checkpoint with the
SHA-256 of its weights and the hash of the settings. The report states those, whatever this
host's disk holds now (a Celery fleet's API host may have no checkpoint at all).

Only an older document, without it, falls back to a lookup at report time: the checkpoint whose
manifest has the document's model version among those this platform keeps, `platform.checkpoint`,
`<model_dir>/current` and everything it ever pointed at under `<model_dir>/published/`, ensemble
members under `<model_dir>/ensemble/`, the untrained fallbacks `<model_dir>/untrained-*`, and the
training runs under `<model_dir>/runs/` (models.publish, models.store), hashed now. An ensemble's
model version is its members' versions joined with "+"; each member is looked up.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster_deepfake.config import Settings
from dagster_deepfake.provenance import weights_sha256

MANIFEST_FILE = "manifest.json"  # = models.checkpoint.MANIFEST_FILE (that module imports torch)
WEIGHTS_FILE = "model.safetensors"  # = models.checkpoint.WEIGHTS_FILE
_MAX_DEPTH = 4  # runs/<data-config>/<epoch or best>/manifest.json at most


@dataclass
class CheckpointFacts:
    """One checkpoint as the case report states it."""

    model_version: str
    path: str | None  # where it was found at report time; None when recorded at analysis
    weights_sha256: str | None
    weights_bytes: int | None
    # "manifest" (recorded when the checkpoint was saved), "file" (hashed when loaded for the
    # analysis), "report" (hashed when this report was made: the file found now)
    weights_sha256_from: str | None = None
    config_hash: str | None = None
    registry_config: str | None = None
    trained: bool = False
    training_data: str | None = None
    training_data_hash: str | None = None
    pretrained: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None

    @property
    def sources(self) -> list[tuple[str, str | None, str | None]]:
        """(branch, source, stored SHA-256) of each encoder `weights import` brought."""
        found = self.pretrained.get("sources") if isinstance(self.pretrained, dict) else None
        return [
            (str(name), _text(src.get("source")), _text(src.get("stored_sha256")))
            for name, src in (found.items() if isinstance(found, dict) else [])
            if isinstance(src, dict)
        ]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CheckpointFacts:
        """From `additions.provenance.checkpoints[i]` (report.CheckpointRecord)."""
        return cls(
            model_version=str(record.get("model_version", "")),
            path=None,
            weights_sha256=record.get("weights_sha256"),
            weights_bytes=record.get("weights_bytes"),
            weights_sha256_from=record.get("weights_sha256_from"),
            config_hash=record.get("config_hash"),
            registry_config=record.get("registry_config"),
            trained=bool(record.get("trained")),
            training_data=record.get("training_data"),
            training_data_hash=record.get("training_data_hash"),
            pretrained=_mapping(record.get("pretrained")),
            created_at=record.get("created_at"),
        )


@dataclass
class Custody:
    """The model side of the chain of custody: recorded at analysis, or looked up now."""

    recorded: bool  # True: from the document's `additions.provenance`
    checkpoints: list[CheckpointFacts] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # member versions not found (lookup only)
    settings_sha256: str | None = None
    settings_sections: list[str] = field(default_factory=list)
    runtime: dict[str, Any] = field(default_factory=dict)  # device, precision, backbone (report.Runtime)


def custody_of(settings: Settings, document: dict[str, Any] | None) -> Custody:
    """The recorded provenance of `document`, else (an older document) today's lookup."""
    additions = (document or {}).get("additions") or {}
    recorded = additions.get("provenance") if isinstance(additions, dict) else None
    if isinstance(recorded, dict):
        return Custody(
            recorded=True,
            checkpoints=[CheckpointFacts.from_record(r) for r in recorded.get("checkpoints") or []],
            settings_sha256=recorded.get("settings_sha256"),
            settings_sections=list(recorded.get("settings_sections") or []),
            runtime=_mapping(recorded.get("runtime")),
        )
    custody = Custody(recorded=False)
    version = ((document or {}).get("metadata") or {}).get("model_version")
    if version:
        custody.checkpoints, custody.missing = find_checkpoints(settings, str(version))
    return custody


def find_checkpoints(settings: Settings, model_version: str) -> tuple[list[CheckpointFacts], list[str]]:
    """(checkpoints found now, member versions not found) for a document's `metadata.model_version`."""
    wanted = list(dict.fromkeys(model_version.split("+")))
    found: dict[str, CheckpointFacts] = {}
    for folder in _candidate_folders(settings):
        if len(found) == len(wanted):
            break
        manifest = _read_manifest(folder) or {}
        version = str(manifest.get("model_version", ""))
        if version in wanted and version not in found:
            weights = folder / WEIGHTS_FILE
            present = weights.is_file()
            trained = bool(manifest.get("trained"))
            found[version] = CheckpointFacts(
                model_version=version,
                path=str(folder),
                weights_sha256=weights_sha256(weights) if present else None,
                weights_bytes=weights.stat().st_size if present else None,
                weights_sha256_from="report" if present else None,
                config_hash=manifest.get("config_hash"),
                registry_config=manifest.get("registry_config"),
                trained=trained,
                training_data=manifest.get("training_data") if trained else None,
                training_data_hash=manifest.get("training_data_hash") if trained else None,
                pretrained=_mapping(manifest.get("pretrained")),
                created_at=manifest.get("created_at"),
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


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
