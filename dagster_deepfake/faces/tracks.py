"""Faces as tracks: link every face of every sampled frame into per-person tracks (issue 18, v2).

The contract's v1 rule keeps frames with exactly one face (docs/ARCHITECTURE.md §1). With
`data.faces.max_faces` above 1 every face of a frame with 1..max_faces faces is aligned, and
this module links them across frames:

- by position: the IoU of a face's box with where the track was last seen, or its centre
  distance in face widths (a face that moved fast between two sampled frames still matches);
- by appearance: a descriptor of the aligned crop (a hue/saturation histogram of the face
  ellipse plus a small zero-mean grayscale thumbnail), compared with the track's running mean.

A track not seen for a while is "lost"; a face that matches a lost track's appearance closely
(`reid_similarity`) within `max_gap_seconds` continues it wherever it shows up, so a person
who leaves the frame and comes back keeps one track id. Matching is one optimal assignment
per frame (Hungarian), so two faces that cross are told apart by appearance, not by order.

Tracks shorter than `min_frames` cannot fill one 1-second window of the model and are listed
with that reason instead of being scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd

from dagster_deepfake.faces.align import face_ellipse_mask

_DESCRIPTOR_SIZE = 32  # side the crop is reduced to before describing it
_HIST_BINS = (12, 4)  # hue x saturation
_THUMB = 8  # grayscale thumbnail side

#: Columns of `FaceTracks.table` (the `face_tracks` Parquet table minus video_id), in order.
TRACK_COLUMNS: tuple[str, ...] = ("track_id", "frame_id", "timestamp", "score", "bbox", "landmarks")


@dataclass(frozen=True)
class TrackerSettings:
    """How faces are linked (`data.faces.tracking`; see docs/CONFIG.md).

    Attributes:
        iou_threshold: a face continues a recent track by position when their boxes overlap this much.
        max_centre_distance: ... or when its centre lies within this many face widths of the track's.
        min_similarity: the least appearance similarity (cosine, -1..1) a positional match needs.
        reid_similarity: a lost track (or one far away) is continued by appearance alone from here.
        max_gap_seconds: how long a lost track can still be continued; after that it is closed.
        min_frames: tracks with fewer faces are too short to score (one window = 5 frames at 5 FPS).
    """

    iou_threshold: float = 0.3
    max_centre_distance: float = 1.0
    min_similarity: float = 0.5
    reid_similarity: float = 0.85
    max_gap_seconds: float = 10.0
    min_frames: int = 5


@dataclass
class FaceObservation:
    """One aligned face of one sampled frame (frame coordinates; `appearance` unit-length)."""

    frame_id: int
    timestamp: float
    bbox: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    appearance: np.ndarray


@dataclass(frozen=True)
class TrackSummary:
    """What a report says about a track: its span and whether it could be scored."""

    track_id: int
    n_frames: int
    first_frame: int
    last_frame: int
    first_timestamp: float
    last_timestamp: float
    scorable: bool
    reason: str | None  # why it was not scored (None when scorable)


@dataclass
class FaceTracks:
    """Every tracked face of a video.

    Attributes:
        table: one row per face (columns `TRACK_COLUMNS`), sorted by (track_id, frame_id).
        crops: (N, S, S, 3) uint8 aligned crops in `table` order.
        min_frames: the scoring threshold the summaries were judged by.
    """

    table: pd.DataFrame
    crops: np.ndarray
    min_frames: int = 5

    @property
    def track_ids(self) -> list[int]:
        return sorted(int(t) for t in self.table["track_id"].unique())

    def summaries(self) -> list[TrackSummary]:
        out = []
        for track_id, rows in self.table.groupby("track_id", sort=True):
            n = len(rows)
            ok = n >= self.min_frames
            out.append(
                TrackSummary(
                    track_id=int(track_id),
                    n_frames=n,
                    first_frame=int(rows["frame_id"].min()),
                    last_frame=int(rows["frame_id"].max()),
                    first_timestamp=float(rows["timestamp"].min()),
                    last_timestamp=float(rows["timestamp"].max()),
                    scorable=ok,
                    reason=None
                    if ok
                    else f"too short to score: {n} face frame(s), a track needs {self.min_frames} "
                    "(data.faces.tracking.min_frames, one 1-second window)",
                )
            )
        return out

    @property
    def scorable_ids(self) -> list[int]:
        return [s.track_id for s in self.summaries() if s.scorable]

    def rows_of(self, track_id: int) -> np.ndarray:
        """Positions in `table` / `crops` of one track's faces, in frame order."""
        return np.flatnonzero(self.table["track_id"].to_numpy() == track_id)

    def crops_of(self, track_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crops (K, S, S, 3), frame_ids (K,) int64, timestamps (K,) float64) of one track."""
        rows = self.rows_of(track_id)
        sub = self.table.iloc[rows]
        return (
            self.crops[rows],
            sub["frame_id"].to_numpy(np.int64),
            sub["timestamp"].to_numpy(np.float64),
        )

    def landmarks_of(self, track_id: int) -> dict[int, np.ndarray]:
        """frame_id → the track's five landmarks (x0, y0, …) in that frame."""
        sub = self.table.iloc[self.rows_of(track_id)]
        return {
            int(f): np.asarray(lm, np.float32)
            for f, lm in zip(sub["frame_id"], sub["landmarks"], strict=True)
        }

    def best_row(self, track_id: int) -> int:
        """Position in `table` of the track's most confident face (the first on a tie)."""
        rows = self.rows_of(track_id)
        return int(rows[int(np.argmax(self.table["score"].to_numpy()[rows]))])

    def thumbnail(self, track_id: int, side: int = 64) -> np.ndarray:
        """The track's most confident face, `side` px square (RGB uint8)."""
        crop = self.crops[self.best_row(track_id)]
        return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)

    def bbox(self, track_id: int) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) frame pixels of the track's most confident face (where the thumbnail is)."""
        box = self.table["bbox"].iloc[self.best_row(track_id)]
        return tuple(round(float(v), 1) for v in box)  # type: ignore[return-value]


# -- appearance -----------------------------------------------------------------------------------


def appearance_descriptor(crop: np.ndarray) -> np.ndarray:
    """A unit-length vector describing an aligned face crop (RGB uint8), cheap and identity-ish.

    Colour of the face ellipse (skin, hair at its top) as a hue/saturation histogram, and the
    layout of light and dark as an 8×8 zero-mean grayscale thumbnail; each half normalised so
    neither dominates. Not a face-recognition embedding (none ships offline), but two people in
    one shot rarely share both their colours and their shading.
    """
    small = cv2.resize(crop, (_DESCRIPTOR_SIZE, _DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    mask = face_ellipse_mask(_DESCRIPTOR_SIZE).astype(np.uint8)
    hist = cv2.calcHist([hsv], [0, 1], mask, list(_HIST_BINS), [0, 180, 0, 256]).reshape(-1)
    hist = np.sqrt(hist / max(float(hist.sum()), 1.0))  # Hellinger: cosine of sqrt-histograms
    gray = cv2.resize(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
    gray = gray.astype(np.float32).reshape(-1)
    gray -= gray.mean()
    parts = [_unit(hist.astype(np.float32)), _unit(gray)]
    return _unit(np.concatenate(parts)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


# -- linking --------------------------------------------------------------------------------------


@dataclass
class _Track:
    track_id: int
    members: list[int] = field(default_factory=list)
    last_bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    last_time: float = 0.0
    appearance: np.ndarray | None = None

    def add(self, index: int, obs: FaceObservation) -> None:
        self.members.append(index)
        self.last_bbox, self.last_time = obs.bbox, obs.timestamp
        mean = obs.appearance if self.appearance is None else 0.8 * self.appearance + 0.2 * obs.appearance
        self.appearance = _unit(mean)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Centre distance in units of the larger face width."""
    width = max(a[2] - a[0], b[2] - b[0], 1.0)
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)) / width


def link_tracks(
    observations: Sequence[FaceObservation], settings: TrackerSettings, frame_step: float
) -> list[int]:
    """A track id (0, 1, …, in order of first appearance) for every observation.

    `observations` are in frame order; `frame_step` is the time between sampled frames (s):
    a track last seen more than 1.5 steps ago counts as lost and only appearance can continue it.
    Two faces of one frame never share a track.
    """
    tracks: list[_Track] = []
    assigned = [-1] * len(observations)
    by_frame: dict[int, list[int]] = {}
    for i, obs in enumerate(observations):
        by_frame.setdefault(obs.frame_id, []).append(i)
    for frame_id in sorted(by_frame):
        indices = by_frame[frame_id]
        now = observations[indices[0]].timestamp
        open_tracks = [t for t in tracks if now - t.last_time <= settings.max_gap_seconds + 1e-9]
        gain = np.full((len(open_tracks), len(indices)), -np.inf)
        for r, track in enumerate(open_tracks):
            recent = now - track.last_time <= 1.5 * frame_step + 1e-9
            for c, i in enumerate(indices):
                obs = observations[i]
                similarity = float(track.appearance @ obs.appearance)
                overlap = iou(track.last_bbox, obs.bbox)
                near = _centre_distance(track.last_bbox, obs.bbox)
                by_position = (
                    recent
                    and similarity >= settings.min_similarity
                    and (overlap >= settings.iou_threshold or near <= settings.max_centre_distance)
                )
                if by_position:
                    gain[r, c] = 1.0 + similarity + overlap + max(0.0, 1.0 - near)
                elif similarity >= settings.reid_similarity:
                    gain[r, c] = similarity  # re-identified by appearance alone
        matched: set[int] = set()
        if open_tracks:
            # Imported here: scipy.optimize costs ~1 s at import and one-face videos never match tracks.
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(np.where(np.isfinite(gain), -gain, 1e6))
            for r, c in zip(rows, cols, strict=True):
                if np.isfinite(gain[r, c]):
                    i = indices[c]
                    open_tracks[r].add(i, observations[i])
                    assigned[i] = open_tracks[r].track_id
                    matched.add(c)
        for c, i in enumerate(indices):
            if c not in matched:
                track = _Track(len(tracks))
                track.add(i, observations[i])
                tracks.append(track)
                assigned[i] = track.track_id
    return assigned


def build_tracks(
    observations: Sequence[FaceObservation],
    crops: np.ndarray,
    settings: TrackerSettings,
    frame_step: float,
) -> FaceTracks:
    """Link `observations` (frame order, `crops[i]` is observation i's aligned face) into tracks."""
    ids = link_tracks(observations, settings, frame_step)
    table = pd.DataFrame(
        {
            "track_id": pd.Series(ids, dtype="int32"),
            "frame_id": pd.Series([o.frame_id for o in observations], dtype="int64"),
            "timestamp": pd.Series([o.timestamp for o in observations], dtype="float64"),
            "score": pd.Series([o.score for o in observations], dtype="float32"),
            "bbox": pd.Series([np.asarray(o.bbox, np.float32) for o in observations], dtype=object),
            "landmarks": pd.Series(
                [np.asarray(o.landmarks, np.float32).reshape(-1) for o in observations], dtype=object
            ),
        }
    )
    order = np.lexsort((table["frame_id"].to_numpy(), table["track_id"].to_numpy()))
    size = crops.shape[1] if crops.ndim == 4 else 0
    ordered = crops[order] if len(order) else np.empty((0, size, size, 3), np.uint8)
    return FaceTracks(table.iloc[order].reset_index(drop=True), ordered, settings.min_frames)
