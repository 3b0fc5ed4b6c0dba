"""Publishing a checkpoint so that serving never sees none: `<model_dir>/current` is a symlink
swapped in one `os.replace` (an atomic rename on POSIX).

Readers (runs, the API, `analyze`) resolve `current` once and load what it points at; a publish
while they read changes nothing for them. Every published checkpoint stays under
`<model_dir>/published/`, so the model behind an earlier verdict is still there to inspect.

With an artifact store (hosts without a shared disk), the published folder's files are
uploaded to `models/published/<name>/` and then the pointer `models/current.json` is written,
last and in one write, so a reader never finds a pointer to a half-uploaded checkpoint; other
hosts follow it with `models/sync.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_deepfake.models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.keys import sha256_file

if TYPE_CHECKING:
    from dagster_deepfake.storage.artifacts import ArtifactStore

PUBLISHED_DIR = "published"
CURRENT_LINK = "current"
POINTER_FORMAT = 1


def training_run_dir(model_dir: str | os.PathLike[str], data_hash: str, config_hash: str) -> Path:
    """One folder per (training data, architecture): an interrupted run resumes, another starts afresh."""
    return Path(model_dir) / "runs" / f"{data_hash}-{config_hash}"


_STAMPS = re.compile(r"(-\d{8}T\d{6}-\d{9})+$")


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"


def current_target_name(model_dir: str | os.PathLike[str]) -> str | None:
    """The name of the published folder `<model_dir>/current` points at (None: no link)."""
    current = Path(model_dir) / CURRENT_LINK
    if not current.is_symlink():
        return None
    return Path(os.readlink(current)).name


def swap_current(model_dir: str | os.PathLike[str], published: str | os.PathLike[str]) -> Path:
    """Point `<model_dir>/current` at `published` (a folder under `<model_dir>/published/`) atomically."""
    model_dir, published = Path(model_dir), Path(published)
    current = model_dir / CURRENT_LINK
    if current.is_dir() and not current.is_symlink():
        # A real folder left by an earlier version of the platform: moved aside once (the only
        # publish with a moment without `current`; a directory cannot be replaced by a link).
        current.rename(model_dir / PUBLISHED_DIR / f"current-before-{_stamp()}")
    link = model_dir / f".current-{uuid.uuid4().hex[:12]}"
    link.symlink_to(published.relative_to(model_dir), target_is_directory=True)
    os.replace(link, current)
    return current


def publish_checkpoint(
    source: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    artifacts: ArtifactStore | None = None,
) -> Path:
    """Copy the checkpoint folder `source` under `published/` and point `current` at it atomically.

    With `artifacts`, the published folder then goes to the artifact store and the pointer
    `models/current.json` is written last (`upload_published`): every host that syncs serves it.
    """
    source, model_dir = Path(source), Path(model_dir)
    base = _STAMPS.sub("", source.name) or "checkpoint"  # a published folder republished: one stamp
    published = model_dir / PUBLISHED_DIR / f"{base}-{_stamp()}"
    staging = published.with_name(published.name + ".tmp")
    published.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    staging.rename(published)
    current = swap_current(model_dir, published)
    if artifacts is not None:
        upload_published(artifacts, published)
    return current


def upload_published(artifacts: ArtifactStore, published: str | os.PathLike[str]) -> dict[str, Any]:
    """Upload a published checkpoint folder's files, then write the pointer to it (returned) last."""
    published = Path(published)
    name = layout.published_model_name(published.name)
    entries = sorted(published.iterdir())
    folders = [p.name for p in entries if not p.is_file()]
    if folders:
        raise ValueError(f"{published}: a checkpoint folder holds files only, found {folders}")
    files = []
    for path in entries:
        files.append({"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(str(path))})
        artifacts.put_file(str(path), layout.published_model_rel(name, path.name))
    by_name = {f["name"]: f for f in files}
    if WEIGHTS_FILE not in by_name or MANIFEST_FILE not in by_name:
        raise ValueError(f"{published}: not a checkpoint (needs {WEIGHTS_FILE} and {MANIFEST_FILE})")
    manifest = json.loads((published / MANIFEST_FILE).read_text())
    pointer = {
        "format": POINTER_FORMAT,
        "name": name,
        "model_version": manifest.get("model_version"),
        "weights_sha256": by_name[WEIGHTS_FILE]["sha256"],
        "files": files,
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # One write (temp file + rename locally, one PUT on S3): the pointer appears whole, after the files.
    artifacts.write_bytes(layout.CURRENT_MODEL_POINTER_REL, json.dumps(pointer, indent=2).encode())
    return pointer
