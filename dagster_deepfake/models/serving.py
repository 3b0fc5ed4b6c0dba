"""Which model version serves now, read from checkpoint manifests only (no torch import).

The API and the sensors ask this to decide whether a video already has a verdict from the
serving model: an analysis is a video under a model version (docs/ARCHITECTURE.md). The order
and the version strings are those of `models.store.load_ensemble` and `scoring.score_video`;
tests/test_reanalysis.py keeps them equal.
"""

from __future__ import annotations

import json
from pathlib import Path

from dagster_deepfake.config import Settings, resolve_model_config
from dagster_deepfake.storage.postgres import ResultsDB

MANIFEST_FILE = "manifest.json"  # = models.checkpoint.MANIFEST_FILE (that module imports torch)


def _version(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MANIFEST_FILE).read_text())["model_version"])
    except (OSError, ValueError, KeyError):
        return None


def serving_model_version(settings: Settings) -> str | None:
    """The `model_version` a run started now would report; None if it cannot be known yet."""
    p = settings.platform
    if p.checkpoint:
        first = _version(Path(p.checkpoint))
    else:
        first = _version(Path(p.model_dir) / "current")
        if first is None:  # the untrained fallback of the configured architecture
            config = resolve_model_config(settings.model)
            first = f"{config.registry_config}-untrained-{config.config_hash()}"
    if first is None:
        return None
    versions = [first]
    size = settings.inference.ensemble_size
    folder = Path(p.model_dir) / "ensemble"
    if size > 1 and folder.is_dir():
        extra = sorted(f for f in folder.glob("*") if (f / MANIFEST_FILE).is_file())[: size - 1]
        versions += [v for f in extra if (v := _version(f))]
    return "+".join(dict.fromkeys(versions))


def reanalyze_if_stale(db: ResultsDB, settings: Settings, video_id: str, requested_by: str) -> bool:
    """Ask for a new analysis when the video's verdict came from another model than the serving one.

    Called when known bytes arrive again (bucket re-drop, API re-upload). True when one was
    requested; never for a job still on its way, a failed one (the input's fault stays its fault),
    a dataset video's features-only job, or a verdict the serving model gave.
    """
    job = db.get_job(video_id)
    result = (job or {}).get("result") or {}
    given_by = (result.get("metadata") or {}).get("model_version")
    if not job or job["status"] != "completed" or not given_by:
        return False
    serving = serving_model_version(settings)
    if serving is None or serving == given_by:
        return False
    return db.request_analysis(video_id, serving, requested_by=requested_by)
