"""The per-video stages as plain functions: in-memory in, in-memory out (docs/ARCHITECTURE.md).

There is one function per stage. `dagster_deepfake.analyze` chains them in one process (the
video is decoded once); each Dagster asset loads its inputs with `storage.stage_io`, calls the
same function and persists its output. Neither path computes anything the other does not,
so their result documents agree (tests/test_parity.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dagster_deepfake.config import Settings
from dagster_deepfake.errors import InvalidVideoError, NoFaceFoundError
from dagster_deepfake.faces.extract import FaceExtraction
from dagster_deepfake.flow import FlowFeatures
from dagster_deepfake.media.frames import FrameSampler, SampledFrame
from dagster_deepfake.media.probe import VideoProbe
from dagster_deepfake.media.vad import SpeechActivity
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file

if TYPE_CHECKING:
    import torch

    from dagster_deepfake.models.checkpoint import CheckpointManifest
    from dagster_deepfake.models.detector import DeepfakeDetector
    from dagster_deepfake.scoring import ScoredVideo
    from dagster_deepfake.storage.artifacts import ArtifactStore

Members = list[tuple["DeepfakeDetector", "CheckpointManifest"]]


# -- raw_video ----------------------------------------------------------------------------------


@dataclass
class ProbedVideo:
    """A video that passed the probe gate: its partition key, hash, probe and scope warnings."""

    video_id: str
    sha256: str
    probe: VideoProbe
    warnings: list[str]


def probe_stage(
    path: str | os.PathLike[str], settings: Settings, *, sha256: str | None = None
) -> ProbedVideo:
    """Probe and validate a local file (raises InvalidVideoError with a one-line reason)."""
    from dagster_deepfake.media.probe import probe_video, validate_probe

    probe = probe_video(path, max_pixels=settings.platform.max_pixels)
    warnings = validate_probe(probe, **scope_limits(settings))
    sha = sha256 or sha256_file(str(path))
    return ProbedVideo(partition_key_for_sha256(sha), sha, probe, warnings)


def scope_limits(settings: Settings) -> dict:
    """The limits every path applies to a probed video (`media.probe.validate_probe`'s keywords)."""
    return {
        "min_height": settings.data.min_height,
        "max_height": settings.data.max_height,
        "max_duration_seconds": settings.platform.max_duration_seconds,
        "max_pixels": settings.platform.max_pixels,
    }


def ingest_stage(
    store: ArtifactStore,
    video_id: str,
    source_uri: str,
    file_name: str,
    settings: Settings,
    *,
    storage_options: dict | None = None,
) -> ProbedVideo:
    """Copy an upload into the artifact store, check that its bytes are the partition's, probe it."""
    from dagster_deepfake.storage.bucket import open_uri

    rel = layout.source_rel(video_id, file_name)
    with tempfile.TemporaryDirectory(prefix="ddf-ingest-") as tmp:
        local = os.path.join(tmp, "upload" + os.path.splitext(rel)[1])
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
        probed = probe_stage(local, settings, sha256=sha)
        store.put_file(local, rel)
    probed.probe = VideoProbe(**{**probed.probe.to_dict(), "path": store.full_url(rel)})
    return probed


# -- frames / faces / flow ----------------------------------------------------------------------


def frames_stage(path: str | os.PathLike[str], probe: VideoProbe, settings: Settings) -> FrameSampler:
    """Frames at `data.frame_rate`, decoded lazily (iterate once; warnings land on the sampler)."""
    from dagster_deepfake.media.frames import sample_frames

    return sample_frames(
        path,
        probe,
        settings.data.frame_rate,
        max_side=settings.data.max_height,
        max_pixels=settings.platform.max_pixels,
    )


def faces_stage(frames: Iterable[SampledFrame], settings: Settings, video_ref: str) -> FaceExtraction:
    """RetinaFace on every frame, alignment of single faces; raises NoFaceFoundError if none is kept.

    With `data.faces.max_faces` > 1 every face is aligned and linked into tracks
    (`extraction.tracks`, faces/tracks.py); then at least one track must be long enough to score.
    """
    from dagster_deepfake.faces import create_detector, extract_faces

    cfg = settings.data.faces
    extraction = extract_faces(frames, create_detector(cfg), cfg)
    if extraction.num_kept == 0:
        error = NoFaceFoundError(
            video_ref,
            f"no face found: none of {extraction.num_frames} sampled frames held exactly one face "
            f"(skipped: {_nonzero(extraction.skip_counts)})",
        )
        error.extraction = extraction  # the per-frame skip reasons, for whoever keeps a record
        raise error
    if extraction.tracks is not None and not extraction.tracks.scorable_ids:
        # Faces as tracks (max_faces > 1): each track is scored alone, so one must fill a window.
        error = NoFaceFoundError(
            video_ref,
            f"no face track long enough to score: {len(extraction.tracks.track_ids)} track(s), none with "
            f"{cfg.tracking.min_frames} faces (data.faces.tracking.min_frames)",
        )
        error.extraction = extraction
        raise error
    return extraction


def flow_stage(
    crops: np.ndarray, frame_ids: np.ndarray, settings: Settings, *, return_fields: bool = False
) -> FlowFeatures:
    """Farneback summary per face; with `data.optical_flow_enabled: false` both inputs are zero."""
    if not settings.data.optical_flow_enabled:
        count = len(frame_ids)
        ids = np.asarray(frame_ids, dtype=np.int64)
        return FlowFeatures(
            frame_ids=ids,
            features=np.zeros((count, 2), np.float32),
            has_predecessor=np.arange(count) > 0,
            gaps=np.diff(ids, prepend=ids[:1]).astype(np.int32) if count else np.zeros(0, np.int32),
        )
    from dagster_deepfake.flow import compute_flow_features

    return compute_flow_features(crops, frame_ids, return_fields=return_fields)


# -- audio ----------------------------------------------------------------------------------------


@dataclass
class AudioEvidence:
    """The audio stage's output: int16 PCM (None without an audio track) and its speech segments."""

    pcm: np.ndarray | None
    speech: SpeechActivity
    sample_rate: int = 16000


@dataclass
class AudioInput:
    """What the audio branch consumes: float32 waveform (S,) in [-1, 1] and a per-sample speech mask."""

    waveform: np.ndarray | None
    speech_mask: np.ndarray | None
    segments: list[tuple[float, float]] = field(default_factory=list)

    @property
    def has_speech(self) -> bool:
        return self.waveform is not None and bool(self.segments)

    @classmethod
    def from_pcm(cls, pcm: np.ndarray | None, mask_20ms: np.ndarray, segments: list) -> AudioInput:
        if pcm is None:
            return cls(None, None, segments)
        return cls(pcm.astype(np.float32) / 32768.0, speech_sample_mask(mask_20ms, len(pcm)), segments)


def audio_stage(path: str | os.PathLike[str], probe: VideoProbe, settings: Settings) -> AudioEvidence:
    """16 kHz mono PCM and speech segments; no audio track is normal (pcm None, no speech).

    With `data.vad_enabled: false` the whole track counts as speech, so it is all encoded.
    """
    from dagster_deepfake.media.audio import extract_audio
    from dagster_deepfake.media.vad import detect_speech

    cfg = settings.data.audio
    # Decoding stops a little past the longest video allowed, whatever the audio stream claims.
    limit = settings.platform.max_duration_seconds + 60
    track = (
        extract_audio(path, sample_rate=cfg.sample_rate, has_audio=True, max_seconds=limit)
        if probe.has_audio
        else None
    )
    if track is None:
        return AudioEvidence(None, SpeechActivity.empty(probe.duration), cfg.sample_rate)
    if settings.data.vad_enabled:
        speech = detect_speech(track, aggressiveness=cfg.vad_aggressiveness, frame_ms=cfg.vad_frame_ms)
    else:
        whole = [(0.0, round(track.duration, 3))] if track.duration > 0 else []
        speech = SpeechActivity(duration=track.duration, segments=whole)
    return AudioEvidence(track.pcm, speech, cfg.sample_rate)


# -- model ----------------------------------------------------------------------------------------


@dataclass
class AudioEmbeddings:
    """wav2vec2 features projected to the fusion width: (T, D) float32 and their (T,) speech mask."""

    features: np.ndarray
    valid: np.ndarray

    @property
    def used(self) -> bool:
        return len(self.features) > 0 and bool(self.valid.any())


def audio_embeddings_stage(
    model: DeepfakeDetector, audio_in: AudioInput, device: str, *, bf16: bool | None = None
) -> AudioEmbeddings:
    """Encode the speech once (same precision policy as the face backbone: `default_bf16`)."""
    import torch

    from dagster_deepfake.models.inference import autocast_context, default_bf16

    dim = model.config.audio.projection_dim
    if not audio_in.has_speech:
        return AudioEmbeddings(np.zeros((0, dim), np.float32), np.zeros(0, bool))
    use_reduced = default_bf16(device) if bf16 is None else bf16
    model = model.to(device).eval()
    with torch.inference_mode(), autocast_context(torch.device(device), use_reduced):
        wave = torch.from_numpy(audio_in.waveform)[None].to(device)
        mask = torch.from_numpy(audio_in.speech_mask)[None].to(device)
        feats, ok = model.encode_audio(wave, mask)
    return AudioEmbeddings(feats[0].float().cpu().numpy(), ok[0].cpu().numpy().astype(bool))


def predictions_stage(
    members: Members,
    crops: np.ndarray,
    flow: np.ndarray,
    timestamps: np.ndarray,
    embeddings: list[AudioEmbeddings],
    settings: Settings,
    device: str,
    *,
    keep_feature_maps: bool = False,
) -> ScoredVideo:
    """Every ensemble member on the video, each with its own audio embeddings; calibrated P(fake).

    The result records what the verdict rests on (`provenance`: every member's checkpoint and the
    verdict's settings), so the document says it whatever host builds it later.
    `keep_feature_maps`: keep the first member's backbone maps for `saliency_stage` in the same process."""
    from dagster_deepfake.provenance import provenance_record
    from dagster_deepfake.scoring import score_video

    scored = score_video(
        members,
        crops,
        flow,
        timestamps,
        frame_rate=settings.data.frame_rate,
        threshold=settings.model.classification.threshold,
        device=device,
        audio=[(e.features, e.valid) if e.used else (None, None) for e in embeddings],
        keep_feature_maps=keep_feature_maps,
        cpu_backbone=settings.platform.cpu_backbone,
        model_dir=settings.platform.model_dir,
    )
    runtime = {"device": device, "precision": scored.precision, "backbone": scored.backbone_runtime}
    scored.provenance = provenance_record([m for _, m in members], settings, runtime)
    return scored


@dataclass
class WindowScores:
    """Per 1-second window: P(fake) with and without audio, time span and face index range."""

    p_fake: np.ndarray
    p_fake_video_only: np.ndarray
    spans: list[tuple[float, float]]
    frames: list[tuple[int, int]]

    @classmethod
    def from_scored(cls, scored: ScoredVideo) -> WindowScores:
        return cls(
            np.asarray(scored.window_probs, np.float64),
            np.asarray(scored.window_probs_video_only, np.float64),
            list(scored.window_spans),
            list(scored.window_frames),
        )


# -- saliency -------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """Grad-CAM heat maps (PNG bytes by file name) for the top frames, audio anomalies, agreement."""

    anomalous_frames: list[dict]
    heat_maps: dict[str, bytes]
    audio_anomalies: list[dict]
    modality_agreement: float | None

    def to_json_dict(self) -> dict:
        return {
            "anomalous_frames": self.anomalous_frames,
            "audio_anomalies": self.audio_anomalies,
            "modality_agreement": self.modality_agreement,
        }


def saliency_stage(
    model: DeepfakeDetector,
    crops: np.ndarray,
    frame_ids: np.ndarray,
    timestamps: np.ndarray,
    flow: np.ndarray,
    windows: WindowScores,
    embeddings: AudioEmbeddings,
    speech_segments: list[tuple[float, float]],
    frame_image: Callable[[int], np.ndarray],
    frame_landmarks: Callable[[int], np.ndarray],
    settings: Settings,
    device: str,
    *,
    feature_maps: torch.Tensor | None = None,
) -> Explanation:
    """Heat maps of the top-k frames (face and whole frame), audio anomalies, modality agreement.

    `frame_image(frame_id)` returns the sampled frame (RGB); `frame_landmarks(frame_id)` its five
    landmarks, to map the face's heat map back onto the frame. `feature_maps`: the faces' backbone
    maps kept by scoring (`predictions_stage(keep_feature_maps=True)`), else recomputed per window.
    """
    from dagster_deepfake.explain.agreement import modality_agreement
    from dagster_deepfake.explain.anomalies import find_audio_anomalies
    from dagster_deepfake.explain.gradcam import cam_to_frame, compute_saliency, overlay
    from dagster_deepfake.media.images import encode_png

    maps = compute_saliency(
        model,
        crops,
        flow,
        frame_ids,
        windows.p_fake,
        windows.frames,
        audio_features=embeddings.features if embeddings.used else None,
        audio_valid=embeddings.valid if embeddings.used else None,
        timestamps=timestamps,
        min_gap_seconds=settings.explain.min_gap_seconds,
        k=settings.explain.top_k_frames,
        device=device,
        feature_maps=feature_maps,
    )
    rows, heat_maps = [], {}
    for m in maps:
        index = int(np.flatnonzero(frame_ids == m.frame_id)[0])
        face_name, frame_name = layout.saliency_names(m.frame_id)
        heat_maps[face_name] = encode_png(overlay(crops[index], m.cam))
        frame_rgb = frame_image(m.frame_id)
        frame_cam = cam_to_frame(m.cam, frame_landmarks(m.frame_id), frame_rgb.shape[:2])
        heat_maps[frame_name] = encode_png(overlay(frame_rgb, frame_cam))
        rows.append(
            {
                "frame_id": m.frame_id,
                "timestamp": float(timestamps[index]),
                "window_id": m.window_id,
                "confidence": m.p_fake,
                "face_png": face_name,
                "frame_png": frame_name,
            }
        )
    window_flow = np.array([float(flow[a:b, 0].mean()) if b > a else 0.0 for a, b in windows.frames])
    anomalies = find_audio_anomalies(
        window_starts=np.array([a for a, _ in windows.spans]),
        window_ends=np.array([b for _, b in windows.spans]),
        p_audio_visual=windows.p_fake,
        p_video_only=windows.p_fake_video_only,
        window_flow=window_flow,
        speech_segments=speech_segments,
    )
    agreement = modality_agreement(windows.p_fake, windows.p_fake_video_only, has_speech=embeddings.used)
    return Explanation(rows, heat_maps, [a.to_dict() for a in anomalies], agreement)


def speech_sample_mask(mask_20ms: np.ndarray, n_samples: int, sample_rate: int = 16000) -> np.ndarray:
    """Expand VAD's 20 ms frame mask (wav2vec2's frame grid) to one bool per sample."""
    hop = sample_rate // 50
    mask = np.repeat(np.asarray(mask_20ms, dtype=bool), hop)[:n_samples]
    return np.pad(mask, (0, max(0, n_samples - len(mask))))


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}
