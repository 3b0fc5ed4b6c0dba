"""Faults, with real parts: the run process SIGKILLed in the middle of a stage, PostgreSQL
restarted (and stopped) during a run, the artifact store read-only and full, the same video
uploaded twice and twenty uploads at once.

Every test runs the real stages (ffmpeg, the face detector, the tiny model) through Dagster's
`materialize` on a tiny clip, against a real PostgreSQL, and checks the outcome a user relies
on: the retry completes, no row is duplicated, no reader takes half-written data for a whole
stage, a failure says what failed. Each test records what it observed; the module then writes
the "Faults" section of docs/RELIABILITY.md (DAGSTER_DEEPFAKE_WRITE_DOCS=0 skips it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.engine import make_url

from assets.ingest import raw_video
from assets.model import audio_embeddings
from code_location.definitions import PER_VIDEO_ASSETS, analyze_video_job
from dagster_deepfake.config import REPO_ROOT, ModelConfig, Settings, load_settings
from dagster_deepfake.ingest import register_object
from dagster_deepfake.storage import artifacts as artifacts_module
from dagster_deepfake.storage import layout, stage_io
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url, jobs, predictions, videos
from dagster_deepfake.synthetic import generate_clip
from resources import default_resources
from sensors.job_status import job_failure_recorder
from sensors.uploads import build_upload_sensor
from tests.conftest import serving_api, write_reliability_section

# Every table a completed per-video run leaves in the artifact store.
PARTITION_TABLES = (
    "videos",
    "frames",
    "faces",
    "flow",
    "speech_segments",
    "windows",
    "predictions",
    "reports",
)


# -- the "Faults" section of docs/RELIABILITY.md ------------------------------------------------

FAULT_TESTS = (
    "test_run_killed_mid_stage",
    "test_postgres_restarted_and_stopped_during_a_run",
    "test_artifact_store_read_only",
    "test_artifact_store_full",
    "test_same_video_twice_and_twenty_uploads_at_once",
)
FAULT_ROWS: dict[str, dict[str, str]] = {}


def _record(
    test: str, fault: str, expected: str, observed: str, checks: dict[str, bool], hide: dict[str, str]
) -> None:
    """Keep this test's row for the doc; `handled` is whether every check held.

    `hide` maps this run's temporary paths to placeholders, so the document only changes when
    the behaviour does.
    """
    for path, placeholder in hide.items():
        observed = observed.replace(path, placeholder)
    observed = re.sub(r"\.tmp-[0-9a-f]+", ".tmp-…", " ".join(observed.split()))
    failed = [name for name, ok in checks.items() if not ok]
    FAULT_ROWS[test] = {
        "fault": fault,
        "expected": expected,
        "observed": observed.replace("|", "/"),
        "handled": "yes" if not failed else "NO: " + "; ".join(failed),
    }


@pytest.fixture(scope="module", autouse=True)
def _faults_section() -> Iterator[None]:
    yield
    # A partial run (-k, a test that stopped before recording) leaves the document as it was.
    if set(FAULT_ROWS) != set(FAULT_TESTS):
        return
    lines = [
        "## Faults",
        "",
        "Each fault was caused for real while a tiny talking-face clip went through every per-video",
        "asset (Dagster `materialize`, real PostgreSQL, ffmpeg, face detector, tiny model).",
        "*observed* is what the run, the `jobs` row and the artifact store showed; *handled* says",
        "whether every expectation held (otherwise which did not).",
        "",
        "| fault | expected | observed | handled |",
        "|---|---|---|---|",
    ]
    for test in FAULT_TESTS:
        row = FAULT_ROWS[test]
        lines.append(f"| {row['fault']} | {row['expected']} | {row['observed']} | {row['handled']} |")
    write_reliability_section("faults", lines)


# -- shared parts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny talking-face clip with speech, so that every stage has work to do."""
    path = tmp_path_factory.mktemp("fault-media") / "talk.mp4"
    generate_clip(path, seed=41, identity=0, duration=2.0, width=320, height=240, audio="speech")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny untrained model is saved once and shared by every test (and the killed child)."""
    return str(tmp_path_factory.mktemp("fault-models"))


def _tiny(settings: Settings, model_dir: str) -> Settings:
    settings.model = ModelConfig(
        registry_config="tiny"
    )  # the tiny variant alone (keys from the file would win)
    settings.platform.model_dir = model_dir
    settings.platform.device = "cpu"
    return settings


def _register(settings: Settings, db: ResultsDB, path: Path, key: str) -> str:
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    return register_object(bucket, bucket.put_file(str(path), key), db).video_id


def _materialize(
    settings: Settings, video_id: str, instance: dg.DagsterInstance, assets: list[Any] | None = None
) -> dg.ExecuteInProcessResult:
    if video_id not in instance.get_dynamic_partitions("videos"):
        instance.add_dynamic_partitions("videos", [video_id])
    return dg.materialize(
        assets or PER_VIDEO_ASSETS,
        partition_key=video_id,
        resources=default_resources(settings),
        instance=instance,
        raise_on_error=False,
    )


def _step_errors(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Failed step → its error and every cause, as Dagster's event log keeps them."""
    errors = {}
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error, parts = event.step_failure_data.error, []
            while error is not None:
                parts.append(error.message.strip())
                error = error.cause
            errors[event.step_key] = " ← ".join(parts)
    return errors


def _run_failure_sensor(
    settings: Settings, instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult
) -> None:
    """Evaluate the code location's run-failure sensor on a failed run, as the daemon does."""
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name=job_failure_recorder.name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        resources=default_resources(settings),
    ).for_run_failure()
    job_failure_recorder(context)


def _rows_per_table(db: ResultsDB, video_id: str) -> dict[str, int]:
    """How many rows of this video each PostgreSQL table holds."""
    tables: tuple[Table, ...] = (videos, jobs, predictions)
    with db.engine.connect() as conn:
        return {
            t.name: int(
                conn.execute(select(func.count()).select_from(t).where(t.c.video_id == video_id)).scalar_one()
            )
            for t in tables
        }


def _temp_files(root: str) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if ".tmp-" in p.name)


def _partition_problems(store: ArtifactStore, video_id: str) -> list[str]:
    """What is not whole about a completed partition in the artifact store (empty when it is whole)."""
    problems = []
    for table in PARTITION_TABLES:
        try:
            store.read_table(table, video_id)
        except Exception as exc:  # a missing or unreadable table is the finding
            problems.append(f"{table} table unreadable: {exc!r}")
    if problems:
        return problems
    frames = store.read_table("frames", video_id)
    files = store.list(layout.frames_dir(video_id))
    if len(frames) == 0 or sorted(frames.frame_id) != list(range(len(frames))):
        problems.append(f"frame ids {sorted(frames.frame_id)}")
    if sorted(files) != sorted(p.rsplit("/", 1)[1] for p in frames.path):
        problems.append(f"{len(files)} frame files for {len(frames)} indexed frames")
    try:
        stage_io.load_face_crops(store, video_id)  # checks crops against the kept rows
    except (OSError, RuntimeError) as exc:
        problems.append(f"faces: {exc}")
    for table in ("predictions", "reports"):
        if len(store.read_table(table, video_id)) != 1:
            problems.append(f"{table}: {len(store.read_table(table, video_id))} rows")
    problems += [f"temp file left: {p}" for p in _temp_files(store.root)]
    return problems


def _frames_claimed_but_missing(store: ArtifactStore, video_id: str) -> list[str]:
    """Frames the frames table lists whose files are not there (a half-replaced stage read as whole)."""
    if not store.has_table("frames", video_id):
        return []
    return [p for p in store.read_table("frames", video_id).path if not store.exists(p)]


# -- a. the run process killed in the middle of a stage -----------------------------------------

# The child re-materializes every per-video asset of one partition in its own process and holds
# still in the middle of `frames` (five of its frames written, the table not yet), so that the
# SIGKILL lands mid-stage every time rather than wherever the scheduler happens to be.
_KILLED_CHILD = """
import sys, time
import dagster as dg
from dagster_deepfake.config import Settings
from code_location.definitions import PER_VIDEO_ASSETS
from dagster_deepfake.storage.artifacts import ArtifactStore
from resources import default_resources

settings_file, instance_dir, video_id, marker = sys.argv[1:5]
write_bytes = ArtifactStore.write_bytes

def write_then_hold(self, relpath, data):
    if relpath.endswith("/frames/000005.png"):
        open(marker, "w").close()
        time.sleep(300)
    return write_bytes(self, relpath, data)

ArtifactStore.write_bytes = write_then_hold
settings = Settings.model_validate_json(open(settings_file).read())
with dg.DagsterInstance.local_temp(instance_dir) as instance:
    resources = default_resources(settings)
    dg.materialize(PER_VIDEO_ASSETS, partition_key=video_id, resources=resources, instance=instance)
"""


@pytest.mark.slow
def test_run_killed_mid_stage(settings: Settings, db: ResultsDB, clip: Path, model_dir: str, tmp_path: Path):
    settings = _tiny(settings, model_dir)
    store = ArtifactStore(settings.platform.artifact_root)
    video_id = _register(settings, db, clip, "talk.mp4")
    instance_dir = tmp_path / "dagster"
    instance_dir.mkdir()
    with dg.DagsterInstance.local_temp(str(instance_dir)) as instance:
        first = _materialize(settings, video_id, instance)
        assert first.success, _step_errors(first)
        frames_before = len(store.read_table("frames", video_id))

        # A re-run of the processed video (a backfill, a new model) is SIGKILLed inside `frames`.
        settings_file, marker = tmp_path / "settings.json", tmp_path / "holding"
        settings_file.write_text(settings.model_dump_json())
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _KILLED_CHILD,
                str(settings_file),
                str(instance_dir),
                video_id,
                str(marker),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert child.poll() is None, child.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the child never reached the middle of `frames`"
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stderr.close()

        killed_run = next(r for r in instance.get_runs() if r.run_id != first.run_id)
        job_after_kill = db.get_job(video_id)
        frame_files_after_kill = store.list(layout.frames_dir(video_id))
        claimed_missing = _frames_claimed_but_missing(store, video_id)
        with pytest.raises(OSError):  # no reader takes the half-replaced frames for a whole stage
            list(stage_io.load_frames(store, video_id))

        retry = _materialize(settings, video_id, instance)
        frame_materializations = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("frames"), asset_partitions=[video_id]), limit=10
        ).records
    job = db.get_job(video_id)
    rows = _rows_per_table(db, video_id)
    problems = _partition_problems(store, video_id)
    checks = {
        "the kill landed mid-stage (5 of the frames written)": len(frame_files_after_kill) == 5,
        "the killed run is not finished in Dagster": not killed_run.is_finished,
        "no frames table claims frames that are not there": claimed_missing == [],
        "retry succeeded": retry.success,
        "job completed by the retry": job["status"] == "completed" and job["run_id"] == retry.run_id,
        "one row per table": rows == {"videos": 1, "jobs": 1, "predictions": 1},
        "Parquet tables whole": problems == [],
        "as many frames as before": len(store.read_table("frames", video_id)) == frames_before,
        "killed run recorded no materialization": len(frame_materializations) == 2,
    }
    _record(
        "test_run_killed_mid_stage",
        "run process SIGKILLed inside `frames` while re-running a processed video",
        "the retry completes; no duplicate rows; nothing half-written taken for whole",
        f"after the kill: {len(frame_files_after_kill)} of {frames_before} frames on disk, frames table "
        f"{'lists missing frames' if claimed_missing else 'absent (stage not complete)'}, job "
        f"`{job_after_kill['status']}`, Dagster run {killed_run.status.value}; retry: job `{job['status']}`, "
        f"rows per table {rows}, {len(store.read_table('frames', video_id))} frames",
        checks,
        {settings.platform.artifact_root: "<artifact root>"},
    )
    assert all(checks.values()), (checks, problems, claimed_missing, _step_errors(retry))


# -- b. PostgreSQL restarted, and stopped, during a run ------------------------------------------


class ThrowawayPostgres:
    """A PostgreSQL 16 of this test's own (pgserver), so stopping it disturbs no other test."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver

        self.data_dir = data_dir
        self.url = embedded_postgres_url(str(data_dir))
        self.system_user = pgserver.get_server(data_dir, cleanup_mode=None).system_user
        self.socket_dir = make_url(self.url).query["host"]

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl  # pgserver's bundled binaries, as `make stop` uses them

        pg_ctl(["-w", *args], pgdata=self.data_dir, user=self.system_user, timeout=60)

    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def stop(self) -> None:
        self._pg_ctl(["stop", "-m", "fast"])

    def start(self) -> None:
        # the options pgserver starts it with: no TCP, the unix socket where the URL points
        log = str(self.data_dir / "log")
        self._pg_ctl(["-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start"])

    def restart(self) -> None:
        self._pg_ctl(["restart", "-m", "fast"])


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="ddfpgf-"))  # short: unix socket paths are length-limited
    server = ThrowawayPostgres(data_dir)
    try:
        yield server
    finally:
        if server.pid() is not None:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.slow
def test_postgres_restarted_and_stopped_during_a_run(
    throwaway_pg: ThrowawayPostgres,
    clip: Path,
    model_dir: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    (tmp_path / "bucket").mkdir()
    settings = _tiny(
        load_settings(
            upload_uri=f"file://{tmp_path / 'bucket'}",
            artifact_root=str(tmp_path / "artifacts"),
            postgres_url=throwaway_pg.url,
            upload_settle_seconds=0,
        ),
        model_dir,
    )
    db = ResultsDB(throwaway_pg.url)
    db.create_schema()
    video_id = _register(settings, db, clip, "talk.mp4")
    instance = dg.DagsterInstance.ephemeral()

    # The fault strikes once `frames` has written its table: raw_video has used the database,
    # predictions and report are still to write to it.
    fault: dict[str, Any] = {"action": None}
    write_table = ArtifactStore.write_table

    def write_table_then_fault(self: ArtifactStore, table: str, video: str, frame: Any) -> str:
        written = write_table(self, table, video, frame)
        if table == "frames" and fault["action"] is not None:
            action, fault["action"] = fault["action"], None
            action()
        return written

    monkeypatch.setattr(ArtifactStore, "write_table", write_table_then_fault)

    # 1. Restarted mid-run: pooled connections die; the run reconnects and completes.
    pid_before = throwaway_pg.pid()
    fault["action"] = throwaway_pg.restart
    restarted = _materialize(settings, video_id, instance)
    pid_after_restart = throwaway_pg.pid()
    job_after_restart = db.get_job(video_id)

    # 2. Stopped mid-run and only back after the run ended: the run fails naming the database;
    #    once it is back the failure is recorded, and a retry completes.
    fault["action"] = throwaway_pg.stop
    stopped = _materialize(settings, video_id, instance)
    down_errors = _step_errors(stopped)
    throwaway_pg.start()
    _run_failure_sensor(settings, instance, stopped)
    job_after_stop = db.get_job(video_id)
    retry = _materialize(settings, video_id, instance)
    job = db.get_job(video_id)
    rows = _rows_per_table(db, video_id)
    problems = _partition_problems(ArtifactStore(settings.platform.artifact_root), video_id)
    db.engine.dispose()  # the server goes away with the fixture

    failed_step, error = next(iter(down_errors.items()), ("", ""))
    checks = {
        "the server really restarted": pid_after_restart not in (None, pid_before),
        "run across the restart completed": restarted.success and job_after_restart["status"] == "completed",
        "run with the server down failed": not stopped.success,
        "its error names the database": "connection to server" in error and ".s.PGSQL" in error,
        "failure recorded once the server was back": job_after_stop["status"] == "failed"
        and job_after_stop["run_id"] == stopped.run_id,
        "retry completed": retry.success and job["status"] == "completed" and job["run_id"] == retry.run_id,
        "one row per table": rows == {"videos": 1, "jobs": 1, "predictions": 1},
        "Parquet tables whole": problems == [],
    }
    _record(
        "test_postgres_restarted_and_stopped_during_a_run",
        "PostgreSQL restarted (`pg_ctl restart -m fast`) after `frames`; then stopped there until the run ended",
        "recovers across a restart; with the server down fails naming it, and a retry completes",
        f"restart: run {'succeeded' if restarted.success else 'failed'}, job `{job_after_restart['status']}`; "
        f"down: step `{failed_step}` failed: {error.split(' ← ')[-1]}; job then `{job_after_stop['status']}` "
        f"({(job_after_stop['reason'] or '')[:200]}); retry: job `{job['status']}`, rows per table {rows}",
        checks,
        {settings.platform.artifact_root: "<artifact root>", throwaway_pg.socket_dir: "<socket dir>"},
    )
    assert all(checks.values()), (checks, down_errors, problems)


# -- c. the artifact store read-only, and full ----------------------------------------------------


@contextlib.contextmanager
def _refusing_writes(root: Path) -> Iterator[str]:
    """Make every folder and file under `root` refuse writes for real; yields how it was done.

    Permission bits stop a normal user; root ignores them, so as root the immutable attribute
    (chattr +i) is used, which the kernel enforces for root too.
    """
    paths = [root, *root.rglob("*")]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        how = "permission bits (chmod a-w)"

        def undo() -> None:
            for p, mode in modes.items():
                p.chmod(mode)

    elif (
        shutil.which("chattr")
        and subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True).returncode == 0
    ):
        how = "immutable attribute (chattr +i; tests run as root)"

        def undo() -> None:
            subprocess.run(["chattr", "-R", "-i", str(root)], check=True)

    else:
        pytest.skip("running as root on a filesystem without chattr +i: nothing makes a folder refuse root")
    try:
        try:
            (root / "probe").write_bytes(b"x")
        except OSError:
            pass
        else:
            pytest.skip(f"{how} did not stop a write on this filesystem")
        yield how
    finally:
        undo()


@pytest.mark.slow
def test_artifact_store_read_only(
    settings: Settings, db: ResultsDB, clip: Path, model_dir: str, tmp_path: Path
):
    settings = _tiny(settings, model_dir)
    root = Path(settings.platform.artifact_root)
    store = ArtifactStore(str(root))
    instance = dg.DagsterInstance.ephemeral()
    processed = _register(settings, db, clip, "talk.mp4")
    assert _materialize(settings, processed, instance).success
    report_before = store.read_table("reports", processed).loc[0, "document"]
    other = tmp_path / "other.mp4"  # a second video: the same clip with other bytes
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(clip),
            "-c",
            "copy",
            "-metadata",
            "comment=2",
            str(other),
        ],
        check=True,
    )
    new = _register(settings, db, other, "other.mp4")

    with _refusing_writes(root) as how:
        rerun = _materialize(settings, processed, instance)
        fresh = _materialize(settings, new, instance)
        report_during = store.read_table("reports", processed).loc[0, "document"]
    _run_failure_sensor(settings, instance, fresh)
    job_failed = db.get_job(new)
    retry = _materialize(settings, new, instance)
    job = db.get_job(new)

    errors = _step_errors(fresh)
    failed_step, error = next(iter(errors.items()), ("", ""))
    checks = {
        "re-run of a processed video failed": not rerun.success,
        "new video failed at its first write": not fresh.success and failed_step == "raw_video",
        "the error names the refused path": str(root) in error
        and ("not permitted" in error or "denied" in error),
        "processed video still whole and unchanged": _partition_problems(store, processed) == []
        and report_during == report_before,
        "failure recorded as a failed job": job_failed["status"] == "failed"
        and job_failed["run_id"] == fresh.run_id,
        "retry completed once writable": retry.success and job["status"] == "completed",
        "one row per table": _rows_per_table(db, new) == {"videos": 1, "jobs": 1, "predictions": 1},
        "retried video whole": _partition_problems(store, new) == [],
    }
    _record(
        "test_artifact_store_read_only",
        f"artifact store read-only ({how})",
        "the run fails at its first write, naming the path; what was stored stays whole; a retry completes",
        f"step `{failed_step}` failed: {error.split(' ← ')[-1]}; job `{job_failed['status']}` "
        f"({(job_failed['reason'] or '')[:200]}); processed video's tables intact; retry: job `{job['status']}`",
        checks,
        {str(root): "<artifact root>"},
    )
    assert all(checks.values()), (checks, errors, _partition_problems(store, processed))


class _FullDisk:
    """The artifact store's disk filling up during one write: that write puts half its bytes, then
    fails with ENOSPC, as a real full disk does. Patched in for the store's `open` only."""

    def __init__(self, path_suffix: str) -> None:
        self.path_suffix = path_suffix
        self.partial: tuple[str, int, int] | None = None  # (path, bytes written, bytes asked)

    def open(self, file: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 - returned to the caller's `with`
        if "w" in mode and self.partial is None and self.path_suffix in str(file):
            return _FillingFile(handle, self, str(file))
        return handle


class _FillingFile:
    def __init__(self, handle: Any, disk: _FullDisk, path: str) -> None:
        self.handle, self.disk, self.path = handle, disk, path

    def write(self, data: bytes) -> int:
        fits = len(data) // 2
        self.handle.write(data[:fits])
        self.handle.flush()
        self.disk.partial = (self.path, fits, len(data))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


@pytest.mark.slow
def test_artifact_store_full(
    settings: Settings, db: ResultsDB, clip: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch
):
    settings = _tiny(settings, model_dir)
    store = ArtifactStore(settings.platform.artifact_root)
    instance = dg.DagsterInstance.ephemeral()
    video_id = _register(settings, db, clip, "talk.mp4")
    assert _materialize(settings, video_id, instance).success
    speech_before = stage_io.load_audio(store, video_id)
    assert speech_before.has_speech

    # The disk fills up while a re-run's `audio` stage writes its PCM (half of it lands).
    disk = _FullDisk("/audio/pcm16k.npy")
    monkeypatch.setattr(artifacts_module, "open", disk.open, raising=False)
    full = _materialize(settings, video_id, instance)
    monkeypatch.undo()
    errors = _step_errors(full)
    pcm_left = os.path.exists(store.path(layout.pcm_rel(video_id)))
    temp_left = _temp_files(store.root)
    # What a later run that re-materializes only the audio model (a new checkpoint) would read:
    try:
        after = stage_io.load_audio(store, video_id)
        read_back = (
            "speech" if after.has_speech else "no audio (the half-written stage read as a silent video)"
        )
    except FileNotFoundError as exc:
        read_back = f"refused: {type(exc).__name__}"
    embeddings_only = _materialize(settings, video_id, instance, [audio_embeddings])
    _run_failure_sensor(settings, instance, full)
    job_failed = db.get_job(video_id)

    retry = _materialize(settings, video_id, instance)  # space freed
    job = db.get_job(video_id)
    rows = _rows_per_table(db, video_id)
    problems = _partition_problems(store, video_id)
    audio_error = errors.get("audio", "")
    checks = {
        "the disk filled mid-write": disk.partial is not None and 0 < disk.partial[1] < disk.partial[2],
        "the run failed at `audio` with ENOSPC": not full.success
        and "No space left on device" in audio_error,
        "no half-written file under its final name": not pcm_left,
        "no temp file left": temp_left == [],
        "no reader takes the half-written stage for a whole one": read_back.startswith("refused")
        and not embeddings_only.success,
        "failure recorded as a failed job": job_failed["status"] == "failed"
        and job_failed["run_id"] == full.run_id,
        "retry completed": retry.success and job["status"] == "completed" and job["run_id"] == retry.run_id,
        "audio whole again": stage_io.load_audio(store, video_id).has_speech,
        "one row per table": rows == {"videos": 1, "jobs": 1, "predictions": 1},
        "Parquet tables whole": problems == [],
    }
    _record(
        "test_artifact_store_full",
        "artifact store full (ENOSPC after half of `audio`'s PCM was written) while re-running a processed video",
        "the run fails naming ENOSPC; no half-written file; nothing read as complete; a retry completes",
        f"step `audio` failed: {audio_error.split(' ← ')[-1]}; PCM under its name: "
        f"{'yes' if pcm_left else 'no'}; temp files left: {len(temp_left)}; reading the audio "
        f"afterwards: {read_back}; job `{job_failed['status']}` ({(job_failed['reason'] or '')[:200]}); "
        f"retry: job `{job['status']}`, rows per table {rows}",
        checks,
        {settings.platform.artifact_root: "<artifact root>"},
    )
    assert all(checks.values()), (checks, errors, problems, read_back, _step_errors(embeddings_only))


def test_failed_job_reason_names_the_cause(
    settings: Settings, db: ResultsDB, clip: Path, monkeypatch: pytest.MonkeyPatch
):
    video_id = _register(settings, db, clip, "talk.mp4")
    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.setattr(artifacts_module, "open", _FullDisk("/tables/videos/").open, raising=False)
    failed = _materialize(settings, video_id, instance, [raw_video])
    monkeypatch.undo()
    assert "No space left on device" in _step_errors(failed)["raw_video"]
    _run_failure_sensor(settings, instance, failed)
    job = db.get_job(video_id)
    assert job["status"] == "failed"
    assert "No space left on device" in job["reason"], job["reason"]


# -- d. the same video twice, and twenty uploads at once ------------------------------------------


@pytest.mark.slow
def test_same_video_twice_and_twenty_uploads_at_once(
    settings: Settings, db: ResultsDB, ffmpeg_video, tmp_path: Path
):
    # Ten different videos (the same picture, ten comments), each uploaded twice under two
    # names, all twenty requests released at once against the API served by uvicorn.
    base = ffmpeg_video("base.mp4", duration=1.0)
    clips = []
    for i in range(10):
        path = tmp_path / f"video{i}.mp4"
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-i",
                str(base),
                "-c",
                "copy",
                "-metadata",
                f"comment={i}",
                str(path),
            ],
            check=True,
        )
        clips.append(path)
    expected_ids = {partition_key_for_sha256(sha256_file(str(p))) for p in clips}
    assert len(expected_ids) == 10
    uploads = [(p, f"{name}-{i}.mp4") for i, p in enumerate(clips) for name in ("first", "again")]

    start = threading.Barrier(len(uploads))

    def upload(base: str, path: Path, name: str) -> httpx.Response:
        data = path.read_bytes()
        start.wait()
        return httpx.post(f"{base}/analyze-video", files={"file": (name, data, "video/mp4")}, timeout=120)

    with serving_api(settings) as base, ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        responses = list(pool.map(lambda u: upload(base, *u), uploads))

    # The same bytes also dropped straight into the bucket under a third key.
    bucket_root = Path(settings.platform.upload_uri.removeprefix("file://"))
    shutil.copy(clips[0], bucket_root / "dropped copy.mp4")

    # The upload sensor, tick after tick until it has nothing new, as the daemon runs it; Dagster
    # adds the partitions it asks for between ticks.
    instance = dg.DagsterInstance.ephemeral()
    resources = default_resources(settings)
    sensor = build_upload_sensor(analyze_video_job, 15)
    requested: list[str] = []
    cursor = None
    for _ in range(10):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            tick = sensor(context)
        if isinstance(tick, dg.SkipReason):
            break
        requested += [r.partition_key for r in tick.run_requests]
        assert [r.run_key for r in tick.run_requests] == [r.partition_key for r in tick.run_requests]
        for add in tick.dynamic_partitions_requests:
            instance.add_dynamic_partitions("videos", list(add.partition_keys))
        cursor = tick.cursor
    objects = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes).list_objects()
    with db.engine.connect() as conn:
        job_rows = conn.execute(select(jobs.c.job_id, func.count()).group_by(jobs.c.job_id)).all()
        video_rows = int(conn.execute(select(func.count()).select_from(videos)).scalar_one())

    answered = [r.status_code for r in responses]
    said_duplicate = sum(1 for r in responses if r.status_code == 200 and r.json()["duplicate"])
    checks = {
        "every upload accepted": all(code in (200, 202) for code in answered),
        "each answer names its video's job": [r.json()["job_id"] for r in responses]
        == [partition_key_for_sha256(sha256_file(str(p))) for p, _ in uploads],
        "one jobs row per video": sorted(job_rows) == sorted((video_id, 1) for video_id in expected_ids),
        "one videos row per video": video_rows == 10,
        # Same bytes at the same moment: one upload claims the job and stores the object, the
        # other is told it is a duplicate (10 stored + the copy dropped in by hand).
        "one answer per video says new, the other duplicate": said_duplicate == 10,
        "one stored object per video": len(objects) == 11,
        "one run request per video": sorted(requested) == sorted(expected_ids),
        "one partition per video": sorted(instance.get_dynamic_partitions("videos")) == sorted(expected_ids),
        "the sensor went quiet": isinstance(tick, dg.SkipReason),
    }
    _record(
        "test_same_video_twice_and_twenty_uploads_at_once",
        "20 concurrent `POST /analyze-video` (10 videos × 2 names) plus a copy dropped in the bucket",
        "each video processed once: one jobs row, one partition, one run request",
        f"HTTP {sorted(set(answered))}, {said_duplicate} of 10 second uploads answered as duplicates, "
        f"{len(objects)} bucket objects; {len(job_rows)} jobs rows, {video_rows} videos rows, "
        f"{len(requested)} run requests for {len(set(requested))} partitions",
        checks,
        {},
    )
    assert all(checks.values()), (
        checks,
        [r.text[:200] for r in responses if r.status_code not in (200, 202)],
    )
