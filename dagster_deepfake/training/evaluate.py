"""Evaluate a (calibrated) checkpoint on held-out videos: metrics, per-method AUC, ROC plot, predictions.

P(fake) is the calibrated probability `softmax(logits / T)[1]` with the temperature from the
checkpoint's manifest (1.0 until `calibrate_checkpoint` has run), i.e. the number serving
reports. AUC and TPR@5 %FPR do not depend on T; ECE, Brier and decisions at a threshold do.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from dagster_deepfake.models.checkpoint import load_checkpoint
from dagster_deepfake.training.calibrate import evaluation_dataset, score_videos
from dagster_deepfake.training.calibration import apply_temperature
from dagster_deepfake.training.features import FeatureSource
from dagster_deepfake.training.metrics import Metrics, binary_metrics, per_group_auc, plot_roc

PREDICTION_COLUMNS = ["video_id", "label", "method", "p_fake", "p_fake_uncalibrated", "audio_used"]


@dataclass
class EvaluationResult:
    """What the `evaluation` asset reports."""

    metrics: Metrics
    per_method_auc: dict[str, float | None]
    roc_png: bytes | None  # None when the test set holds one class only
    predictions: pd.DataFrame  # PREDICTION_COLUMNS, one row per video
    temperature: float
    model_version: str
    weights: str  # "trained" | "pretrained-backbones" | "untrained"


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    test_ids: Sequence[str],
    source: FeatureSource,
    threshold: float = 0.5,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
) -> EvaluationResult:
    """Score `test_ids` with the checkpoint (whole videos, eval mode) and compute the contract metrics."""
    model, manifest = load_checkpoint(checkpoint_dir, map_location=device)
    scored = score_videos(
        model, evaluation_dataset(model, test_ids, source), device=device, batch_size=batch_size
    )
    if not scored.video_ids:
        raise ValueError("evaluation needs at least one test video")
    p_fake = apply_temperature(scored.logits, manifest.temperature)
    predictions = pd.DataFrame(
        {
            "video_id": scored.video_ids,
            "label": scored.labels.astype("int64"),
            "method": scored.methods,
            "p_fake": p_fake,
            "p_fake_uncalibrated": scored.p_fake_raw,
            "audio_used": scored.audio_used.astype(bool),
        },
        columns=PREDICTION_COLUMNS,
    )
    metrics = binary_metrics(scored.labels, p_fake, threshold=threshold)
    roc_png = None
    if metrics.auc is not None:
        with tempfile.TemporaryDirectory() as tmp:
            title = f"ROC {manifest.model_version}"
            roc_png = plot_roc(scored.labels, p_fake, Path(tmp) / "roc.png", title=title).read_bytes()
    return EvaluationResult(
        metrics=metrics,
        per_method_auc=per_group_auc(scored.labels, p_fake, scored.methods),
        roc_png=roc_png,
        predictions=predictions,
        temperature=manifest.temperature,
        model_version=manifest.model_version,
        weights=manifest.weights_label,
    )
