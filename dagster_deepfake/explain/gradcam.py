"""Grad-CAM heat maps for the frames that drove a fake verdict.

The map is Grad-CAM (Selvaraju et al.) on the backbone's last feature map (timm's
`forward_features`: EfficientNet's `conv_head` → `bn2` + activation, the 1536 × 7 × 7 map of B3).
The target score is the fake logit of the window the frame sits in, with that window's flow and
the video's audio context held fixed, so the map shows which face regions pushed that window
towards "fake".

The arithmetic is `pytorch_grad_cam.GradCAM`'s, written out (`grad_cam`) so the maps can start
from feature maps already computed: scoring keeps them (`predict_video(keep_feature_maps=True)`),
and the gradient then runs through the pooling, temporal and fusion layers only. That saved the
stage's second backbone pass and the package's import of scikit-learn, SciPy and torchvision
(2.7 s of a 30 s clip's `analyze` on two cores, docs/ARCHITECTURE.md §7). tests/test_gradcam.py
checks the maps against the package's GradCAM with a full backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from dagster_deepfake.faces.align import similarity_matrix
from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.models.inference import autocast_context, default_bf16

FAKE_CLASS = 1


class _WindowScorer(nn.Module):
    """(F, C, h, w) feature maps of one window's faces → (1, 2) window logits, the rest held fixed."""

    def __init__(self, model: DeepfakeDetector, flow: torch.Tensor, audio, audio_valid) -> None:
        super().__init__()
        self.model, self.flow, self.audio, self.audio_valid = model, flow, audio, audio_valid

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        features = self.model.frame_encoder.pool(maps)[None]  # (1, F, D)
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=maps.device)
        out = self.model.forward_features(features, self.flow, mask, self.audio, self.audio_valid)
        return out.window_logits[:, 0]  # (1, 2)


@dataclass
class SaliencyMap:
    frame_id: int
    window_id: int
    p_fake: float
    cam: np.ndarray  # (224, 224) float32 in [0, 1], aligned-face coordinates


def _unit(image: np.ndarray) -> np.ndarray:
    image = image - np.min(image)
    return image / (1e-7 + np.max(image))


def grad_cam(maps: np.ndarray, grads: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, C, h, w) feature maps and their gradients → (F, H, W) maps in [0, 1], `size` = (W, H).

    `pytorch_grad_cam.GradCAM` for one target layer: channel weights are the spatial mean of the
    gradients, the map is the ReLU of the weighted sum, scaled to [0, 1], resized, scaled again.
    """
    weights = grads.mean(axis=(2, 3))
    cams = np.maximum((weights[:, :, None, None] * maps).sum(axis=1), 0)
    return np.float32([_unit(cv2.resize(np.float32(_unit(cam)), size)) for cam in cams])


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
    feature_maps: torch.Tensor | None = None,
) -> list[SaliencyMap]:
    """Grad-CAM for up to k distinct moments (`top_frames`); one backward pass per window involved.

    `feature_maps` (N, C, h, w): every face's last feature maps as scoring computed them; without
    them the chosen windows' maps are computed here, in the same precision as scoring's
    (`default_bf16`). The gradient is taken in fp32 either way.
    """
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
    size = (crops.shape[2], crops.shape[1])
    maps: list[SaliencyMap] = []
    for w in dict.fromkeys(w for w, _ in chosen):
        start, end = window_frames[w]
        if feature_maps is not None:
            window_maps = feature_maps[start:end]
        else:
            faces = model.preprocess_faces(crops[start:end]).to(device)
            with torch.inference_mode(), autocast_context(torch.device(device), default_bf16(device)):
                window_maps = model.frame_encoder.feature_maps(faces)
        # A copy made outside inference mode: the graph of the gradient starts at it.
        leaf = window_maps.to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        scorer = _WindowScorer(
            model, torch.tensor(flow[start:end], dtype=torch.float32, device=device)[None], audio, valid
        )
        (grads,) = torch.autograd.grad(scorer(leaf)[0, FAKE_CLASS], leaf)
        cams = grad_cam(leaf.detach().cpu().numpy(), grads.cpu().numpy(), size)
        for wid, i in chosen:
            if wid == w:
                maps.append(SaliencyMap(int(frame_ids[i]), w, float(window_probs[w]), cams[i - start]))
    return maps


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
