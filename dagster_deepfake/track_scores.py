"""Faces as tracks, from scores to the document: which track is the verdict, and what each says.

With `data.faces.max_faces` > 1 the faces stage yields tracks (faces/tracks.py). Each scorable
track runs through the same flow, predictions and saliency stages as a one-face video (one
stage function each, called once per track, by `analyze` and the Dagster assets alike). This
module holds what comes after: the most suspicious track is the video's verdict (the contract's
"prediction" block is that track's), and every track, scored or too short, becomes one entry of
the document's `additions.faces`. Tables here are the ones stage_io persists, so both paths build
the entries from identical rows (tests/test_parity.py, tests/test_face_tracks.py).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dagster_deepfake.media.images import encode_jpeg
from dagster_deepfake.storage import layout

if TYPE_CHECKING:
    from dagster_deepfake.faces.extract import FaceExtraction
    from dagster_deepfake.faces.tracks import FaceTracks
    from dagster_deepfake.scoring import ScoredVideo
    from dagster_deepfake.stages import Explanation


@dataclass
class FaceUnit:
    """What one pass of flow → predictions → saliency runs on: the video's one face (track_id None)
    or one face track. crops (K, S, S, 3), frame_ids (K,), timestamps (K,), landmarks by frame."""

    track_id: int | None
    crops: np.ndarray
    frame_ids: np.ndarray
    timestamps: np.ndarray
    landmarks: dict[int, np.ndarray] | None = None

    def heat_map_name(self, name: str) -> str:
        return name if self.track_id is None else layout.track_heat_map_name(self.track_id, name)


def face_units(extraction: FaceExtraction) -> list[FaceUnit]:
    """The single face of the contract's rule, or every scorable track when tracking is on."""
    tracks = extraction.tracks
    if tracks is None:
        return [FaceUnit(None, extraction.crops, extraction.kept_frame_ids, extraction.kept_timestamps)]
    return track_units(tracks)


def track_units(tracks: FaceTracks) -> list[FaceUnit]:
    return [FaceUnit(t, *tracks.crops_of(t), tracks.landmarks_of(t)) for t in tracks.scorable_ids]


def pick_primary(scored: dict[int, ScoredVideo]) -> int:
    """The most suspicious track (highest calibrated P(fake); the longer one on a tie)."""
    if not scored:
        raise ValueError("no scored track to choose from")
    return max(scored, key=lambda t: (scored[t].p_fake, scored[t].frames_analyzed, -t))


def rename_heat_maps(explanation: Explanation, unit: FaceUnit) -> Explanation:
    """The explanation with heat-map names of this track (`track012_frame_…png`)."""
    if unit.track_id is None:
        return explanation
    rows = [
        {**r, "face_png": unit.heat_map_name(r["face_png"]), "frame_png": unit.heat_map_name(r["frame_png"])}
        for r in explanation.anomalous_frames
    ]
    maps = {unit.heat_map_name(name): png for name, png in explanation.heat_maps.items()}
    return replace(explanation, anomalous_frames=rows, heat_maps=maps)


def thumbnail_uri(tracks: FaceTracks, track_id: int) -> str:
    """A 64 px JPEG of the track's most confident face as a data URI (the document stays self-contained)."""
    jpeg = encode_jpeg(tracks.thumbnail(track_id), quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def track_prediction_table(
    video_id: str, tracks: FaceTracks, scored: dict[int, ScoredVideo], primary: int
) -> pd.DataFrame:
    """The `track_predictions` rows: every track, scored or with the reason it was not."""
    rows = []
    for s in tracks.summaries():
        sv = scored.get(s.track_id)
        rows.append(
            {
                "video_id": video_id,
                "track_id": s.track_id,
                "n_frames": s.n_frames,
                "first_frame": s.first_frame,
                "last_frame": s.last_frame,
                "first_timestamp": s.first_timestamp,
                "last_timestamp": s.last_timestamp,
                "scored": sv is not None,
                "reason": s.reason,
                "verdict": sv.verdict if sv else None,
                "p_fake": sv.p_fake if sv else np.nan,
                "ci_low": sv.ci_low if sv else np.nan,
                "ci_high": sv.ci_high if sv else np.nan,
                "p_fake_video_only": sv.p_fake_video_only if sv else np.nan,
                "primary": s.track_id == primary,
                "bbox": np.asarray(tracks.bbox(s.track_id), np.float32),
                "thumbnail": thumbnail_uri(tracks, s.track_id),
            }
        )
    return pd.DataFrame(rows)


def track_window_table(video_id: str, scored: dict[int, ScoredVideo]) -> pd.DataFrame:
    """The `track_windows` rows: each scored track's 1-second windows."""
    from dagster_deepfake.storage.stage_io import window_table

    parts = []
    for track_id in sorted(scored):
        table = window_table(video_id, scored[track_id])
        table.insert(1, "track_id", np.int32(track_id))
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def face_entries(
    predictions: pd.DataFrame, windows: pd.DataFrame, heat_maps: dict[int, list[dict]]
) -> list[dict]:
    """One entry per track for the document (`report.FaceTrack`), most suspicious first.

    `heat_maps[track_id]` are that track's anomalous-frame rows (face_png names, not URLs).
    """
    entries = []
    for row in predictions.sort_values("track_id").itertuples():
        tid = int(row.track_id)
        own = windows[windows["track_id"] == tid].sort_values("window_id")
        entries.append(
            {
                "track_id": tid,
                "primary": bool(row.primary),
                "scored": bool(row.scored),
                "reason": row.reason if isinstance(row.reason, str) else None,
                "frames": int(row.n_frames),
                "first_frame": int(row.first_frame),
                "last_frame": int(row.last_frame),
                "first_timestamp": float(row.first_timestamp),
                "last_timestamp": float(row.last_timestamp),
                "p_fake": float(row.p_fake) if row.scored else None,
                "confidence_interval": (float(row.ci_low), float(row.ci_high)) if row.scored else None,
                "overall_class": str(row.verdict) if row.scored else None,
                "bbox": tuple(round(float(v), 1) for v in row.bbox),
                "thumbnail": str(row.thumbnail),
                "windows": [
                    (int(w.window_id), float(w.start), float(w.end), float(w.p_fake))
                    for w in own.itertuples()
                ],
                "anomalous_frames": list(heat_maps.get(tid, [])),
            }
        )
    entries.sort(key=lambda e: (not e["scored"], -(e["p_fake"] or 0.0), e["track_id"]))
    return entries
