"""Per-frame face extraction: detect, apply the one-face rule, align, and account for skips.

Contract rule: a sampled frame is used only when it holds exactly one face with
confidence >= `data.faces.confidence_threshold`; frames with none or more than one are
skipped and counted by reason. (`data.faces.max_faces` generalises "one"; when it is
above 1, the highest-scoring face of a frame is the one in the per-frame table, and every face
of the frame is also aligned and linked into tracks: `FaceExtraction.tracks`, faces/tracks.py.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import pandas as pd

from dagster_deepfake.config import FacesConfig
from dagster_deepfake.faces.align import align_face
from dagster_deepfake.faces.base import FaceDetection, FaceDetector
from dagster_deepfake.faces.tracks import (
    FaceObservation,
    FaceTracks,
    TrackerSettings,
    appearance_descriptor,
    build_tracks,
)

SkipReason = Literal["no_face", "multiple_faces"]
SKIP_REASONS: tuple[SkipReason, ...] = ("no_face", "multiple_faces")

#: Columns of `FaceExtraction.table`, in order (the `faces` Parquet table minus video_id).
TABLE_COLUMNS: tuple[str, ...] = (
    "frame_id",
    "timestamp",
    "num_faces",
    "score",
    "bbox",
    "landmarks",
    "kept",
    "skip_reason",
)


class FrameRecord(Protocol):
    """Anything with these attributes, e.g. `dagster_deepfake.media.frames.SampledFrame`."""

    frame_id: int
    timestamp: float
    image: np.ndarray


#: A sampled frame: a `(frame_id, timestamp, image)` tuple or a `FrameRecord`.
FrameLike = tuple[int, float, np.ndarray] | FrameRecord


@dataclass
class FaceExtraction:
    """Result of `extract_faces` for one video.

    Attributes:
        table: one row per input frame (columns `TABLE_COLUMNS`). `score`, `bbox`
            (x1, y1, x2, y2) and `landmarks` (x0, y0, ..., x4, y4) describe the frame's
            highest-scoring face, also on skipped "multiple_faces" rows (for inspection);
            they are NaN / None when no face was found. `kept` marks rows with a crop.
        crops: (K, S, S, 3) uint8 aligned RGB faces of the kept rows, in frame order.
        kept_frame_ids: (K,) int64 frame ids of `crops`.
        skip_counts: skipped frames per reason (every reason present, zeros included).
        tracks: with `max_faces` > 1, every face of the kept frames linked into tracks; else None.
    """

    table: pd.DataFrame
    crops: np.ndarray
    kept_frame_ids: np.ndarray
    skip_counts: dict[str, int] = field(default_factory=dict)
    tracks: FaceTracks | None = None

    @property
    def num_frames(self) -> int:
        return len(self.table)

    @property
    def num_kept(self) -> int:
        return len(self.kept_frame_ids)

    @property
    def coverage(self) -> float:
        """Fraction of sampled frames that yielded a face crop (0.0 for no frames)."""
        return self.num_kept / self.num_frames if self.num_frames else 0.0

    @property
    def kept_timestamps(self) -> np.ndarray:
        return self.table.loc[self.table["kept"], "timestamp"].to_numpy(np.float64)


def _unpack(frame: FrameLike) -> tuple[int, float, np.ndarray]:
    if isinstance(frame, tuple):
        frame_id, timestamp, image = frame
    else:
        frame_id, timestamp, image = frame.frame_id, frame.timestamp, frame.image
    return int(frame_id), float(timestamp), image


def _batches(frames: Iterable[FrameLike], size: int) -> Iterator[list[tuple[int, float, np.ndarray]]]:
    iterator = (_unpack(f) for f in frames)
    while batch := list(islice(iterator, size)):
        yield batch


def extract_faces(
    frames: Iterable[FrameLike],
    detector: FaceDetector,
    cfg: FacesConfig,
    batch_size: int = 16,
) -> FaceExtraction:
    """Detect, filter and align faces in sampled frames.

    Frames are consumed lazily in batches of `batch_size`, so only one batch of full
    frames is in memory at a time. Detections below `cfg.confidence_threshold` are
    ignored whatever the backend's own threshold.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    size = cfg.aligned_size
    rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    skip_counts: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
    tracking = cfg.max_faces > 1
    observations: list[FaceObservation] = []
    track_crops: list[np.ndarray] = []

    for batch in _batches(frames, batch_size):
        detections = detector.detect([image for _, _, image in batch])
        for (frame_id, timestamp, image), faces in zip(batch, detections, strict=True):
            faces = sorted(
                (f for f in faces if f.score >= cfg.confidence_threshold),
                key=lambda f: f.score,
                reverse=True,
            )
            best: FaceDetection | None = faces[0] if faces else None
            reason: SkipReason | None = None
            if best is None:
                reason = "no_face"
            elif len(faces) > cfg.max_faces:
                reason = "multiple_faces"
            else:
                crops.append(align_face(image, best.landmarks, size))
                if tracking:
                    for k, face in enumerate(faces):
                        crop = crops[-1] if k == 0 else align_face(image, face.landmarks, size)
                        track_crops.append(crop)
                        observations.append(
                            FaceObservation(
                                frame_id, timestamp, face.bbox, face.landmarks, face.score,
                                appearance_descriptor(crop),
                            )
                        )  # fmt: skip
            if reason is not None:
                skip_counts[reason] += 1
            rows.append(
                {
                    "frame_id": frame_id,
                    "timestamp": timestamp,
                    "num_faces": len(faces),
                    "score": best.score if best else np.nan,
                    "bbox": np.asarray(best.bbox, dtype=np.float32) if best else None,
                    "landmarks": best.landmarks.reshape(-1).copy() if best else None,
                    "kept": reason is None,
                    "skip_reason": reason,
                }
            )

    # Built column by column: pandas would otherwise turn the None of optional columns into NaN.
    columns = {name: [row[name] for row in rows] for name in TABLE_COLUMNS}
    table = pd.DataFrame(
        {
            "frame_id": pd.Series(columns["frame_id"], dtype="int64"),
            "timestamp": pd.Series(columns["timestamp"], dtype="float64"),
            "num_faces": pd.Series(columns["num_faces"], dtype="int32"),
            "score": pd.Series(columns["score"], dtype="float32"),
            "bbox": pd.Series(columns["bbox"], dtype=object),
            "landmarks": pd.Series(columns["landmarks"], dtype=object),
            "kept": pd.Series(columns["kept"], dtype=bool),
            "skip_reason": pd.Series(columns["skip_reason"], dtype=object),
        }
    )
    kept_ids = table.loc[table["kept"], "frame_id"].to_numpy(np.int64)
    crop_array = np.stack(crops) if crops else np.empty((0, size, size, 3), dtype=np.uint8)
    tracks = None
    if tracking:
        stacked = np.stack(track_crops) if track_crops else np.empty((0, size, size, 3), dtype=np.uint8)
        tracks = build_tracks(
            observations, stacked, TrackerSettings(**cfg.tracking.model_dump()), _frame_step(table)
        )
    return FaceExtraction(
        table=table, crops=crop_array, kept_frame_ids=kept_ids, skip_counts=skip_counts, tracks=tracks
    )


def _frame_step(table: pd.DataFrame) -> float:
    """Seconds between sampled frames (the median step; 0.2 s, i.e. 5 FPS, for fewer than 2 frames)."""
    steps = np.diff(np.sort(table["timestamp"].to_numpy(np.float64)))
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 0.2


def face_strip(crops: np.ndarray, n: int = 8, tile: int = 112) -> np.ndarray:
    """(tile, m*tile, 3) uint8 image of up to `n` crops spread evenly over the video."""
    if len(crops) == 0:
        raise ValueError("no face crops to draw")
    picks = np.unique(np.linspace(0, len(crops) - 1, num=min(n, len(crops))).round().astype(int))
    tiles = [cv2.resize(crops[i], (tile, tile), interpolation=cv2.INTER_AREA) for i in picks]
    return np.hstack(tiles)


def face_strip_png(crops: np.ndarray, n: int = 8, tile: int = 112) -> bytes:
    """PNG bytes of `face_strip` (for writers that take bytes, e.g. the artifact store)."""
    strip = face_strip(crops, n=n, tile=tile)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("could not encode the face strip as PNG")
    return encoded.tobytes()


def save_face_strip(crops: np.ndarray, path: str | os.PathLike[str], n: int = 8, tile: int = 112) -> Path:
    """Write a PNG contact strip of up to `n` aligned faces (evenly spaced in time) for the UI."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(face_strip_png(crops, n=n, tile=tile))
    return path
