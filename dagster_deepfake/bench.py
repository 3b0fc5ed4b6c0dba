"""`make bench` / `dagster-deepfake bench`: per-stage cost of the whole per-video pipeline on
synthetic talking faces, next to the decode floor (ffmpeg decoding the same clip at the same
sampling rate and nothing else). Each clip runs in a fresh process so peak RSS is its own.
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

from dagster_deepfake.config import Settings, load_settings

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


def run_one(path: Path, settings: Settings) -> dict[str, Any]:
    """The whole pipeline on one clip in this process, stage by stage (called in a child process)."""
    from dagster_deepfake.analyze import analyze_file
    from dagster_deepfake.explain.gradcam import compute_saliency
    from dagster_deepfake.faces import create_detector, extract_faces
    from dagster_deepfake.flow import compute_flow_features
    from dagster_deepfake.media.frames import sample_frames
    from dagster_deepfake.media.probe import probe_video
    from dagster_deepfake.models.store import load_ensemble
    from dagster_deepfake.storage.artifacts import ArtifactStore

    result = analyze_file(path, settings)
    timings = dict(result.timings)
    pred = result.document["prediction"] if result.document else {}
    # Saliency and storage are Dagster-path stages; time them on the same inputs.
    probe = probe_video(path)
    extraction = extract_faces(
        sample_frames(path, probe, settings.data.frame_rate),
        create_detector(settings.data.faces),
        settings.data.faces,
    )
    flow = compute_flow_features(extraction.crops, extraction.kept_frame_ids)
    p = settings.platform
    (model, _), *_ = load_ensemble(p.checkpoint, p.model_dir, settings.model.registry_config, 1)[0]
    windows = result.stages["prediction"]["windows"]
    wf = settings.model.temporal.window_frames
    frames = [(w * wf, min(extraction.num_kept, (w + 1) * wf)) for w in range(len(windows))]
    start = time.perf_counter()
    compute_saliency(
        model,
        extraction.crops,
        flow.features,
        extraction.kept_frame_ids,
        np.array([w["p_fake"] for w in windows]),
        frames,
        k=settings.explain.top_k_frames,
    )
    timings["saliency"] = round(time.perf_counter() - start, 4)
    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(tmp)
        start = time.perf_counter()
        store.write_array("videos/v_0000000000000000/faces/crops.npy", extraction.crops)
        table = extraction.table.copy()
        table.insert(0, "video_id", "v_0000000000000000")
        store.write_table("faces", "v_0000000000000000", table)
        timings["storage"] = round(time.perf_counter() - start, 4)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "timings": timings,
        "frames": result.frames["count"],
        "faces": result.stages["faces"]["kept"],
        "p_fake": pred.get("manipulation_confidence"),
        "weights": result.stages["prediction"]["weights"],
        "precision": result.stages["prediction"]["precision"],
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def run_bench(
    out_dir: Path, *, durations: list[float], resolutions: list[str], model_config: str
) -> dict[str, Any]:
    from dagster_deepfake.synthetic import generate_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    rows = []
    for res in resolutions:
        w, h = RESOLUTIONS[res]
        for duration in durations:
            clip = out_dir / f"clip_{res}_{int(duration)}s.mp4"
            if not clip.exists():
                generate_clip(
                    clip, seed=int(duration) + h, duration=duration, width=w, height=h, audio="speech"
                )
            floor = decode_floor(clip, settings.data.frame_rate)
            child = subprocess.run(
                [sys.executable, "-m", "dagster_deepfake.bench", "--one", str(clip), "--model", model_config],
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            total = sum(measured["timings"].values())
            row = {
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
            rows.append(row)
            print(
                f"{clip.name}: total {total:.2f}s ({row['x_realtime']:.2f}x real time, {row['x_floor']:.1f}x decode floor), "
                f"peak {measured['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": model_config,
        "rows": rows,
    }
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench.md").write_text(markdown_table(report))
    return report


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
    parser.add_argument("--model", default="contract")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--durations", default="10,30,60")
    parser.add_argument("--resolutions", default="240p,720p,1080p")
    args = parser.parse_args(argv)
    if args.one:
        settings = load_settings()
        settings.model.registry_config = args.model
        print(json.dumps(run_one(Path(args.one), settings)))
        return 0
    report = run_bench(
        Path(args.out),
        durations=[float(d) for d in args.durations.split(",")],
        resolutions=args.resolutions.split(","),
        model_config=args.model,
    )
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
