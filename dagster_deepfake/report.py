"""The result document: the contract's JSON as a typed model.

`ResultDocument` has exactly the contract's keys and nesting. Everything the platform adds
(modalities used, pretrained flags, skipped frames, audio anomalies, warnings, per-window
timeline) lives under the single top-level key `additions`, so a client that knows only the
contract can ignore it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB

JobStatus = Literal["queued", "running", "completed", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnomalousFrame(_Strict):
    frame_id: int
    timestamp: float = Field(description="seconds from the start of the video")
    confidence: float = Field(ge=0, le=1, description="P(fake) of the window holding this frame")
    saliency_url: str | None = Field(description="Grad-CAM heat map (PNG) of this frame")


class Prediction(_Strict):
    overall_class: Literal["real", "fake"]
    overall_confidence: float = Field(ge=0, le=1, description="calibrated probability of overall_class")
    manipulation_confidence: float = Field(ge=0, le=1, description="calibrated P(fake)")
    modality_agreement: float | None = Field(
        ge=0, le=1, description="agreement of video-only and audio-visual evidence; null without usable audio"
    )
    confidence_interval: tuple[float, float] = Field(description="interval for P(fake) (low, high)")
    anomalous_frames: list[AnomalousFrame]


class Metadata(_Strict):
    processing_time_sec: float
    video_duration_sec: float
    frames_analyzed: int
    model_version: str
    ensemble_size: int


class AudioAnomaly(_Strict):
    start: float
    end: float
    score: float
    kind: str


class SkippedFrames(_Strict):
    total: int
    by_reason: dict[str, int]


class WindowScore(_Strict):
    window_id: int
    start: float
    end: float
    p_fake: float


class Additions(_Strict):
    video_id: str
    file_name: str | None = None
    modalities_used: list[Literal["video", "audio"]]
    pretrained: dict[str, bool]
    weights: Literal["trained", "untrained"]
    trained_on: str | None = None
    temperature: float = 1.0
    interval_method: str
    p_fake_uncalibrated: float | None = None
    p_fake_video_only: float | None = None
    face_coverage: float | None = None
    skipped_frames: SkippedFrames | None = None
    speech_seconds: float | None = None
    audio_anomalies: list[AudioAnomaly] = Field(default_factory=list)
    windows: list[WindowScore] = Field(default_factory=list)
    timings_sec: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    failure_reason: str | None = None


class ResultDocument(_Strict):
    job_id: str
    status: JobStatus
    prediction: Prediction | None
    metadata: Metadata | None
    additions: Additions | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def json_schema() -> str:
    """The JSON Schema of the result document (exported to docs/result.schema.json)."""
    return json.dumps(ResultDocument.model_json_schema(), indent=2)


def build_document(
    store: ArtifactStore, db: ResultsDB, video_id: str, *, status: JobStatus = "completed"
) -> ResultDocument:
    """Assemble the result document from what the per-video stages stored."""
    pred = store.read_table("predictions", video_id).iloc[0]
    windows = store.read_table("windows", video_id).sort_values("window_id")
    faces = store.read_table("faces", video_id)
    speech = store.read_table("speech_segments", video_id)
    explanation = json.loads(store.read_bytes(f"videos/{video_id}/saliency/explanation.json"))
    video = db.get_video(video_id) or {}
    probe = video.get("probe") or {}
    job = db.get_job(video_id) or {}
    started = job.get("started_at") or job.get("submitted_at")
    processing = (dt.datetime.now(dt.UTC) - started).total_seconds() if started else 0.0
    p_fake = float(pred["p_fake"])
    verdict = str(pred["verdict"])
    skipped = faces[~faces["kept"]]["skip_reason"].value_counts().to_dict()
    from dagster_deepfake.pipeline import saliency_url  # local import: pipeline imports heavy stages

    return ResultDocument(
        job_id=video_id,
        status=status,
        prediction=Prediction(
            overall_class=verdict,
            overall_confidence=p_fake if verdict == "fake" else 1.0 - p_fake,
            manipulation_confidence=p_fake,
            modality_agreement=explanation["modality_agreement"],
            confidence_interval=(float(pred["ci_low"]), float(pred["ci_high"])),
            anomalous_frames=[
                AnomalousFrame(
                    frame_id=int(r["frame_id"]),
                    timestamp=float(r["timestamp"]),
                    confidence=float(r["confidence"]),
                    saliency_url=saliency_url(store, video_id, r["face_png"]),
                )
                for r in explanation["anomalous_frames"]
            ],
        ),
        metadata=Metadata(
            processing_time_sec=round(processing, 3),
            video_duration_sec=float(probe.get("duration") or 0.0),
            frames_analyzed=int(pred["frames_analyzed"]),
            model_version=str(pred["model_version"]),
            ensemble_size=int(pred["ensemble_size"]),
        ),
        additions=Additions(
            video_id=video_id,
            file_name=video.get("file_name"),
            modalities_used=list(pred["modalities"]),
            pretrained={
                "audio_encoder": bool(pred["pretrained_audio"]),
                "video_backbone": bool(pred["pretrained_video"]),
            },
            weights="trained" if bool(pred["trained"]) else "untrained",
            trained_on=pred["trained_on"] if isinstance(pred["trained_on"], str) else None,
            temperature=float(pred["temperature"]),
            interval_method=str(pred["interval_method"]),
            p_fake_uncalibrated=float(pred["p_fake_uncalibrated"]),
            p_fake_video_only=float(pred["p_fake_video_only"]),
            face_coverage=float(faces["kept"].mean()) if len(faces) else 0.0,
            skipped_frames=SkippedFrames(
                total=int(sum(skipped.values())), by_reason={str(k): int(v) for k, v in skipped.items()}
            ),
            speech_seconds=float(speech["duration"].sum()) if len(speech) else 0.0,
            audio_anomalies=[AudioAnomaly(**a) for a in explanation["audio_anomalies"]],
            windows=[
                WindowScore(
                    window_id=int(w.window_id), start=float(w.start), end=float(w.end), p_fake=float(w.p_fake)
                )
                for w in windows.itertuples()
            ],
            warnings=list(probe.get("warnings") or []),
        ),
    )
