"""`make bench` / `dagster-deepfake bench`: per-stage cost of the whole per-video pipeline on
synthetic talking faces, next to the decode floor (ffmpeg decoding the same clip at the same
sampling rate and nothing else). Each clip runs in a fresh process so peak RSS is its own.

Two more measurements follow the per-clip table:

- ensemble: the 30 s 720p clip with `inference.ensemble_size: 5` (four more checkpoints of the
  same config, random weights with other seeds unless real ones sit in the model folder).
- throughput: 20 short clips (5 s, 240p) analysed in one process (models loaded once) and the same 20
  dropped into a bucket and run by the Dagster daemon through the upload sensor, one run per
  video, one run at a time (on 2 cores two runs at once only share the CPU: in a two-clip
  trial a run took 41 s against 15 s one at a time). Runs are forks of the instance's warm
  worker (launchers/prefork.py); the first run also waits for that worker to import its
  modules. The per-run overhead is a run's mean wall time (start → end: fork, model load, step
  bookkeeping, the Parquet hand-offs between assets) minus the in-process seconds per clip; the
  wall figure adds the sensor's and the queue's latency.

The benchmark keeps its own model folder (`<out>/models`): a trained checkpoint published by
training (`.models/current`) is never benchmarked by accident; `platform.checkpoint` (real
weights) is honoured and the table says which weights ran.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dagster_deepfake.config import ModelConfig, Settings, load_settings

RESOLUTIONS = {"240p": (426, 240), "720p": (1280, 720), "1080p": (1920, 1080)}


def decode_floor(path: Path, frame_rate: float) -> float:
    """Seconds for ffmpeg alone to decode and sample the clip to raw RGB (output discarded)."""
    from dagster_deepfake.media.ffmpeg_bin import ffmpeg

    start = time.perf_counter()
    subprocess.run(
        [
            ffmpeg(),
            "-v",
            "error",
            "-nostdin",
            "-i",
            str(path),
            "-vf",
            f"fps={frame_rate}",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-y",
            os.devnull,
        ],
        check=True,
    )
    return time.perf_counter() - start


def build_bench_ensemble(model_dir: Path, model_config: str, size: int) -> None:
    """`size - 1` extra members under `model_dir/ensemble/` (untrained, seeds 1…), made once."""
    from dagster_deepfake.models.checkpoint import MANIFEST_FILE, build_untrained, save_checkpoint

    for seed in range(1, size):
        folder = model_dir / "ensemble" / f"{model_config}-untrained-seed{seed}"
        if (folder / MANIFEST_FILE).is_file():
            continue
        model, manifest = build_untrained(model_config, seed=seed)
        manifest = manifest.model_copy(update={"model_version": f"{manifest.model_version}-seed{seed}"})
        save_checkpoint(folder, model, manifest)
        del model


def _with_backbone(settings: Settings, backbone: str) -> Settings:
    return settings.model_copy(
        update={"platform": settings.platform.model_copy(update={"cpu_backbone": backbone})}
    )


def run_one(path: Path, settings: Settings, *, warm: bool = False) -> dict[str, Any]:
    """The whole pipeline on one clip in this process, stage by stage (called in a child process).

    `warm`: analyse the clip a second time in the same process (the model's cold vs warm time:
    oneDNN builds its kernels on the first pass), then in fp32: torch (the reference for
    |ΔP(fake)|) and ONNX Runtime's backbone (models/onnx_backbone.py).
    """
    from dagster_deepfake.analyze import analyze_file
    from dagster_deepfake.storage import layout
    from dagster_deepfake.storage.artifacts import ArtifactStore

    with tempfile.TemporaryDirectory() as tmp:
        result = analyze_file(path, settings, out_dir=tmp)
        extra: dict[str, Any] = {}
        if warm:
            passes_start = time.perf_counter()
            again = analyze_file(path, settings, out_dir=tmp)
            extra["warm_timings"] = dict(again.timings)
            from dagster_deepfake.models import inference

            reduced = inference.default_bf16
            inference.default_bf16 = lambda device: False  # this child only: the fp32 passes
            precision = again.document["additions"]["precision"]
            try:
                # the reference, torch fp32; then, on the CPU, ONNX Runtime's fp32 backbone (what a
                # CPU without native bf16 runs by default, `platform.cpu_backbone`) twice: the first
                # exports the graph unless this checkpoint's is already under model_dir/onnx. On
                # such a CPU the two passes above were those already.
                fp32 = analyze_file(path, _with_backbone(settings, "torch"), out_dir=tmp)
                onnx_passes = None
                if precision == "fp32" and settings.platform.cpu_backbone != "torch":
                    onnx_passes = (result, again)
                elif precision != "amp":  # amp: CUDA, where ONNX Runtime is not used
                    onnx_settings = _with_backbone(settings, "onnxruntime")
                    onnx_passes = tuple(analyze_file(path, onnx_settings, out_dir=tmp) for _ in range(2))
            finally:
                inference.default_bf16 = reduced
            extra["fp32_model_s"] = fp32.timings.get("model")
            extra["p_fake_fp32"] = fp32.document["prediction"]["manipulation_confidence"]
            if onnx_passes:
                onnx_first, onnx = onnx_passes
                extra["onnx_first_model_s"] = onnx_first.timings.get("model")
                extra["onnx_model_s"] = onnx.timings.get("model")
                extra["p_fake_onnx"] = onnx.document["prediction"]["manipulation_confidence"]
            # Not start-up: the row's start-up is the process wall minus the first pass's stages.
            extra["extra_passes_s"] = round(time.perf_counter() - passes_start, 3)
        timings = dict(result.timings)
        doc = result.document
        # Storage is a Dagster-path stage: time writing the biggest artifact the same way.
        store = ArtifactStore(tmp)
        crops = np.zeros((doc["metadata"]["frames_analyzed"], 224, 224, 3), np.uint8)
        start = time.perf_counter()
        store.write_array(layout.crops_rel("v_0000000000000000"), crops)
        timings["storage"] = round(time.perf_counter() - start, 4)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "timings": timings,
        "frames": doc["metadata"]["frames_analyzed"] + doc["additions"]["skipped_frames"]["total"],
        "faces": doc["metadata"]["frames_analyzed"],
        "p_fake": doc["prediction"]["manipulation_confidence"],
        "weights": doc["additions"]["weights"],
        "precision": doc["additions"]["precision"],
        "peak_rss_mb": round(peak_kb / 1024, 1),
        **extra,
    }


def run_batch(paths: list[Path], settings: Settings) -> dict[str, Any]:
    """Analyse `paths` one after another in this process (models load once); seconds per clip."""
    from dagster_deepfake.analyze import analyze_file

    seconds = []
    start_all = time.perf_counter()
    for path in paths:
        start = time.perf_counter()
        analyze_file(path, settings)
        seconds.append(round(time.perf_counter() - start, 3))
    return {"seconds": seconds, "total_s": round(time.perf_counter() - start_all, 3)}


def _child(args: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "commands.bench", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"bench child {args} failed: {child.stderr.strip().splitlines()[-1:]}")
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    measured["process_wall_s"] = round(wall, 3)  # what a user waits: start-up and exit included
    return measured


def cli_wall(clip: Path, model_config: str, model_dir: Path, device: str | None = None) -> dict[str, Any]:
    """`dagster-deepfake analyze CLIP --json` exactly as a user runs it: wall seconds, start-up included."""
    env = {**os.environ, "DAGSTER_DEEPFAKE_MODEL_DIR": str(model_dir)}
    if device:
        env["DAGSTER_DEEPFAKE_DEVICE"] = device
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "commands.cli",
                "analyze",
                str(clip),
                "--json",
                "--model",
                model_config,
                "--out",
                tmp,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"analyze {clip} failed: {done.stderr.strip().splitlines()[-1:]}")
    doc = json.loads(done.stdout)
    return {"clip": clip.name, "wall_s": round(wall, 2), "precision": doc["additions"]["precision"]}


def _clip(out_dir: Path, res: str, duration: float, seed: int | None = None) -> Path:
    from dagster_deepfake.synthetic import generate_clip

    w, h = RESOLUTIONS[res]
    # The table's clips have fixed seeds; throughput clips name theirs (distinct bytes each).
    clip = out_dir / (f"clip_{res}_{int(duration)}s" + ("" if seed is None else f"_seed{seed}") + ".mp4")
    seed = int(duration) + h if seed is None else seed
    if not clip.exists():
        generate_clip(clip, seed=seed, duration=duration, width=w, height=h, audio="speech")
    return clip


def _row(clip: Path, res: str, duration: float, measured: dict[str, Any], floor: float) -> dict[str, Any]:
    total = sum(measured["timings"].values())
    return {
        "clip": clip.name,
        "resolution": res,
        "duration_s": duration,
        **measured,
        "total_s": round(total, 3),
        "x_realtime": round(total / duration, 3),
        "decode_floor_s": round(floor, 3),
        "x_floor": round(total / floor, 2),
        "frames_per_s": round(measured["frames"] / total, 2),
        # the fresh process's wall minus its stages: interpreter, imports, set-up and exit
        "startup_s": round(measured["process_wall_s"] - total - measured.get("extra_passes_s", 0.0), 3)
        if "process_wall_s" in measured
        else None,
    }


def _target(resolutions: list[str], durations: list[float]) -> tuple[str, float]:
    """The issue's clip (30 s 720p); a reduced run takes its first clip instead."""
    return ("720p", 30.0) if "720p" in resolutions and 30.0 in durations else (resolutions[0], durations[0])


def _table_rows(
    out_dir: Path, resolutions: list[str], durations: list[float], common: list[str], frame_rate: float
) -> list[dict[str, Any]]:
    rows = []
    target = _target(resolutions, durations)
    for res in resolutions:
        for duration in durations:
            clip = _clip(out_dir, res, duration)
            floor = decode_floor(clip, frame_rate)
            warm = ["--warm"] if (res, duration) == target else []
            row = _row(clip, res, duration, _child(["--one", str(clip), *common, *warm]), floor)
            rows.append(row)
            print(
                f"{clip.name}: stages {row['total_s']:.2f}s + start-up {row['startup_s']:.2f}s "
                f"({row['x_realtime']:.2f}x real time, {row['x_floor']:.1f}x decode floor), "
                f"peak {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    return rows


def run_bench(
    out_dir: Path,
    *,
    durations: list[float],
    resolutions: list[str],
    model_config: str,
    ensemble_size: int = 5,
    throughput_clips: int = 40,
    per_video_clips: int = 10,
) -> dict[str, Any]:
    from commands.bench_machine import machine_info

    out_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    model_dir = out_dir / "models"
    common = ["--model", model_config, "--model-dir", str(model_dir)]
    # Build the serving checkpoint once up front, so the first clip's "model load" is a load.
    from dagster_deepfake.models.store import resolve_checkpoint

    resolve_checkpoint(settings.platform.checkpoint, str(model_dir), model_config)
    machine = machine_info()
    rows = _table_rows(
        out_dir, resolutions, durations, [*common, "--device", "cpu"], settings.data.frame_rate
    )
    res, duration = _target(resolutions, durations)
    target = _clip(out_dir, res, duration)
    # The user's command itself, start-up and exit included: the ≤ 0.5× real time target.
    cli = cli_wall(target, model_config, model_dir, device="cpu")
    cli["x_realtime"] = round(cli["wall_s"] / duration, 3)
    print(
        f"dagster-deepfake analyze {target.name}: {cli['wall_s']:.2f}s wall ({cli['x_realtime']:.2f}x)",
        flush=True,
    )
    cuda_rows = None
    if machine["cuda"]:  # the same table on the GPU (never required: `make test` runs without one)
        cuda_rows = _table_rows(
            out_dir, resolutions, durations, [*common, "--device", "cuda"], settings.data.frame_rate
        )
    ensemble = None
    if ensemble_size > 1:
        build_bench_ensemble(model_dir, model_config, ensemble_size)
        measured = _child(["--one", str(target), *common, "--ensemble", str(ensemble_size)])
        ensemble = _row(target, res, duration, measured, decode_floor(target, settings.data.frame_rate))
        ensemble["ensemble_size"] = ensemble_size
        print(
            f"{target.name} with ensemble_size {ensemble_size}: total {ensemble['total_s']:.2f}s", flush=True
        )
    throughput = None
    if throughput_clips:
        from commands.bench_throughput import dagster_throughput

        clips_dir = out_dir / "throughput"
        clips_dir.mkdir(parents=True, exist_ok=True)
        throughput = dagster_throughput(
            out_dir,
            throughput_clips,
            per_video_clips=per_video_clips,
            make_clip=lambda i: _clip(clips_dir, "240p", 5.0, seed=5000 + i),
            # Both paths serve the platform's configured model (the Dagster runs read the config file).
            in_process=lambda clips, slots=1: _child(
                [
                    "--batch",
                    ",".join(map(str, clips)),
                    "--cpu-slots",
                    str(slots),
                    "--model",
                    settings.model.registry_config,
                    "--model-dir",
                    str(model_dir),
                ]
            ),
        )
    report = {
        "machine": machine,
        "model": model_config,
        "rows": rows,
        "cli": cli,
        "cuda_rows": cuda_rows,
        "ensemble": ensemble,
        "throughput": throughput,
    }
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench.md").write_text(markdown_table(report))
    return report


STAGES = ["probe", "frames+faces", "flow", "audio+vad", "model load", "model", "saliency", "storage"]


def _stage_table(rows: list[dict[str, Any]], ensemble: dict[str, Any] | None = None) -> list[str]:
    head = (
        "| clip | "
        + " | ".join(STAGES)
        + " | total s | start-up s | ×real time | ×decode floor | peak RSS MB | frames/s |"
    )
    lines = [head, "|" + "---|" * (len(STAGES) + 7)]
    for r in [*rows, *([ensemble] if ensemble else [])]:
        cells = [f"{r['timings'].get(s, 0):.2f}" for s in STAGES]
        name = r["clip"] + (f" ×{r['ensemble_size']} ensemble" if "ensemble_size" in r else "")
        startup = f"{r['startup_s']:.2f}" if r.get("startup_s") is not None else "–"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {r['total_s']:.2f} | {startup} | {r['x_realtime']:.2f} | "
            f"{r['x_floor']:.1f} | {r['peak_rss_mb']:.0f} | {r['frames_per_s']:.1f} |"
        )
    return lines


def _cold_warm(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if "warm_timings" not in r:
            continue
        cold, warm = r["timings"]["model"], r["warm_timings"]["model"]
        line = (
            f"Model time on {r['clip']} ({r['precision']}): cold {cold:.2f} s (first pass in a fresh process), "
            f"warm {warm:.2f} s (second pass); warm total {sum(r['warm_timings'].values()):.2f} s."
        )
        if "p_fake_fp32" in r:
            line += (
                f" torch fp32 on the same inputs: model {r['fp32_model_s']:.2f} s, "
                f"|ΔP(fake)| = {abs(r['p_fake'] - r['p_fake_fp32']):.5f} (tolerance 0.01)."
            )
        if "p_fake_onnx" in r:
            line += (
                f" ONNX Runtime fp32 backbone (a CPU without native bf16): model {r['onnx_first_model_s']:.2f} s "
                f"first, {r['onnx_model_s']:.2f} s next, |ΔP(fake)| against torch fp32 = "
                f"{abs(r['p_fake_onnx'] - r['p_fake_fp32']):.5f}."
            )
        lines.append(line)
    return lines


def markdown_table(report: dict[str, Any]) -> str:
    from commands.bench_machine import markdown as machine_md

    m = report["machine"]
    lines = [
        machine_md(m) if "cpu_model" in m else f"{m.get('cpus', '?')} CPUs, {m.get('platform', '?')}.",
        "",
    ]
    lines += _stage_table(report["rows"], report.get("ensemble"))
    cli = report.get("cli")
    if cli:
        lines += [
            "",
            f"`dagster-deepfake analyze {cli['clip']} --json` end to end, start-up and exit included: "
            f"**{cli['wall_s']:.2f} s wall ({cli['x_realtime']:.2f}× real time)**, {cli['precision']}.",
        ]
    lines += ["", *_cold_warm(report["rows"])]
    if report.get("cuda_rows"):
        lines += ["", f"Same clips on CUDA ({m['cuda']['device']}):", "", *_stage_table(report["cuda_rows"])]
        lines += _cold_warm(report["cuda_rows"])
    tp = report.get("throughput")
    if tp:
        from commands.bench_throughput import markdown as throughput_md

        lines += throughput_md(tp)
    lines.append("")
    lines.append(
        f"Model `{report['model']}` ({report['rows'][0]['weights'] if report['rows'] else '?'} weights, "
        f'{report["rows"][0]["precision"] if report["rows"] else "?"}). "total s" is the sum of the stages; '
        '"start-up s" is the rest of the fresh process\'s wall (interpreter, imports, exit).'
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="dagster-deepfake bench")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--batch", help=argparse.SUPPRESS)
    parser.add_argument("--ensemble", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-slots", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="contract", help="registry config to benchmark")
    parser.add_argument("--out", default="bench-out", help="folder for clips, bench.json and bench.md")
    parser.add_argument("--durations", default="10,30,60", help="clip lengths in seconds")
    parser.add_argument("--resolutions", default="240p,720p,1080p")
    parser.add_argument(
        "--ensemble-size",
        type=int,
        default=5,
        help="also time the 30 s 720p clip with this ensemble (1: skip)",
    )
    parser.add_argument(
        "--throughput-clips",
        type=int,
        default=40,
        help="clips for in-process vs Dagster-daemon throughput, batched runs (0: skip)",
    )
    parser.add_argument(
        "--per-video-clips", type=int, default=10, help="of those, through one run per video (0: skip)"
    )
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--training-batches", default="2,4", help="contract-model training step at these batches ('': skip)"
    )
    args = parser.parse_args(argv)
    if args.one or args.batch:
        settings = load_settings()
        settings.model = ModelConfig(registry_config=args.model)  # the variant alone
        settings.inference.ensemble_size = args.ensemble
        if args.model_dir:
            settings.platform.model_dir = args.model_dir
        if args.device:
            settings.platform.device = args.device
        if args.batch:
            from dagster_deepfake.runtime import claim_cpu_slot

            claim_cpu_slot(args.cpu_slots)  # side by side with others, as batch runs are (runtime.py)
            print(json.dumps(run_batch([Path(p) for p in args.batch.split(",")], settings)))
        else:
            print(json.dumps(run_one(Path(args.one), settings, warm=args.warm)))
        return 0
    report = run_bench(
        Path(args.out),
        durations=[float(d) for d in args.durations.split(",")],
        resolutions=args.resolutions.split(","),
        model_config=args.model,
        ensemble_size=args.ensemble_size,
        throughput_clips=args.throughput_clips,
        per_video_clips=args.per_video_clips,
    )
    print(markdown_table(report))
    if args.training_batches:  # the contract model's training cost at batch 32 (commands/bench_training.py)
        from commands.bench_training import markdown, run_training_bench

        batches = tuple(int(b) for b in args.training_batches.split(","))
        print(markdown(run_training_bench(Path(args.out), batches)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
