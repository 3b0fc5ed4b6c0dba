"""Grad-CAM from feature maps (explain/gradcam.py, issue 20) against the `grad-cam` package's
GradCAM run the usual way: the whole backward pass from the window logit through the backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dagster_deepfake.explain.gradcam import FAKE_CLASS, compute_saliency
from dagster_deepfake.models import build_detector, get_model_config
from dagster_deepfake.models.inference import predict_video

WINDOWS = [(0, 5), (5, 10), (10, 15)]


class _FacesToWindowLogits(nn.Module):
    """The package's way in: (F, 3, H, W) faces → (1, 2) window logits."""

    def __init__(self, model, flow) -> None:
        super().__init__()
        self.model, self.flow = model, flow

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        features = self.model.frame_encoder(faces)[None]
        mask = torch.ones(features.shape[:2], dtype=torch.bool)
        return self.model.forward_features(features, self.flow, mask).window_logits[:, 0]


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = np.exp(-(((yy - 30) / 16.0) ** 2 + ((xx - 33) / 12.0) ** 2))[..., None]
    crops = np.clip(
        255 * (blob * rng.uniform(0.4, 1.0, (15, 1, 1, 3)) + rng.normal(0, 0.1, (15, 64, 64, 3))), 0, 255
    ).astype(np.uint8)
    return crops, rng.gamma(2.0, 0.5, (15, 2)).astype(np.float32)


def _package_maps(model, crops, flow, start, end):
    faces = model.preprocess_faces(crops[start:end])
    scorer = _FacesToWindowLogits(model, torch.tensor(flow[start:end])[None])
    with GradCAM(model=scorer, target_layers=[model.frame_encoder.backbone.bn2]) as cam:
        return cam(input_tensor=faces, targets=[ClassifierOutputTarget(FAKE_CLASS)] * (end - start))


def _saliency(model, crops, flow, **kwargs):
    return compute_saliency(
        model,
        crops,
        flow,
        np.arange(15),
        np.array([0.2, 0.9, 0.6]),
        WINDOWS,
        timestamps=np.arange(15) / 5.0,
        k=3,
        **kwargs,
    )


def test_maps_equal_the_packages_gradcam_in_fp32(tiny, clip, monkeypatch):
    from dagster_deepfake.explain import gradcam

    monkeypatch.setattr(gradcam, "default_bf16", lambda device: False)
    crops, flow = clip
    maps = _saliency(tiny, crops, flow)
    assert [m.window_id for m in maps] == [1, 2, 0]
    for m in maps:
        start, end = WINDOWS[m.window_id]
        reference = _package_maps(tiny, crops, flow, start, end)[m.frame_id - start]
        assert m.cam.shape == reference.shape == (64, 64)
        assert np.allclose(m.cam, reference, atol=1e-5), np.abs(m.cam - reference).max()
        assert m.cam.max() > 0.99 and m.cam.min() < 0.01  # a real map, scaled to [0, 1]


@pytest.mark.parametrize("bf16", [False, True])
def test_maps_kept_by_scoring_give_the_recomputed_maps(tiny, clip, bf16, monkeypatch):
    """Scoring's kept maps (bf16 where the CPU has it) against the fp32 recomputed reference."""
    from dagster_deepfake.explain import gradcam

    crops, flow = clip
    scored = predict_video(tiny, crops, flow, bf16=bf16, batch_size=4, keep_feature_maps=True)
    assert scored.feature_maps is not None and scored.feature_maps.shape[0] == 15
    kept = _saliency(tiny, crops, flow, feature_maps=scored.feature_maps)
    monkeypatch.setattr(gradcam, "default_bf16", lambda device: False)
    reference = _saliency(tiny, crops, flow)
    for a, b in zip(kept, reference, strict=True):
        assert (a.frame_id, a.window_id) == (b.frame_id, b.window_id)
        if bf16:  # reduced precision moves the map a little, never its shape
            assert np.corrcoef(a.cam.ravel(), b.cam.ravel())[0, 1] > 0.98
            assert np.abs(a.cam - b.cam).max() < 0.1
        else:
            assert np.allclose(a.cam, b.cam, atol=1e-5)


def test_feature_maps_are_not_kept_beyond_the_budget(tiny, clip, monkeypatch):
    from dagster_deepfake.models import inference

    crops, flow = clip
    monkeypatch.setattr(inference, "FEATURE_MAPS_MAX_BYTES", 1024)
    scored = predict_video(tiny, crops, flow, bf16=False, keep_feature_maps=True)
    assert scored.feature_maps is None
    assert predict_video(tiny, crops, flow, bf16=False).feature_maps is None  # only when asked
