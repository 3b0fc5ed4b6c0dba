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
import platform
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


def run_one(path: Path, settings: Settings) -> dict[str, Any]:
    """The whole pipeline on one clip in this process, stage by stage (called in a child process)."""
    from dagster_deepfake.analyze import analyze_file
    from dagster_deepfake.storage import layout
    from dagster_deepfake.storage.artifacts import ArtifactStore

    with tempfile.TemporaryDirectory() as tmp:
        result = analyze_file(path, settings, out_dir=tmp)
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
    child = subprocess.run([sys.executable, "-m", "commands.bench", *args], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"bench child {args} failed: {child.stderr.strip().splitlines()[-1:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


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
    }


def run_bench(
    out_dir: Path,
    *,
    durations: list[float],
    resolutions: list[str],
    model_config: str,
    ensemble_size: int = 5,
    throughput_clips: int = 20,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    model_dir = out_dir / "models"
    common = ["--model", model_config, "--model-dir", str(model_dir)]
    # Build the serving checkpoint once up front, so the first clip's "model load" is a load.
    from dagster_deepfake.models.store import resolve_checkpoint

    resolve_checkpoint(settings.platform.checkpoint, str(model_dir), model_config)
    rows = []
    for res in resolutions:
        for duration in durations:
            clip = _clip(out_dir, res, duration)
            floor = decode_floor(clip, settings.data.frame_rate)
            row = _row(clip, res, duration, _child(["--one", str(clip), *common]), floor)
            rows.append(row)
            print(
                f"{clip.name}: total {row['total_s']:.2f}s ({row['x_realtime']:.2f}x real time, "
                f"{row['x_floor']:.1f}x decode floor), peak {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    ensemble = None
    if ensemble_size > 1:
        build_bench_ensemble(model_dir, model_config, ensemble_size)
        # The target names the 30 s 720p clip; a reduced run takes its first clip instead.
        res, duration = (
            ("720p", 30.0) if "720p" in resolutions and 30.0 in durations else (resolutions[0], durations[0])
        )
        clip = _clip(out_dir, res, duration)
        measured = _child(["--one", str(clip), *common, "--ensemble", str(ensemble_size)])
        ensemble = _row(clip, res, duration, measured, decode_floor(clip, settings.data.frame_rate))
        ensemble["ensemble_size"] = ensemble_size
        print(f"{clip.name} with ensemble_size {ensemble_size}: total {ensemble['total_s']:.2f}s", flush=True)
    throughput = dagster_throughput(out_dir, throughput_clips) if throughput_clips else None
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": model_config,
        "rows": rows,
        "ensemble": ensemble,
        "throughput": throughput,
    }
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench.md").write_text(markdown_table(report))
    return report


def dagster_throughput(
    out_dir: Path,
    n: int,
    *,
    duration: float = 5.0,
    res: str = "240p",
    timeout_s: float = 900,
) -> dict[str, Any]:
    """`n` clips in one process, then through the Dagster daemon (upload sensor, one run per clip)."""
    import shutil

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from dagster_deepfake.config import REPO_ROOT
    from dagster_deepfake.storage.bucket import UploadBucket
    from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
    from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url

    settings = load_settings()
    clips_dir = out_dir / "throughput"
    clips_dir.mkdir(parents=True, exist_ok=True)
    clips = [_clip(clips_dir, res, duration, seed=5000 + i) for i in range(n)]
    model_dir = out_dir / "models"
    # Both paths serve the platform's configured model (the Dagster runs read the config file).
    in_process = _child(
        [
            "--batch",
            ",".join(map(str, clips)),
            "--model",
            settings.model.registry_config,
            "--model-dir",
            str(model_dir),
        ]
    )
    print(f"throughput: {n} clips in one process in {in_process['total_s']:.1f}s", flush=True)

    # The Dagster path: a throwaway instance, bucket, artifact root and results database, so that
    # earlier runs (which would make these videos "already processed") do not count.
    base_url = settings.platform.postgres_url or embedded_postgres_url(settings.platform.postgres_data_dir)
    db_name = f"bench_{os.getpid()}_{int(time.time())}"
    admin = create_engine(make_url(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    bench_url = make_url(base_url).set(database=db_name).render_as_string(hide_password=False)
    work = Path(tempfile.mkdtemp(prefix="ddf-bench-"))
    home = work / "dagster_home"
    home.mkdir()
    instance_yaml = (REPO_ROOT / "deploy" / "dagster.local.yaml").read_text()
    (home / "dagster.yaml").write_text(
        instance_yaml.replace("max_concurrent_runs: 2", "max_concurrent_runs: 1")
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DEEPFAKE_UPLOAD_URI": (work / "bucket").as_uri(),
        "DAGSTER_DEEPFAKE_ARTIFACT_ROOT": str(work / "artifacts"),
        "DAGSTER_DEEPFAKE_POSTGRES_URL": bench_url,
        "DAGSTER_DEEPFAKE_MODEL_DIR": str(model_dir),
        "DAGSTER_DEEPFAKE_UPLOAD_SETTLE_SECONDS": "0",
    }
    db = ResultsDB(bench_url)
    db.create_schema()
    bucket = UploadBucket((work / "bucket").as_uri(), settings.platform.upload_suffixes)
    bucket.ensure()
    daemon_log = out_dir / "throughput-daemon.log"
    daemon = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-daemon")),
            "run",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=daemon_log.open("wb"),  # kept: the first place to look when a run is slow or fails
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ids = [partition_key_for_sha256(sha256_file(str(c))) for c in clips]
        start = time.perf_counter()
        for clip in clips:
            bucket.put_file(str(clip), clip.name)
        deadline = time.time() + timeout_s
        states: dict[str, str] = {}
        while time.time() < deadline:
            states = {v: (db.get_job(v) or {}).get("status", "waiting") for v in ids}
            if all(s in ("completed", "failed") for s in states.values()):
                break
            time.sleep(1)
        wall = time.perf_counter() - start
        stats = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import json; from commands.runs import run_stats; "
                    "print(json.dumps(run_stats('analyze_video')))",
                ],
                env=env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
    finally:
        import signal

        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        db.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
    completed = sum(s == "completed" for s in states.values())
    per_clip = sum(in_process["seconds"]) / n
    durations = stats["durations"]
    mean_run = sum(durations) / len(durations) if durations else float("nan")
    result = {
        "model": settings.model.registry_config,
        "clips": n,
        "clip": f"{res}, {duration:.0f} s",
        "in_process_s": in_process["total_s"],
        "in_process_videos_per_hour": round(3600 * n / in_process["total_s"], 1),
        "dagster_wall_s": round(wall, 1),
        "dagster_completed": completed,
        # runs launched as forks of the warm worker (the rest fell back to a fresh process)
        "dagster_forked_runs": stats["forked_from_warm_worker"],
        "dagster_videos_per_hour": round(3600 * completed / wall, 1),
        "in_process_mean_s": round(per_clip, 2),
        "dagster_mean_run_s": round(mean_run, 2),
        "per_run_overhead_s": round(mean_run - per_clip, 2),
        "wall_overhead_per_video_s": round((wall - in_process["total_s"]) / n, 2),
    }
    print(
        f"throughput: Dagster path {completed}/{n} in {wall:.1f}s; run {mean_run:.2f}s vs {per_clip:.2f}s "
        f"in process → {result['per_run_overhead_s']:.2f}s overhead per run",
        flush=True,
    )
    return result


def markdown_table(report: dict[str, Any]) -> str:
    stages = ["probe", "frames+faces", "flow", "audio+vad", "model load", "model", "saliency", "storage"]
    head = (
        "| clip | "
        + " | ".join(stages)
        + " | total s | ×real time | ×decode floor | peak RSS MB | frames/s |"
    )
    lines = [head, "|" + "---|" * (len(stages) + 6)]
    for r in report["rows"]:
        cells = [f"{r['timings'].get(s, 0):.2f}" for s in stages]
        lines.append(
            f"| {r['clip']} | " + " | ".join(cells) + f" | {r['total_s']:.2f} | {r['x_realtime']:.2f} | "
            f"{r['x_floor']:.1f} | {r['peak_rss_mb']:.0f} | {r['frames_per_s']:.1f} |"
        )
    ens = report.get("ensemble")
    if ens:
        cells = [f"{ens['timings'].get(s, 0):.2f}" for s in stages]
        lines.append(
            f"| {ens['clip']} ×{ens['ensemble_size']} ensemble | "
            + " | ".join(cells)
            + f" | {ens['total_s']:.2f} | {ens['x_realtime']:.2f} | {ens['x_floor']:.1f} | "
            f"{ens['peak_rss_mb']:.0f} | {ens['frames_per_s']:.1f} |"
        )
    tp = report.get("throughput")
    if tp:
        lines += [
            "",
            f"Throughput, {tp['clips']} clips ({tp['clip']}, model `{tp['model']}`): | in one process | through Dagster (sensor → "
            "one run per video, one at a time) |",
            "|---|---|---|",
            f"| wall s | {tp['in_process_s']:.1f} | {tp['dagster_wall_s']:.1f} ({tp['dagster_completed']} completed, "
            f"{tp.get('dagster_forked_runs', '?')} forked from the warm worker) |",
            f"| videos/hour | {tp['in_process_videos_per_hour']:.0f} | {tp['dagster_videos_per_hour']:.0f} |",
            f"| s per video | {tp['in_process_mean_s']:.2f} | {tp['dagster_mean_run_s']:.2f} (run start → end) |",
            f"| per-run overhead s | | {tp['per_run_overhead_s']:.2f} (run) · "
            f"{tp['wall_overhead_per_video_s']:.2f} (wall, incl. sensor and queue) |",
        ]
    m = report["machine"]
    lines.append("")
    lines.append(
        f"Model `{report['model']}` ({report['rows'][0]['weights'] if report['rows'] else '?'} weights, "
        f"{report['rows'][0]['precision'] if report['rows'] else '?'}); {m['cpus']} CPUs, {m['platform']}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="dagster-deepfake bench")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--batch", help=argparse.SUPPRESS)
    parser.add_argument("--ensemble", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="contract")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--durations", default="10,30,60")
    parser.add_argument("--resolutions", default="240p,720p,1080p")
    parser.add_argument("--ensemble-size", type=int, default=5)
    parser.add_argument("--throughput-clips", type=int, default=20)
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
        if args.batch:
            print(json.dumps(run_batch([Path(p) for p in args.batch.split(",")], settings)))
        else:
            print(json.dumps(run_one(Path(args.one), settings)))
        return 0
    report = run_bench(
        Path(args.out),
        durations=[float(d) for d in args.durations.split(",")],
        resolutions=args.resolutions.split(","),
        model_config=args.model,
        ensemble_size=args.ensemble_size,
        throughput_clips=args.throughput_clips,
    )
    print(markdown_table(report))
    if args.training_batches:  # the contract model's training cost at batch 32 (commands/bench_training.py)
        from commands.bench_training import markdown, run_training_bench

        batches = tuple(int(b) for b in args.training_batches.split(","))
        print(markdown(run_training_bench(Path(args.out), batches)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
