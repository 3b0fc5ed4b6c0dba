"""The per-video stages as plain functions: in-memory in, in-memory out, plus `persist_*` /
`load_*` pairs that move a stage's output through the artifact store.

Dagster assets call `load_* → stage → persist_*`; `dagster-deepfake analyze` chains the stages
in memory (one decode, no round trips). Both therefore run the same science.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from dagster_deepfake.config import Settings
from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.faces.extract import FaceExtraction, face_strip_png
from dagster_deepfake.flow import FlowFeatures
from dagster_deepfake.media.frames import SampledFrame
from dagster_deepfake.media.probe import VideoProbe, probe_video, validate_probe
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import open_uri
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file

if TYPE_CHECKING:
    from dagster_deepfake.media.vad import SpeechActivity
    from dagster_deepfake.scoring import ScoredVideo
    from dagster_deepfake.training.features import VideoFeatures

# Extensions kept for the ingested copy (ffmpeg sniffs content anyway; the name only helps people).
_KNOWN_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}


def source_rel(video_id: str, ext: str = ".mp4") -> str:
    return ArtifactStore.video_rel(video_id, "source" + ext)


def find_source_rel(store: ArtifactStore, video_id: str) -> str:
    """The ingested copy's path (its extension follows the upload's)."""
    names = [n for n in store.list(ArtifactStore.video_rel(video_id)) if n.startswith("source")]
    if not names:
        raise InvalidVideoError(video_id, "raw_video has not been materialized for this partition")
    return ArtifactStore.video_rel(video_id, names[0])


@dataclass
class IngestedVideo:
    video_id: str
    sha256: str
    probe: VideoProbe
    warnings: list[str]
    source_rel: str


def ingest_video(
    store: ArtifactStore,
    video_id: str,
    source_uri: str,
    settings: Settings,
    *,
    storage_options: dict | None = None,
) -> IngestedVideo:
    """Copy the upload into the artifact store, check its hash, probe and validate it."""
    name = posixpath.basename(source_uri.split("?", 1)[0])
    ext = os.path.splitext(name)[1].lower()
    rel = source_rel(video_id, ext if ext in _KNOWN_EXTENSIONS else ".mp4")
    with tempfile.TemporaryDirectory(prefix="ddf-ingest-") as tmp:
        local = os.path.join(tmp, "upload" + (ext if ext in _KNOWN_EXTENSIONS else ".mp4"))
        try:
            with open_uri(source_uri, storage_options) as src, open(local, "wb") as dst:
                while chunk := src.read(4 * 1024 * 1024):
                    dst.write(chunk)
        except FileNotFoundError as exc:
            raise InvalidVideoError(source_uri, "the uploaded object no longer exists") from exc
        sha = sha256_file(local)
        if partition_key_for_sha256(sha) != video_id:
            raise InvalidVideoError(
                source_uri, f"content changed since upload (hash {sha[:16]} does not match {video_id})"
            )
        probe = probe_video(local)
        warnings = validate_probe(
            probe,
            min_height=settings.data.min_height,
            max_height=settings.data.max_height,
            max_duration_seconds=settings.platform.max_duration_seconds,
        )
        store.put_file(local, rel)
    probe = VideoProbe(**{**probe.to_dict(), "path": store.full_url(rel)})
    return IngestedVideo(video_id, sha, probe, warnings, rel)


def video_row(ingested: IngestedVideo, source_uri: str, file_name: str, uploader: str | None) -> pd.DataFrame:
    p = ingested.probe
    return pd.DataFrame(
        [
            {
                "video_id": ingested.video_id,
                "sha256": ingested.sha256,
                "source_uri": source_uri,
                "file_name": file_name,
                "uploader": uploader,
                "size_bytes": p.size_bytes,
                "container": p.container,
                "codec": p.codec,
                "width": p.width,
                "height": p.height,
                "rotation": p.rotation,
                "fps": p.fps,
                "duration": p.duration,
                "has_audio": p.has_audio,
                "audio_codec": p.audio_codec,
                "warnings": ingested.warnings,
                "ingested_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
            }
        ]
    )


# -- frames -----------------------------------------------------------------------------------------


def frame_rel(video_id: str, frame_id: int) -> str:
    return ArtifactStore.video_rel(video_id, "frames", f"{frame_id:06d}.png")


@dataclass
class FramesSummary:
    """The frame index and a thumbnail; decoding warnings stay on the `FrameSampler`."""

    table: pd.DataFrame
    thumbnail_png: bytes | None = None


def encode_png(image_rgb: np.ndarray, compression: int = 1) -> bytes:
    ok, buf = cv2.imencode(
        ".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, compression]
    )
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def thumbnail(image_rgb: np.ndarray, width: int = 240) -> bytes:
    h, w = image_rgb.shape[:2]
    small = cv2.resize(image_rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes()


def persist_frames(store: ArtifactStore, video_id: str, frames: Iterable[SampledFrame]) -> FramesSummary:
    """Write each sampled frame as a lossless PNG and the frame index as Parquet.

    Old frames of this video are removed first, so a re-run never mixes two samplings. The index
    is the stage's completion mark: removed before the old frames, written after the last new
    one, so a run killed or out of space half-way leaves no index naming missing frames.
    """
    store.remove_table("frames", video_id)
    store.remove(ArtifactStore.video_rel(video_id, "frames"))
    rows = []
    thumb = None
    for frame in frames:
        rel = frame_rel(video_id, frame.frame_id)
        store.write_bytes(rel, encode_png(frame.image))
        if thumb is None:
            thumb = thumbnail(frame.image)
        h, w = frame.image.shape[:2]
        rows.append(
            {
                "video_id": video_id,
                "frame_id": frame.frame_id,
                "timestamp": frame.timestamp,
                "path": rel,
                "width": w,
                "height": h,
            }
        )
    table = pd.DataFrame(rows, columns=["video_id", "frame_id", "timestamp", "path", "width", "height"])
    store.write_table("frames", video_id, table)
    return FramesSummary(table=table, thumbnail_png=thumb)


def load_frames(store: ArtifactStore, video_id: str) -> Iterator[SampledFrame]:
    """The sampled frames of a video back from the store, in frame order."""
    table = store.read_table("frames", video_id)
    for row in table.sort_values("frame_id").itertuples():
        data = np.frombuffer(store.read_bytes(row.path), dtype=np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise RuntimeError(f"frame file {row.path} is unreadable; re-materialize `frames` for {video_id}")
        yield SampledFrame(int(row.frame_id), float(row.timestamp), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


# -- faces ------------------------------------------------------------------------------------------


def crops_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "faces", "crops.npy")


def face_strip_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "faces", "strip.png")


def persist_faces(store: ArtifactStore, video_id: str, extraction: FaceExtraction) -> bytes:
    """Write the aligned crops (one .npy), a contact strip and the per-frame face table; return the strip PNG.

    The table is written last and dropped first: it marks the crops complete (as in `persist_frames`).
    """
    table = extraction.table.copy()
    table.insert(0, "video_id", video_id)
    store.remove_table("faces", video_id)
    store.write_array(crops_rel(video_id), extraction.crops)
    strip = face_strip_png(extraction.crops) if len(extraction.crops) else b""
    if strip:
        store.write_bytes(face_strip_rel(video_id), strip)
    store.write_table("faces", video_id, table)
    return strip


@dataclass
class FaceCrops:
    """Aligned crops of the kept frames: crops (K, 224, 224, 3) uint8 RGB, ids and timestamps (K,)."""

    crops: np.ndarray
    frame_ids: np.ndarray
    timestamps: np.ndarray


def load_face_crops(store: ArtifactStore, video_id: str) -> FaceCrops:
    table = store.read_table("faces", video_id)
    kept = table[table["kept"]].sort_values("frame_id")
    crops = store.read_array(crops_rel(video_id))
    if len(crops) != len(kept):
        raise RuntimeError(
            f"{video_id}: {len(crops)} crops but {len(kept)} kept rows; re-materialize aligned_faces"
        )
    return FaceCrops(crops, kept["frame_id"].to_numpy(np.int64), kept["timestamp"].to_numpy(np.float64))


# -- optical flow -----------------------------------------------------------------------------------


def flow_fields_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "flow", "fields.npy")


def persist_flow(
    store: ArtifactStore, video_id: str, flow: FlowFeatures, timestamps: np.ndarray
) -> pd.DataFrame:
    table = flow.to_frame(timestamps)
    table.insert(0, "video_id", video_id)
    store.write_table("flow", video_id, table)
    if flow.fields is not None:
        store.write_array(flow_fields_rel(video_id), flow.fields)
    return table


def load_flow_features(store: ArtifactStore, video_id: str) -> np.ndarray:
    """(K, 2) float32 flow features in kept-frame order."""
    table = store.read_table("flow", video_id).sort_values("frame_id")
    return table[["flow_mean", "flow_std"]].to_numpy(np.float32)


# -- audio ------------------------------------------------------------------------------------------


def pcm_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "audio", "pcm16k.npy")


def speech_mask_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "audio", "speech_mask_20ms.npy")


def persist_audio(
    store: ArtifactStore, video_id: str, pcm: np.ndarray | None, speech: SpeechActivity
) -> pd.DataFrame:
    """16 kHz int16 PCM (absent without an audio track), the 20 ms speech mask and the segment table.

    The segment table is dropped first and written last: `load_audio` reads a missing PCM as "no
    audio track", so a PCM lost half-way must leave no table that would vouch for it.
    """
    store.remove_table("speech_segments", video_id)
    store.remove(ArtifactStore.video_rel(video_id, "audio"))
    if pcm is not None:
        store.write_array(pcm_rel(video_id), pcm.astype(np.int16, copy=False))
    store.write_array(speech_mask_rel(video_id), np.asarray(speech.mask_20ms, dtype=bool))
    table = speech.to_frame()
    table.insert(0, "video_id", video_id)
    store.write_table("speech_segments", video_id, table)
    return table


@dataclass
class AudioInput:
    """What the audio branch consumes: float32 waveform (S,) in [-1, 1] and a per-sample speech mask."""

    waveform: np.ndarray | None
    speech_mask: np.ndarray | None
    segments: list[tuple[float, float]]

    @property
    def has_speech(self) -> bool:
        return self.waveform is not None and bool(self.segments)


def speech_sample_mask(mask_20ms: np.ndarray, n_samples: int, sample_rate: int = 16000) -> np.ndarray:
    """Expand a 20 ms frame mask to one bool per sample."""
    hop = sample_rate // 50
    mask = np.repeat(np.asarray(mask_20ms, dtype=bool), hop)[:n_samples]
    return np.pad(mask, (0, max(0, n_samples - len(mask))))


def load_audio(store: ArtifactStore, video_id: str) -> AudioInput:
    table = store.read_table("speech_segments", video_id)
    segments = [(float(a), float(b)) for a, b in zip(table["start"], table["end"], strict=True)]
    if not store.exists(pcm_rel(video_id)):
        return AudioInput(None, None, segments)
    pcm = store.read_array(pcm_rel(video_id))
    mask = speech_sample_mask(store.read_array(speech_mask_rel(video_id)), len(pcm))
    return AudioInput(pcm.astype(np.float32) / 32768.0, mask, segments)


# -- audio embeddings / predictions -----------------------------------------------------------------


def audio_embeddings_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "audio", "embeddings.npy")


def audio_valid_rel(video_id: str) -> str:
    return ArtifactStore.video_rel(video_id, "audio", "embeddings_valid.npy")


def persist_audio_embeddings(
    store: ArtifactStore, video_id: str, features: np.ndarray, valid: np.ndarray
) -> None:
    """(T, 512) float16 wav2vec2 features projected to 512 and their (T,) speech mask; T = 0 without audio."""
    store.write_array(audio_embeddings_rel(video_id), features.astype(np.float16))
    store.write_array(audio_valid_rel(video_id), valid.astype(bool))


def load_audio_embeddings(store: ArtifactStore, video_id: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    features = store.read_array(audio_embeddings_rel(video_id)).astype(np.float32)
    valid = store.read_array(audio_valid_rel(video_id))
    if len(features) == 0 or not valid.any():
        return None, None
    return features, valid


def window_table(video_id: str, scored: ScoredVideo) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "video_id": video_id,
            "window_id": np.arange(len(scored.window_probs), dtype=np.int32),
            "start": [s for s, _ in scored.window_spans],
            "end": [e for _, e in scored.window_spans],
            "n_frames": [b - a for a, b in scored.window_frames],
            "p_fake": scored.window_probs.astype(np.float64),
            "p_fake_video_only": scored.window_probs_video_only.astype(np.float64),
        }
    )


def prediction_table(video_id: str, scored: ScoredVideo) -> pd.DataFrame:
    row = scored.row()
    return pd.DataFrame(
        [
            {
                "video_id": video_id,
                "model_version": row["model_version"],
                "verdict": row["verdict"],
                "p_fake": row["p_fake"],
                "p_fake_uncalibrated": row["p_fake_uncalibrated"],
                "p_fake_video_only": scored.p_fake_video_only,
                "ci_low": row["ci_low"],
                "ci_high": row["ci_high"],
                "interval_method": scored.interval_method,
                "ensemble_size": row["ensemble_size"],
                "temperature": row["temperature"],
                "frames_analyzed": row["frames_analyzed"],
                "modalities": row["modalities"],
                "pretrained_audio": scored.pretrained["audio_encoder"],
                "pretrained_video": scored.pretrained["video_backbone"],
                "trained": scored.trained,
                "trained_on": scored.trained_on,
                "created_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
            }
        ]
    )


# -- saliency / report ------------------------------------------------------------------------------


def saliency_rel(video_id: str, name: str) -> str:
    return ArtifactStore.video_rel(video_id, "saliency", name)


def saliency_names(frame_id: int) -> tuple[str, str]:
    """Stable names: the same frame of the same video always has the same file names."""
    return f"frame_{frame_id:06d}_face.png", f"frame_{frame_id:06d}_frame.png"


def saliency_url(store: ArtifactStore, video_id: str, name: str) -> str:
    """A URL for a heat map: presigned on object stores, the API's route locally."""
    url_for = getattr(store, "url_for", None)
    if not store.is_local and url_for is not None:
        presigned = url_for(saliency_rel(video_id, name))
        if presigned:
            return presigned
    return f"/jobs/{video_id}/saliency/{name}"


# -- training features ------------------------------------------------------------------------------


class StoreFeatureSource:
    """Training features read from what the per-video assets cached (never decodes video).

    `labels` maps video_id → (label_int, method), from the dataset manifest.
    """

    def __init__(self, store: ArtifactStore, labels: dict[str, tuple[int, str]]) -> None:
        self.store = store
        self.labels = labels

    def load(self, video_id: str) -> VideoFeatures:
        from dagster_deepfake.training.features import VideoFeatures

        label_int, method = self.labels[video_id]
        faces = load_face_crops(self.store, video_id)
        audio_in = load_audio(self.store, video_id)
        return VideoFeatures(
            video_id=video_id,
            label_int=int(label_int),
            method=method,
            crops=faces.crops,
            flow=load_flow_features(self.store, video_id),
            timestamps=faces.timestamps,
            waveform=audio_in.waveform if audio_in.has_speech else None,
            speech_mask=audio_in.speech_mask if audio_in.has_speech else None,
        )
