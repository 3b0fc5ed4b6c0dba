"""Where every artifact lives: the one module that spells artifact paths (docs/ARCHITECTURE.md).

Paths are relative to the artifact store's root (a local folder or any fsspec URL)::

    videos/<video_id>/source<ext>                   the ingested copy of the upload
    videos/<video_id>/frames/<frame_id>.png         sampled frames (lossless)
    videos/<video_id>/faces/crops.npy, strip.png    aligned 224×224 crops, a contact strip
    videos/<video_id>/flow/fields.npy               dense flow fields (inspection only)
    videos/<video_id>/audio/pcm16k.npy, speech_mask_20ms.npy, embeddings_<member>.npy, embeddings_valid_<member>.npy
    videos/<video_id>/saliency/frame_<id>_{face,frame}.png, explanation.json
    tables/<table>/v<schema version>/<video_id>.parquet    one file per partition per table
    datasets/<name>/manifest.parquet, datasets/training_manifest.parquet
    evaluations/<data hash>/<model version>/metrics.parquet, per_method.parquet, predictions.parquet,
        frame_predictions.parquet, roc.png, reliability.png     one model on one test set
    evaluations/reports/<model version>.md                       the markdown report of a model
    models/published/<name>/<file>                  every checkpoint training published (model.safetensors, manifest.json)
    models/current.json                             which published checkpoint serves: written last, in one PUT

Only validated partition keys and fixed names become paths: nothing from an upload's name does.
"""

from __future__ import annotations

import posixpath
import re

from dagster_deepfake.storage.keys import require_partition_key

# Extensions kept for the ingested copy (the name only helps people; the probe gate decides).
SOURCE_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
SALIENCY_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\.png$")
DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def video_rel(video_id: str, *parts: str) -> str:
    return "/".join(["videos", require_partition_key(video_id), *parts])


def table_rel(name: str, version: int, video_id: str) -> str:
    return f"{table_folder(name, version)}/{require_partition_key(video_id)}.parquet"


def table_folder(name: str, version: int) -> str:
    return f"tables/{name}/v{version}"


# -- raw_video / frames -------------------------------------------------------------------------


def source_rel(video_id: str, file_name: str = "") -> str:
    """The ingested copy; its extension follows the upload's when it is a known video suffix."""
    ext = posixpath.splitext(file_name)[1].lower()
    return video_rel(video_id, "source" + (ext if ext in SOURCE_EXTENSIONS else ".mp4"))


def source_names(names: list[str]) -> list[str]:
    """The ingested copies among a listing of `video_rel(video_id)`."""
    return [n for n in names if n.startswith("source")]


def frames_dir(video_id: str) -> str:
    return video_rel(video_id, "frames")


def frame_rel(video_id: str, frame_id: int) -> str:
    return video_rel(video_id, "frames", f"{frame_id:06d}.png")


# -- faces / flow ---------------------------------------------------------------------------------


def crops_rel(video_id: str) -> str:
    return video_rel(video_id, "faces", "crops.npy")


def face_strip_rel(video_id: str) -> str:
    return video_rel(video_id, "faces", "strip.png")


def track_crops_rel(video_id: str) -> str:
    """Faces as tracks: every tracked face's aligned crop, in `face_tracks` table order."""
    return video_rel(video_id, "faces", "tracks.npy")


def flow_fields_rel(video_id: str) -> str:
    return video_rel(video_id, "flow", "fields.npy")


# -- audio ----------------------------------------------------------------------------------------


def audio_dir(video_id: str) -> str:
    return video_rel(video_id, "audio")


def pcm_rel(video_id: str) -> str:
    return video_rel(video_id, "audio", "pcm16k.npy")


def speech_mask_rel(video_id: str) -> str:
    return video_rel(video_id, "audio", "speech_mask_20ms.npy")


def audio_embeddings_rel(video_id: str, member: int = 0) -> str:
    """Ensemble member `member`'s own wav2vec2 embeddings (each member has its own audio encoder)."""
    return video_rel(video_id, "audio", f"embeddings_{member}.npy")


def audio_valid_rel(video_id: str, member: int = 0) -> str:
    return video_rel(video_id, "audio", f"embeddings_valid_{member}.npy")


# -- saliency -------------------------------------------------------------------------------------


def saliency_dir(video_id: str) -> str:
    return video_rel(video_id, "saliency")


def saliency_rel(video_id: str, name: str) -> str:
    if not SALIENCY_NAME_RE.match(name):
        raise ValueError(f"not a heat map name: {name!r}")
    return video_rel(video_id, "saliency", name)


def saliency_names(frame_id: int) -> tuple[str, str]:
    """Stable names: the same frame of the same video always has the same file names."""
    return f"frame_{frame_id:06d}_face.png", f"frame_{frame_id:06d}_frame.png"


def track_heat_map_name(track_id: int, name: str) -> str:
    """A heat map's name within one face track (two tracks may share a frame)."""
    return f"track{int(track_id):03d}_{name}"


def track_explanations_rel(video_id: str) -> str:
    """Faces as tracks: each track's heat-map rows (`saliency/tracks.json`)."""
    return video_rel(video_id, "saliency", "tracks.json")


def explanation_rel(video_id: str) -> str:
    return video_rel(video_id, "saliency", "explanation.json")


def saliency_route(video_id: str, name: str) -> str:
    """The API's route that serves a heat map of a local artifact store."""
    return f"/jobs/{require_partition_key(video_id)}/saliency/{name}"


# -- datasets -------------------------------------------------------------------------------------

DATASETS_DIR = "datasets"
TRAINING_MANIFEST_REL = "datasets/training_manifest.parquet"


def dataset_manifest_rel(name: str) -> str:
    if not DATASET_NAME_RE.match(name):
        raise ValueError(f"not a dataset name: {name!r}")
    return f"{DATASETS_DIR}/{name}/manifest.parquet"


# -- evaluations ----------------------------------------------------------------------------------


_MODEL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,159}$")
EVALUATION_FILES = (
    "metrics.parquet",
    "per_method.parquet",
    "predictions.parquet",
    "frame_predictions.parquet",
    "roc.png",
    "reliability.png",
)


def _model_version(model_version: str) -> str:
    if not _MODEL_VERSION.match(model_version):
        raise ValueError(f"not a model version: {model_version!r}")
    return model_version


def evaluation_rel(data_hash: str, name: str, model_version: str | None = None) -> str:
    """One evaluation's files, by the test set's data hash and the model (`EVALUATION_FILES`)."""
    if not re.match(r"^[0-9a-f]{6,64}$", data_hash):
        raise ValueError(f"not a data hash: {data_hash!r}")
    if model_version is None:
        return f"evaluations/{data_hash}/{name}"
    if name not in EVALUATION_FILES:
        raise ValueError(f"not an evaluation file: {name!r}")
    return f"evaluations/{data_hash}/{_model_version(model_version)}/{name}"


def evaluation_report_rel(model_version: str) -> str:
    """The markdown report of every test set one model was last evaluated on."""
    return f"evaluations/reports/{_model_version(model_version)}.md"


# -- published checkpoints ------------------------------------------------------------------------

MODELS_DIR = "models"
#: The pointer to the published checkpoint that serves (models/publish.py writes it last).
CURRENT_MODEL_POINTER_REL = "models/current.json"
_PUBLISHED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,159}$")
_CHECKPOINT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def published_model_name(name: str) -> str:
    """A published checkpoint's folder name (`<run folder>-<stamp>`), checked: it becomes a local path."""
    if not _PUBLISHED_NAME.match(name) or name.endswith(".tmp"):
        raise ValueError(f"not a published checkpoint name: {name!r}")
    return name


def checkpoint_file_name(name: str) -> str:
    """One file of a checkpoint folder (flat: `model.safetensors`, `manifest.json`)."""
    if not _CHECKPOINT_FILE.match(name) or name.endswith(".tmp"):
        raise ValueError(f"not a checkpoint file name: {name!r}")
    return name


def published_model_rel(name: str, file_name: str) -> str:
    return f"{MODELS_DIR}/published/{published_model_name(name)}/{checkpoint_file_name(file_name)}"
