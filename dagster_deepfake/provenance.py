"""What a verdict rests on, recorded when the verdict is made (docs/API.md "Case report").

The `predictions` stage records, beside P(fake), which checkpoints gave it (`checkpoint_record`:
model version, SHA-256 and size of `model.safetensors`, trained or not and on what, the pretrained
sources `weights import` brought) and which settings (`settings_sha256` over `VERDICT_SECTIONS`).
The document builder puts that into `additions.provenance`, so the case report states facts of the
analysis, not of whatever the report's host finds on its disk later. No torch import here: the
case report and the API read this module.

`weights_sha256` is the one place a checkpoint's weights file is hashed outside of
`save_checkpoint` (which records the hash in the manifest): old checkpoints, and the case report's
fallback for documents made before provenance was recorded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_deepfake.storage.keys import sha256_file

if TYPE_CHECKING:
    from dagster_deepfake.config import Settings
    from dagster_deepfake.models.checkpoint import CheckpointManifest

#: The settings sections that decide a verdict and its explanation: the architecture and the
#: threshold (`model`), sampling, faces, VAD, flow and sizes (`data`), the ensemble (`inference`)
#: and the heat maps (`explain`). Left out, and why:
#: `training` and `calibration` shape a checkpoint, which is identified by its own SHA-256 (its
#: manifest keeps the training settings; the temperature in use is `additions.temperature`);
#: `targets` are evaluation pass marks; `platform` is the host's (paths, URLs and credentials,
#: sensor cadence, upload limits; the device shows as `additions.precision`).
VERDICT_SECTIONS = ("model", "data", "inference", "explain")
#: Keys inside those sections whose values are host paths: `model.video.weights` (a local
#: backbone file, whose bytes a checkpoint's pretrained sources identify by SHA-256). A
#: `model.audio.encoder` that names a local folder is recorded as "<local folder>" the same way.
HOST_PATH_KEYS = (("model", "video", "weights"),)
LOCAL_FOLDER = "<local folder>"


def verdict_settings(settings: Settings) -> dict[str, Any]:
    """`VERDICT_SECTIONS` of `settings` as JSON values, host paths left out."""
    payload = {name: getattr(settings, name).model_dump(mode="json") for name in VERDICT_SECTIONS}
    for *parents, key in HOST_PATH_KEYS:
        section = payload
        for part in parents:
            section = section.get(part) or {}
        section.pop(key, None)
    encoder = payload["model"]["audio"].get("encoder")
    if isinstance(encoder, str) and Path(encoder).expanduser().exists():
        payload["model"]["audio"]["encoder"] = LOCAL_FOLDER
    return payload


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON: keys sorted, separators "," and ":", UTF-8, no NaN (as the document's SHA-256)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def settings_sha256(settings: Settings) -> str:
    """SHA-256 of `verdict_settings(settings)` as canonical JSON."""
    return hashlib.sha256(canonical_bytes(verdict_settings(settings))).hexdigest()


_hash_cache: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, streamed; cached per (path, size, mtime) within the process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        _hash_cache[key] = sha256_file(str(path))
    return _hash_cache[key]


def checkpoint_record(manifest: CheckpointManifest) -> dict[str, Any]:
    """One serving checkpoint as `additions.provenance.checkpoints[i]` states it (report.CheckpointRecord)."""
    return {
        "model_version": manifest.model_version,
        "registry_config": manifest.registry_config,
        "config_hash": manifest.config_hash,
        "weights_sha256": manifest.weights_sha256,
        "weights_bytes": manifest.weights_bytes,
        "weights_sha256_from": manifest.weights_sha256_from,
        "trained": manifest.trained,
        "training_data": manifest.training_data if manifest.trained else None,
        "training_data_hash": manifest.training_data_hash if manifest.trained else None,
        "temperature": manifest.temperature,
        "pretrained": manifest.pretrained.model_dump(mode="json"),
        "created_at": manifest.created_at.isoformat(),
    }


def provenance_record(
    manifests: list[CheckpointManifest], settings: Settings, runtime: dict[str, str] | None = None
) -> dict[str, Any]:
    """`additions.provenance` (report.Provenance): every ensemble member, the verdict's settings and
    what computed it (`runtime`: device, precision, face backbone runtime; report.Runtime)."""
    return {
        "checkpoints": [checkpoint_record(m) for m in manifests],
        "runtime": runtime,
        "settings_sha256": settings_sha256(settings),
        "settings_sections": list(VERDICT_SECTIONS),
        "settings": verdict_settings(settings),
    }
