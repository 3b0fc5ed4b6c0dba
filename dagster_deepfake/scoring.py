"""From features to a calibrated, honest verdict: ensemble, interval, flags.

P(fake) is the checkpoint's temperature-calibrated probability. Its interval:

* `ensemble_size` > 1 checkpoints: mean ± 1.96 × the spread (std) of the members' P(fake),
  clipped to [0, 1] (`interval_method = "ensemble_spread"`).
* one checkpoint: a bootstrap over the video's 1-second windows — resample the window logits
  with replacement, pool them as the model does (mean), calibrate, take the 2.5th/97.5th
  percentiles (`"window_bootstrap"`). It says how much the verdict rests on a few windows;
  it is not model uncertainty, and the report names the method so nobody mistakes it for one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dagster_deepfake.models.checkpoint import CheckpointManifest
from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.models.inference import VideoPrediction, predict_video
from dagster_deepfake.models.onnx_backbone import CpuBackbone


def bootstrap_interval(
    window_logits: np.ndarray, temperature: float, *, n: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the pooled, calibrated P(fake) under resampling of windows."""
    logits = np.asarray(window_logits, dtype=np.float64)
    if len(logits) < 2:
        z = logits.mean(0) / temperature
        p = float(1 / (1 + np.exp(z[0] - z[1])))
        return p, p
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(logits), size=(n, len(logits)))
    pooled = logits[picks].mean(axis=1) / temperature  # (n, 2)
    p = 1 / (1 + np.exp(pooled[:, 0] - pooled[:, 1]))
    alpha = (1 - level) / 2
    return float(np.quantile(p, alpha)), float(np.quantile(p, 1 - alpha))


@dataclass
class ScoredVideo:
    p_fake: float
    p_fake_uncalibrated: float
    p_fake_video_only: float
    verdict: str
    ci_low: float
    ci_high: float
    interval_method: str
    ensemble_size: int
    window_probs: np.ndarray
    window_probs_video_only: np.ndarray
    window_spans: list[tuple[float, float]]
    window_frames: list[tuple[int, int]]
    model_version: str
    temperature: float
    pretrained: dict[str, bool]
    trained: bool
    weights: str
    trained_on: str | None  # the checkpoint's `trained_on`: datasets in words + data hash
    audio_used: bool
    frames_analyzed: int
    precision: str
    timings: dict[str, float] = field(default_factory=dict)
    # What ran each member's face backbone, "torch" or "onnxruntime" (joined with "+" when the
    # members differ, as `model_version`): `predict_video` falls back to torch per model.
    backbone_runtime: str = "torch"
    # What the verdict rests on (`provenance.provenance_record`), set by `stages.predictions_stage`.
    provenance: dict[str, Any] | None = None
    member_predictions: list[VideoPrediction] = field(default_factory=list, repr=False)

    @property
    def modalities(self) -> list[str]:
        return ["video", "audio"] if self.audio_used else ["video"]

    def row(self) -> dict[str, Any]:
        """The `predictions` row (Parquet and PostgreSQL share these names)."""
        return {
            "model_version": self.model_version,
            "verdict": self.verdict,
            "p_fake": self.p_fake,
            "p_fake_uncalibrated": self.p_fake_uncalibrated,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ensemble_size": self.ensemble_size,
            "temperature": self.temperature,
            "frames_analyzed": self.frames_analyzed,
            "modalities": self.modalities,
            "pretrained": self.pretrained,
            "trained": self.trained,
            "trained_on": self.trained_on,
        }


def score_video(
    members: list[tuple[DeepfakeDetector, CheckpointManifest]],
    crops: np.ndarray,
    flow: np.ndarray,
    timestamps: np.ndarray,
    *,
    frame_rate: float,
    threshold: float = 0.5,
    device: str = "cpu",
    audio: list[tuple[np.ndarray | None, np.ndarray | None]] | None = None,
    keep_output: bool = False,
    keep_feature_maps: bool = False,
    cpu_backbone: CpuBackbone = "torch",
    model_dir: str | None = None,
) -> ScoredVideo:
    """Run every ensemble member on one video and combine them.

    `audio[i]` is member i's own `encode_audio` output, (T, D) features and (T,) speech mask
    (`stages.audio_embeddings_stage`), or (None, None) without usable speech: each member has
    its own audio encoder, so one member's embeddings never stand in for another's.
    `keep_feature_maps`: the first member keeps its backbone feature maps, the ones Grad-CAM reads.
    `cpu_backbone`, `model_dir`: where each member's backbone runs (`predict_video`).
    """
    if not members:
        raise ValueError("score_video needs at least one model")
    audio = audio or [(None, None)] * len(members)
    if len(audio) != len(members):
        raise ValueError(f"score_video got audio for {len(audio)} of {len(members)} models")
    predictions = [
        predict_video(
            model,
            crops,
            flow,
            timestamps=timestamps,
            frame_rate=frame_rate,
            temperature=manifest.temperature,
            device=device,
            keep_output=keep_output,
            audio_features=features,
            audio_valid=valid,
            keep_feature_maps=keep_feature_maps and i == 0,
            cpu_backbone=cpu_backbone,
            model_dir=model_dir,
        )
        for i, ((model, manifest), (features, valid)) in enumerate(zip(members, audio, strict=True))
    ]
    first, manifest = predictions[0], members[0][1]
    p_members = np.array([p.p_fake for p in predictions])
    p_fake = float(p_members.mean())
    if len(predictions) > 1:
        spread = float(p_members.std(ddof=1))
        low, high, method = (
            max(0.0, p_fake - 1.96 * spread),
            min(1.0, p_fake + 1.96 * spread),
            "ensemble_spread",
        )
    else:
        low, high = bootstrap_interval(first.window_logits, manifest.temperature)
        method = "window_bootstrap"
    timings: dict[str, float] = {}
    for pred in predictions:
        for key, value in pred.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    manifests = [m for _, m in members]
    return ScoredVideo(
        p_fake=p_fake,
        p_fake_uncalibrated=float(np.mean([p.p_fake_raw for p in predictions])),
        p_fake_video_only=float(np.mean([p.p_fake_video_only for p in predictions])),
        verdict="fake" if p_fake > threshold else "real",
        ci_low=round(low, 6),
        ci_high=round(high, 6),
        interval_method=method,
        ensemble_size=len(predictions),
        window_probs=np.mean([p.window_probs for p in predictions], axis=0),
        window_probs_video_only=np.mean([p.window_probs_video_only for p in predictions], axis=0),
        window_spans=first.window_spans or [],
        window_frames=first.window_frames,
        model_version="+".join(dict.fromkeys(m.model_version for m in manifests)),
        temperature=manifest.temperature,
        pretrained={
            "audio_encoder": all(m.pretrained.audio_encoder for m in manifests),
            "video_backbone": all(m.pretrained.video_backbone for m in manifests),
        },
        trained=all(m.trained for m in manifests),
        weights="trained" if all(m.trained for m in manifests) else "untrained",
        trained_on=manifest.trained_on,
        audio_used=first.audio_used,
        frames_analyzed=first.num_faces,
        precision=first.precision,
        timings=timings,
        backbone_runtime="+".join(dict.fromkeys(p.backbone_runtime for p in predictions)),
        member_predictions=predictions,
    )
