"""Throughput with one and two Celery workers, and the Celery path's per-video overhead against
the local one (issue 19). Both paths on the same host, the same local bucket, artifact folder and
embedded PostgreSQL, the tiny model, so the difference is the execution path alone.

    .venv/bin/python scripts/bench_celery.py --videos 4 --out bench-celery

Prints a table and writes it to OUT/celery.md. On a 2-core machine two workers share the
same two cores: expect little gain, and label every figure with the load it ran under.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.cluster import (
    base_env,
    create_dagster_storage,
    dagster_storage_url,
    make_home,
    start_dagster,
    start_worker,
    stop_group,
)
from commands.local_dagster import start_local_dagster
from dagster_deepfake.broker import start_redis, stop_redis
from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url, stop_embedded_postgres


def _clips(folder: Path, n: int, seed0: int) -> list[Path]:
    from dagster_deepfake.synthetic import generate_clip

    out = []
    for i in range(n):
        path = folder / f"c{seed0 + i}.mp4"
        generate_clip(path, seed=seed0 + i, duration=1.2, width=320, height=240, audio="speech")
        out.append(path)
    return out


def _drop(bucket: Path, clips: list[Path]) -> list[str]:
    ids = []
    for clip in clips:
        tmp = bucket / f".{clip.name}.part"
        shutil.copy(clip, tmp)
        tmp.rename(bucket / clip.name)
        ids.append(partition_key_for_sha256(sha256_file(str(clip))))
    return ids


def _wait(db: ResultsDB, home: Path, ids: list[str], timeout: float = 900) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all((db.get_job(v) or {}).get("status") in ("completed", "failed") for v in ids):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError(f"{ids} not done in {timeout} s")


def _run_seconds(home: Path, ids: list[str], timeout: float = 120) -> list[float]:
    """RUN_START → RUN_SUCCESS of each video's per-video run (the job row is written by the last
    step, a moment before its run ends: wait for the ends)."""
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while True:
            out = []
            for v in ids:
                runs = instance.get_runs(
                    dg.RunsFilter(tags={"dagster/partition": v}, job_name="analyze_video")
                )
                for run in runs:
                    stats = instance.get_run_stats(run.run_id)
                    if stats.start_time and stats.end_time:
                        out.append(stats.end_time - stats.start_time)
            if len(out) >= len(ids) or time.monotonic() > deadline:
                return out
            time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--out", default="bench-celery")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ddf-bc-"))
    pg_dir = root / "pg"
    results_url = embedded_postgres_url(str(pg_dir))
    db = ResultsDB(results_url)
    db.create_schema()
    (root / "bucket").mkdir()
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"registry_config": "tiny"},
                "platform": {
                    "upload_uri": f"file://{root / 'bucket'}",
                    "artifact_root": str(root / "artifacts"),
                    "postgres_url": results_url,
                    "model_dir": str(root / "models"),
                    "upload_settle_seconds": 1,
                    "sensor_interval_seconds": 2,
                    "device": "cpu",
                },
            }
        )
    )
    broker = start_redis(root / "redis", 16599)
    env = base_env(os.environ, broker_url=broker, dagster_pg_url=dagster_storage_url(results_url))
    env["DAGSTER_DEEPFAKE_CONFIG"] = str(config)
    os.environ["DAGSTER_PG_URL"] = env["DAGSTER_PG_URL"]  # this process reads the Celery instance too
    for name in (
        "DAGSTER_DEEPFAKE_UPLOAD_URI",
        "DAGSTER_DEEPFAKE_ARTIFACT_ROOT",
        "DAGSTER_DEEPFAKE_POSTGRES_URL",
    ):
        env.pop(name, None)
    rows: list[tuple[str, str]] = []
    load_at_start = os.getloadavg()[0]
    seed = 500
    n = args.videos
    try:
        # -- local path: the default instance (SQLite, prefork launcher), in-process executor
        local_home = make_home(root / "local_home", REPO_ROOT / "deploy" / "dagster.local.yaml")
        # as `make demo` starts it: a code server and the daemon on it (commands/local_dagster.py)
        local = start_local_dagster(
            {**env, "DAGSTER_HOME": str(local_home)}, (root / "local-daemon.log").open("wb")
        )
        try:
            _wait(db, local_home, _drop(root / "bucket", _clips(root, 1, seed)))  # warm-up
            seed += 1
            singles = []
            for _ in range(2):
                ids = _drop(root / "bucket", _clips(root, 1, seed))
                seed += 1
                singles.append(_wait(db, local_home, ids))
            local_run = _run_seconds(local_home, ids)
            ids = _drop(root / "bucket", _clips(root, n, seed))
            seed += n
            local_burst = _wait(db, local_home, ids)
        finally:
            local.stop()
        print(f"local singles {singles}, runs {local_run}, burst {local_burst:.1f} s", flush=True)
        rows.append(("local, one video at a time: drop → completed", f"{min(singles):.1f} s"))
        rows.append(("local, one video: run start → end", f"{local_run[-1]:.1f} s"))
        rows.append(
            (f"local, {n} videos at once (batched run): throughput", f"{n / local_burst * 60:.1f} videos/min")
        )

        # -- Celery path: one worker, then two
        home = make_home(root / "celery_home")
        create_dagster_storage(home, env)
        daemon = start_dagster("daemon", home, env, root / "celery-daemon.log")
        workers = [start_worker("w1", root / "w1", env)]
        try:
            _wait(db, home, _drop(root / "bucket", _clips(root, 1, seed)))  # warm-up (worker, run fork)
            seed += 1
            singles = []
            for _ in range(2):
                ids = _drop(root / "bucket", _clips(root, 1, seed))
                seed += 1
                singles.append(_wait(db, home, ids))
            celery_run = _run_seconds(home, ids)
            rows.append(("Celery, one video at a time: drop → completed", f"{min(singles):.1f} s"))
            rows.append(("Celery, one video: run start → end", f"{celery_run[-1]:.1f} s"))
            for count in (1, 2):
                if count == 2:
                    workers.append(start_worker("w2", root / "w2", env))
                    time.sleep(20)  # let it import
                ids = _drop(root / "bucket", _clips(root, n, seed))
                seed += n
                took = _wait(db, home, ids)
                print(f"celery {count} worker(s): burst of {n} in {took:.1f} s", flush=True)
                rows.append(
                    (
                        f"Celery, {n} videos at once, {count} worker(s): throughput",
                        f"{n / took * 60:.1f} videos/min",
                    )
                )
        finally:
            for w in workers:
                w.stop()
            stop_group(daemon)
    finally:
        stop_redis(root / "redis")
        stop_embedded_postgres(str(pg_dir))
    table = [
        f"| measure ({os.cpu_count()} CPUs, load average at start {load_at_start:.2f}) | value |",
        "| --- | --- |",
    ]
    table += [f"| {a} | {b} |" for a, b in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "celery.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
