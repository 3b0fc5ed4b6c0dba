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


def contract_training_setup(seed: int = 0, device: str = "cpu", model_config: str = "contract"):
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
    plan = plan_training(10_000, training, max_steps=1000)
    return model, optimizer, build_scheduler(optimizer, training, plan), trainable


def measure(
    batch: int, steps: int, device: str = "cpu", bf16: bool = False, flops: bool = True
) -> dict[str, Any]:
    """Median seconds per `train_step` (after one warm-up step), peak memory, and the floating-point
    work of one more step (forward + backward, counted by torch's FlopCounterMode: what a GPU
    estimate can be computed from), in this process."""
    from dagster_deepfake.config import TrainingConfig
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
        "precision": ("amp" if cuda else "bf16") if bf16 else "fp32",
    }
    if cuda:
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        out["tflop_per_step"] = round(counter.get_total_flops() / 1e12, 4)
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
    keys = {"step_s": "step_s", "cpu_s": "cpu_s", "peak_mb": memory_key, "tflop_per_step": "tflop_per_step"}
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
