"""Evaluate a (calibrated) checkpoint on held-out test sets, the way papers report detectors.

P(fake) is the calibrated probability `softmax(logits / T)[1]` with the temperature from the
checkpoint's manifest (1.0 until `calibrate_checkpoint` has run), i.e. the number serving
reports. AUC, AP and TPR@FPR do not depend on T; ECE, Brier and decisions at a threshold do,
so ECE is given before (T = 1) and after scaling.

Two levels, as in DeepfakeBench's tables (docs/EVALUATION.md):

* **video**: one score per video, the softmax of the mean of its 1-second window logits,
  exactly what `predict_video` serves;
* **frame**: one score per kept face, the P(fake) of the window (5 faces) it belongs to: the
  model's finest output (it has no per-face head; a window is its unit of evidence).

AUC intervals are percentile bootstraps over *videos* (`metrics.bootstrap_auc_interval`), also
for frame-level AUC, whose frames are not independent. Per manipulation method, each method's
fakes are scored against all reals of the same test set.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel

from dagster_deepfake.config import CpuBackbone, DataConfig, TargetsConfig
from dagster_deepfake.models.checkpoint import CheckpointManifest, load_checkpoint
from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.report import runtime_label
from dagster_deepfake.training.calibrate import ScoredVideos, evaluation_dataset, score_videos
from dagster_deepfake.training.calibration import apply_temperature
from dagster_deepfake.training.features import FeatureSource
from dagster_deepfake.training.metrics import (
    DEFAULT_RESAMPLES,
    Interval,
    Metrics,
    binary_metrics,
    bootstrap_auc_interval,
    per_group_auc,
    plot_reliability,
    plot_roc,
    reliability_bins,
)

PREDICTION_COLUMNS = ["video_id", "label", "method", "p_fake", "p_fake_uncalibrated", "audio_used"]
FRAME_PREDICTION_COLUMNS = ["video_id", "face_index", "window", "label", "method", "p_fake"]


class Protocol(BaseModel):
    """How the numbers were obtained: what a reader needs to put them next to a paper's."""

    frame_rate: float
    faces_per_video_mean: float
    faces_per_video_min: int
    faces_per_video_max: int
    window_frames: int
    face_crop: str
    aggregation: str
    calibration: str
    threshold: float
    bootstrap: str
    # What computed the logits (score_videos), worded as every verdict's (report.runtime_label).
    runtime: str = "cpu, fp32, face backbone on torch"


@dataclass
class EvaluationResult:
    """One checkpoint on one test set: what the `evaluation` asset and `evaluate` report."""

    metrics: Metrics  # video level, calibrated P(fake)
    per_method_auc: dict[str, float | None]
    roc_png: bytes | None  # None when the test set holds one class only
    predictions: pd.DataFrame  # PREDICTION_COLUMNS, one row per video
    temperature: float
    model_version: str
    weights: str  # "trained" | "pretrained-backbones" | "untrained"
    test_set: str = "test"
    frame_metrics: Metrics | None = None
    ece_uncalibrated: float | None = None
    video_auc_ci: Interval | None = None
    frame_auc_ci: Interval | None = None
    per_method: pd.DataFrame = field(default_factory=pd.DataFrame)
    frame_predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    reliability_png: bytes | None = None
    protocol: Protocol | None = None
    trained_on: str | None = None
    targets: dict[str, dict[str, float | bool | None]] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """One flat row (Parquet `metrics`, the markdown table, PostgreSQL)."""
        m, f = self.metrics, self.frame_metrics
        vci, fci = self.video_auc_ci, self.frame_auc_ci
        return {
            "model_version": self.model_version,
            "weights": self.weights,
            "trained_on": self.trained_on,
            "test_set": self.test_set,
            "n_real": m.n_real,
            "n_fake": m.n_fake,
            "n_faces": len(self.frame_predictions),
            "video_auc": m.auc,
            "video_auc_low": vci.low if vci else None,
            "video_auc_high": vci.high if vci else None,
            "frame_auc": f.auc if f else None,
            "frame_auc_low": fci.low if fci else None,
            "frame_auc_high": fci.high if fci else None,
            "ap": m.ap,
            "frame_ap": f.ap if f else None,
            "eer": m.eer,
            "frame_eer": f.eer if f else None,
            "tpr_at_fpr_1": m.tpr_at_fpr_1,
            "tpr_at_fpr_5": m.tpr_at_fpr_5,
            "fpr_at_threshold": m.fpr_at_threshold,
            "accuracy": m.accuracy,
            "ece_uncalibrated": self.ece_uncalibrated,
            "ece_calibrated": m.ece,
            "brier": m.brier,
            "threshold": m.threshold,
            "temperature": self.temperature,
            "meets_auc_target": self.targets.get("auc", {}).get("pass"),
            "meets_fpr_target": self.targets.get("fpr", {}).get("pass"),
        }


def _protocol(
    scored: ScoredVideos,
    window_frames: int,
    temperature: float,
    threshold: float,
    data_cfg: DataConfig,
    n_resamples: int,
    seed: int,
) -> Protocol:
    counts = [len(f) for f in scored.face_logits] or [0]
    faces = data_cfg.faces
    return Protocol(
        frame_rate=data_cfg.frame_rate,
        faces_per_video_mean=float(np.mean(counts)),
        faces_per_video_min=int(min(counts)),
        faces_per_video_max=int(max(counts)),
        window_frames=window_frames,
        face_crop=(
            f"RetinaFace ({faces.detector}) confidence ≥ {faces.confidence_threshold:g}, 5-point "
            f"similarity alignment to {data_cfg.resolution}×{data_cfg.resolution}; frames with 0 or >1 "
            "faces skipped"
        ),
        aggregation=(
            f"frame = P(fake) of its 1-s window of {window_frames} faces; video = softmax of the mean "
            "window logits (every kept face, no frame cap)"
        ),
        calibration=f'temperature T = {temperature:.3f} fitted on validation; "raw" ECE is at T = 1 (no scaling)',
        threshold=threshold,
        bootstrap=f"{n_resamples} stratified resamples of videos, percentile 95 %, seed {seed}",
        runtime=runtime_label(
            {"device": scored.device, "precision": scored.precision, "backbone": scored.backbone_runtime}
        ),
    )


def _targets(metrics: Metrics, targets: TargetsConfig) -> dict[str, dict[str, float | bool | None]]:
    """The seed's targets (AUC > 0.85, FPR < 5 %) as pass/fail on the video level."""
    fpr = metrics.fpr_at_threshold
    return {
        "auc": {"value": metrics.auc, "target": targets.auc, "pass": bool((metrics.auc or 0) > targets.auc)},
        "fpr": {
            "value": fpr,
            "target": targets.false_positive_rate,
            "pass": bool(fpr is not None and fpr < targets.false_positive_rate),
        },
    }


def _per_method(predictions: pd.DataFrame, frames: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    """Per manipulation method: its fakes against all reals of the set, video and frame level."""
    y, p, methods = (predictions[c].to_numpy() for c in ("label", "p_fake", "method"))
    video_auc = per_group_auc(y, p, methods)
    frame_auc = per_group_auc(frames["label"], frames["p_fake"], frames["method"]) if len(frames) else {}
    rows = []
    for method, auc in video_auc.items():
        keep = (y == 0) | (methods == method)
        ci = bootstrap_auc_interval(y[keep], p[keep], n_resamples=n_resamples, seed=seed)
        m = binary_metrics(y[keep], p[keep])
        rows.append(
            {
                "method": method,
                "n_fake": int(((y == 1) & (methods == method)).sum()),
                "video_auc": auc,
                "video_auc_low": ci.low,
                "video_auc_high": ci.high,
                "frame_auc": frame_auc.get(method),
                "ap": m.ap,
                "eer": m.eer,
            }
        )
    return pd.DataFrame(rows)


def evaluate_scores(
    scored: ScoredVideos,
    manifest: CheckpointManifest,
    *,
    test_set: str = "test",
    threshold: float = 0.5,
    window_frames: int = 5,
    data_cfg: DataConfig | None = None,
    targets: TargetsConfig | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    plots: bool = True,
) -> EvaluationResult:
    """Every metric of one test set from a model's scores (no model needed: testable on arrays).

    `plots=False` skips the ROC and reliability PNGs (ablations, where only the table counts).
    """
    if not scored.video_ids:
        raise ValueError(f"evaluation of {test_set!r} needs at least one test video")
    data_cfg = data_cfg or DataConfig()
    temperature = manifest.temperature
    p_fake = apply_temperature(scored.logits, temperature)
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
    frame_rows = [
        pd.DataFrame(
            {
                "video_id": video_id,
                "face_index": np.arange(len(logits)),
                "window": np.arange(len(logits)) // window_frames,
                "label": int(label),
                "method": method,
                "p_fake": apply_temperature(logits, temperature) if len(logits) else [],
            }
        )
        for video_id, label, method, logits in zip(
            scored.video_ids, scored.labels, scored.methods, scored.face_logits, strict=False
        )
    ]
    frames = (
        pd.concat(frame_rows, ignore_index=True)[FRAME_PREDICTION_COLUMNS]
        if frame_rows
        else pd.DataFrame(columns=FRAME_PREDICTION_COLUMNS)
    )
    labels = scored.labels
    metrics = binary_metrics(labels, p_fake, threshold=threshold)
    frame_metrics = (
        binary_metrics(frames["label"], frames["p_fake"], threshold=threshold) if len(frames) else None
    )
    video_ci = bootstrap_auc_interval(labels, p_fake, n_resamples=n_resamples, seed=seed)
    frame_ci = (
        bootstrap_auc_interval(
            frames["label"], frames["p_fake"], videos=frames["video_id"], n_resamples=n_resamples, seed=seed
        )
        if len(frames)
        else None
    )
    before, after = reliability_bins(labels, scored.p_fake_raw), reliability_bins(labels, p_fake)
    reliability_png = roc_png = None
    with tempfile.TemporaryDirectory() as tmp:
        if plots:
            reliability_png = plot_reliability(before, after, Path(tmp) / "reliability.png").read_bytes()
        if plots and metrics.auc is not None:
            title = f"ROC {test_set}"
            roc_png = plot_roc(labels, p_fake, Path(tmp) / "roc.png", title=title).read_bytes()
    return EvaluationResult(
        metrics=metrics,
        per_method_auc=per_group_auc(labels, p_fake, scored.methods),
        roc_png=roc_png,
        predictions=predictions,
        temperature=temperature,
        model_version=manifest.model_version,
        weights=manifest.weights_label,
        test_set=test_set,
        frame_metrics=frame_metrics,
        ece_uncalibrated=binary_metrics(labels, scored.p_fake_raw, threshold=threshold).ece,
        video_auc_ci=video_ci,
        frame_auc_ci=frame_ci,
        per_method=_per_method(predictions, frames, n_resamples, seed),
        frame_predictions=frames,
        reliability_png=reliability_png,
        protocol=_protocol(scored, window_frames, temperature, threshold, data_cfg, n_resamples, seed),
        trained_on=manifest.trained_on,
        targets=_targets(metrics, targets or TargetsConfig()),
    )


def evaluate_model(
    model: DeepfakeDetector,
    manifest: CheckpointManifest,
    test_sets: Mapping[str, Sequence[str]],
    source: FeatureSource,
    *,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    data_cfg: DataConfig | None = None,
    targets: TargetsConfig | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    plots: bool = True,
    cpu_backbone: CpuBackbone = "torch",
    model_dir: str | Path | None = None,
) -> list[EvaluationResult]:
    """Score each named test set (whole videos, eval mode) and compute its metrics.

    `cpu_backbone`, `model_dir`: where the face backbone runs (`score_videos`; the callers pass
    `platform.cpu_backbone` and `platform.model_dir`, as serving does)."""
    data_cfg = data_cfg or DataConfig()
    results = []
    for name, ids in test_sets.items():
        dataset = evaluation_dataset(model, ids, source, frame_rate=data_cfg.frame_rate)
        scored = score_videos(
            model,
            dataset,
            device=device,
            batch_size=batch_size,
            cpu_backbone=cpu_backbone,
            model_dir=model_dir,
        )
        results.append(
            evaluate_scores(
                scored,
                manifest,
                test_set=name,
                threshold=threshold,
                window_frames=model.config.temporal.window_frames,
                data_cfg=data_cfg,
                targets=targets,
                n_resamples=n_resamples,
                seed=seed,
                plots=plots,
            )
        )
    return results


def evaluate_test_sets(
    checkpoint_dir: str | Path,
    test_sets: Mapping[str, Sequence[str]],
    source: FeatureSource,
    *,
    device: str | torch.device = "cpu",
    **kwargs: object,
) -> list[EvaluationResult]:
    """`evaluate_model` with the checkpoint at `checkpoint_dir` (loaded once for every set)."""
    model, manifest = load_checkpoint(checkpoint_dir, map_location=device)
    return evaluate_model(model, manifest, test_sets, source, device=device, **kwargs)  # type: ignore[arg-type]


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    test_ids: Sequence[str],
    source: FeatureSource,
    threshold: float = 0.5,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    **kwargs: object,
) -> EvaluationResult:
    """One test set (named "test"): see `evaluate_test_sets`."""
    (result,) = evaluate_test_sets(
        checkpoint_dir,
        {str(kwargs.pop("test_set", "test")): test_ids},
        source,
        device=device,
        threshold=threshold,
        batch_size=batch_size,
        **kwargs,
    )
    return result
