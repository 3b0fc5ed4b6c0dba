"""The training loop: AdamW + cosine schedule with warm-up (the contract; `training.optimizer` and
`training.scheduler` choose others), validation AUC per epoch, best and
resumable checkpoints.

Layout of `out_dir`::

    best/   model.safetensors + manifest.json   highest validation AUC so far (trained=True)
    last/   model.safetensors + manifest.json   end of the latest epoch
            trainer_state.pt                    optimizer, scheduler, epoch, step, RNG, history

Choices, and why:

* Only trainable parameters go to the optimizer, so the freeze policy (wav2vec2's CNN and
  first `model.audio.freeze_encoder_blocks` blocks, the whole backbone with
  `model.video.freeze_backbone`) is kept and frozen weights carry no optimizer state.
* Warm-up: `training.warmup_steps` (contract: 1000), capped at 10 % of the run's total steps
  (`MAX_WARMUP_FRACTION`). A short run would otherwise spend its whole budget warming up and
  never reach the peak learning rate: 60 synthetic clips are ~100 steps, and even
  FaceForensics++ c23 (3,600 training videos, 113 steps per epoch at batch 32, 2,260 steps
  in 20 epochs) gets 226 warm-up steps. The contract's 1,000 applies from 10,000 steps on.
* Batch size: `training.batch_size` (32), capped at the number of training videos.
* Modality dropout: `training.modality_dropout_prob` is handed to the fusion module
  (`model.fusion.modality_dropout`), which applies it in train mode only, so validation
  and serving always use the audio they have. The fraction of clips that used audio is
  logged for both, which makes the difference visible.
* Gradients are clipped at norm 1.0 (the transformer convention), which keeps the first
  steps of a randomly initialised model from diverging.
* bf16 autocast is off by default for training. Measured on the tiny model (8 clips x 10
  faces at 224 px, 2 cores with native bf16): a step takes 5.7 s in bf16 against 4.6 s in
  fp32, and the bf16 gradient differs from fp32 by 17 % (cosine 0.986), so it costs time and
  accuracy. The flag stays for the contract model (EfficientNet-B3 runs 2x faster in bf16 on
  these CPUs, docs/ARCHITECTURE.md §7) and for GPUs; check learning curves before making it a default there.
* Resuming happens at epoch boundaries: the state of `last/` is written after every epoch
  and a new call with `resume=True` continues from its epoch and step. Clip sampling and
  augmentation are seeded by (seed, epoch, index) and the epoch order by (seed, epoch), so a
  resumed run sees the same data an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from dagster_deepfake.config import DataConfig, TrainingConfig
from dagster_deepfake.models.checkpoint import CheckpointManifest, save_checkpoint
from dagster_deepfake.models.configuration import DetectorConfig, resolve_model_config
from dagster_deepfake.models.detector import DeepfakeDetector
from dagster_deepfake.models.inference import autocast_context
from dagster_deepfake.models.weights import PretrainedFlags, build_detector
from dagster_deepfake.training.augment import WindowAugment
from dagster_deepfake.training.calibrate import score_videos
from dagster_deepfake.training.data import ClipBatch, ClipCollator, ClipDataset
from dagster_deepfake.training.features import FeatureSource
from dagster_deepfake.training.losses import detector_loss

logger = logging.getLogger(__name__)

BEST_DIR = "best"
LAST_DIR = "last"
STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
#: The most of a run's steps that warm-up may take (see module docstring).
MAX_WARMUP_FRACTION = 0.1
GRAD_CLIP_NORM = 1.0


@dataclass
class EpochStats:
    """One epoch: `step` is the optimizer step count at its end (global, across resumes)."""

    epoch: int
    step: int
    train_loss: float
    val_auc: float | None
    val_loss: float | None
    lr: float
    seconds: float
    train_audio_fraction: float = 0.0
    """Fraction of training clips whose prediction used audio (modality dropout lowers it)."""
    val_audio_fraction: float | None = None


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[EpochStats]
    best_val_auc: float | None
    resumed_from_step: int = 0
    stopped_early: bool = False


@dataclass
class TrainPlan:
    """Steps the run will take; the schedule is built from it."""

    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    batch_size: int


def plan_training(
    n_train: int, training_cfg: TrainingConfig, *, max_epochs: int | None = None, max_steps: int | None = None
) -> TrainPlan:
    """Batch size (capped at `n_train`), steps and warm-up (capped at 10 % of the steps)."""
    if n_train < 1:
        raise ValueError("training needs at least one training video")
    epochs = max_epochs if max_epochs is not None else training_cfg.epochs
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    batch_size = max(1, min(training_cfg.batch_size, n_train))
    steps_per_epoch = math.ceil(n_train / batch_size)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
        epochs = math.ceil(total / steps_per_epoch)
    warmup = min(training_cfg.warmup_steps, int(MAX_WARMUP_FRACTION * total))
    return TrainPlan(epochs, steps_per_epoch, total, warmup, batch_size)


def build_optimizer(params: list[torch.nn.Parameter], training_cfg: TrainingConfig) -> torch.optim.Optimizer:
    """`training.optimizer` (adamw: the contract; adam; sgd with momentum 0.9) at `learning_rate`."""
    name, lr = training_cfg.optimizer, training_cfg.learning_rate
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"training.optimizer: unknown optimizer {name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, training_cfg: TrainingConfig, plan: TrainPlan
) -> torch.optim.lr_scheduler.LambdaLR:
    """`training.scheduler` (cosine: the contract; linear; constant) after `plan.warmup_steps` of linear warm-up."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    name = training_cfg.scheduler
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, plan.warmup_steps)
    raise ValueError(f"training.scheduler: unknown scheduler {name!r}")


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _val_loss_auc(logits: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    if len(labels) == 0:
        return None, None
    loss = float(F.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels)))
    if labels.min() == labels.max():
        return loss, None
    p_fake = torch.as_tensor(logits).softmax(-1)[:, 1].numpy()
    return loss, float(roc_auc_score(labels, p_fake))


def _is_better(stats: EpochStats, best: EpochStats | None) -> bool:
    """Higher val AUC wins; ties (and runs without a defined AUC) go to the lower val loss."""
    if best is None:
        return True

    def key(s: EpochStats) -> tuple[float, float]:
        auc = s.val_auc if s.val_auc is not None else -1.0
        loss = s.val_loss if s.val_loss is not None else s.train_loss
        return (auc, -loss)

    return key(stats) > key(best)


def needs_loss_scaling(device: str | torch.device, bf16: bool) -> bool:
    """True only where autocast runs fp16: CUDA without bf16 (V100, T4; `autocast_context`).
    bf16 keeps fp32's exponent range and needs no loss scaling; the CPU path is bf16."""
    return torch.device(device).type == "cuda" and bf16 and not torch.cuda.is_bf16_supported()


def grad_scaler(device: str | torch.device, bf16: bool) -> torch.amp.GradScaler:
    """fp16 AMP's `GradScaler` where `needs_loss_scaling`, else a disabled one (a no-op)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=needs_loss_scaling(device, bf16))


@dataclass
class StepResult:
    loss: float
    audio_used: int  # clips of the batch whose prediction used audio


def train_step(
    model: DeepfakeDetector,
    batch: ClipBatch,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainable: list[torch.nn.Parameter],
    *,
    lambda_tc: float,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """One optimizer step: the batch to `device`, forward under autocast (bf16 on CPU, AMP on
    CUDA), `detector_loss` in fp32, backward, clip at `GRAD_CLIP_NORM`, step optimizer and schedule.

    `scaler` (`grad_scaler`): fp16 AMP's loss scaling, so small gradients do not flush to zero;
    gradients are unscaled before clipping so the clip norm means the same as in fp32."""
    batch = batch.to(device)
    with autocast_context(device, bf16):
        output = model(batch.faces, batch.flow, batch.frame_mask, batch.waveform, batch.speech_mask)
    parts = detector_loss(
        output.video_logits.float(),
        output.window_logits.float(),
        output.window_mask,
        batch.labels,
        lambda_tc=lambda_tc,
    )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(parts.total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP_NORM)
        scaler.step(optimizer)  # skipped (and the scale lowered) when a gradient is inf/NaN
        scaler.update()
    else:
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP_NORM)
        optimizer.step()
    scheduler.step()
    return StepResult(loss=float(parts.total.detach()), audio_used=int(output.audio_used.sum()))


def train_detector(
    model_config: DetectorConfig | str,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    source: FeatureSource,
    training_cfg: TrainingConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    max_epochs: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    on_epoch: Callable[[EpochStats], bool | None] | None = None,
    resume: bool = True,
    training_data_hash: str | None = None,
    training_data: str | None = None,
    clip_frames: int = 10,
    frame_rate: float | None = None,
    pretrained: bool = True,
    bf16: bool = False,
    eval_batch_size: int = 4,
    image_size: int | None = None,
    data_cfg: DataConfig | None = None,
    weights_dir: str | Path | None = None,
) -> TrainResult:
    """Train a detector on `train_ids`, validating on `val_ids` after every epoch.

    Args:
        model_config: `settings.model` or a registry name ("tiny", "contract"), resolved by
            `resolve_model_config`.
        source: per-video features (never video files; see `training.features`).
        training_cfg: `settings.training` (optimizer, lr, scheduler, warm-up, batch size, epochs,
            λ, modality dropout).
        max_epochs: overrides `training_cfg.epochs`; max_steps: caps the total optimizer steps.
        on_epoch: called with each epoch's stats after its checkpoints are written; returning
            False stops training (the run can be resumed later).
        resume: continue from `out_dir/last/` when it holds a state of the same model config.
        training_data_hash: the training manifest's hash, recorded in every checkpoint.
        training_data: what the data is, in words (dataset names), recorded beside the hash.
        clip_frames: faces per training clip (2 windows of 5 at 5 FPS by default).
        pretrained: False skips every branch's pretrained weights; True loads those whose
            `model.*.pretrained` is true where available (falling back loudly).
        image_size: side of the augmented faces (default `data.resolution`, 224: the size of
            the aligned crops). Tests with smaller crops pass their size here.
        data_cfg: `settings.data` (augmentation switches, resolution, frame rate; default: the
            contract's).
        frame_rate: sampled FPS of the cached features (default `data.frame_rate`).
        weights_dir: `<model_dir>/pretrained`, where `dagster-deepfake weights import` stored
            checked published weights (used before the HF cache; provenance in the manifest).
    """
    started_at = time.perf_counter()
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = resolve_model_config(model_config)
    data_cfg = data_cfg or DataConfig()
    frame_rate = frame_rate if frame_rate is not None else data_cfg.frame_rate
    plan = plan_training(len(train_ids), training_cfg, max_epochs=max_epochs, max_steps=max_steps)

    # The branches whose `model.*.pretrained` is true load published weights: a local folder or
    # file, the Hugging Face cache, else a bounded download (skipped when HF_HUB_OFFLINE is set).
    model, flags = build_detector(
        config, pretrained=pretrained, allow_download=True, seed=seed, weights_dir=weights_dir
    )
    model.fusion.modality_dropout = training_cfg.modality_dropout_prob
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, training_cfg)
    scaler = grad_scaler(device, bf16)
    scheduler = build_scheduler(optimizer, training_cfg, plan)

    last_dir, best_dir = out_dir / LAST_DIR, out_dir / BEST_DIR
    state_path = last_dir / STATE_FILE
    history: list[EpochStats] = []
    start_epoch, step, best = 0, 0, None
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["config_hash"] != config.config_hash():
            raise ValueError(
                f"{last_dir} holds a run of another model config ({state['config_hash']} != "
                f"{config.config_hash()}); use a new out_dir or resume=False"
            )
        from safetensors.torch import load_model

        load_model(model, str(last_dir / "model.safetensors"), strict=True, device=str(device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
        history = [EpochStats(**h) for h in state["history"]]
        flags = PretrainedFlags.model_validate(state.get("pretrained", {}))
        best = next((h for h in history if h.epoch == state.get("best_epoch")), None)
        saved_total = state.get("plan", {}).get("total_steps")
        if saved_total is not None and saved_total != plan.total_steps:
            logger.warning(
                "resuming with %d planned steps where the interrupted run planned %d: the cosine "
                "schedule is stretched from here on",
                plan.total_steps,
                saved_total,
            )
        logger.info("resuming %s from epoch %d, step %d", out_dir, start_epoch, step)
    resumed_from = step

    augment = None
    if data_cfg.augmentation.active:
        size = image_size or data_cfg.resolution
        augment = WindowAugment.from_config(data_cfg.augmentation, size=size, train=True, seed=seed)
    train_set = ClipDataset(
        train_ids,
        source,
        train=True,
        clip_frames=clip_frames,
        window_frames=config.temporal.window_frames,
        frame_rate=frame_rate,
        augment=augment,
        seed=seed,
    )
    val_set = ClipDataset(
        val_ids, source, train=False, window_frames=config.temporal.window_frames, frame_rate=frame_rate
    )
    collate = ClipCollator.for_model(model)
    lambda_tc = training_cfg.temporal_consistency_weight
    stopped_early = False

    for epoch in range(start_epoch, plan.epochs):
        if step >= plan.total_steps:
            break
        epoch_started = time.perf_counter()
        train_set.set_epoch(epoch)
        loader = DataLoader(
            train_set,
            batch_size=plan.batch_size,
            sampler=_epoch_order(len(train_set), seed, epoch),
            collate_fn=collate,
        )
        model.train()
        losses, audio_used, seen = [], 0, 0
        for batch in loader:
            if step >= plan.total_steps:
                break
            result = train_step(
                model,
                batch,
                optimizer,
                scheduler,
                trainable,
                lambda_tc=lambda_tc,
                device=device,
                bf16=bf16,
                scaler=scaler,
            )
            step += 1
            losses.append(result.loss)
            audio_used += result.audio_used
            seen += len(batch)

        scored = score_videos(model, val_set, device=device, batch_size=eval_batch_size, bf16=bf16)
        val_loss, val_auc = _val_loss_auc(scored.logits, scored.labels)
        stats = EpochStats(
            epoch=epoch + 1,
            step=step,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            val_auc=val_auc,
            val_loss=val_loss,
            lr=float(scheduler.get_last_lr()[0]),
            seconds=time.perf_counter() - epoch_started,
            train_audio_fraction=audio_used / seen if seen else 0.0,
            val_audio_fraction=float(scored.audio_used.mean()) if len(scored.audio_used) else None,
        )
        history.append(stats)
        logger.info(
            "epoch %d step %d: train loss %.4f, val AUC %s, val loss %s, lr %.2e, %.1f s",
            stats.epoch,
            stats.step,
            stats.train_loss,
            "n/a" if val_auc is None else f"{val_auc:.4f}",
            "n/a" if val_loss is None else f"{val_loss:.4f}",
            stats.lr,
            stats.seconds,
        )

        manifest = _manifest(model, flags, training_data_hash, training_data, stats, training_cfg)
        if _is_better(stats, best):
            best = stats
            save_checkpoint(best_dir, model, manifest)
        save_checkpoint(last_dir, model, manifest)
        _save_state(state_path, model, optimizer, scheduler, stats, history, best, flags, plan)
        (out_dir / HISTORY_FILE).write_text(json.dumps([asdict(h) for h in history], indent=2))
        if on_epoch is not None and on_epoch(stats) is False:
            stopped_early = True
            break

    if not history:
        raise ValueError(f"{out_dir}: nothing to train (already at step {step} of {plan.total_steps})")
    logger.info(
        "training done in %.1f s, best val AUC %s", time.perf_counter() - started_at, best and best.val_auc
    )
    return TrainResult(
        best_checkpoint=best_dir,
        last_checkpoint=last_dir,
        history=history,
        best_val_auc=best.val_auc if best else None,
        resumed_from_step=resumed_from,
        stopped_early=stopped_early,
    )


def _manifest(
    model: DeepfakeDetector,
    flags: PretrainedFlags,
    data_hash: str | None,
    data_description: str | None,
    stats: EpochStats,
    training_cfg: TrainingConfig,
) -> CheckpointManifest:
    config = model.config
    metrics = {"epoch": float(stats.epoch), "step": float(stats.step), "train_loss": stats.train_loss}
    if stats.val_auc is not None:
        metrics["val_auc"] = stats.val_auc
    if stats.val_loss is not None:
        metrics["val_loss"] = stats.val_loss
    return CheckpointManifest.for_model(
        model,
        model_version=(
            f"{config.name}-{config.config_hash()}{flags.version_tag}-trained-{(data_hash or 'nodata')[:8]}"
            f"-s{stats.step}"
        ),
        pretrained=flags,
        trained=True,
        training_data_hash=data_hash,
        training_data=data_description,
        metrics=metrics,
        training=training_cfg.model_dump(mode="json"),
    )


def _save_state(
    path: Path,
    model: DeepfakeDetector,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stats: EpochStats,
    history: list[EpochStats],
    best: EpochStats | None,
    flags: PretrainedFlags,
    plan: TrainPlan,
) -> None:
    state = {
        "config_hash": model.config.config_hash(),
        "epoch": stats.epoch,
        "step": stats.step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "history": [asdict(h) for h in history],
        "best_epoch": best.epoch if best else None,
        "pretrained": flags.model_dump(),
        "plan": asdict(plan),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
