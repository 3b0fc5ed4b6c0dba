"""Follow the checkpoint training published on another host: hosts share no disk, only the
artifact store, where `models/publish.py` leaves `models/published/<name>/` and, last, the
pointer `models/current.json`.

`sync_published_checkpoint` runs before the serving model is resolved (`models/store.py`). Up
to date it costs one small GET (the pointer); otherwise the folder is downloaded into
`<model_dir>/published/<name>.tmp`, every file's size and SHA-256 checked against the pointer,
renamed, and `<model_dir>/current` swapped in one `os.replace` (`publish.swap_current`). Two
processes syncing at once take turns on a file lock; a corrupt or missing download raises
`CheckpointSyncError` with one line saying why and leaves `current` as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from pydantic import BaseModel, Field, ValidationError, field_validator

from dagster_deepfake.errors import DeepfakeError
from dagster_deepfake.models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE
from dagster_deepfake.models.publish import PUBLISHED_DIR, current_target_name, swap_current
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.keys import sha256_file

if TYPE_CHECKING:
    from dagster_deepfake.storage.artifacts import ArtifactStore

log = logging.getLogger(__name__)
SYNC_LOCK = ".sync.lock"


class CheckpointSyncError(DeepfakeError):
    """The published checkpoint could not be brought to this host (the old one still serves)."""


class PublishedFile(BaseModel):
    name: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _flat_name(cls, value: str) -> str:
        return layout.checkpoint_file_name(value)


class PublishedPointer(BaseModel):
    """`models/current.json`: which published checkpoint serves, and what its files must be."""

    format: int = 1
    name: str
    model_version: str | None = None
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: list[PublishedFile]
    published_at: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return layout.published_model_name(value)

    def check(self) -> None:
        names = {f.name: f for f in self.files}
        if WEIGHTS_FILE not in names or MANIFEST_FILE not in names:
            raise ValueError(f"lists no {WEIGHTS_FILE} or {MANIFEST_FILE}")
        if names[WEIGHTS_FILE].sha256 != self.weights_sha256:
            raise ValueError(f"weights_sha256 is not the SHA-256 listed for {WEIGHTS_FILE}")


def read_pointer(artifacts: ArtifactStore) -> PublishedPointer | None:
    """The pointer (one GET), or None when nothing was ever published to this store."""
    rel = layout.CURRENT_MODEL_POINTER_REL
    try:
        data = artifacts.read_bytes(rel)
    except FileNotFoundError:
        return None
    try:
        pointer = PublishedPointer.model_validate(json.loads(data))
        pointer.check()
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        reason = str(exc).splitlines()[0]
        raise CheckpointSyncError(f"{artifacts.full_url(rel)} is not a valid pointer: {reason}") from exc
    return pointer


def _problem(folder: Path, pointer: PublishedPointer) -> str | None:
    """What is wrong with `folder` as the pointer's checkpoint (None: every file as listed)."""
    for entry in pointer.files:
        path = folder / entry.name
        if not path.is_file():
            return f"{entry.name} is missing"
        size = path.stat().st_size
        if size != entry.size:
            return f"{entry.name} has {size} bytes, the pointer says {entry.size}"
        digest = sha256_file(str(path))
        if digest != entry.sha256:
            return f"{entry.name} has SHA-256 {digest[:12]}…, the pointer says {entry.sha256[:12]}…"
    return None


def _download(artifacts: ArtifactStore, pointer: PublishedPointer, staging: Path) -> None:
    if staging.exists():
        shutil.rmtree(staging)  # left by a sync that died (we hold the lock)
    staging.mkdir(parents=True)
    for entry in pointer.files:
        rel = layout.published_model_rel(pointer.name, entry.name)
        try:
            artifacts.get_file(rel, str(staging / entry.name))
        except FileNotFoundError as exc:
            raise CheckpointSyncError(
                f"published checkpoint {pointer.name}: {artifacts.full_url(rel)} is missing from the "
                "artifact store; keeping the current checkpoint"
            ) from exc


def sync_published_checkpoint(artifacts: ArtifactStore | None, model_dir: str | os.PathLike[str]) -> bool:
    """Make `<model_dir>/current` the checkpoint the store's pointer names; True when it changed.

    False without a store, without a pointer, or when `current` already points at that name.
    """
    if artifacts is None:
        return False
    pointer = read_pointer(artifacts)
    model_dir = Path(model_dir)
    if pointer is None or current_target_name(model_dir) == pointer.name:
        return False
    (model_dir / PUBLISHED_DIR).mkdir(parents=True, exist_ok=True)
    with FileLock(str(model_dir / SYNC_LOCK)):
        if current_target_name(model_dir) == pointer.name:  # another process synced meanwhile
            return False
        target = model_dir / PUBLISHED_DIR / pointer.name
        if not target.is_dir() or _problem(target, pointer) is not None:
            staging = target.with_name(target.name + ".tmp")
            try:
                _download(artifacts, pointer, staging)
                problem = _problem(staging, pointer)
                if problem is not None:
                    raise CheckpointSyncError(
                        f"published checkpoint {pointer.name} refused: {problem}; "
                        "keeping the current checkpoint"
                    )
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if target.exists():
                shutil.rmtree(target)  # an incomplete copy; `current` does not point at it
            staging.rename(target)
        swap_current(model_dir, target)
    log.info(
        "serving published checkpoint %s (model %s) from %s",
        pointer.name,
        pointer.model_version,
        artifacts.full_url(layout.CURRENT_MODEL_POINTER_REL),
    )
    return True
