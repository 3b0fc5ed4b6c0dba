"""Scale check: 20,000 video partitions and a sensor tick over a bucket of 20,000 objects.

    .venv/bin/python scripts/bench_scale.py                 # all phases, numbers on stdout
    .venv/bin/python scripts/bench_scale.py --objects 5000 --s3-objects 0

Each phase runs in its own Python process so that its peak RSS is its own. Phases:

- partitions: add N keys to a temporary SQLite Dagster instance in batches (the way
  `register-dataset` does) and read them back (what the upload sensor does every tick); also
  times a few single-key adds to show why batching matters.
- tick-local: N small objects in a local folder; the real `upload_bucket_sensor` evaluated
  against an instance that already holds N partitions: a first tick (list, select, hash and
  register up to `sensor_max_objects_per_tick`) and an idle tick once everything is registered
  (the steady-state cost every `sensor_interval_seconds`).
- tick-s3: the same on moto's S3 server on loopback with fewer objects (S3 PUTs to moto are the
  slow part of the set-up, not of the tick).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

# Dagster's default sensor evaluation timeout (DEFAULT_SENSOR_GRPC_TIMEOUT) is 60 s.
SENSOR_TIME_LIMIT_SECONDS = 60


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _keys(n: int) -> list[str]:
    from dagster_deepfake.storage.keys import partition_key_for_sha256

    return [partition_key_for_sha256(hashlib.sha256(b"%d" % i).hexdigest()) for i in range(n)]


def phase_partitions(n: int, batch: int) -> dict:
    import dagster as dg

    from sensors.datasets import add_video_partitions

    keys = _keys(n)
    with tempfile.TemporaryDirectory() as home, dg.DagsterInstance.local_temp(home) as instance:
        t0 = time.perf_counter()
        added = add_video_partitions(instance, keys, batch_size=batch)
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = instance.get_dynamic_partitions("videos")
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = add_video_partitions(instance, keys, batch_size=batch)  # a re-registration: no-op
        readd_s = time.perf_counter() - t0
        singles = 200
        t0 = time.perf_counter()
        for key in _keys(n + singles)[n:]:
            instance.add_dynamic_partitions("videos", [key])
        single_s = (time.perf_counter() - t0) / singles
    assert added == n and len(back) == n and again == 0
    return {
        "phase": "partitions",
        "partitions": n,
        "batch_size": batch,
        "add_batched_s": round(add_s, 2),
        "read_all_s": round(read_s, 3),
        "re_add_noop_s": round(readd_s, 2),
        "single_add_ms": round(single_s * 1000, 2),
        "single_adds_extrapolated_s": round(single_s * n, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }


def _tick(sensor, instance, resources, cursor):
    import dagster as dg

    t0 = time.perf_counter()
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        result = sensor(ctx)
    return result, time.perf_counter() - t0


def _run_ticks(upload_uri: str, n: int, s3_endpoint: str | None, work: Path) -> dict:
    import dagster as dg

    from code_location.definitions import analyze_video_job
    from dagster_deepfake.config import load_settings
    from dagster_deepfake.ingest import DEFAULT_LOOKBACK_SECONDS, ScanCursor, select_new_objects
    from dagster_deepfake.storage.postgres import embedded_postgres_url
    from resources import default_resources
    from sensors.datasets import add_video_partitions
    from sensors.uploads import build_upload_sensor

    settings = load_settings(
        upload_uri=upload_uri,
        artifact_root=str(work / "artifacts"),
        postgres_url=embedded_postgres_url(str(work / "pg")),
        s3_endpoint_url=s3_endpoint,
        upload_settle_seconds=0,
    )
    resources = default_resources(settings)
    bucket = resources["upload_bucket"].bucket()
    rss_imports = _rss_mib()  # the code location imports torch & co.; the tick's share is on top
    t0 = time.perf_counter()
    listed = bucket.list_objects()
    list_s = time.perf_counter() - t0
    assert len(listed) == n, (len(listed), n)

    sensor = build_upload_sensor(analyze_video_job, 15)
    with tempfile.TemporaryDirectory() as home, dg.DagsterInstance.local_temp(home) as instance:
        add_video_partitions(instance, _keys(n))  # a busy instance: the sensor reads every key
        first, first_s = _tick(sensor, instance, resources, None)
        per_tick = settings.platform.sensor_max_objects_per_tick
        assert len(first.run_requests) == per_tick
        # The cursor once every object is registered (what many ticks would leave behind).
        done = select_new_objects(
            listed,
            ScanCursor(),
            now=time.time(),
            settle_seconds=0,
            limit=n,
            lookback_seconds=DEFAULT_LOOKBACK_SECONDS,
        ).cursor.to_json()
        idle, idle_s = _tick(sensor, instance, resources, done)
        assert isinstance(idle, dg.SkipReason)
    return {
        "objects": n,
        "list_s": round(list_s, 2),
        "first_tick_s": round(first_s, 2),
        "first_tick_registered": per_tick,
        "idle_tick_s": round(idle_s, 2),
        "cursor_kib_all_within_lookback": round(len(done) / 1024, 1),
        "rss_after_imports_mib": round(rss_imports, 1),
        "rss_after_ticks_mib": round(_rss_mib(), 1),
        "sensor_time_limit_s": SENSOR_TIME_LIMIT_SECONDS,
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }


def phase_tick_local(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ddf-bench-") as tmp:
        work = Path(tmp)
        folder = work / "bucket"
        for shard in range(0, n, 1000):  # a few subfolders, as uploads by many clients would be
            sub = folder / f"client {shard // 1000:02d}"
            sub.mkdir(parents=True)
            for i in range(shard, min(n, shard + 1000)):
                (sub / f"upload, {i:05d}.mp4").write_bytes(b"video %d" % i)
        out = _run_ticks(f"file://{folder}", n, None, work)
        _stop_pg(work / "pg")
    return {"phase": "tick-local", **out}


def phase_tick_s3(n: int) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="eu-west-1"
    )
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1")
        s3.create_bucket(
            Bucket="bench-uploads", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: s3.put_object(Bucket="bench-uploads", Key=f"in/u {i:05d}.mp4", Body=b"v%d" % i),
                    range(n),
                )
            )
        put_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="ddf-bench-") as tmp:
            out = _run_ticks("s3://bench-uploads/in", n, endpoint, Path(tmp))
            _stop_pg(Path(tmp) / "pg")
    finally:
        server.stop()
    return {"phase": "tick-s3", "setup_put_s": round(put_s, 1), **out}


def _stop_pg(data_dir: Path) -> None:
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(str(data_dir), cleanup_mode=None)
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=data_dir, user=server.system_user)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--s3-objects", type=int, default=3_000, help="0 skips the S3 phase")
    parser.add_argument("--phase", choices=["partitions", "tick-local", "tick-s3"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "partitions":
        print(json.dumps(phase_partitions(args.partitions, args.batch_size)))
        return
    if args.phase == "tick-local":
        print(json.dumps(phase_tick_local(args.objects)))
        return
    if args.phase == "tick-s3":
        print(json.dumps(phase_tick_s3(args.s3_objects)))
        return

    phases = ["partitions", "tick-local"] + (["tick-s3"] if args.s3_objects else [])
    for phase in phases:
        cmd = [sys.executable, __file__, "--phase", phase, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"phase {phase} failed")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
