"""Grad-CAM's graph starts at the target layer (explain/gradcam.py, issue 20): the heat maps are
the ones of the full backward pass down to the input pixels, which it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from dagster_deepfake.explain.gradcam import FAKE_CLASS, _WindowScorer, compute_saliency, target_layer
from dagster_deepfake.models import build_detector, get_model_config


@pytest.fixture(scope="module")
def tiny():
    model, _ = build_detector(get_model_config("tiny"), pretrained=False, seed=0)
    return model.eval()


def _full_backward(model, crops, flow, start, end):
    """The former way: the input requires grad, so the backward runs through the whole backbone."""
    faces = model.preprocess_faces(crops[start:end]).requires_grad_(True)
    scorer = _WindowScorer(model, torch.tensor(flow[start:end])[None], None, None)
    with GradCAM(model=scorer, target_layers=[target_layer(model)]) as cam:
        return cam(input_tensor=faces, targets=[ClassifierOutputTarget(FAKE_CLASS)] * (end - start))


def test_heat_maps_equal_the_full_backward_pass(tiny):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = np.exp(-(((yy - 30) / 16.0) ** 2 + ((xx - 33) / 12.0) ** 2))[..., None]
    crops = np.clip(
        255 * (blob * rng.uniform(0.4, 1.0, (15, 1, 1, 3)) + rng.normal(0, 0.1, (15, 64, 64, 3))), 0, 255
    )
    crops = crops.astype(np.uint8)
    flow = rng.gamma(2.0, 0.5, (15, 2)).astype(np.float32)
    windows = [(0, 5), (5, 10), (10, 15)]
    maps = compute_saliency(
        tiny,
        crops,
        flow,
        np.arange(15),
        np.array([0.2, 0.9, 0.6]),
        windows,
        timestamps=np.arange(15) / 5.0,
        k=3,
    )
    assert [m.window_id for m in maps] == [1, 2, 0]
    for m in maps:
        start, end = windows[m.window_id]
        reference = _full_backward(tiny, crops, flow, start, end)[m.frame_id - start]
        assert m.cam.shape == reference.shape
        assert np.allclose(m.cam, reference, atol=1e-5), np.abs(m.cam - reference).max()
        assert m.cam.max() > 0  # a real map, not an empty one
    # The hook is gone afterwards: a plain forward keeps its graph to the input.
    faces = tiny.preprocess_faces(crops[:5]).requires_grad_(True)
    tiny.frame_encoder(faces).sum().backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0
