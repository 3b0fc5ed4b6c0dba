"""The result document: the contract's JSON as a typed model.

`ResultDocument` has exactly the contract's keys and nesting. Everything the platform adds
(modalities used, pretrained flags, skipped frames, audio anomalies, warnings, per-window
timeline, the provenance of the verdict: its checkpoints and settings) lives under the single top-level key `additions`, so a client that knows only the
contract can ignore it.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dagster_deepfake.evidence import Evidence

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


class FaceTrack(_Strict):  # faces as tracks
    """One face track (`data.faces.max_faces` > 1): its span, its own verdict, timeline and heat maps."""

    track_id: int
    primary: bool = Field(description="the video's verdict is this track's (the most suspicious)")
    scored: bool
    reason: str | None = Field(None, description="why the track was not scored (too short)")
    frames: int = Field(description="sampled frames in which this face was found")
    first_frame: int
    last_frame: int
    first_timestamp: float
    last_timestamp: float
    p_fake: float | None = Field(None, ge=0, le=1, description="calibrated P(fake) of this face")
    confidence_interval: tuple[float, float] | None = None
    overall_class: Literal["real", "fake"] | None = None
    bbox: tuple[float, float, float, float] = Field(description="(x1, y1, x2, y2) px of the thumbnail's face")
    thumbnail: str = Field(description="the track's most confident face, a data: URI (JPEG)")
    windows: list[WindowScore] = Field(default_factory=list)
    anomalous_frames: list[AnomalousFrame] = Field(default_factory=list)


class ProbeFacts(_Strict):
    """What the probe gate read from the file (display size: rotation applied)."""

    container: str
    codec: str
    width: int
    height: int
    fps: float
    duration: float
    rotation: int = 0
    has_audio: bool
    audio_codec: str | None = None


class CheckpointRecord(_Strict):
    """One serving checkpoint (ensemble members too), as it was when the verdict was made."""

    model_version: str
    registry_config: str
    config_hash: str = Field(description="hash of the architecture (the manifest's config_hash)")
    weights_sha256: str | None = Field(description="SHA-256 of model.safetensors")
    weights_bytes: int | None = None
    weights_sha256_from: Literal["manifest", "file"] | None = Field(
        None, description="manifest: recorded when the checkpoint was saved; file: hashed when it was loaded"
    )
    trained: bool
    training_data: str | None = Field(
        None, description="registered dataset names the weights were trained on"
    )
    training_data_hash: str | None = None
    temperature: float
    pretrained: dict[str, Any] = Field(
        description="audio_encoder / video_backbone flags and `sources` (provenance of `weights import`)"
    )
    created_at: str | None = Field(None, description="when the checkpoint was written (ISO 8601)")


class Runtime(_Strict):
    """What computed the verdict: the same checkpoints give the same P(fake) on each (to |ΔP| ≤ 0.01,
    tests/test_precision_parity.py), and a reader should still be able to see which one ran."""

    device: str = Field(description="cpu, or the CUDA device")
    precision: str = Field(description="fp32, bf16 (CPU) or amp (CUDA), as `additions.precision`")
    backbone: str = Field(
        description="what ran the face backbone: torch, or onnxruntime (its exported fp32 graph, "
        "platform.cpu_backbone); members that differ are joined with '+'"
    )


#: How a reader is told what ran the face backbone (`Runtime.backbone` holds the short names).
BACKBONE_RUNTIME_NAMES = {"torch": "torch", "onnxruntime": "ONNX Runtime (exported fp32 graph)"}


def runtime_label(runtime: Runtime | dict[str, Any]) -> str:
    """ "cpu, fp32, face backbone on ONNX Runtime (exported fp32 graph)": the one wording of what
    computed a verdict, for `analyze`, the job page, the case report and the evaluation report."""
    facts = runtime.model_dump() if isinstance(runtime, Runtime) else runtime
    parts = str(facts.get("backbone") or "torch").split("+")
    backbone = " + ".join(BACKBONE_RUNTIME_NAMES.get(part, part) for part in parts)
    return f"{facts.get('device')}, {facts.get('precision')}, face backbone on {backbone}"


class Provenance(_Strict):
    """What the verdict rests on, recorded by the predictions stage (dagster_deepfake/provenance.py)."""

    checkpoints: list[CheckpointRecord]
    runtime: Runtime | None = Field(None, description="null in documents made before it was recorded")
    settings_sha256: str = Field(description="SHA-256 of `settings` as canonical JSON")
    settings_sections: list[str]
    settings: dict[str, Any] = Field(
        description="the settings sections that decide the verdict, host paths left out"
    )


class Additions(_Strict):
    video_id: str
    file_name: str | None = None
    probe: ProbeFacts | None = None
    vad_enabled: bool = Field(True, description="false: WebRTC VAD was off and the whole track was encoded")
    optical_flow_enabled: bool = Field(
        True, description="false: no Farneback flow; the two flow inputs were zero"
    )
    modalities_used: list[Literal["video", "audio"]]
    pretrained: dict[str, bool]
    weights: Literal["trained", "untrained"]
    trained_on: str | None = None
    temperature: float = 1.0
    interval_method: str
    precision: str | None = Field(None, description="fp32, bf16 (CPU) or amp (CUDA)")
    p_fake_uncalibrated: float | None = None
    p_fake_video_only: float | None = None
    face_coverage: float | None = None
    skipped_frames: SkippedFrames | None = None
    speech_seconds: float | None = None
    audio_anomalies: list[AudioAnomaly] = Field(default_factory=list)
    windows: list[WindowScore] = Field(default_factory=list)
    faces: list[FaceTrack] | None = Field(
        None, description="faces as tracks: every face, most suspicious first"
    )
    timings_sec: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    failure_reason: str | None = None
    software_version: str | None = Field(None, description="the dagster-deepfake that built the document")
    provenance: Provenance | None = Field(
        None,
        description="checkpoints and settings of the verdict, recorded at analysis (null in older documents)",
    )


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
    evidence: Evidence, saliency_url: Callable[[str], str | None], *, status: JobStatus = "completed"
) -> ResultDocument:
    """The result document from one video's evidence: the one builder, for `analyze` and Dagster.

    `saliency_url(name)` turns a heat map's file name into the URL the document carries.
    """
    pred = evidence.prediction
    p_fake = float(pred["p_fake"])
    verdict = str(pred["verdict"])
    faces = evidence.faces
    skipped = faces.loc[~faces["kept"], "skip_reason"].value_counts().to_dict()
    windows = evidence.windows
    explanation = evidence.explanation
    probe = evidence.probe
    return ResultDocument(
        job_id=evidence.video_id,
        status=status,
        prediction=Prediction(
            overall_class=verdict,
            overall_confidence=p_fake if verdict == "fake" else 1.0 - p_fake,
            manipulation_confidence=p_fake,
            modality_agreement=explanation["modality_agreement"],
            confidence_interval=(float(pred["ci_low"]), float(pred["ci_high"])),
            anomalous_frames=_anomalous_frames(explanation["anomalous_frames"], saliency_url),
        ),
        metadata=Metadata(
            processing_time_sec=round(evidence.processing_time_sec, 3),
            video_duration_sec=float(probe.get("duration") or 0.0),
            frames_analyzed=int(pred["frames_analyzed"]),
            model_version=str(pred["model_version"]),
            ensemble_size=int(pred["ensemble_size"]),
        ),
        additions=Additions(
            video_id=evidence.video_id,
            file_name=evidence.file_name,
            probe=ProbeFacts(**{k: probe[k] for k in ProbeFacts.model_fields if k in probe})
            if probe
            else None,
            vad_enabled=evidence.vad_enabled,
            optical_flow_enabled=evidence.optical_flow_enabled,
            modalities_used=list(pred["modalities"]),
            pretrained={
                "audio_encoder": bool(pred["pretrained_audio"]),
                "video_backbone": bool(pred["pretrained_video"]),
            },
            weights="trained" if bool(pred["trained"]) else "untrained",
            trained_on=pred["trained_on"] if isinstance(pred["trained_on"], str) else None,
            temperature=float(pred["temperature"]),
            interval_method=str(pred["interval_method"]),
            precision=pred.get("precision"),
            p_fake_uncalibrated=float(pred["p_fake_uncalibrated"]),
            p_fake_video_only=float(pred["p_fake_video_only"]),
            face_coverage=float(faces["kept"].mean()) if len(faces) else 0.0,
            skipped_frames=SkippedFrames(
                total=int(sum(skipped.values())), by_reason={str(k): int(v) for k, v in skipped.items()}
            ),
            speech_seconds=round(float(sum(b - a for a, b in evidence.speech_segments)), 3),
            audio_anomalies=[AudioAnomaly(**a) for a in explanation["audio_anomalies"]],
            windows=[
                WindowScore(window_id=k, start=float(a), end=float(b), p_fake=float(p))
                for k, ((a, b), p) in enumerate(zip(windows.spans, windows.p_fake, strict=True))
            ],
            faces=_face_tracks(evidence, saliency_url),  # faces as tracks
            timings_sec=dict(evidence.timings),
            warnings=list(dict.fromkeys([*evidence.warnings, *_switch_warnings(evidence)])),
            software_version=_software_version(),
            provenance=_provenance(pred.get("provenance")),
        ),
    )


def _provenance(recorded: object) -> Provenance | None:
    """The predictions row's `provenance` (JSON text; None in rows written before it existed)."""
    return Provenance.model_validate_json(recorded) if isinstance(recorded, str) and recorded else None


def synthetic_training(additions: Additions | None) -> str | None:
    """What synthetic data the serving weights were trained on, in words, or None.

    From the recorded provenance when the document has it: every trained checkpoint's
    `training_data` (the registered dataset names its manifest recorded at training time), so an
    ensemble member trained on synthetic clips is said too; older documents: `trained_on`.
    A registered dataset's name is the only record of what it is (synthetic clips register as a
    CSV dataset like any other), so "synthetic" in that name is the signal.
    """
    if additions is None:
        return None
    if additions.provenance is not None:
        said = [
            f"{c.training_data} (data {(c.training_data_hash or 'unknown')[:12]})"
            for c in additions.provenance.checkpoints
            if c.trained and "synthetic" in (c.training_data or "").lower()
        ]
        return ", ".join(dict.fromkeys(said)) or None
    if additions.weights == "trained" and "synthetic" in (additions.trained_on or "").lower():
        return additions.trained_on
    return None


def _software_version() -> str | None:
    """The installed package's version: part of a verdict's chain of custody (docs/API.md "Case report")."""
    try:
        return f"dagster-deepfake {importlib.metadata.version('dagster-deepfake')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _anomalous_frames(
    rows: list[dict[str, Any]], saliency_url: Callable[[str], str | None]
) -> list[AnomalousFrame]:
    """The heat-map frames of the verdict or of one face track, with their heat maps' URLs."""
    return [
        AnomalousFrame(
            frame_id=int(r["frame_id"]),
            timestamp=float(r["timestamp"]),
            confidence=float(r["confidence"]),
            saliency_url=saliency_url(r["face_png"]),
        )
        for r in rows
    ]


def _face_tracks(evidence: Evidence, saliency_url: Callable[[str], str | None]) -> list[FaceTrack] | None:
    """`additions.faces` from `track_scores.face_entries` (None under the one-face rule). # faces as tracks"""
    if evidence.face_tracks is None:
        return None
    return [
        FaceTrack(
            **{k: v for k, v in e.items() if k not in ("windows", "anomalous_frames")},
            windows=[WindowScore(window_id=w, start=a, end=b, p_fake=p) for w, a, b, p in e["windows"]],
            anomalous_frames=_anomalous_frames(e["anomalous_frames"], saliency_url),
        )
        for e in evidence.face_tracks
    ]


def _switch_warnings(evidence: Evidence) -> list[str]:
    """Contract switches that were off, said where a reader of the document sees them."""
    said = []
    if not evidence.vad_enabled:
        said.append("VAD off (data.vad_enabled: false): the whole audio track was encoded as speech")
    if not evidence.optical_flow_enabled:
        said.append("optical flow off (data.optical_flow_enabled: false): the two flow inputs were zero")
    return said
