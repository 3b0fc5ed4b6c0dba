"""`dagster-deepfake analyze`: every per-video stage in one process, in memory, with timings.

Same stage functions as the Dagster assets (see `pipeline.py`), chained without the
artifact store: the video is decoded once and arrays pass from stage to stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dagster_deepfake.config import Settings
from dagster_deepfake.media.frames import sample_frames
from dagster_deepfake.media.probe import probe_video, validate_probe
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 4)


@dataclass
class AnalysisResult:
    video_id: str
    path: str
    probe: dict[str, Any]
    warnings: list[str]
    frames: dict[str, Any]
    stages: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    document: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "path": self.path,
            "probe": self.probe,
            "warnings": self.warnings,
            "frames": self.frames,
            **self.stages,
            "timings_sec": {**self.timings, "total": round(sum(self.timings.values()), 4)},
        }


def analyze_file(
    path: str | Path, settings: Settings, *, model_config: str | None = None, device: str | None = None
) -> AnalysisResult:
    """Run every per-video stage on a local file in memory; raises DeepfakeError subclasses on bad input."""
    from dagster_deepfake.errors import NoFaceFoundError
    from dagster_deepfake.explain.agreement import modality_agreement
    from dagster_deepfake.explain.anomalies import find_audio_anomalies
    from dagster_deepfake.faces import create_detector, extract_faces
    from dagster_deepfake.flow import compute_flow_features
    from dagster_deepfake.media.audio import extract_audio
    from dagster_deepfake.media.vad import SpeechActivity, detect_speech
    from dagster_deepfake.models.inference import select_device
    from dagster_deepfake.models.store import load_ensemble
    from dagster_deepfake.pipeline import speech_sample_mask
    from dagster_deepfake.scoring import score_video

    timer = StageTimer()
    path = Path(path)
    device = device or select_device(settings.platform.device)
    with timer.stage("probe"):
        probe = probe_video(path)
        warnings = validate_probe(
            probe,
            min_height=settings.data.min_height,
            max_height=settings.data.max_height,
            max_duration_seconds=settings.platform.max_duration_seconds,
        )
        video_id = partition_key_for_sha256(sha256_file(str(path)))
    # Frames are decoded once and streamed into the detector batch by batch.
    sampler = sample_frames(path, probe, settings.data.frame_rate)
    first: dict[str, Any] = {}

    def counted():
        with timer.stage("frames+faces"):
            for frame in sampler:
                first.setdefault("size", f"{frame.image.shape[1]}x{frame.image.shape[0]}")
                yield frame

    detector = create_detector(settings.data.faces)
    extraction = extract_faces(counted(), detector, settings.data.faces)
    warnings += sampler.warnings
    if extraction.num_kept == 0:
        raise NoFaceFoundError(path, f"no face found in any of {extraction.num_frames} sampled frames")
    with timer.stage("flow"):
        flow = compute_flow_features(extraction.crops, extraction.kept_frame_ids)
    with timer.stage("audio+vad"):
        cfg = settings.data.audio
        track = extract_audio(path, sample_rate=cfg.sample_rate, has_audio=True) if probe.has_audio else None
        speech = (
            detect_speech(track, aggressiveness=cfg.vad_aggressiveness, frame_ms=cfg.vad_frame_ms)
            if track is not None
            else SpeechActivity.empty(probe.duration)
        )
        waveform = track.as_float() if track is not None and speech.segments else None
        mask = speech_sample_mask(speech.mask_20ms, len(waveform)) if waveform is not None else None
    with timer.stage("model load"):
        p = settings.platform
        members, model_warnings = load_ensemble(
            p.checkpoint,
            p.model_dir,
            model_config or settings.model.registry_config,
            settings.inference.ensemble_size,
            device,
        )
        warnings += model_warnings
    timestamps = extraction.kept_timestamps
    with timer.stage("model"):
        scored = score_video(
            members,
            extraction.crops,
            flow.features,
            timestamps,
            frame_rate=settings.data.frame_rate,
            threshold=settings.model.head.threshold,
            device=device,
            waveform=waveform,
            speech_mask=mask,
        )
    starts = np.array([a for a, _ in scored.window_spans])
    ends = np.array([b for _, b in scored.window_spans])
    window_flow = np.array([flow.features[a:b, 0].mean() for a, b in scored.window_frames])
    anomalies = find_audio_anomalies(
        window_starts=starts,
        window_ends=ends,
        p_audio_visual=scored.window_probs,
        p_video_only=scored.window_probs_video_only,
        window_flow=window_flow,
        speech_segments=speech.segments,
    )
    agreement = modality_agreement(
        scored.window_probs, scored.window_probs_video_only, has_speech=scored.audio_used
    )
    frames_info = {
        "frame_rate": settings.data.frame_rate,
        "count": extraction.num_frames,
        "first_timestamp": float(extraction.table["timestamp"].min()),
        "last_timestamp": float(extraction.table["timestamp"].max()),
        "size": first.get("size"),
    }
    stages = {
        "faces": {
            "summary": f"{extraction.num_kept}/{extraction.num_frames} frames with one face "
            f"({extraction.coverage:.0%}); skipped {extraction.skip_counts}",
            "kept": extraction.num_kept,
            "coverage": round(extraction.coverage, 4),
            "skipped": extraction.skip_counts,
        },
        "flow": {
            "summary": f"mean |flow| {float(flow.features[:, 0].mean()):.3f} px/frame over {len(flow.features)} faces",
            "flow_mean_avg": round(float(flow.features[:, 0].mean()), 4),
        },
        "audio": {
            "summary": (
                f"{speech.speech_seconds:.2f} s of speech in {len(speech.segments)} segments"
                if track is not None
                else "no audio track"
            ),
            "has_audio": track is not None,
            "speech_seconds": round(float(speech.speech_seconds), 3),
            "segments": [[round(a, 3), round(b, 3)] for a, b in speech.segments],
        },
        "prediction": {
            "summary": f"{scored.verdict.upper()}  P(fake) {scored.p_fake:.3f} "
            f"[{scored.ci_low:.3f}, {scored.ci_high:.3f}] ({scored.interval_method}); "
            f"model {scored.model_version}, weights {scored.weights}, pretrained {scored.pretrained}",
            "verdict": scored.verdict,
            "p_fake": round(scored.p_fake, 6),
            "confidence_interval": [scored.ci_low, scored.ci_high],
            "interval_method": scored.interval_method,
            "p_fake_video_only": round(scored.p_fake_video_only, 6),
            "modality_agreement": agreement,
            "modalities_used": scored.modalities,
            "windows": [
                {"start": a, "end": b, "p_fake": round(float(w), 6)}
                for (a, b), w in zip(scored.window_spans, scored.window_probs, strict=True)
            ],
            "audio_anomalies": [a.to_dict() for a in anomalies],
            "model_version": scored.model_version,
            "weights": scored.weights,
            "pretrained": scored.pretrained,
            "ensemble_size": scored.ensemble_size,
            "precision": scored.precision,
        },
    }
    from dagster_deepfake.explain.gradcam import top_frames
    from dagster_deepfake.report import (
        Additions,
        AnomalousFrame,
        AudioAnomaly,
        Metadata,
        Prediction,
        ResultDocument,
        SkippedFrames,
        WindowScore,
    )

    top = top_frames(scored.window_probs, scored.window_frames, settings.explain.top_k_frames)
    document = ResultDocument(
        job_id=video_id,
        status="completed",
        prediction=Prediction(
            overall_class=scored.verdict,
            overall_confidence=scored.p_fake if scored.verdict == "fake" else 1 - scored.p_fake,
            manipulation_confidence=scored.p_fake,
            modality_agreement=agreement,
            confidence_interval=(scored.ci_low, scored.ci_high),
            anomalous_frames=[
                AnomalousFrame(
                    frame_id=int(extraction.kept_frame_ids[i]),
                    timestamp=float(timestamps[i]),
                    confidence=float(scored.window_probs[w]),
                    saliency_url=None,  # heat maps are made by the `saliency` asset (Dagster path)
                )
                for w, i in top
            ],
        ),
        metadata=Metadata(
            processing_time_sec=round(timer.total, 3),
            video_duration_sec=probe.duration,
            frames_analyzed=scored.frames_analyzed,
            model_version=scored.model_version,
            ensemble_size=scored.ensemble_size,
        ),
        additions=Additions(
            video_id=video_id,
            file_name=path.name,
            modalities_used=scored.modalities,
            pretrained=scored.pretrained,
            weights=scored.weights,
            trained_on=scored.trained_on,
            temperature=scored.temperature,
            interval_method=scored.interval_method,
            p_fake_uncalibrated=scored.p_fake_uncalibrated,
            p_fake_video_only=scored.p_fake_video_only,
            face_coverage=extraction.coverage,
            skipped_frames=SkippedFrames(
                total=extraction.num_frames - extraction.num_kept, by_reason=dict(extraction.skip_counts)
            ),
            speech_seconds=speech.speech_seconds,
            audio_anomalies=[AudioAnomaly(**a.to_dict()) for a in anomalies],
            windows=[
                WindowScore(window_id=k, start=a, end=b, p_fake=float(p))
                for k, ((a, b), p) in enumerate(zip(scored.window_spans, scored.window_probs, strict=True))
            ],
            timings_sec=dict(timer.seconds),
            warnings=warnings,
        ),
    )
    return AnalysisResult(
        video_id=video_id,
        path=str(path),
        probe=probe.to_dict(),
        warnings=warnings,
        frames=frames_info,
        stages=stages,
        timings=timer.seconds,
        document=json.loads(document.to_json()),
    )


def render_text(result: AnalysisResult, *, timings: bool = False) -> str:
    p = result.probe
    lines = [
        f"video      {result.path}  ({result.video_id})",
        f"probe      {p['codec']} {p['width']}x{p['height']} @ {p['fps']:.2f} fps, {p['duration']:.2f} s, "
        f"audio: {p['audio_codec'] if p['has_audio'] else 'none'}",
        f"frames     {result.frames['count']} sampled at {result.frames['frame_rate']} FPS "
        f"({result.frames['first_timestamp']:.2f}–{result.frames['last_timestamp']:.2f} s)",
    ]
    for name, block in result.stages.items():
        if isinstance(block, dict) and "summary" in block:
            lines.append(f"{name:<10} {block['summary']}")
    for warning in result.warnings:
        lines.append(f"warning    {warning}")
    if timings:
        lines.append("timings    " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
        lines.append(f"           total {sum(result.timings.values()):.2f}s")
    return "\n".join(lines)
