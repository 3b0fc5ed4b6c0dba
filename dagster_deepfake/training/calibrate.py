"""Video-level logits of a model on a set of videos, and temperature calibration of a checkpoint.

`collect_logits` scores whole videos exactly as serving does (all kept faces, windows of 5,
mean of the window logits; see `training.data`), in eval mode: no dropout, no modality
dropout, no augmentation. `calibrate_checkpoint` fits the contract's temperature on the
validation videos and writes it into the checkpoint's manifest, which every later
prediction (`predict_video(temperature=manifest.temperature)`) then uses.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader

from dagster_deepfake.config import CpuBackbone
from dagster_deepfake.models.checkpoint import (
    MANIFEST_FILE,
    CheckpointManifest,
    load_checkpoint,
    read_manifest,
)
from dagster_deepfake.models.detector import DeepfakeDetector, DetectorOutput
from dagster_deepfake.models.inference import autocast_context, precision_name
from dagster_deepfake.models.onnx_backbone import onnx_feature_maps, use_onnx_backbone
from dagster_deepfake.training.calibration import apply_temperature, fit_temperature
from dagster_deepfake.training.data import ClipBatch, ClipCollator, ClipDataset
from dagster_deepfake.training.features import FeatureSource
from dagster_deepfake.training.metrics import plot_reliability, reliability_bins

#: Faces per backbone call when scoring whole videos (bounds activation memory, not results).
FACE_CHUNK = 64


@dataclass
class ScoredVideos:
    """Eval-mode outputs for n videos, in the order asked for."""

    video_ids: list[str]
    logits: np.ndarray  # (n, 2) float32 [real, fake], uncalibrated
    labels: np.ndarray  # (n,) int64
    methods: list[str]
    audio_used: np.ndarray  # (n,) bool
    # Per video, (kept faces, 2) uncalibrated logits: each face carries the logits of the 1-s
    # window it belongs to, the model's finest score (the frame-level unit of the evaluation).
    face_logits: list[np.ndarray] = field(default_factory=list)
    backbone_runtime: str = "torch"  # "torch" | "onnxruntime" (score_videos' cpu_backbone)
    precision: str = "fp32"  # "fp32" | "bf16" | "amp", as `VideoPrediction.precision`
    device: str = "cpu"  # the torch device type the model ran on

    @property
    def p_fake_raw(self) -> np.ndarray:
        return apply_temperature(self.logits, 1.0)


def forward_batch(
    model: DeepfakeDetector,
    batch: ClipBatch,
    face_chunk: int | None = None,
    feature_maps: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DetectorOutput:
    """`model(...)` on a `ClipBatch`; with `face_chunk`, the backbone runs on chunks of faces;
    `feature_maps`: ONNX Runtime's backbone session in place of torch's (`DeepfakeDetector.encode_faces`)."""
    frame_features = model.encode_faces(
        batch.faces, batch.frame_mask, chunk_size=face_chunk, feature_maps=feature_maps
    )
    audio, audio_valid = model.encode_audio(batch.waveform, batch.speech_mask)
    return model.forward_features(frame_features, batch.flow, batch.frame_mask, audio, audio_valid)


def score_videos(
    model: DeepfakeDetector,
    dataset: ClipDataset,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    bf16: bool = False,
    cpu_backbone: CpuBackbone = "torch",
    model_dir: str | Path | None = None,
) -> ScoredVideos:
    """Run `model` in eval mode over an evaluation `ClipDataset` (whole videos).

    `cpu_backbone`, `model_dir`: as for serving (`predict_video`): where `use_onnx_backbone` says so
    (fp32 on the CPU), the face backbone runs in ONNX Runtime, its graph exported once per weights
    under `model_dir`, so an evaluation scores what serving computes, as fast. Training's own
    validation keeps torch (its weights change every epoch: an export per epoch would not pay).
    """
    if dataset.train:
        raise ValueError("score_videos needs an evaluation dataset (train=False)")
    device = torch.device(device)
    maps = None
    runtimes: set[str] = set()
    if use_onnx_backbone(cpu_backbone, device, bf16):
        if model_dir is None:
            raise ValueError(f"cpu_backbone {cpu_backbone!r} needs a model_dir for the exported graph")

        def maps(faces: torch.Tensor) -> torch.Tensor:
            # One session per face size (the graph's input is fixed); None: ONNX cannot take this
            # backbone, torch serves (onnx_feature_maps warns once).
            runner = onnx_feature_maps(model.frame_encoder, model_dir, int(faces.shape[-1]))
            runtimes.add("torch" if runner is None else "onnxruntime")
            return model.frame_encoder.feature_maps(faces) if runner is None else runner(faces)

    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=ClipCollator.for_model(model)
    )
    was_training = model.training
    model.eval()
    logits, labels, used, ids, methods, faces = [], [], [], [], [], []
    window = model.config.temporal.window_frames
    try:
        with torch.inference_mode():
            for batch in loader:
                batch = batch.to(device)
                with autocast_context(device, bf16):
                    output = forward_batch(model, batch, FACE_CHUNK, maps)
                logits.append(output.video_logits.float().cpu())
                window_logits = output.window_logits.float().cpu()
                for b, mask in enumerate(batch.frame_mask.cpu()):
                    kept = torch.nonzero(mask).flatten()
                    faces.append(window_logits[b, kept // window].numpy())
                used.append(output.audio_used.cpu())
                labels.append(batch.labels.cpu())
                ids += batch.video_ids
                methods += batch.methods
    finally:
        model.train(was_training)
    if not ids:
        return ScoredVideos([], np.zeros((0, 2), np.float32), np.zeros(0, np.int64), [], np.zeros(0, bool))
    return ScoredVideos(
        video_ids=ids,
        logits=torch.cat(logits).numpy(),
        labels=torch.cat(labels).numpy(),
        methods=methods,
        audio_used=torch.cat(used).numpy(),
        face_logits=faces,
        backbone_runtime="+".join(sorted(runtimes)) or "torch",
        precision=precision_name(device, bf16),
        device=device.type,
    )


def evaluation_dataset(
    model: DeepfakeDetector, ids: Sequence[str], source: FeatureSource, *, frame_rate: float = 5.0
) -> ClipDataset:
    """Whole-video dataset with the model's window size."""
    return ClipDataset(
        ids, source, train=False, window_frames=model.config.temporal.window_frames, frame_rate=frame_rate
    )


def collect_logits(
    model: DeepfakeDetector,
    ids: Sequence[str],
    source: FeatureSource,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    cpu_backbone: CpuBackbone = "torch",
    model_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(logits (n, 2) [real, fake] uncalibrated, labels (n,), methods) for the videos `ids`."""
    scored = score_videos(
        model,
        evaluation_dataset(model, ids, source),
        device=device,
        batch_size=batch_size,
        cpu_backbone=cpu_backbone,
        model_dir=model_dir,
    )
    return scored.logits, scored.labels, scored.methods


class CalibrationResult(BaseModel):
    """The fitted temperature, its effect on the validation videos, and the reliability plot."""

    checkpoint: str
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n: int
    at_bound: bool
    reliability_png: bytes


def write_manifest_atomic(directory: str | Path, manifest: CheckpointManifest) -> Path:
    """Replace `manifest.json` in one rename, so readers never see a half-written file."""
    directory = Path(directory)
    target = directory / MANIFEST_FILE
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=".manifest.", suffix=".tmp", delete=False
    ) as tmp:
        tmp.write(manifest.model_dump_json(indent=2))
        tmp_path = Path(tmp.name)
    tmp_path.replace(target)
    return target


def calibrate_checkpoint(
    checkpoint_dir: str | Path,
    val_ids: Sequence[str],
    source: FeatureSource,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    cpu_backbone: CpuBackbone = "torch",
    model_dir: str | Path | None = None,
) -> CalibrationResult:
    """Fit the temperature on `val_ids` and write it into the checkpoint's manifest.

    Always fitted on the raw logits (T = 1), so calibrating twice gives the same T. The
    manifest's metrics gain `val_nll`/`val_ece` before and after calibration.
    `cpu_backbone`, `model_dir`: where the face backbone runs (`score_videos`).
    """
    checkpoint_dir = Path(checkpoint_dir)
    model, manifest = load_checkpoint(checkpoint_dir, map_location=device)
    logits, labels, _ = collect_logits(
        model,
        val_ids,
        source,
        device=device,
        batch_size=batch_size,
        cpu_backbone=cpu_backbone,
        model_dir=model_dir,
    )
    if len(labels) == 0:
        raise ValueError("calibration needs at least one validation video")
    fit = fit_temperature(logits, labels)
    before = reliability_bins(labels, apply_temperature(logits, 1.0))
    after = reliability_bins(labels, apply_temperature(logits, fit.temperature))
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_reliability(before, after, Path(tmp) / "reliability.png").read_bytes()

    manifest = read_manifest(checkpoint_dir)  # fresh copy: only the calibration fields change
    manifest.temperature = fit.temperature
    manifest.metrics.update(
        {
            "val_nll_uncalibrated": fit.nll_before,
            "val_nll_calibrated": fit.nll_after,
            "val_ece_uncalibrated": fit.ece_before,
            "val_ece_calibrated": fit.ece_after,
        }
    )
    write_manifest_atomic(checkpoint_dir, manifest)
    return CalibrationResult(
        checkpoint=str(checkpoint_dir),
        temperature=fit.temperature,
        nll_before=fit.nll_before,
        nll_after=fit.nll_after,
        ece_before=fit.ece_before,
        ece_after=fit.ece_after,
        n=fit.n,
        at_bound=fit.at_bound,
        reliability_png=png,
    )
