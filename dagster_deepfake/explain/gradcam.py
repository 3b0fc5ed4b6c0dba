"""Grad-CAM heat maps for the frames that drove a fake verdict (the `grad-cam` package).

The target layer is EfficientNet's last convolutional stage (`conv_head` → `bn2` + activation,
the 1536-channel map of B3). The target score is the fake logit of the window the frame sits in,
with that window's flow and the video's audio context held fixed, so the map shows which face
regions pushed that window towards "fake".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dagster_deepfake.faces.align import similarity_matrix
from dagster_deepfake.models.detector import DeepfakeDetector

FAKE_CLASS = 1


def target_layer(model: DeepfakeDetector) -> nn.Module:
    backbone = model.frame_encoder.backbone
    for name in ("bn2", "conv_head"):
        if hasattr(backbone, name):
            return getattr(backbone, name)
    raise ValueError(f"no last convolutional stage found on {type(backbone).__name__}")


class _WindowScorer(nn.Module):
    """(F, 3, H, W) faces of one window → (1, 2) window logits, everything else held fixed."""

    def __init__(self, model: DeepfakeDetector, flow: torch.Tensor, audio, audio_valid) -> None:
        super().__init__()
        self.model, self.flow, self.audio, self.audio_valid = model, flow, audio, audio_valid

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        features = self.model.frame_encoder(faces)[None]  # (1, F, D)
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=faces.device)
        out = self.model.forward_features(features, self.flow, mask, self.audio, self.audio_valid)
        return out.window_logits[:, 0]  # (1, 2)


@dataclass
class SaliencyMap:
    frame_id: int
    window_id: int
    p_fake: float
    cam: np.ndarray  # (224, 224) float32 in [0, 1], aligned-face coordinates


def top_frames(
    window_probs: np.ndarray,
    window_frames: list[tuple[int, int]],
    k: int,
    timestamps: np.ndarray,
    min_gap_seconds: float = 1.0,
) -> list[tuple[int, int]]:
    """(window_id, face index) of up to k distinct moments: one frame from each of the most
    suspicious windows, every pick at least `min_gap_seconds` from the others (docs/CONFIG.md
    "Heat maps: distinct moments").

    A window's P(fake) is one number for all its frames, so the frame taken is the one nearest
    the window's middle among those far enough from earlier picks; a window with none is passed
    over. Fewer than k windows (a short clip) give fewer than k frames, never one moment twice.
    """
    times = np.asarray(timestamps, dtype=np.float64)
    picked: list[tuple[int, int]] = []
    for w in np.argsort(-np.asarray(window_probs), kind="stable"):
        if len(picked) == k:
            break
        start, end = window_frames[int(w)]
        middle = (start + end - 1) / 2
        for i in sorted(range(start, end), key=lambda i: (abs(i - middle), i)):
            # 1 µs of slack: frames exactly one gap apart (0.4 s and 1.4 s) are far enough.
            if all(abs(times[i] - times[j]) >= min_gap_seconds - 1e-6 for _, j in picked):
                picked.append((int(w), i))
                break
    return picked


def compute_saliency(
    model: DeepfakeDetector,
    crops: np.ndarray,
    flow: np.ndarray,
    frame_ids: np.ndarray,
    window_probs: np.ndarray,
    window_frames: list[tuple[int, int]],
    *,
    audio_features: np.ndarray | None = None,
    audio_valid: np.ndarray | None = None,
    timestamps: np.ndarray,
    min_gap_seconds: float = 1.0,
    k: int = 5,
    device: str = "cpu",
) -> list[SaliencyMap]:
    """Grad-CAM for up to k distinct moments (`top_frames`); one backward pass per window involved."""
    model = model.to(device).eval()
    audio = (
        torch.as_tensor(audio_features, dtype=torch.float32, device=device)[None]
        if audio_features is not None
        else None
    )
    valid = (
        torch.as_tensor(audio_valid, dtype=torch.bool, device=device)[None]
        if audio_valid is not None
        else None
    )
    chosen = top_frames(window_probs, window_frames, k, timestamps, min_gap_seconds)
    maps: list[SaliencyMap] = []
    layer = target_layer(model)
    # Grad-CAM needs the gradient at the target layer only. The graph starts there (its output is
    # detached and made a leaf), so the backward pass runs through the head and the window's
    # temporal/fusion blocks, not down through the whole backbone to the input pixels: that
    # backward was over half of a 30 s clip's saliency stage (issue 20). The maps are the same
    # (tests/test_gradcam_leaf.py).
    handle = layer.register_forward_hook(_graph_starts_here, prepend=True)
    try:
        for w in dict.fromkeys(w for w, _ in chosen):
            start, end = window_frames[w]
            faces = model.preprocess_faces(crops[start:end]).to(device)
            scorer = _WindowScorer(
                model, torch.tensor(flow[start:end], dtype=torch.float32, device=device)[None], audio, valid
            )
            with GradCAM(model=scorer, target_layers=[layer]) as cam:
                # Every frame of the window feeds one window logit: the same target for each frame.
                grayscale = cam(
                    input_tensor=faces, targets=[ClassifierOutputTarget(FAKE_CLASS)] * (end - start)
                )
            for wid, i in chosen:
                if wid == w:
                    maps.append(
                        SaliencyMap(
                            int(frame_ids[i]),
                            w,
                            float(window_probs[w]),
                            grayscale[i - start].astype(np.float32),
                        )
                    )
    finally:
        handle.remove()
    return maps


def _graph_starts_here(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on the target layer: its output as a new leaf that requires grad."""
    return output.detach().requires_grad_(True)


def overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heat map (JET) blended over an RGB image of the same size."""
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.uint8((1 - alpha) * image_rgb + alpha * heat)


def cam_to_frame(cam: np.ndarray, landmarks: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Map an aligned-face CAM back onto the full frame with the inverse of the alignment transform."""
    inverse = cv2.invertAffineTransform(
        similarity_matrix(np.asarray(landmarks, np.float32).reshape(5, 2), cam.shape[0])
    )
    h, w = frame_shape
    return cv2.warpAffine(cam, inverse, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
