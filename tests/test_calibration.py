"""Temperature scaling recovers a known over/under-confidence and never changes the ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dagster_deepfake.training.calibration import T_MAX, apply_temperature, fit_temperature


@pytest.fixture(scope="module")
def calibrated_margins() -> tuple[np.ndarray, np.ndarray]:
    """Log-odds z and labels drawn from Bernoulli(sigmoid(z)): calibrated by construction."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, size=20_000)
    labels = (rng.random(z.size) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return z, labels


def test_recovers_overconfidence(calibrated_margins):
    z, labels = calibrated_margins
    fit = fit_temperature(5.0 * z, labels)
    assert fit.temperature == pytest.approx(5.0, rel=0.08)
    assert fit.nll_after < fit.nll_before
    assert fit.ece_after < fit.ece_before
    assert fit.ece_after < 0.03
    assert not fit.at_bound
    assert fit.n == z.size


def test_recovers_underconfidence(calibrated_margins):
    z, labels = calibrated_margins
    fit = fit_temperature(0.5 * z, labels)
    assert fit.temperature == pytest.approx(0.5, rel=0.08)
    assert fit.nll_after < fit.nll_before


def test_logit_pairs_equal_margins(calibrated_margins):
    # softmax([a, a + m] / T)[1] = sigmoid(m / T): any per-row offset must not matter.
    z, labels = calibrated_margins
    offset = np.random.default_rng(1).normal(0, 3, size=z.size)
    pairs = np.stack([offset, offset + 5.0 * z], axis=1)
    assert fit_temperature(pairs, labels).temperature == pytest.approx(
        fit_temperature(5.0 * z, labels).temperature, rel=1e-6
    )
    assert fit_temperature(torch.as_tensor(pairs, dtype=torch.float32), labels).temperature == pytest.approx(
        fit_temperature(pairs, labels).temperature, rel=1e-4
    )


def test_apply_temperature_is_softmax_of_scaled_logits_and_keeps_ranking():
    logits = torch.randn(50, 2, generator=torch.Generator().manual_seed(3)) * 4
    for temperature in (0.3, 1.0, 7.0):
        expected = torch.softmax(logits.double() / temperature, dim=1)[:, 1].numpy()
        p = apply_temperature(logits, temperature)
        assert p == pytest.approx(expected, abs=1e-12)
    labels = np.random.default_rng(3).integers(0, 2, size=50)
    assert roc_auc_score(labels, apply_temperature(logits, 7.0)) == pytest.approx(
        roc_auc_score(labels, apply_temperature(logits, 1.0))
    )
    assert np.array_equal(apply_temperature(logits, 7.0) > 0.5, apply_temperature(logits, 1.0) > 0.5)
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_temperature_stays_in_bounds(calibrated_margins):
    z, labels = calibrated_margins
    fit = fit_temperature(100.0 * z, labels)  # would need T = 100
    assert fit.temperature == pytest.approx(T_MAX, rel=0.02)
    assert fit.at_bound
    assert fit.nll_after < fit.nll_before


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros(4), [0, 1, 0])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros(2), [0, 2])
