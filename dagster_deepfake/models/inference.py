"""Single-video inference: batched backbone, optional bf16/AMP, calibrated P(fake) per window and video."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .detector import DeepfakeDetector, DetectorOutput
from .onnx_backbone import CpuBackbone, onnx_feature_maps, use_onnx_backbone

#: bf16 autocast on CPU is the default only where the CPU runs bf16 natively (AVX-512 BF16 /
#: AMX); emulated bf16 is slower than fp32. Measured on a random-init contract model, 150 faces
#: + 30 s audio: |P(fake) bf16 - fp32| = 1.4e-4, face features cosine >= 0.9998 (rel. error
#: 1.5 %). Re-check against this tolerance on a trained checkpoint before relying on it.
BF16_MAX_P_FAKE_SHIFT = 0.01

#: `keep_feature_maps` keeps the backbone's last feature maps for Grad-CAM only up to this size
#: (B3: 150 KB per face in bf16, so a 30 s clip's 150 faces take 22 MB); a longer video's heat
#: maps recompute the maps of their few windows instead (`explain.gradcam.compute_saliency`).
FEATURE_MAPS_MAX_BYTES = 256 * 1024 * 1024


#: CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: x86 AVX512-BF16 and AMX, Arm BF16.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively.

    oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) also says yes on plain
    AVX-512, where bf16 is emulated: measured on such a 2-core Xeon, the contract model took
    16.6 s in emulated bf16 against 11.7 s in fp32 for 150 faces + 30 s of audio. So the flags
    decide; without /proc/cpuinfo the answer is no (fp32, never the slow path).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return not NATIVE_BF16_CPU_FLAGS.isdisjoint(cpuinfo.split())


def select_device(requested: str = "auto") -> str:
    """`platform.device` → a torch device string: `auto` takes CUDA when present, else the CPU.

    Asking for CUDA where there is none is an error, never a silent fall-back to the CPU.
    """
    from dagster_deepfake.errors import DeviceUnavailableError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {requested!r} was configured but no CUDA device is available")
    return requested


def default_bf16(device: str | torch.device) -> bool:
    """Reduced precision by default: AMP on CUDA, bf16 autocast on CPUs with native bf16."""
    return torch.device(device).type == "cuda" or cpu_supports_bf16()


def precision_name(device: str | torch.device, reduced: bool) -> str:
    """What `autocast_context(device, reduced)` computes in: "fp32", "bf16" (CPU) or "amp" (CUDA)."""
    if not reduced:
        return "fp32"
    return "amp" if torch.device(device).type == "cuda" else "bf16"


@contextlib.contextmanager
def autocast_context(device: str | torch.device, enabled: bool) -> Iterator[None]:
    """`torch.autocast` for the device (bf16 on CPU, bf16/fp16 AMP on CUDA), or nothing."""
    device = torch.device(device)
    if not enabled:
        yield
        return
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    with torch.autocast(device.type, dtype=dtype):
        yield


@dataclass
class VideoPrediction:
    """Per-video result of `predict_video`. Probabilities are P(fake)."""

    p_fake: float  # calibrated: softmax(video_logits / T)[1]
    p_fake_raw: float  # T = 1
    p_fake_video_only: float  # calibrated, audio replaced by the no-audio embedding
    window_probs: np.ndarray  # (W,) calibrated P(fake) per window
    window_probs_video_only: np.ndarray  # (W,) calibrated P(fake) per window without audio
    window_logits: np.ndarray  # (W, 2) uncalibrated window logits (for intervals)
    window_frames: list[tuple[int, int]]  # [start, end) face indices of each window
    window_spans: list[tuple[float, float]] | None  # (start_s, end_s) when timestamps are given
    audio_used: bool
    temperature: float
    precision: str  # "fp32" | "bf16" | "amp"
    num_faces: int
    timings: dict[str, float] = field(default_factory=dict)
    backbone_runtime: str = "torch"  # "torch" | "onnxruntime" (models/onnx_backbone.py)
    output: DetectorOutput | None = field(default=None, repr=False)
    # (N, C, h, w) last feature maps of every face (`keep_feature_maps`), for Grad-CAM.
    feature_maps: torch.Tensor | None = field(default=None, repr=False)

    def label(self, threshold: float = 0.5) -> str:
        return "fake" if self.p_fake > threshold else "real"


def window_spans(
    timestamps: np.ndarray, window_frames: int, frame_rate: float | None = None
) -> list[tuple[float, float]]:
    """(start_s, end_s) of each window: first face's timestamp to last face's + one frame interval."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if frame_rate:
        interval = 1.0 / frame_rate
    elif len(timestamps) > 1:
        interval = float(np.median(np.diff(timestamps)))
    else:
        interval = 0.0
    spans = []
    for start in range(0, len(timestamps), window_frames):
        chunk = timestamps[start : start + window_frames]
        spans.append((float(chunk[0]), float(chunk[-1] + interval)))
    return spans


def _as_batch(
    array: np.ndarray | torch.Tensor | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    if array is None:
        return None
    return torch.as_tensor(np.array(array) if not isinstance(array, torch.Tensor) else array).to(
        device=device, dtype=dtype
    )[None]


def predict_video(
    model: DeepfakeDetector,
    crops: np.ndarray,
    flow: np.ndarray,
    waveform: np.ndarray | None = None,
    speech_mask: np.ndarray | None = None,
    *,
    timestamps: np.ndarray | None = None,
    frame_rate: float | None = None,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    batch_size: int = 30,
    bf16: bool | None = None,
    keep_output: bool = False,
    audio_features: np.ndarray | None = None,
    audio_valid: np.ndarray | None = None,
    keep_feature_maps: bool = False,
    cpu_backbone: CpuBackbone = "torch",
    model_dir: str | Path | None = None,
) -> VideoPrediction:
    """Classify one video from its aligned faces, flow summary and (optional) speech.

    Args:
        crops: (N, 224, 224, 3) uint8 RGB aligned faces, one per kept frame.
        flow: (N, 2) per-frame flow summary.
        waveform: (S,) float32 16 kHz mono, or None when the video has no audio.
        speech_mask: (S,) per sample or (T,) per frame VAD decisions; None = all speech.
        timestamps: (N,) seconds of each face's frame, for window time spans.
        temperature: calibration temperature T (> 0).
        bf16: reduced precision for the backbone and wav2vec2 (None = `default_bf16(device)`).
        keep_output: attach the raw `DetectorOutput` (features for explanations).
        audio_features, audio_valid: precomputed `encode_audio` output (T, 512) and (T,) for this
            video (the `audio_embeddings` asset); when given, the waveform is not re-encoded.
        keep_feature_maps: keep the backbone's last feature maps (`VideoPrediction.feature_maps`,
            at most `FEATURE_MAPS_MAX_BYTES`), so Grad-CAM needs no second backbone pass.
        cpu_backbone: `platform.cpu_backbone`; where `use_onnx_backbone` says so (fp32 on the CPU),
            the backbone's maps come from ONNX Runtime, its graph cached under `model_dir`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    count = len(crops)
    if count == 0:
        raise ValueError("predict_video needs at least one face crop")
    if len(flow) != count:
        raise ValueError(f"flow has {len(flow)} rows for {count} face crops")
    device = torch.device(device)
    use_reduced = default_bf16(device) if bf16 is None else bf16
    precision = precision_name(device, use_reduced)
    model = model.to(device).eval()
    onnx_maps = None
    if use_onnx_backbone(cpu_backbone, device, use_reduced):
        if model_dir is None:
            raise ValueError(f"cpu_backbone {cpu_backbone!r} needs a model_dir for the exported graph")
        onnx_maps = onnx_feature_maps(model.frame_encoder, model_dir, int(crops.shape[1]))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with torch.inference_mode():
        features, maps = [], []
        for start in range(0, count, batch_size):
            faces = model.preprocess_faces(crops[start : start + batch_size]).to(device)
            with autocast_context(device, use_reduced):
                batch_maps = (
                    model.frame_encoder.feature_maps(faces) if onnx_maps is None else onnx_maps(faces)
                )
                features.append(model.frame_encoder.pool(batch_maps).float())
            if keep_feature_maps and start == 0:  # the whole video's maps, judged by the first face's
                keep_feature_maps = batch_maps[0].nelement() * batch_maps.element_size() * count <= (
                    FEATURE_MAPS_MAX_BYTES
                )
            if keep_feature_maps:
                maps.append(batch_maps.cpu())
        frame_features = torch.cat(features)[None]  # (1, N, feature_dim)
        feature_maps = torch.cat(maps) if keep_feature_maps else None
        timings["faces_s"] = time.perf_counter() - started

        audio_started = time.perf_counter()
        precomputed = audio_features is not None and audio_valid is not None and len(audio_features) > 0
        audio = _as_batch(audio_features, torch.float32, device) if precomputed else None
        audio_valid = _as_batch(audio_valid, torch.bool, device) if precomputed else None
        if not precomputed and waveform is not None and len(waveform) > 0:
            wave = _as_batch(waveform, torch.float32, device)
            mask = _as_batch(speech_mask, torch.bool, device) if speech_mask is not None else None
            with autocast_context(device, use_reduced):
                audio, audio_valid = model.encode_audio(wave, mask)
            audio = audio.float()
        timings["audio_s"] = time.perf_counter() - audio_started

        flow_t = _as_batch(flow, torch.float32, device)
        frame_mask = torch.ones(1, count, dtype=torch.bool, device=device)
        output = model.forward_features(frame_features, flow_t, frame_mask, audio, audio_valid)
        window_only, video_only, _, _ = model.classify(
            output.video_features, output.window_mask, None, None, force_no_audio=True
        )
    timings["total_s"] = time.perf_counter() - started

    logits = output.video_logits[0].float().cpu()
    window_logits = output.window_logits[0].float().cpu()
    window_count = window_logits.shape[0]
    window_frames = model.config.temporal.window_frames
    return VideoPrediction(
        p_fake=float((logits / temperature).softmax(-1)[1]),
        p_fake_raw=float(logits.softmax(-1)[1]),
        p_fake_video_only=float((video_only[0].float().cpu() / temperature).softmax(-1)[1]),
        window_probs=(window_logits / temperature).softmax(-1)[:, 1].numpy(),
        window_probs_video_only=(window_only[0].float().cpu() / temperature).softmax(-1)[:, 1].numpy(),
        window_logits=window_logits.numpy(),
        window_frames=[(w * window_frames, min(count, (w + 1) * window_frames)) for w in range(window_count)],
        window_spans=window_spans(timestamps, window_frames, frame_rate) if timestamps is not None else None,
        audio_used=bool(output.audio_used[0]),
        temperature=temperature,
        precision=precision,
        num_faces=count,
        timings=timings,
        backbone_runtime="torch" if onnx_maps is None else "onnxruntime",
        output=output if keep_output else None,
        feature_maps=feature_maps,
    )
