"""Ablations in one go: the same training recipe on the same split with one part taken away.

Variants (`ablation_variants`): the configured model ("full"), audio off, flow off, and every
other temporal encoder. Each is trained from the same seed on the same train/val videos,
calibrated on the same validation videos and evaluated on the same test videos; the table says
each variant's AUCs with bootstrap intervals and the paired difference to "full" (same
resampled videos for both scores), i.e. what the missing part adds (docs/EVALUATION.md).

"Audio off" hands the model no waveform in training and evaluation, so it always fuses the
learned no-audio embedding (what FaceForensics++ clips without sound get); "flow off" gives
zero flow inputs, as `data.optical_flow_enabled: false` does at serving time.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dagster_deepfake.config import (
    DataConfig,
    DetectorConfig,
    TargetsConfig,
    TemporalModelConfig,
    TrainingConfig,
)
from dagster_deepfake.models.registry import resolve_model_config
from dagster_deepfake.training.calibrate import calibrate_checkpoint
from dagster_deepfake.training.evaluate import EvaluationResult, evaluate_test_sets
from dagster_deepfake.training.features import FeatureSource, VideoFeatures
from dagster_deepfake.training.loop import train_detector
from dagster_deepfake.training.metrics import DEFAULT_RESAMPLES, Interval, bootstrap_auc_interval

TEMPORAL_ENCODERS: tuple[str, ...] = typing.get_args(
    TemporalModelConfig.model_fields["encoder_type"].annotation
)


class WithoutModality:
    """A `FeatureSource` whose videos lack one input: `audio` (no waveform) or `flow` (zeros)."""

    def __init__(self, source: FeatureSource, drop: str) -> None:
        if drop not in ("audio", "flow"):
            raise ValueError(f"can only drop audio or flow, not {drop!r}")
        self.source, self.drop = source, drop

    def load(self, video_id: str) -> VideoFeatures:
        f = self.source.load(video_id)
        if self.drop == "audio":
            return replace(f, waveform=None, speech_mask=None)
        return replace(f, flow=np.zeros_like(f.flow))


@dataclass
class Variant:
    name: str
    change: str
    config: DetectorConfig
    drop: str | None = None  # "audio" | "flow" | None


def ablation_variants(base: DetectorConfig | str) -> list[Variant]:
    """full, audio off, flow off, and each temporal encoder the configured one is not."""
    config = resolve_model_config(base)
    own = config.temporal.encoder_type
    variants = [
        Variant(f"full ({own})", "as configured: faces + flow + audio", config),
        Variant("no audio", "no waveform in training or test (the no-audio embedding)", config, "audio"),
        Variant("no flow", "flow inputs zero (as data.optical_flow_enabled: false)", config, "flow"),
    ]
    for encoder in TEMPORAL_ENCODERS:
        if encoder != own:
            other = config.model_copy(deep=True)
            other.temporal.encoder_type = encoder
            variants.append(
                Variant(f"temporal {encoder}", f"temporal encoder {encoder} instead of {own}", other)
            )
    return variants


@dataclass
class AblationRow:
    variant: str
    change: str
    result: EvaluationResult
    delta_auc: float | None  # video AUC minus the full model's on the same test videos
    delta_ci: Interval | None
    checkpoint: Path


def run_ablations(
    model_config: DetectorConfig | str,
    training_cfg: TrainingConfig,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    test_ids: Sequence[str],
    source: FeatureSource,
    out_dir: str | Path,
    *,
    test_set: str = "test",
    device: str | torch.device = "cpu",
    seed: int = 0,
    max_epochs: int | None = None,
    image_size: int | None = None,
    data_cfg: DataConfig | None = None,
    targets: TargetsConfig | None = None,
    pretrained: bool = True,
    n_resamples: int = DEFAULT_RESAMPLES,
    training_data: str | None = None,
    training_data_hash: str | None = None,
    on_variant: Callable[[str], None] | None = None,
) -> list[AblationRow]:
    """Train, calibrate and evaluate every variant of `ablation_variants(model_config)`."""
    out_dir = Path(out_dir)
    rows: list[AblationRow] = []
    for variant in ablation_variants(model_config):
        if on_variant:
            on_variant(variant.name)
        own_source = WithoutModality(source, variant.drop) if variant.drop else source
        run_dir = out_dir / variant.name.replace(" ", "_").replace("(", "").replace(")", "")
        trained = train_detector(
            variant.config,
            train_ids,
            val_ids,
            own_source,
            training_cfg,
            run_dir,
            device=device,
            seed=seed,
            max_epochs=max_epochs,
            image_size=image_size,
            data_cfg=data_cfg,
            pretrained=pretrained,
            training_data=training_data,
            training_data_hash=training_data_hash,
        )
        calibrate_checkpoint(trained.best_checkpoint, val_ids, own_source, device=device)
        (result,) = evaluate_test_sets(
            trained.best_checkpoint,
            {test_set: test_ids},
            own_source,
            device=device,
            data_cfg=data_cfg,
            targets=targets,
            n_resamples=n_resamples,
            seed=seed,
            plots=False,
        )
        rows.append(AblationRow(variant.name, variant.change, result, None, None, trained.best_checkpoint))
    full = rows[0].result.predictions
    for row in rows:
        mine = row.result.predictions
        if row is rows[0] or row.result.metrics.auc is None:
            continue
        assert list(mine["video_id"]) == list(full["video_id"]), "variants must score the same videos"
        row.delta_auc = row.result.metrics.auc - rows[0].result.metrics.auc  # type: ignore[operator]
        row.delta_ci = bootstrap_auc_interval(
            mine["label"], mine["p_fake"], baseline=full["p_fake"], n_resamples=n_resamples, seed=seed
        )
    return rows
