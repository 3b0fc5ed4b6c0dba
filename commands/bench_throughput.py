"""The bench's throughput pass: many short clips in one process against the same clips through
Dagster (bucket → upload sensor → runs → results), one run per video and in batched runs
(assets/batch.py), plus the latency of a single upload (submit → completed).

Each Dagster pass gets a throwaway instance, bucket, artifact root and results database (earlier
runs would make the videos "already processed") and its own code server and `dagster-daemon`
(commands/local_dagster.py, as `make demo` starts them); the clock starts
once the daemon's sensor loop is up, so the daemon's own start-up is not counted. Batched runs go
`platform.side_by_side_runs` at a time, each pinned to its share of the cores, and the in-process
loop is measured both in one process and split the same way (dagster_deepfake/runtime.py: one
process keeps two cores ~1.25 busy); one run per video goes one at a time. Peak memory is the
largest summed RSS of the code server, the daemon and every process below it (run workers), sampled
every second.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from commands.local_dagster import start_local_dagster
from dagster_deepfake.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, REPO_ROOT, Settings, load_settings


def _tree_rss_mb(*pids: int) -> float:
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def _run_records(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every finished run of the pass's instance: job, status, start/end, creation time, tags."""
    code = (
        "import json, dagster as dg\n"
        "with dg.DagsterInstance.get() as i:\n"
        "    rs = i.get_run_records()\n"
        "    print(json.dumps([{'job': r.dagster_run.job_name, 'status': r.dagster_run.status.value,\n"
        "        'create': r.create_timestamp.timestamp(), 'start': r.start_time, 'end': r.end_time,\n"
        "        'tags': dict(r.dagster_run.tags)} for r in rs]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _daemon_ready(env: dict[str, str]) -> bool:
    code = (
        "import dagster as dg\n"
        "with dg.DagsterInstance.get() as i:\n"
        "    print('SENSOR' in i.get_daemon_heartbeats())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    return out.stdout.strip().endswith("True")


class DagsterPass:
    """A throwaway instance + daemon; `submit` clips and wait for their jobs to finish."""

    def __init__(
        self,
        out_dir: Path,
        model_dir: Path,
        *,
        batch_max_videos: int,
        name: str,
        launcher: str = "default",
        concurrent_runs: int = 1,
    ) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        from dagster_deepfake.storage.bucket import UploadBucket
        from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url

        settings = load_settings()
        base_url = settings.platform.postgres_url or embedded_postgres_url(
            settings.platform.postgres_data_dir
        )
        self.db_name = f"bench_{name}_{os.getpid()}_{int(time.time())}"
        self.admin = create_engine(make_url(base_url), isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        url = make_url(base_url).set(database=self.db_name).render_as_string(hide_password=False)
        self.work = Path(tempfile.mkdtemp(prefix=f"ddf-bench-{name}-"))
        home = self.work / "dagster_home"
        home.mkdir()
        instance_yaml = (REPO_ROOT / "deploy" / "dagster.local.yaml").read_text()
        instance_yaml = instance_yaml.replace(
            "max_concurrent_runs: 2", f"max_concurrent_runs: {concurrent_runs}"
        )
        if launcher == "default":  # Dagster's DefaultRunLauncher: a fresh process per run, public API only
            instance_yaml = re.sub(r"(?ms)^run_launcher:\n(?:[ #].*?\n)+(?=^\S)", "", instance_yaml)
        elif "launchers.prefork" not in instance_yaml:
            raise RuntimeError("the local instance has no warm-worker launcher to measure")
        (home / "dagster.yaml").write_text(instance_yaml)
        self.launcher = launcher
        # The config in effect with the pass's batch size and a short sensor interval.
        config = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH).read_text()
        config = re.sub(r"(?m)^  batch_max_videos: .*$", f"  batch_max_videos: {batch_max_videos}", config)
        config = re.sub(r"(?m)^  side_by_side_runs: .*$", f"  side_by_side_runs: {concurrent_runs}", config)
        config = re.sub(r"(?m)^  sensor_interval_seconds: .*$", "  sensor_interval_seconds: 2", config)
        (self.work / "config.yaml").write_text(config)
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "DAGSTER_DEEPFAKE_CONFIG": str(self.work / "config.yaml"),
            "DAGSTER_DEEPFAKE_UPLOAD_URI": (self.work / "bucket").as_uri(),
            "DAGSTER_DEEPFAKE_ARTIFACT_ROOT": str(self.work / "artifacts"),
            "DAGSTER_DEEPFAKE_POSTGRES_URL": url,
            "DAGSTER_DEEPFAKE_MODEL_DIR": str(model_dir),
            "DAGSTER_DEEPFAKE_UPLOAD_SETTLE_SECONDS": "0",
        }
        self.db = ResultsDB(url)
        self.db.create_schema()
        self.bucket = UploadBucket((self.work / "bucket").as_uri(), settings.platform.upload_suffixes)
        self.bucket.ensure()
        self.peak_rss_mb = 0.0
        # Create the instance's SQLite storage once, before the daemon and its code server open it
        # together (two processes stamping a fresh database race: "more than one head").
        subprocess.run(
            [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().get_runs(limit=1)"],
            env=self.env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        # The daemon on its own code server, as `make demo` runs it (commands/local_dagster.py).
        self.dagster = start_local_dagster(
            self.env,
            (out_dir / f"throughput-daemon-{name}.log").open("wb"),  # the first place to look
        )
        deadline = time.time() + 300
        while not _daemon_ready(self.env):
            if time.time() > deadline or self.dagster.poll() is not None:
                self.dagster.stop()
                raise RuntimeError(
                    f"dagster-daemon did not come up; see {out_dir}/throughput-daemon-{name}.log"
                )
            time.sleep(1)

    def submit(self, clips: list[Path], timeout_s: float = 3600) -> tuple[float, dict[str, str]]:
        """Put `clips` into the bucket; wall seconds until every job is completed or failed."""
        from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file

        ids = [partition_key_for_sha256(sha256_file(str(c))) for c in clips]
        start = time.perf_counter()
        for clip in clips:
            self.bucket.put_file(str(clip), clip.name)
        deadline = time.time() + timeout_s
        states: dict[str, str] = {}
        while time.time() < deadline:
            states = {v: (self.db.get_job(v) or {}).get("status", "waiting") for v in ids}
            self.peak_rss_mb = max(
                self.peak_rss_mb, _tree_rss_mb(self.dagster.code_server.pid, self.dagster.daemon.pid)
            )
            if all(s in ("completed", "failed") for s in states.values()):
                break
            time.sleep(1)
        return time.perf_counter() - start, states

    def runs(self) -> list[dict[str, Any]]:
        return _run_records(self.env)

    def close(self) -> None:
        from sqlalchemy import text

        self.dagster.stop()
        self.db.engine.dispose()
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        self.admin.dispose()
        shutil.rmtree(self.work, ignore_errors=True)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _batched_pass(
    key: str,
    launcher: str,
    settings: Settings,
    clips: list[Path],
    baselines: tuple[float, float | None],
    out_dir: Path,
    make_clip: Callable[[int], Path],
    *,
    warm_up: bool = False,
    lone_upload: bool = False,
) -> dict[str, Any]:
    """`clips` through Dagster as batched runs on `launcher`: the `key`_* figures against the
    in-process baselines (one process, pinned processes side by side). `warm_up`: one upload
    first (starts a warm worker); `lone_upload`: one more after, timed submit → completed."""
    n = len(clips)
    one, shared = baselines
    out: dict[str, Any] = {}
    batched = DagsterPass(
        out_dir,
        out_dir / "models",
        batch_max_videos=settings.platform.batch_max_videos,
        name=key.replace("_", "-"),
        launcher=launcher,
        concurrent_runs=settings.platform.side_by_side_runs,
    )
    try:
        if warm_up:
            warm_up_s, _ = batched.submit([make_clip(n + 1002)])  # starts the worker: imports once
            out[f"{key}_warm_up_upload_s"] = round(warm_up_s, 1)
        wall, states = batched.submit(clips)
        if lone_upload:
            # One more upload on its own, on the same warm instance: submit → completed.
            latency, lone_state = batched.submit([make_clip(n + 1000)])
        runs = batched.runs()
    finally:
        batched.close()
    out.update(
        {
            f"{key}_launcher": launcher,
            f"{key}_wall_s": round(wall, 1),
            f"{key}_completed": sum(s == "completed" for s in states.values()),
            f"{key}_runs": sum(1 for r in runs if r["job"] == "analyze_batch" and r["end"]),
            f"{key}_videos_per_hour": round(3600 * n / wall, 1),
            f"{key}_share_of_in_process": round(one / wall, 3),
            f"{key}_orchestration_s_per_video": round((wall - one) / n, 2),
            f"{key}_share_of_side_by_side": round(shared / wall, 3) if shared else None,
            f"{key}_orchestration_s_per_video_side_by_side": round((wall - shared) / n, 2)
            if shared
            else None,
            f"{key}_peak_rss_mb": round(batched.peak_rss_mb),
        }
    )
    print(
        f"throughput: batched on the {launcher} launcher {out[f'{key}_completed']}/{n} in {wall:.1f}s "
        f"({out[f'{key}_share_of_in_process']:.0%} of in-process, "
        f"{out[f'{key}_orchestration_s_per_video']:.2f}s orchestration per video)",
        flush=True,
    )
    if lone_upload:
        lone_runs = [
            r for r in runs if r["job"] == "analyze_video" and "dagster-deepfake/batch_run" not in r["tags"]
        ]
        out.update(
            {
                "single_upload_latency_s": round(latency, 1),
                "single_upload_status": next(iter(lone_state.values()), "?"),
                "single_upload_run_s": round(lone_runs[-1]["end"] - lone_runs[-1]["start"], 1)
                if lone_runs
                else None,
            }
        )
        print(f"throughput: single upload {latency:.1f}s", flush=True)
    return out


def dagster_throughput(
    out_dir: Path,
    n: int,
    *,
    per_video_clips: int = 10,
    make_clip: Callable[[int], Path],
    in_process: Callable[[list[Path], int], dict[str, Any]],
) -> dict[str, Any]:
    """`n` clips in one process, and in `side_by_side_runs` processes side by side each pinned to
    its share of the cores (what batch runs do, runtime.py); then through Dagster batched; the
    first `per_video_clips` of them one run per video; one more clip alone for the single-upload
    latency."""
    from concurrent.futures import ThreadPoolExecutor

    from assets.batch import chunks

    settings = load_settings()
    side_by_side = settings.platform.side_by_side_runs
    model_dir = out_dir / "models"
    clips = [make_clip(i) for i in range(n)]
    local = in_process(clips, 1)
    per_clip = sum(local["seconds"]) / n
    print(f"throughput: {n} clips in one process in {local['total_s']:.1f}s", flush=True)
    shared_s = None
    if side_by_side > 1:
        parts = chunks(clips, -(-n // side_by_side))
        with ThreadPoolExecutor(len(parts)) as pool:
            # Timed inside each process, as the single process is: the slower one's total.
            shared_s = max(r["total_s"] for r in pool.map(lambda part: in_process(part, side_by_side), parts))
        print(
            f"throughput: {n} clips in {len(parts)} pinned processes side by side in {shared_s:.1f}s",
            flush=True,
        )
    result: dict[str, Any] = {
        "model": settings.model.registry_config,
        "clips": n,
        "in_process_s": local["total_s"],
        "in_process_mean_s": round(per_clip, 3),
        "in_process_videos_per_hour": round(3600 * n / local["total_s"], 1),
        "batch_max_videos": settings.platform.batch_max_videos,
        "side_by_side_runs": side_by_side,
        "in_process_side_by_side_s": shared_s,
        "in_process_side_by_side_videos_per_hour": round(3600 * n / shared_s, 1) if shared_s else None,
    }

    # Batched runs on Dagster's default launcher (a fresh process per run, public API only), then
    # on the instance's warm-worker launcher where it is configured (the local default), its
    # worker warmed by one upload first as a running instance has it; the one-run-per-video pass
    # on the warm-worker launcher too.
    warm = "launchers.prefork" in (REPO_ROOT / "deploy" / "dagster.local.yaml").read_text()
    baselines = (local["total_s"], shared_s)
    result.update(
        _batched_pass("batched", "default", settings, clips, baselines, out_dir, make_clip, lone_upload=True)
    )
    if warm:
        result.update(
            _batched_pass(
                "batched_prefork", "prefork", settings, clips, baselines, out_dir, make_clip, warm_up=True
            )
        )

    m = min(per_video_clips, n)
    if m:
        per_video = DagsterPass(
            out_dir,
            model_dir,
            batch_max_videos=1,
            name="per-video",
            launcher="prefork" if warm else "default",
        )
        try:
            wall_pv, states_pv = per_video.submit(clips[:m])
            runs_pv = [r for r in per_video.runs() if r["job"] == "analyze_video" and r["end"]]
            lone_pv, _ = per_video.submit([make_clip(n + 1001)])
        finally:
            per_video.close()
        mean_run = _mean([r["end"] - r["start"] for r in runs_pv])
        result.update(
            {
                "per_video_clips": m,
                "per_video_wall_s": round(wall_pv, 1),
                "per_video_completed": sum(s == "completed" for s in states_pv.values()),
                "per_video_videos_per_hour": round(3600 * m / wall_pv, 1),
                "per_video_mean_run_s": round(mean_run, 2),
                "per_video_overhead_s": round(mean_run - per_clip, 2),
                "per_video_orchestration_s_per_video": round(wall_pv / m - per_clip, 2),
                "per_video_peak_rss_mb": round(per_video.peak_rss_mb),
                "per_video_launcher": per_video.launcher,
                "single_upload_latency_per_video_launcher_s": round(lone_pv, 1),
            }
        )
        print(
            f"throughput: one run per video {result['per_video_completed']}/{m} in {wall_pv:.1f}s; "
            f"run {mean_run:.2f}s vs {per_clip:.2f}s in process",
            flush=True,
        )
    return result


def markdown(tp: dict[str, Any]) -> list[str]:
    """The throughput table (markdown lines)."""
    lines = [
        "",
        f"Throughput, {tp['clips']} clips (240p, 5 s, model `{tp['model']}`):",
        "",
        "| path | clips | wall s | videos/hour | share of in-process | orchestration s/video | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        f"| in one process (models loaded once) | {tp['clips']} | {tp['in_process_s']:.1f} | "
        f"{tp['in_process_videos_per_hour']:.0f} | 100 % | – | – |",
    ]
    k = tp.get("side_by_side_runs", 1)
    shared = tp.get("in_process_side_by_side_s")
    if shared:
        lines.append(
            f"| in {k} processes side by side, each pinned to its share of the cores | {tp['clips']} | "
            f"{shared:.1f} | {tp['in_process_side_by_side_videos_per_hour']:.0f} | "
            f"{tp['in_process_s'] / shared:.0%} | – | – |"
        )
    for key in ("batched", "batched_prefork"):
        if f"{key}_wall_s" not in tp:
            continue
        runs = f"{tp[f'{key}_runs']} run{'s' if tp[f'{key}_runs'] != 1 else ''}"
        versus = (
            f" ({tp[f'{key}_share_of_side_by_side']:.0%} of {k} pinned processes, "
            f"{tp[f'{key}_orchestration_s_per_video_side_by_side']:.2f} s/video against them)"
            if shared
            else ""
        )
        launcher = "default launcher" if tp[f"{key}_launcher"] == "default" else "warm-worker launcher"
        if (warm_up_s := tp.get(f"{key}_warm_up_upload_s")) is not None:
            launcher += f", worker warmed by one upload ({warm_up_s:.1f} s)"
        lines.append(
            f"| Dagster, batched runs (≤ {tp['batch_max_videos']} videos each, {runs}, {k} side by side, {launcher}) | "
            f"{tp['clips']} | {tp[f'{key}_wall_s']:.1f} | {tp[f'{key}_videos_per_hour']:.0f} | "
            f"{tp[f'{key}_share_of_in_process']:.0%}{versus} | {tp[f'{key}_orchestration_s_per_video']:.2f} | "
            f"{tp[f'{key}_peak_rss_mb']} |"
        )
    if "per_video_clips" in tp:
        share = tp["per_video_videos_per_hour"] / tp["in_process_videos_per_hour"]
        lines.append(
            f"| Dagster, one run per video, one at a time ({tp['per_video_launcher']} launcher, run {tp['per_video_mean_run_s']:.2f} s) | "
            f"{tp['per_video_clips']} | "
            f"{tp['per_video_wall_s']:.1f} | {tp['per_video_videos_per_hour']:.0f} | {share:.0%} | "
            f"{tp['per_video_orchestration_s_per_video']:.2f} | {tp['per_video_peak_rss_mb']} |"
        )
    lines += [
        "",
        f"Single upload (one 5 s clip, submit → completed, sensor every 2 s): {tp['single_upload_latency_s']:.1f} s "
        f"with Dagster's default launcher ({tp['single_upload_status']}; its run {tp['single_upload_run_s']} s)"
        + (
            f"; {tp['single_upload_latency_per_video_launcher_s']:.1f} s with the {tp['per_video_launcher']} launcher."
            if "single_upload_latency_per_video_launcher_s" in tp
            else "."
        ),
    ]
    return lines
