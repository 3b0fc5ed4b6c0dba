"""Each stage's output to and from the artifact store: `persist_*` / `load_*` pairs.

The Dagster assets call `load_* → stages.<stage> → persist_*`. A stage's table is its
completion mark: dropped before its files are replaced and written after the last of them, so a
run killed half-way never leaves a table that vouches for missing files. Paths come from
`storage.layout` only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.frames import SampledFrame
from dagster_deepfake.media.images import decode_image, encode_png, thumbnail
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore

if TYPE_CHECKING:
    from dagster_deepfake.faces.extract import FaceExtraction
    from dagster_deepfake.faces.tracks import FaceTracks
    from dagster_deepfake.flow import FlowFeatures
    from dagster_deepfake.scoring import ScoredVideo
    from dagster_deepfake.stages import (
        AudioEmbeddings,
        AudioEvidence,
        AudioInput,
        Explanation,
        ProbedVideo,
        WindowScores,
    )


# -- raw_video ------------------------------------------------------------------------------------


def find_source_rel(store: ArtifactStore, video_id: str) -> str:
    """The ingested copy's path (its extension follows the upload's)."""
    names = layout.source_names(store.list(layout.video_rel(video_id)))
    if not names:
        raise InvalidVideoError(video_id, "raw_video has not been materialized for this partition")
    return layout.video_rel(video_id, names[0])


def video_row(probed: ProbedVideo, source_uri: str, file_name: str, uploader: str | None) -> pd.DataFrame:
    p = probed.probe
    return pd.DataFrame(
        [
            {
                "video_id": probed.video_id,
                "sha256": probed.sha256,
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
                "warnings": probed.warnings,
                "ingested_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
            }
        ]
    )


# -- frames ---------------------------------------------------------------------------------------


@dataclass
class FramesSummary:
    """The frame index and a thumbnail; decoding warnings stay on the `FrameSampler`."""

    table: pd.DataFrame
    thumbnail_jpeg: bytes | None = None


class FrameWriter:
    """The `frames` artifact written as frames pass: each a lossless PNG, then the frame index on
    `close` (old frames removed first). `passing(frames)` hands each frame on after writing it,
    so a batch detects faces on the very frames it stores without decoding twice."""

    COLUMNS = ("video_id", "frame_id", "timestamp", "path", "width", "height")

    def __init__(self, store: ArtifactStore, video_id: str) -> None:
        self.store, self.video_id = store, video_id
        self.rows: list[dict] = []
        self.thumbnail: bytes | None = None
        store.remove_table("frames", video_id)
        store.remove(layout.frames_dir(video_id))

    def write(self, frame: SampledFrame) -> None:
        rel = layout.frame_rel(self.video_id, frame.frame_id)
        self.store.write_bytes(rel, encode_png(frame.image))
        self.thumbnail = self.thumbnail or thumbnail(frame.image)
        h, w = frame.image.shape[:2]
        self.rows.append(
            {
                "video_id": self.video_id,
                "frame_id": frame.frame_id,
                "timestamp": frame.timestamp,
                "path": rel,
                "width": w,
                "height": h,
            }
        )

    def passing(self, frames: Iterable[SampledFrame]) -> Iterator[SampledFrame]:
        for frame in frames:
            self.write(frame)
            yield frame

    def close(self) -> FramesSummary:
        table = pd.DataFrame(self.rows, columns=list(self.COLUMNS))
        self.store.write_table("frames", self.video_id, table)
        return FramesSummary(table=table, thumbnail_jpeg=self.thumbnail)


def persist_frames(store: ArtifactStore, video_id: str, frames: Iterable[SampledFrame]) -> FramesSummary:
    """Write each sampled frame as a lossless PNG, then the frame index (`FrameWriter`)."""
    writer = FrameWriter(store, video_id)
    for frame in frames:
        writer.write(frame)
    return writer.close()


def load_frames(store: ArtifactStore, video_id: str) -> Iterator[SampledFrame]:
    """The sampled frames of a video back from the store, in frame order."""
    table = store.read_table("frames", video_id)
    for row in table.sort_values("frame_id").itertuples():
        yield SampledFrame(int(row.frame_id), float(row.timestamp), _read_png(store, row.path, video_id))


def frame_image_reader(store: ArtifactStore, video_id: str):
    """frame_id → RGB frame, for the saliency stage (reads only the frames it asks for)."""
    paths = store.read_table("frames", video_id).set_index("frame_id")["path"]
    return lambda frame_id: _read_png(store, paths.loc[frame_id], video_id)


def _read_png(store: ArtifactStore, rel: str, video_id: str) -> np.ndarray:
    image = decode_image(store.read_bytes(rel))
    if image is None:
        raise RuntimeError(f"frame file {rel} is unreadable; re-materialize `frames` for {video_id}")
    return image


# -- faces ----------------------------------------------------------------------------------------


def persist_faces(store: ArtifactStore, video_id: str, extraction: FaceExtraction) -> bytes:
    """Write the aligned crops (one .npy), a contact strip and the per-frame face table; return the strip."""
    from dagster_deepfake.faces.extract import face_strip_png

    table = extraction.table.copy()
    table.insert(0, "video_id", video_id)
    store.remove_table("faces", video_id)
    store.remove_table("face_tracks", video_id)
    store.write_array(layout.crops_rel(video_id), extraction.crops)
    strip = face_strip_png(extraction.crops) if len(extraction.crops) else b""
    if strip:
        store.write_bytes(layout.face_strip_rel(video_id), strip)
    if extraction.tracks is not None:  # faces as tracks (data.faces.max_faces > 1)
        tracks = extraction.tracks.table.copy()
        tracks.insert(0, "video_id", video_id)
        store.write_array(layout.track_crops_rel(video_id), extraction.tracks.crops)
        store.write_table("face_tracks", video_id, tracks)
    store.write_table("faces", video_id, table)
    return strip


def load_face_tracks(store: ArtifactStore, video_id: str, min_frames: int) -> FaceTracks:
    """The tracked faces the faces stage stored (faces as tracks), crops in table order."""
    from dagster_deepfake.faces.tracks import TRACK_COLUMNS, FaceTracks

    if not store.has_table("face_tracks", video_id):
        raise RuntimeError(f"{video_id}: no face tracks; re-materialize aligned_faces with max_faces > 1")
    table = store.read_table("face_tracks", video_id)[list(TRACK_COLUMNS)]
    table = table.sort_values(["track_id", "frame_id"]).reset_index(drop=True)
    crops = store.read_array(layout.track_crops_rel(video_id))
    if len(crops) != len(table):
        raise RuntimeError(
            f"{video_id}: {len(crops)} track crops but {len(table)} rows; re-materialize aligned_faces"
        )
    return FaceTracks(table, crops, min_frames)


@dataclass
class FaceCrops:
    """Aligned crops of the kept frames: crops (K, S, S, 3) uint8 RGB, ids and timestamps (K,)."""

    crops: np.ndarray
    frame_ids: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def from_extraction(cls, extraction: FaceExtraction) -> FaceCrops:
        return cls(extraction.crops, extraction.kept_frame_ids, extraction.kept_timestamps)


def load_face_crops(store: ArtifactStore, video_id: str) -> FaceCrops:
    table = store.read_table("faces", video_id)
    kept = table[table["kept"]].sort_values("frame_id")
    crops = store.read_array(layout.crops_rel(video_id))
    if len(crops) != len(kept):
        raise RuntimeError(
            f"{video_id}: {len(crops)} crops but {len(kept)} kept rows; re-materialize aligned_faces"
        )
    return FaceCrops(crops, kept["frame_id"].to_numpy(np.int64), kept["timestamp"].to_numpy(np.float64))


def landmarks_reader(store: ArtifactStore, video_id: str):
    """frame_id → the five landmarks of its face (frame coordinates), for the saliency stage."""
    landmarks = store.read_table("faces", video_id).set_index("frame_id")["landmarks"]
    return lambda frame_id: landmarks.loc[frame_id]


# -- optical flow ---------------------------------------------------------------------------------


def persist_flow(
    store: ArtifactStore, video_id: str, flow: FlowFeatures, timestamps: np.ndarray
) -> pd.DataFrame:
    table = flow.to_frame(timestamps)
    table.insert(0, "video_id", video_id)
    store.remove(layout.flow_fields_rel(video_id))
    store.write_table("flow", video_id, table)
    if flow.fields is not None:
        store.write_array(layout.flow_fields_rel(video_id), flow.fields)
    return table


def persist_track_flow(
    store: ArtifactStore, video_id: str, flows: dict[int, tuple[FlowFeatures, np.ndarray]]
) -> pd.DataFrame:
    """Each scored track's flow summary (track_id → (flow, timestamps)) as one `track_flow` table."""
    parts = []
    for track_id in sorted(flows):
        flow, timestamps = flows[track_id]
        part = flow.to_frame(timestamps)
        part.insert(0, "track_id", np.int32(track_id))
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "video_id", video_id)
    store.write_table("track_flow", video_id, table)
    return table


def load_track_flow(store: ArtifactStore, video_id: str) -> dict[int, np.ndarray]:
    """track_id → (K, 2) float32 flow features in the track's frame order."""
    table = store.read_table("track_flow", video_id).sort_values(["track_id", "frame_id"])
    return {
        int(t): rows[["flow_mean", "flow_std"]].to_numpy(np.float32) for t, rows in table.groupby("track_id")
    }


def load_flow_features(store: ArtifactStore, video_id: str) -> np.ndarray:
    """(K, 2) float32 flow features in kept-frame order."""
    table = store.read_table("flow", video_id).sort_values("frame_id")
    return table[["flow_mean", "flow_std"]].to_numpy(np.float32)


# -- audio ----------------------------------------------------------------------------------------


def persist_audio(store: ArtifactStore, video_id: str, audio: AudioEvidence) -> pd.DataFrame:
    """16 kHz int16 PCM (absent without an audio track), the 20 ms speech mask and the segment table."""
    store.remove_table("speech_segments", video_id)
    store.remove(layout.audio_dir(video_id))
    if audio.pcm is not None:
        store.write_array(layout.pcm_rel(video_id), audio.pcm.astype(np.int16, copy=False))
    store.write_array(layout.speech_mask_rel(video_id), np.asarray(audio.speech.mask_20ms, dtype=bool))
    table = audio.speech.to_frame()
    table.insert(0, "video_id", video_id)
    store.write_table("speech_segments", video_id, table)
    return table


def load_audio(store: ArtifactStore, video_id: str) -> AudioInput:
    from dagster_deepfake.stages import AudioInput

    table = store.read_table("speech_segments", video_id)
    segments = [(float(a), float(b)) for a, b in zip(table["start"], table["end"], strict=True)]
    if not store.exists(layout.pcm_rel(video_id)):
        return AudioInput(None, None, segments)
    pcm = store.read_array(layout.pcm_rel(video_id))
    return AudioInput.from_pcm(pcm, store.read_array(layout.speech_mask_rel(video_id)), segments)


def persist_audio_embeddings(store: ArtifactStore, video_id: str, members: list[AudioEmbeddings]) -> None:
    """Each ensemble member's (T, D) float32 embeddings and (T,) speech mask; T = 0 without speech.

    float32, not float16: the in-process path keeps them in float32, and both paths must agree.
    """
    for name in store.list(layout.audio_dir(video_id)):
        if name.startswith("embeddings"):
            store.remove(layout.video_rel(video_id, "audio", name))
    for i, emb in enumerate(members):
        store.write_array(layout.audio_embeddings_rel(video_id, i), emb.features.astype(np.float32))
        store.write_array(layout.audio_valid_rel(video_id, i), emb.valid.astype(bool))


def load_audio_embeddings(store: ArtifactStore, video_id: str, members: int) -> list[AudioEmbeddings]:
    from dagster_deepfake.stages import AudioEmbeddings

    out = []
    for i in range(members):
        if not store.exists(layout.audio_embeddings_rel(video_id, i)):
            raise RuntimeError(
                f"{video_id}: no audio embeddings for ensemble member {i}; re-materialize audio_embeddings"
            )
        features = store.read_array(layout.audio_embeddings_rel(video_id, i)).astype(np.float32)
        out.append(AudioEmbeddings(features, store.read_array(layout.audio_valid_rel(video_id, i))))
    return out


# -- predictions ----------------------------------------------------------------------------------


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


def load_window_scores(store: ArtifactStore, video_id: str) -> WindowScores:
    return _window_scores(store.read_table("windows", video_id))


def _window_scores(table: pd.DataFrame) -> WindowScores:
    from dagster_deepfake.stages import WindowScores

    windows = table.sort_values("window_id")
    bounds = np.cumsum([0, *windows["n_frames"].tolist()])
    return WindowScores(
        windows["p_fake"].to_numpy(np.float64),
        windows["p_fake_video_only"].to_numpy(np.float64),
        [(float(a), float(b)) for a, b in zip(windows["start"], windows["end"], strict=True)],
        [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
    )


def persist_track_predictions(
    store: ArtifactStore, video_id: str, predictions: pd.DataFrame, windows: pd.DataFrame
) -> None:
    """Faces as tracks: every track's row and each scored track's windows (before `predictions`)."""
    store.write_table("track_windows", video_id, windows)
    store.write_table("track_predictions", video_id, predictions)


def load_track_window_scores(store: ArtifactStore, video_id: str) -> dict[int, WindowScores]:
    table = store.read_table("track_windows", video_id)
    return {int(t): _window_scores(rows) for t, rows in table.groupby("track_id")}


def load_primary_track(store: ArtifactStore, video_id: str) -> int:
    """The track the video's verdict came from (the most suspicious)."""
    table = store.read_table("track_predictions", video_id)
    return int(table.loc[table["primary"], "track_id"].iloc[0])


def prediction_table(video_id: str, scored: ScoredVideo, warnings: list[str]) -> pd.DataFrame:
    """The `predictions` row; `warnings` are the serving model's (`load_ensemble`)."""
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
                "precision": scored.precision,
                "warnings": list(warnings),
                # JSON text (canonical): the document's `additions.provenance` (report.Provenance)
                "provenance": json.dumps(scored.provenance, sort_keys=True) if scored.provenance else None,
                "created_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
            }
        ]
    )


# -- saliency -------------------------------------------------------------------------------------


def persist_explanation(
    store: ArtifactStore,
    video_id: str,
    explanation: Explanation,
    track_rows: dict[int, list[dict]] | None = None,
) -> None:
    """Heat maps first, then explanation.json, which names them (old heat maps removed first).

    With faces as tracks, `track_rows` (each track's heat-map rows) go to tracks.json before it.
    """
    store.remove(layout.saliency_dir(video_id))
    for name, png in explanation.heat_maps.items():
        store.write_bytes(layout.saliency_rel(video_id, name), png)
    if track_rows is not None:
        payload = {str(t): r for t, r in sorted(track_rows.items())}
        store.write_bytes(layout.track_explanations_rel(video_id), json.dumps(payload).encode())
    store.write_bytes(layout.explanation_rel(video_id), json.dumps(explanation.to_json_dict()).encode())


def load_explanation(store: ArtifactStore, video_id: str) -> dict:
    return json.loads(store.read_bytes(layout.explanation_rel(video_id)))


def load_face_entries(store: ArtifactStore, video_id: str) -> list[dict]:
    """The document's `additions.faces` entries from what the track stages stored."""
    from dagster_deepfake.track_scores import face_entries

    heat = json.loads(store.read_bytes(layout.track_explanations_rel(video_id)))
    return face_entries(
        store.read_table("track_predictions", video_id),
        store.read_table("track_windows", video_id),
        {int(t): rows for t, rows in heat.items()},
    )


def saliency_url(store: ArtifactStore, video_id: str, name: str) -> str:
    """A URL for a heat map: presigned on object stores, the API's route locally."""
    if not store.is_local:
        presigned = store.url_for(layout.saliency_rel(video_id, name))
        if presigned:
            return presigned
    return layout.saliency_route(video_id, name)
