"""Publishing a checkpoint so that serving never sees none: `<model_dir>/current` is a symlink
swapped in one `os.replace` (an atomic rename on POSIX).

Readers (runs, the API, `analyze`) resolve `current` once and load what it points at; a publish
while they read changes nothing for them. Every published checkpoint stays under
`<model_dir>/published/`, so the model behind an earlier verdict is still there to inspect.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

PUBLISHED_DIR = "published"


def training_run_dir(model_dir: str | os.PathLike[str], data_hash: str, config_hash: str) -> Path:
    """One folder per (training data, architecture): an interrupted run resumes, another starts afresh."""
    return Path(model_dir) / "runs" / f"{data_hash}-{config_hash}"


def publish_checkpoint(source: str | os.PathLike[str], model_dir: str | os.PathLike[str]) -> Path:
    """Copy the checkpoint folder `source` under `published/` and point `current` at it atomically."""
    source, model_dir = Path(source), Path(model_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
    published = model_dir / PUBLISHED_DIR / f"{source.name}-{stamp}"
    staging = published.with_name(published.name + ".tmp")
    published.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    staging.rename(published)
    current = model_dir / "current"
    if current.is_dir() and not current.is_symlink():
        # A real folder left by an earlier version of the platform: moved aside once (the only
        # publish with a moment without `current`; a directory cannot be replaced by a link).
        current.rename(model_dir / PUBLISHED_DIR / f"current-before-{stamp}")
    link = model_dir / f".current-{stamp}"
    link.symlink_to(published.relative_to(model_dir), target_is_directory=True)
    os.replace(link, current)
    return current
