"""Temporal-consistency and detector losses on hand-computable inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dagster_deepfake.training.losses import detector_loss, temporal_consistency_loss


def logits_for(p_fake: list[list[float]]) -> torch.Tensor:
    """(B, W, 2) logits [0, log-odds] whose softmax gives exactly these P(fake)."""
    p = torch.tensor(p_fake, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=-1)


def test_zero_for_constant_predictions_per_video():
    # Each video constant, videos different from each other: pairs never cross videos.
    logits = logits_for([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert temporal_consistency_loss(logits, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_value_by_hand():
    logits = logits_for([[0.2, 0.8, 0.5]])
    loss = temporal_consistency_loss(logits, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx((0.6**2 + 0.3**2) / 2)


def test_mask_drops_padding_and_bridges_gaps():
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    logits = logits_for([[0.2, 0.4, 0.99, 0.01], [0.2, 0.99, 0.8, 0.8]])
    # Video 0: one pair (0.2, 0.4). Video 1: (0.2, 0.8) across the masked window, then (0.8, 0.8).
    expected = (0.2**2 + 0.6**2 + 0.0) / 3
    assert temporal_consistency_loss(logits, mask).item() == pytest.approx(expected)
    # Changing the masked windows changes nothing.
    garbage = logits.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 2, dtype=torch.float64) * 10
    assert temporal_consistency_loss(garbage, mask).item() == pytest.approx(expected)


def test_gradient_flows_to_valid_windows_only():
    logits = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
    loss = temporal_consistency_loss(logits, mask)
    assert loss.item() > 0
    loss.backward()
    grad_norm = logits.grad.abs().sum(-1)
    assert (grad_norm[mask] > 0).all()
    assert (grad_norm[~mask] == 0).all()


def test_no_pairs_gives_attached_zero():
    logits = torch.randn(2, 3, 2, requires_grad=True)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    loss = temporal_consistency_loss(logits, mask)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_shape_errors():
    with pytest.raises(ValueError):
        temporal_consistency_loss(torch.zeros(2, 3, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        temporal_consistency_loss(torch.zeros(2, 3, 2), torch.ones(2, 4, dtype=torch.bool))


def test_detector_loss_combines_parts():
    g = torch.Generator().manual_seed(1)
    video_logits = torch.randn(3, 2, generator=g, requires_grad=True)
    window_logits = torch.randn(3, 4, 2, generator=g, requires_grad=True)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    labels = torch.tensor([0, 1, 1])
    parts = detector_loss(video_logits, window_logits, mask, labels, lambda_tc=0.1)
    assert parts.classification.item() == pytest.approx(F.cross_entropy(video_logits, labels).item())
    assert parts.temporal.item() == pytest.approx(temporal_consistency_loss(window_logits, mask).item())
    assert parts.total.item() == pytest.approx(parts.classification.item() + 0.1 * parts.temporal.item())
    parts.total.backward()
    assert window_logits.grad.abs().sum() > 0 and video_logits.grad.abs().sum() > 0
    logged = parts.as_floats()
    assert set(logged) == {"loss", "loss_classification", "loss_temporal"}
    assert all(math.isfinite(v) for v in logged.values())
    no_tc = detector_loss(video_logits, window_logits, mask, labels, lambda_tc=0.0)
    assert no_tc.total.item() == pytest.approx(no_tc.classification.item())


def test_window_cross_entropy_uses_valid_windows_with_video_label():
    video_logits = torch.zeros(2, 2)
    window_logits = torch.tensor([[[0.0, 2.0], [0.0, 2.0]], [[1.0, 0.0], [50.0, -50.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    labels = torch.tensor([1, 0])
    parts = detector_loss(video_logits, window_logits, mask, labels, lambda_tc=0.0, window_ce_weight=0.5)
    valid_logits = torch.tensor([[0.0, 2.0], [0.0, 2.0], [1.0, 0.0]])
    window_ce = F.cross_entropy(valid_logits, torch.tensor([1, 1, 0]))
    assert parts.classification.item() == pytest.approx(math.log(2) + 0.5 * float(window_ce))
