"""A hostile upload bucket and failures that must not be retried, with real parts.

Through the upload sensor (`dg.build_sensor_context`, a real local bucket folder, the real test
PostgreSQL): FIFOs, sockets and symbolic links are skipped and never opened, a tick never
blocks and one that runs out of time keeps its cursor, and a writer that pauses past the settle
time is still one partition. Through the real `dagster-daemon` on the production instance file:
a failure caused by the input runs once, an infrastructure failure is retried, no job goes from
failed back to running, and the daemon shuts down promptly with a FIFO in the bucket.

Each test records what it observed; the module then writes the "hostile-bucket" section of
docs/RELIABILITY.md (DAGSTER_DEEPFAKE_WRITE_DOCS=0 skips it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

import sensors.uploads as upload_sensor_module
from code_location.definitions import analyze_video_job
from dagster_deepfake.config import Settings
from dagster_deepfake.ingest import ScanCursor
from dagster_deepfake.storage.bucket import NotRegularFileError, UploadBucket, open_uri
from dagster_deepfake.storage.keys import partition_key_for_sha256
from dagster_deepfake.storage.postgres import ResultsDB
from resources import default_resources
from sensors.uploads import build_upload_sensor
from tests.conftest import write_reliability_section
from tests.test_daemon import _start_daemon, dagster_home, dagster_pg_url  # noqa: F401

ROWS: dict[str, tuple[str, str, str]] = {}  # class -> (expected, observed, handled)
EXPECTED_CLASSES = (
    "FIFO named x.mp4",
    "socket",
    "symlink to a file outside the bucket",
    "symlink inside the bucket",
    "object swapped for a FIFO after listing",
    "paused writer",
    "tick out of time",
    "input failure under the daemon",
    "infrastructure failure under the daemon",
    "daemon shutdown with a FIFO in the bucket",
)


def _record(name: str, expected: str, observed: str, ok: bool) -> None:
    ROWS[name] = (expected, " ".join(observed.split()).replace("|", "/"), "yes" if ok else "NO")


@pytest.fixture(scope="module", autouse=True)
def _section() -> Iterator[None]:
    yield
    if set(ROWS) != set(EXPECTED_CLASSES):
        return  # a partial run leaves the document as it was
    lines = [
        "## Hostile bucket",
        "",
        "What the upload sensor and the run retries did with objects that are not plain uploads",
        "(`tests/test_hostile_bucket.py`: a real local bucket, the real sensor, PostgreSQL, and",
        "`dagster-daemon` on deploy/dagster.yaml). Symbolic links are never followed, not even",
        "to a file inside the bucket: only regular files are uploads.",
        "",
        "| class | expected | observed | handled |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {' | '.join(ROWS[name])} |" for name in EXPECTED_CLASSES]
    write_reliability_section("hostile-bucket", lines)


def _bucket_dir(settings: Settings) -> Path:
    return Path(settings.platform.upload_uri.removeprefix("file://"))


def _vid(data: bytes) -> str:
    return partition_key_for_sha256(hashlib.sha256(data).hexdigest())


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


class _Ticker:
    """Evaluates the upload sensor as the daemon does, carrying the cursor between ticks."""

    def __init__(self, settings: Settings) -> None:
        self.resources = default_resources(settings)
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None
        self.sensor = build_upload_sensor(analyze_video_job, 15)
        self.messages: list[str] = []  # what the sensor logged, every tick

    def tick(self) -> tuple[list[str], float]:
        """Partition keys requested by one tick, and how long it took."""
        started = time.monotonic()
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        ) as ctx:
            ctx.log.addHandler(_Collect(self.messages))  # the sensor's own logger (not propagated)
            result = self.sensor(ctx)
            if isinstance(result, dg.SkipReason):
                self.cursor = ctx.cursor
                return [], time.monotonic() - started
        self.cursor = result.cursor
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions("videos", list(request.partition_keys))
        return [r.partition_key for r in result.run_requests], time.monotonic() - started


def test_fifo_socket_and_symlinks_are_skipped_and_never_block(
    settings: Settings, db: ResultsDB, tmp_path: Path
):
    bucket = _bucket_dir(settings)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.mp4"
    secret.write_bytes(b"a video that is not in the bucket")
    inside = bucket / "a.mp4"
    inside.write_bytes(b"first upload")
    os.mkfifo(bucket / "x.mp4")
    os.symlink(secret, bucket / "outside.mp4")
    os.symlink(inside, bucket / "inside-link.mp4")
    os.symlink(outside, bucket / "linked-folder")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bucket / "sock.mp4"))
    ticker = _Ticker(settings)
    try:
        first, first_s = ticker.tick()
        skipped_first = [m for m in ticker.messages if m.startswith("skipped ")]
        ticker.messages.clear()
        (bucket / "b.mp4").write_bytes(b"a later upload")
        second, second_s = ticker.tick()
        skipped_again = [m for m in ticker.messages if m.startswith("skipped ")]
    finally:
        sock.close()

    reported = ScanCursor.from_json(ticker.cursor).skipped
    checks_fifo = first == [_vid(b"first upload")] and first_s < 5 and second == [_vid(b"a later upload")]
    _record(
        "FIFO named x.mp4",
        "skipped with one log line, the tick returns at once, later objects registered",
        f"tick took {first_s:.2f} s and {second_s:.2f} s; logged {reported.get('x.mp4')!r} once "
        f"({sum('x.mp4' in m for m in skipped_first + skipped_again)} line); the upload after it registered",
        checks_fifo and sum("x.mp4" in m for m in skipped_first + skipped_again) == 1,
    )
    _record(
        "socket",
        "skipped with one log line",
        f"logged {reported.get('sock.mp4')!r}; never opened",
        reported.get("sock.mp4") == "a socket",
    )
    outside_registered = db.get_video(_vid(secret.read_bytes())) is not None
    _record(
        "symlink to a file outside the bucket",
        "not followed, not analysed",
        f"logged {reported.get('outside.mp4')!r}; video row for its target: {outside_registered}; "
        "a link to a folder outside is not walked",
        not outside_registered and "symbolic link" in reported.get("outside.mp4", ""),
    )
    _record(
        "symlink inside the bucket",
        "not followed either (only regular files are uploads); the file it names is registered itself",
        f"logged {reported.get('inside-link.mp4')!r}; its target a.mp4 registered once as itself",
        "symbolic link" in reported.get("inside-link.mp4", "") and first == [_vid(b"first upload")],
    )
    assert checks_fifo, (first, first_s, second)
    assert set(reported) == {"x.mp4", "sock.mp4", "outside.mp4", "inside-link.mp4"}, reported
    assert len(skipped_first) == 4 and skipped_again == [], "each skipped object logged once, not every tick"
    assert any(m.startswith("skipped x.mp4: a FIFO (named pipe)") for m in skipped_first), skipped_first
    assert not outside_registered
    assert db.get_job(_vid(b"first upload")) is not None


def test_object_swapped_for_a_fifo_after_listing_is_refused_at_once(settings: Settings, tmp_path: Path):
    bucket_dir = _bucket_dir(settings)
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    os.mkfifo(bucket_dir / "late.mp4")
    os.symlink(tmp_path / "nowhere.mp4", bucket_dir / "dangling.mp4")
    started = time.monotonic()
    with pytest.raises(NotRegularFileError, match="FIFO"):
        bucket.sha256("late.mp4", deadline=time.monotonic() + 5)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        open_uri((bucket_dir / "late.mp4").as_uri())  # how a run reads its source
    with pytest.raises(NotRegularFileError, match="symbolic link"):
        bucket.open("dangling.mp4")
    took = time.monotonic() - started
    _record(
        "object swapped for a FIFO after listing",
        "opened non-blocking, refused after fstat; a run's read of it refused the same way",
        f"sensor hash and run read refused in {took:.3f} s with 'a FIFO (named pipe), not a regular file'",
        took < 2,
    )
    assert took < 2


def test_paused_writer_stays_one_partition(settings: Settings, db: ResultsDB):
    settings.platform.upload_settle_seconds = 1.0
    ticker = _Ticker(settings)
    target = _bucket_dir(settings) / "slow writer.mp4"
    half, rest = b"first half of the upload, ", b"and the rest after a pause"
    with target.open("wb") as fh:
        fh.write(half)
        fh.flush()
        time.sleep(1.3)  # the writer pauses longer than the settle time ...
        during_pause, _ = ticker.tick()  # ... and a tick lands in the pause
        fh.write(rest)
    after_finish, _ = ticker.tick()  # changed since the last tick: waits again
    time.sleep(1.1)
    settled, _ = ticker.tick()
    again, _ = ticker.tick()
    requested = during_pause + after_finish + settled + again
    ok = requested == [_vid(half + rest)] and db.get_video(_vid(half)) is None
    _record(
        "paused writer",
        "one partition and one run for the finished file",
        f"tick in the pause: {len(during_pause)} runs; after finishing: {len(after_finish)}; "
        f"one settle period later: {len(settled)} (the whole file); then {len(again)}",
        ok,
    )
    assert ok, (during_pause, after_finish, settled, again)


def test_tick_out_of_time_keeps_its_cursor(settings: Settings, db: ResultsDB, monkeypatch):
    bucket = _bucket_dir(settings)
    bodies = [f"upload {i}".encode() for i in range(3)]
    for i, body in enumerate(bodies):
        (bucket / f"{i}.mp4").write_bytes(body)
        os.utime(bucket / f"{i}.mp4", (time.time() - 60 + i, time.time() - 60 + i))
    ticker = _Ticker(settings)
    monkeypatch.setattr(upload_sensor_module, "TICK_DEADLINE_SECONDS", -1.0)  # every read is late
    late, _ = ticker.tick()
    late_cursor = ScanCursor.from_json(ticker.cursor)
    monkeypatch.setattr(upload_sensor_module, "TICK_DEADLINE_SECONDS", 50.0)
    monkeypatch.setattr(upload_sensor_module, "TICK_BUDGET_SECONDS", -1.0)  # one object a tick
    one, _ = ticker.tick()
    monkeypatch.undo()
    rest, _ = ticker.tick()
    ok = (
        late == []
        and late_cursor.mtime == 0.0
        and len(one) == 1
        and sorted(one + rest) == sorted(_vid(b) for b in bodies)
    )
    _record(
        "tick out of time",
        "the cursor stays before what was not read; nothing skipped or repeated",
        f"tick with its time spent: {len(late)} runs, cursor unmoved; one object per tick: {len(one)}; "
        f"next tick: {len(rest)}; {len(set(one + rest))} of 3 registered once each",
        ok,
    )
    assert ok, (late, late_cursor, one, rest)


# -- through the real daemon -------------------------------------------------------------------

DAEMON_TIMEOUT_SECONDS = 240


@pytest.mark.slow
@pytest.mark.timeout(DAEMON_TIMEOUT_SECONDS + 90)
def test_daemon_input_failure_runs_once_infra_failure_is_retried(
    tmp_path: Path,
    dagster_home: Path,  # noqa: F811 (the fixture of tests/test_daemon.py)
    pg_url: str,
    ffmpeg_video,
):
    """deploy/dagster.yaml (run retries on, the jobs' `dagster/max_retries: 1`): random bytes
    named .mp4 fail in raw_video and are not retried; a good video whose artifact store cannot
    be written (its root lies under a regular file) fails and is retried once."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the artifact root lies under this file, so every store write fails")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"registry_config": "tiny"},
                "platform": {
                    "upload_uri": f"file://{bucket}",
                    "artifact_root": str(blocker / "artifacts"),
                    "postgres_url": pg_url,
                    "model_dir": str(tmp_path / "models"),
                    "upload_settle_seconds": 1,
                    "sensor_interval_seconds": 2,
                    "device": "cpu",
                },
            }
        )
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_DEEPFAKE_CONFIG": str(config),
        "PYTHONUNBUFFERED": "1",
    }
    for name in (
        "DAGSTER_DEEPFAKE_UPLOAD_URI",
        "DAGSTER_DEEPFAKE_ARTIFACT_ROOT",
        "DAGSTER_DEEPFAKE_POSTGRES_URL",
    ):
        env.pop(name, None)
    rng = random.Random(16)
    bad = bytes(rng.getrandbits(8) for _ in range(4096))
    good = ffmpeg_video("good.mp4", duration=1.0).read_bytes()
    bad_id, good_id = _vid(bad), _vid(good)
    results = ResultsDB(pg_url)
    results.create_schema()
    os.mkfifo(bucket / "stuck.mp4")
    (bucket / "random.mp4").write_bytes(bad)
    (bucket / "good.mp4").write_bytes(good)

    statuses: dict[str, list[str]] = {bad_id: [], good_id: []}
    log = tmp_path / "daemon.log"
    proc = _start_daemon(env, log)
    stopped_in: float | None = None
    try:
        deadline = time.monotonic() + DAEMON_TIMEOUT_SECONDS
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:

            def runs_of(video_id: str) -> list[dg.DagsterRun]:
                return list(instance.get_runs(dg.RunsFilter(tags={"dagster/partition": video_id})))

            while time.monotonic() < deadline:
                assert proc.poll() is None, f"daemon exited:\n{log.read_text()[-4000:]}"
                for video_id, seen in statuses.items():
                    job = results.get_job(video_id)
                    if job and (not seen or seen[-1] != job["status"]):
                        seen.append(job["status"])
                bad_runs, good_runs = runs_of(bad_id), runs_of(good_id)
                settled = (
                    bad_runs
                    and all(r.is_finished for r in bad_runs + good_runs)
                    and len(good_runs) >= 2
                    and statuses[bad_id][-1:] == ["failed"]
                    and statuses[good_id][-1:] == ["failed"]
                )
                if settled:
                    time.sleep(8)  # long enough for a (wrong) retry of the bad video to appear
                    bad_runs, good_runs = runs_of(bad_id), runs_of(good_id)
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"runs did not settle: {statuses}\n{log.read_text()[-4000:]}")
            bad_tags = bad_runs[0].tags
    finally:
        started = time.monotonic()
        stopped_in = time.monotonic() - started if proc.stop(timeout_s=30) else None

    bad_job, good_job = results.get_job(bad_id), results.get_job(good_id)
    never_back = all(
        not any(a == "failed" and b == "running" for a, b in zip(seen, seen[1:], strict=False))
        for seen in statuses.values()
    )
    input_ok = (
        len(bad_runs) == 1
        and bad_tags.get("dagster/retry_on_asset_or_op_failure") == "false"
        and bad_tags.get("dagster/will_retry") == "false"
        and "raw_video" in (bad_job["reason"] or "")
    )
    infra_ok = len(good_runs) == 2 and all(r.status == dg.DagsterRunStatus.FAILURE for r in good_runs)
    _record(
        "input failure under the daemon",
        "fails once with its reason; never retried; job never failed → running",
        f"{len(bad_runs)} run; run tagged retry_on_asset_or_op_failure=false, will_retry=false; "
        f"job statuses {' → '.join(statuses[bad_id])}; reason '{(bad_job['reason'] or '')[:80]}'",
        input_ok and never_back,
    )
    _record(
        "infrastructure failure under the daemon",
        "retried (max_retries 1); the job stays running while a retry is due, failed at the end",
        f"{len(good_runs)} runs, both failed (store not writable); job statuses "
        f"{' → '.join(statuses[good_id])}",
        infra_ok and never_back and good_job["status"] == "failed",
    )
    _record(
        "daemon shutdown with a FIFO in the bucket",
        "SIGTERM stops the daemon and its code server promptly (no thread blocked on the FIFO)",
        f"stopped {stopped_in:.1f} s after SIGTERM" if stopped_in is not None else "did not stop in 30 s",
        stopped_in is not None and stopped_in < 30,
    )
    assert input_ok, (bad_runs, bad_tags, bad_job, log.read_text()[-3000:])
    assert infra_ok, (good_runs, good_job, log.read_text()[-3000:])
    assert never_back, statuses
    assert stopped_in is not None
