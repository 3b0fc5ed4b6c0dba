"""The result document: the contract's JSON as a typed model.

`ResultDocument` has exactly the contract's keys and nesting. Everything the platform adds
(modalities used, pretrained flags, skipped frames, audio anomalies, warnings, per-window
timeline) lives under the single top-level key `additions`, so a client that knows only the
contract can ignore it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
