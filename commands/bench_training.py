"""Training cost of the contract model: step time and peak memory of `training.loop.train_step`.

The contract trains at batch 32 of 5-frame clips (docs/ARCHITECTURE.md §1). Each batch size
runs in a fresh process (peak RSS is its own) on clips of the contract's shapes: 5 faces of
224² and 1 s of 16 kHz speech per clip, random weights (no hub), the contract's freeze policy
(EfficientNet-B3 tuned, wav2vec2's CNN and first 8 layers frozen, last 4 tuned). Where batch 32
does not fit the machine's memory or time, smaller batches are measured and a straight line
(fixed cost + cost per clip) through them is extrapolated to 32; the output says which.

    python -m commands.bench_training --batches 2,4 --target 32 [--device cuda] [--bf16]

`make bench` calls `run_training_bench` after its per-clip table (commands/bench.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

FRAMES = 5  # one 1-second window at 5 FPS
FACE_SIZE = 224
AUDIO_SECONDS = 1.0


def synthetic_batch(
    model: Any,
    batch: int,
    *,
    frames: int = FRAMES,
    seconds: float = AUDIO_SECONDS,
    size: int = FACE_SIZE,
    seed: int = 0,
) -> Any:
    """A `ClipBatch` of the contract's shapes through the training collator (faces normalised
    like training's): uint8 faces, flow, speech; labels alternate real/fake."""
    from dagster_deepfake.training.data import ClipCollator, ClipSample

    generator = torch.Generator().manual_seed(seed)
    samples = 16000 * seconds
    clips = [
        ClipSample(
            video_id=f"v_{i:016x}",
            label=i % 2,
            method="bench",
            faces=torch.randint(0, 256, (frames, 3, size, size), generator=generator, dtype=torch.uint8),
            flow=torch.rand(frames, 2, generator=generator),
            frame_mask=torch.ones(frames, dtype=torch.bool),
            waveform=torch.randn(int(samples), generator=generator) * 0.1,
            speech_mask=torch.ones(int(samples), dtype=torch.bool),
        )
        for i in range(batch)
    ]
    return ClipCollator.for_model(model)(clips)


def contract_training_setup(
    seed: int = 0, device: str = "cpu", model_config: str = "contract", total_steps: int = 1000
):
    """(model, optimizer, scheduler, trainable) exactly as `train_detector` builds them, random init."""
    from dagster_deepfake.config import TrainingConfig
    from dagster_deepfake.models.configuration import resolve_model_config
    from dagster_deepfake.models.weights import build_detector
    from dagster_deepfake.training.loop import build_optimizer, build_scheduler, plan_training

    training = TrainingConfig()
    model, _ = build_detector(resolve_model_config(model_config), pretrained=False, seed=seed)
    model.fusion.modality_dropout = training.modality_dropout_prob
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, training)
    plan = plan_training(10_000, training, max_steps=total_steps)
    return model, optimizer, build_scheduler(optimizer, training, plan), trainable


def step_flops(model: Any, clips: Any) -> dict[str, float]:
    """TFLOP of one training step: the forward counted by torch's FlopCounterMode, plus the usual
    2 × forward for the backward of everything that gets gradients (all but wav2vec2's frozen CNN,
    projection, positional conv and first `freeze_encoder_blocks` layers, which autograd skips).
    The backward itself is not counted because FlopCounterMode ignores `groups` in
    convolution_backward: it put 418 GFLOP on EfficientNet-B3's backward for 5 faces whose
    forward is 9.6 GFLOP (its depthwise convolutions have groups = channels)."""
    from torch.utils.flop_counter import FlopCounterMode

    frozen_blocks = model.config.audio.freeze_encoder_blocks
    w2v = "DeepfakeDetector.audio_encoder.wav2vec2."
    frozen = [w2v + "feature_extractor", w2v + "feature_projection", w2v + "encoder.pos_conv_embed"]
    frozen += [f"{w2v}encoder.layers.{i}" for i in range(frozen_blocks)]
    was_training = model.training
    model.eval()  # no dropout/layerdrop: the count is of the full network
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clips.faces, clips.flow, clips.frame_mask, clips.waveform, clips.speech_mask)
    model.train(was_training)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    forward = counts["Global"]
    no_backward = sum(counts.get(name, 0) for name in frozen)
    return {
        "forward_tflop": round(forward / 1e12, 4),
        "tflop_per_step": round((forward + 2 * (forward - no_backward)) / 1e12, 4),
    }


def measure(
    batch: int, steps: int, device: str = "cpu", bf16: bool = False, flops: bool = True
) -> dict[str, Any]:
    """Median seconds per `train_step` (after one warm-up step), peak memory and the floating-point
    work of a step (`step_flops`: what a GPU estimate can be computed from), in this process."""
    from dagster_deepfake.config import TrainingConfig
    from dagster_deepfake.models.inference import precision_name
    from dagster_deepfake.training.loop import grad_scaler, train_step

    model, optimizer, scheduler, trainable = contract_training_setup(device=device)
    clips = synthetic_batch(model, batch)
    scaler = grad_scaler(device, bf16)
    lam = TrainingConfig().temporal_consistency_weight
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        return train_step(
            model,
            clips,
            optimizer,
            scheduler,
            trainable,
            lambda_tc=lam,
            device=device,
            bf16=bf16,
            scaler=scaler,
        ).loss

    times, cpu, losses = [], [], []
    for _ in range(steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        losses.append(step())
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    out: dict[str, Any] = {
        "batch": batch,
        "frames": FRAMES,
        "step_s": round(statistics.median(times[1:]), 3),
        "first_step_s": round(times[0], 3),
        # CPU seconds of this process per step: unlike wall time, barely moved by other jobs
        # sharing the cores (docs/ARCHITECTURE.md §7: never trust wall time under load).
        "cpu_s": round(statistics.median(cpu[1:]), 3),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": losses[-1],
        "device": device,
        "precision": precision_name(device, bf16),
    }
    if cuda:
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if flops:
        out.update(step_flops(model, clips))
    return out


def _line(points: list[tuple[int, float]], x: int) -> float:
    """Least-squares straight line through (batch, value), evaluated at `x` (one point: proportional)."""
    if len(points) == 1:
        ((b, v),) = points
        return v * x / b
    n = len(points)
    mx = sum(b for b, _ in points) / n
    my = sum(v for _, v in points) / n
    slope = sum((b - mx) * (v - my) for b, v in points) / sum((b - mx) ** 2 for b, _ in points)
    return my + slope * (x - mx)


def run_training_bench(
    out_dir: Path | None = None,
    batches: tuple[int, ...] = (2, 4),
    target: int = 32,
    steps: int = 2,
    device: str = "cpu",
    bf16: bool = False,
) -> dict[str, Any]:
    """Measure each batch size in a fresh process; extrapolate to `target` unless it was measured."""
    rows = []
    for batch in batches:
        args = ["--worker", str(batch), "--steps", str(steps), "--device", device] + (
            ["--bf16"] if bf16 else []
        )
        child = subprocess.run(
            [sys.executable, "-m", "commands.bench_training", *args], capture_output=True, text=True
        )
        if child.returncode != 0:
            raise RuntimeError(
                f"training bench at batch {batch} failed: {child.stderr.strip().splitlines()[-1:]}"
            )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    measured = {r["batch"]: r for r in rows}
    memory_key = "peak_gpu_mb" if device.startswith("cuda") else "peak_rss_mb"
    keys = {
        "step_s": "step_s",
        "cpu_s": "cpu_s",
        "peak_mb": memory_key,
        "tflop_per_step": "tflop_per_step",
        "forward_tflop": "forward_tflop",
    }
    if target in measured:
        at_target: dict[str, Any] = {k: measured[target].get(v) for k, v in keys.items()} | {
            "how": "measured"
        }
    else:
        at_target = {
            k: round(_line([(r["batch"], r[v]) for r in rows if v in r], target), 3) for k, v in keys.items()
        } | {"how": f"extrapolated (straight line) from batch {', '.join(str(b) for b in batches)}"}
    report = {
        "model": "contract",
        "target_batch": target,
        "frames": FRAMES,
        "device": device,
        "memory": memory_key,
        "rows": rows,
        "at_target": at_target,
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform()},
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench_training.json").write_text(json.dumps(report, indent=2))
        (out_dir / "bench_training.md").write_text(markdown(report))
    return report


# What a FaceForensics++-sized run is, for `ffpp_estimate` (each an assumption, stated in the output).
FFPP_TRAIN_VIDEOS = 3600  # c23 official train split: 720 originals + 4 methods × 720
FFPP_VIDEOS = (
    6000  # everything cached: 1000 originals + Deepfakes, Face2Face, FaceSwap, NeuralTextures, FaceShifter
)
FFPP_SECONDS = 17.0  # 509,914 frames of 1000 originals (the FF++ paper) at ~30 FPS
CROP_BYTES = 224 * 224 * 3  # one aligned face in crops.npy (uint8)
# One sampled 720p frame as the lossless PNG the frames asset keeps: measured 0.83 and 0.99 MB on
# ../shared/media/ffpp_c23_{real_004,neuraltextures_004_982}.mp4 (62 frames each).
FRAME_PNG_BYTES = 0.9e6
# Feature extraction (frames + faces + flow) per second of 720p video on the 2-core build machine:
# 4.48 + 0.34 s for a 30 s clip (README, Performance); the backfill runs it once per video.
EXTRACT_S_PER_VIDEO_S = (4.48 + 0.34) / 30
CELEBDF_VAL_VIDEOS = 518  # Celeb-DF v2's test list, the contract's validation set (~13 s each)
CELEBDF_SECONDS = 13.0


def ffpp_estimate(
    report: dict[str, Any], *, gpus: tuple[int, ...] = (1, 4, 8), sustained_tflops: float = 40.0
) -> list[str]:
    """GPU hours and cache disk of a FF++ c23 run (20 epochs, batch 32) from the counted FLOPs.

    Work: the training steps, plus one validation pass per epoch over every face of Celeb-DF v2's
    518 videos (forward only, at the measured forward cost per face). `sustained_tflops`: what one
    GPU sustains on this model in AMP; 40 is ~13 % of an A100's bf16 peak (312), a usual share for
    depthwise-convolution networks. Scaling over GPUs is taken as 90 % efficient; data loading
    (24 MB of crops per step) is assumed to keep up."""
    from dagster_deepfake.config import DataConfig, TrainingConfig
    from dagster_deepfake.training.loop import plan_training

    training = TrainingConfig()
    plan = plan_training(FFPP_TRAIN_VIDEOS, training)
    tflop = report["at_target"]["tflop_per_step"]
    frames = FFPP_SECONDS * DataConfig().frame_rate
    per_face = report["at_target"]["forward_tflop"] / (report["target_batch"] * report["frames"])
    val = training.epochs * CELEBDF_VAL_VIDEOS * CELEBDF_SECONDS * DataConfig().frame_rate * per_face
    work = plan.total_steps * tflop + val
    lines = [
        f"FaceForensics++ c23 ({FFPP_TRAIN_VIDEOS} training videos, {training.epochs} epochs at batch "
        f"{plan.batch_size}: {plan.total_steps} steps of {report['target_batch']} × {report['frames']} frames, "
        f"{tflop:.2f} TFLOP each, {plan.total_steps * tflop:.0f} TFLOP) + {training.epochs} validation passes "
        f"over Celeb-DF v2's {CELEBDF_VAL_VIDEOS} videos ({val:.0f} TFLOP):",
    ]
    for n in gpus:
        hours = work / (sustained_tflops * n * (0.9 if n > 1 else 1.0)) / 3600
        lines.append(
            f"- {n} GPU{'s' if n > 1 else ''} sustaining {sustained_tflops:.0f} TFLOPS each: {hours * 60:.1f} min"
        )
    cpu_h = plan.total_steps * report["at_target"]["cpu_s"] / 3600
    lines.append(f"- this CPU: {cpu_h:.0f} CPU-core hours ({cpu_h / 2:.0f} h on 2 cores)")
    crops = FFPP_VIDEOS * frames * CROP_BYTES / 1e9
    pngs = FFPP_VIDEOS * frames * FRAME_PNG_BYTES / 1e9
    lines.append(
        f"- feature cache for all {FFPP_VIDEOS} videos (~{frames:.0f} faces each at "
        f"{DataConfig().frame_rate:g} FPS): {crops:.0f} GB of face crops (what training reads) + "
        f"{pngs:.0f} GB of 720p frame PNGs"
    )
    extract_h = (FFPP_VIDEOS + CELEBDF_VAL_VIDEOS) * FFPP_SECONDS * EXTRACT_S_PER_VIDEO_S / 3600
    lines.append(
        f"- feature extraction once (backfill, CPU): ~{extract_h:.1f} h on 2 cores, less on more workers"
    )
    lines.append(
        "Training clips are `clip_frames` = 10 (two windows) by default: about twice the work per step."
    )
    return lines


def markdown(report: dict[str, Any]) -> str:
    t = report["at_target"]
    memory = "GPU" if "gpu" in report["memory"] else "RSS"
    lines = [
        "Training step of the contract model (EfficientNet-B3 tuned + wav2vec2-base 8 frozen / 4 tuned, "
        f"random init), {report['frames']} faces of 224² + 1 s speech per clip, AdamW, on {report['device']}:",
        "",
        f"| batch × frames | step s (wall) | CPU s per step | first step s | peak {memory} MB | TFLOP per step | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['batch']} × {r['frames']} | {r['step_s']} | {r['cpu_s']} | {r['first_step_s']} "
            f"| {r[report['memory']]} | {r.get('tflop_per_step', '')} | {r['precision']} |"
        )
    lines.append(
        f"| **{report['target_batch']} × {report['frames']}** | **{t['step_s']}** | **{t['cpu_s']}** | "
        f"| **{t['peak_mb']:.0f}** | **{t['tflop_per_step']}** | {t['how']} |"
    )
    lines.append("")
    lines.append(
        f"{report['machine']['threads']} threads, {report['machine']['platform']}; wall time depends on "
        "what else shares the machine, CPU seconds much less."
    )
    if report["at_target"].get("tflop_per_step"):
        lines += ["", *ffpp_estimate(report)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.bench_training")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="2,4", help="batch sizes to measure (each in a fresh process)")
    parser.add_argument(
        "--target", type=int, default=32, help="batch size to report (extrapolated if not measured)"
    )
    parser.add_argument("--steps", type=int, default=2, help="timed steps per batch size (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast: bf16 on CPU, AMP on CUDA")
    parser.add_argument("--no-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="folder for bench_training.json / .md")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps, args.device, args.bf16, flops=not args.no_flops)))
        return 0
    batches = tuple(int(b) for b in args.batches.split(",") if b)
    report = run_training_bench(
        Path(args.out) if args.out else None, batches, args.target, args.steps, args.device, args.bf16
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
