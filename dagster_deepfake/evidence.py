"""Everything the result document says about one video, gathered in one object.

`analyze` fills it from the stages' in-memory outputs; the `report` asset fills it from what the
stages stored (`from_store`). Both hand it to `report.build_document`, the one builder, and the
fields are the very tables the stages write, so the two paths cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from dagster_deepfake.config import Settings
    from dagster_deepfake.stages import WindowScores
    from dagster_deepfake.storage.artifacts import ArtifactStore
    from dagster_deepfake.storage.postgres import ResultsDB


@dataclass
class Evidence:
    """One video's evidence.

    Attributes:
        probe: the probe's facts (`VideoProbe.to_dict()`).
        faces: the `faces` table (one row per sampled frame: kept, skip_reason, …).
        prediction: the `predictions` row as a dict.
        windows: per-window scores.
        explanation: `Explanation.to_json_dict()` (anomalous frames, audio anomalies, agreement).
        face_tracks: with faces as tracks (`data.faces.max_faces` > 1), one entry per track
            (`track_scores.face_entries`); the fields above are then the most suspicious track's.
    """

    video_id: str
    file_name: str | None
    probe: dict[str, Any]
    warnings: list[str]
    faces: pd.DataFrame
    speech_segments: list[tuple[float, float]]
    prediction: dict[str, Any]
    windows: WindowScores
    explanation: dict[str, Any]
    vad_enabled: bool = True
    optical_flow_enabled: bool = True
    processing_time_sec: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    face_tracks: list[dict[str, Any]] | None = None

    @classmethod
    def from_store(cls, store: ArtifactStore, db: ResultsDB, video_id: str, settings: Settings) -> Evidence:
        """What the per-video assets stored for `video_id` (artifact store + the `videos` row)."""
        from dagster_deepfake.storage import stage_io

        video = db.get_video(video_id) or {}
        probe = dict(video.get("probe") or {})
        warnings = list(probe.pop("warnings", []) or [])
        speech = store.read_table("speech_segments", video_id)
        prediction = store.read_table("predictions", video_id).iloc[0].to_dict()
        job = db.get_job(video_id) or {}
        started = job.get("started_at") or job.get("submitted_at")
        return cls(
            video_id=video_id,
            file_name=video.get("file_name"),
            probe=probe,
            warnings=[*warnings, *_strings(prediction.get("warnings"))],
            faces=store.read_table("faces", video_id),
            speech_segments=list(zip(speech["start"], speech["end"], strict=True)),
            prediction=prediction,
            windows=stage_io.load_window_scores(store, video_id),
            explanation=stage_io.load_explanation(store, video_id),
            vad_enabled=settings.data.vad_enabled,
            optical_flow_enabled=settings.data.optical_flow_enabled,
            processing_time_sec=(dt.datetime.now(dt.UTC) - started).total_seconds() if started else 0.0,
            face_tracks=stage_io.load_face_entries(store, video_id)
            if settings.data.faces.max_faces > 1
            else None,
        )


def _strings(value: Any) -> list[str]:
    """A Parquet list column's value (None, a list or a numpy array) as a list of str."""
    return [] if value is None else [str(v) for v in value]
