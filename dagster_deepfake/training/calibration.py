"""Temperature scaling (Guo et al., 2017), fitted on the validation set.

One scalar T > 0 divides the logits before the softmax: ``p = softmax(z / T)``. T > 1 softens
an over-confident model, T < 1 sharpens an under-confident one. It never changes which class
wins at 0.5 nor the ranking of videos, so AUC and TPR@FPR are untouched; only the meaning of
the probability (and the FPR at a fixed threshold other than 0.5) improves.

Logits come in either of two forms:

* ``(n, 2)``: the detector's pair ``[real, fake]``. ``softmax(z / T)[:, 1]`` equals
  ``sigmoid((z_fake - z_real) / T)``, so the pair is reduced to its margin.
* ``(n,)``: already a single fake-vs-real log-odds (margin); ``p = sigmoid(z / T)``.

T is found by minimising the negative log-likelihood over log T with torch's L-BFGS. Log T
is mapped through a sigmoid into ``[log T_min, log T_max]`` (default [0.05, 20]) so T stays
positive and finite even on separable data, where the unbounded optimum is T → 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from pydantic import BaseModel

from dagster_deepfake.training.metrics import expected_calibration_error

T_MIN = 0.05
T_MAX = 20.0


class TemperatureFit(BaseModel):
    """The fitted temperature and what it did on the data it was fitted on."""

    temperature: float
    nll_before: float
    """Mean binary NLL at T = 1."""
    nll_after: float
    """Mean binary NLL at the fitted T."""
    ece_before: float
    ece_after: float
    n: int
    at_bound: bool = False
    """True when T ended at T_min or T_max: the data asked for more than the sane range."""


def logit_margin(logits: ArrayLike | torch.Tensor) -> torch.Tensor:
    """Fake-vs-real log-odds, shape (n,), float64, from (n, 2) pairs or (n,) margins."""
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    z = z.detach().to(torch.float64)
    if z.ndim == 2 and z.shape[1] == 2:
        return z[:, 1] - z[:, 0]
    if z.ndim == 1:
        return z
    raise ValueError(f"logits must have shape (n, 2) [real, fake] or (n,), got {tuple(z.shape)}")


def apply_temperature(logits: ArrayLike | torch.Tensor, temperature: float) -> np.ndarray:
    """P(fake) after temperature scaling, shape (n,), float64 numpy.

    ``(n, 2)`` logits are read as ``[real, fake]``: the result is ``softmax(z / T)[:, 1]``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.sigmoid(logit_margin(logits) / temperature).numpy()


def _nll(margin: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(margin / temperature, labels)


def fit_temperature(
    logits: ArrayLike | torch.Tensor,
    labels: ArrayLike,
    *,
    max_iter: int = 200,
    t_min: float = T_MIN,
    t_max: float = T_MAX,
) -> TemperatureFit:
    """Fit T by minimising the NLL of `labels` (0 real, 1 fake) under ``softmax(logits / T)``."""
    if not 0 < t_min < 1 < t_max:
        raise ValueError("need 0 < t_min < 1 < t_max")
    margin = logit_margin(logits)
    y_np = np.asarray(labels).reshape(-1)
    if y_np.shape[0] != margin.shape[0]:
        raise ValueError(f"logits and labels differ in length: {margin.shape[0]} vs {y_np.shape[0]}")
    if margin.numel() == 0:
        raise ValueError("cannot fit a temperature on zero samples")
    if not np.isin(y_np, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    y = torch.as_tensor(y_np, dtype=torch.float64)

    log_lo, log_hi = math.log(t_min), math.log(t_max)

    def temperature_of(u: torch.Tensor) -> torch.Tensor:
        return torch.exp(log_lo + (log_hi - log_lo) * torch.sigmoid(u))

    # Start at T = 1: u such that the sigmoid lands on log 1 = 0.
    start = -log_lo / (log_hi - log_lo)
    u = torch.tensor(math.log(start / (1 - start)), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = _nll(margin, y, temperature_of(u))
        loss.backward()
        return loss

    optimiser.step(closure)
    temperature = float(temperature_of(u.detach()))

    with torch.no_grad():
        nll_before = float(_nll(margin, y, 1.0))
        nll_after = float(_nll(margin, y, temperature))
    # The optimiser only ever improves on T = 1 unless it failed; never return a worse T.
    if not math.isfinite(nll_after) or nll_after > nll_before:
        temperature, nll_after = 1.0, nll_before
    p_before = torch.sigmoid(margin).numpy()
    p_after = torch.sigmoid(margin / temperature).numpy()
    return TemperatureFit(
        temperature=temperature,
        nll_before=nll_before,
        nll_after=nll_after,
        ece_before=expected_calibration_error(y_np, p_before),
        ece_after=expected_calibration_error(y_np, p_after),
        n=int(margin.numel()),
        at_bound=bool(min(temperature / t_min, t_max / temperature) < 1.01),
    )
