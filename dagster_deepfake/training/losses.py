"""Training losses: video-level cross-entropy plus the contract's temporal-consistency term.

Why a temporal-consistency term: a real manipulation (a swapped face, a re-enacted mouth) is
usually present for the whole clip, so the per-window evidence should be persistent. A model
whose P(fake) flickers between consecutive 1-second windows is reacting to frame-level noise
(compression blocks, blur, a bad alignment) rather than to the manipulation; penalising the
flicker pushes the window features towards evidence that is stable in time. The term is
applied to real and fake videos alike (reals should be consistently real). Clips that are
only partly manipulated pay for one transition per change, which the small weight
(λ = 0.1 in the contract) tolerates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParts:
    """The weighted total that is back-propagated and its parts, for logging."""

    total: torch.Tensor
    classification: torch.Tensor
    temporal: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """Detached Python floats, e.g. for a metrics log."""
        return {
            "loss": float(self.total.detach()),
            "loss_classification": float(self.classification.detach()),
            "loss_temporal": float(self.temporal.detach()),
        }


def temporal_consistency_loss(window_logits: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared change of P(fake) between consecutive valid windows of the same video.

    Args:
        window_logits: (B, W, 2) per-window logits ``[real, fake]``.
        window_mask: (B, W) bool, True for real windows, False for padding (or windows
            without a usable face). Invalid windows are dropped *before* pairing, so the
            windows either side of a gap count as consecutive: they are still the nearest
            evidence in time.

    Returns:
        Scalar: ``sum over pairs (p[k+1] - p[k])^2 / number of pairs`` with
        ``p = softmax(logits)[..., 1]``; 0 (still attached to the graph) when no video has
        two valid windows. Working on probabilities, not logits, bounds each pair's cost
        by 1 and ignores differences between already-saturated windows.
    """
    if window_logits.ndim != 3 or window_logits.shape[-1] != 2:
        raise ValueError(f"window_logits must be (B, W, 2), got {tuple(window_logits.shape)}")
    if window_mask.shape != window_logits.shape[:2]:
        raise ValueError(
            f"window_mask {tuple(window_mask.shape)} does not match window_logits {tuple(window_logits.shape[:2])}"
        )
    mask = window_mask.to(device=window_logits.device, dtype=torch.bool)
    p_fake = window_logits.softmax(dim=-1)[..., 1]  # (B, W)
    # Stable sort moves the valid windows to the front of each row in their original order.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    p_sorted = p_fake.gather(1, order)
    valid_sorted = mask.gather(1, order)
    pair_valid = valid_sorted[:, 1:] & valid_sorted[:, :-1]  # (B, W-1)
    squared_step = (p_sorted[:, 1:] - p_sorted[:, :-1]).pow(2)
    n_pairs = pair_valid.sum()
    if int(n_pairs) == 0:
        return p_fake.sum() * 0.0
    return (squared_step * pair_valid).sum() / n_pairs


def detector_loss(
    video_logits: torch.Tensor,
    window_logits: torch.Tensor,
    window_mask: torch.Tensor,
    labels: torch.Tensor,
    lambda_tc: float = 0.1,
    window_ce_weight: float = 0.0,
) -> LossParts:
    """Cross-entropy on the video logits + λ · temporal consistency of the window logits.

    Args:
        video_logits: (B, 2) ``[real, fake]`` per video.
        window_logits: (B, W, 2) per window; window_mask: (B, W) bool.
        labels: (B,) int, 0 = real, 1 = fake.
        lambda_tc: weight of the temporal-consistency term (contract: 0.1,
            ``training.temporal_consistency_weight``).
        window_ce_weight: optional weight of a cross-entropy on every valid window with its
            video's label. Off by default: video labels are weak labels for windows (a fake
            clip can contain untouched seconds), so it is a regulariser to try, not the goal.

    Returns:
        LossParts(total, classification, temporal), where ``classification`` includes the
        weighted window term when enabled.
    """
    labels = labels.to(device=video_logits.device, dtype=torch.long)
    classification = F.cross_entropy(video_logits, labels)
    if window_ce_weight > 0:
        mask = window_mask.to(device=window_logits.device, dtype=torch.bool)
        window_labels = labels[:, None].expand(mask.shape)
        if bool(mask.any()):
            window_ce = F.cross_entropy(window_logits[mask], window_labels[mask])
            classification = classification + window_ce_weight * window_ce
    temporal = temporal_consistency_loss(window_logits, window_mask)
    return LossParts(
        total=classification + lambda_tc * temporal, classification=classification, temporal=temporal
    )
