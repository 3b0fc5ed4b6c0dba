"""The production instance (deploy/dagster.yaml) on a real PostgreSQL, and the Dagster daemon
running a sensor-requested analysis through it: queued, launched, completed."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from commands.local_dagster import LOCATION_NAME, LocalDagster, start_local_dagster
from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB
from launchers.prefork import PID_TAG, WORKER_TAG

PRODUCTION_INSTANCE = REPO_ROOT / "deploy" / "dagster.yaml"
DAEMON_TIMEOUT_SECONDS = 240


@pytest.fixture(scope="module")
def dagster_pg_url(pg_url: str) -> str:
    """A fresh database `dagster_test` for Dagster's own storage, beside the results database."""
    admin = create_engine(make_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS dagster_test WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE dagster_test"))
    admin.dispose()
    # dagster-postgres needs psycopg2, named explicitly: SQLAlchemy 2.1 maps a bare postgresql://
    # to psycopg 3, on which dagster's NOTIFY statements fail (docs/ARCHITECTURE.md §6).
    url = make_url(pg_url).set(drivername="postgresql+psycopg2", database="dagster_test")
    return url.render_as_string(hide_password=False)


@pytest.fixture
def dagster_home(tmp_path: Path, dagster_pg_url: str, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PRODUCTION_INSTANCE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
    return home


def test_production_instance_loads_on_postgres(dagster_home: Path):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 8
        assert [lim["key"] for lim in queue.tag_concurrency_limits] == ["dagster-deepfake/dataset"]
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_monitoring_enabled
        assert not instance.telemetry_enabled

        # The `gpu` pool is sized at deploy time (`dagster instance concurrency set gpu N`) and
        # lives in PostgreSQL: another process sees the same limit.
        instance.event_log_storage.set_concurrency_slots("gpu", 3)
    with dg.DagsterInstance.from_config(str(dagster_home)) as other:
        assert other.event_log_storage.get_concurrency_info("gpu").slot_count == 3


def test_production_instance_refuses_without_database_url(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    shutil.copy(PRODUCTION_INSTANCE, tmp_path / "dagster.yaml")
    with pytest.raises(Exception, match="DAGSTER_PG_URL"):
        dg.DagsterInstance.from_config(str(tmp_path))


def _write_config(path: Path, tmp: Path, pg_url: str, **platform) -> None:
    config = {
        "model": {"registry_config": "tiny"},  # the contract's classes in a CPU-test size
        "platform": {
            "upload_uri": f"file://{tmp / 'bucket'}",
            "artifact_root": str(tmp / "artifacts"),
            "postgres_url": pg_url,
            "model_dir": str(tmp / "models"),
            "upload_settle_seconds": 1,
            "sensor_interval_seconds": 2,
            "device": "cpu",
            "side_by_side_runs": 1,
            **platform,
        },
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def daemon_env(tmp_path: Path, dagster_home: Path, pg_url: str) -> Iterator[dict[str, str]]:
    (tmp_path / "bucket").mkdir()
    config = tmp_path / "config.yaml"
    _write_config(config, tmp_path, pg_url)
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
        env.pop(name, None)  # the temp config is the whole truth for this daemon
    yield env


def _start_daemon(env: dict[str, str], log: Path) -> LocalDagster:
    """The code server and the daemon as `make demo` starts them (commands/local_dagster.py)."""
    with log.open("wb") as out:
        return start_local_dagster(env, out)


def test_local_dagster_stops_as_one_group_and_leaves_nothing(tmp_path: Path, daemon_env):
    log = tmp_path / "daemon.log"
    local = _start_daemon(daemon_env, log)
    try:
        assert local.poll() is None, log.read_text()[-4000:]
        assert "grpc_server" in local.workspace.read_text()
        pids = [local.code_server.pid, local.daemon.pid]
        assert os.getpgid(local.daemon.pid) == os.getpgid(local.code_server.pid) == local.code_server.pid
    finally:
        clean = local.stop(timeout_s=20)
    assert clean, log.read_text()[-4000:]
    assert not [
        p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not local.run_dir.exists()
    assert local.poll() is not None


def test_a_code_server_that_cannot_load_says_so_and_leaves_nothing(tmp_path: Path, daemon_env, monkeypatch):
    import commands.local_dagster as local_dagster

    monkeypatch.setattr(local_dagster, "LOCATION_NAME", "no_such_module.definitions")
    before = set(Path(tempfile.gettempdir()).glob("ddf-dagster-*"))
    with (
        (tmp_path / "daemon.log").open("wb") as log,
        pytest.raises(local_dagster.LocalDagsterError, match="did not start .exited with"),
    ):
        local_dagster.start_local_dagster(daemon_env, log)
    assert set(Path(tempfile.gettempdir()).glob("ddf-dagster-*")) == before
    assert "no_such_module" in (tmp_path / "daemon.log").read_text()


def _cmdline(proc: psutil.Process) -> list[str]:
    """A child's command line; [] for one that has just exited (a zombie until the daemon reaps
    it, e.g. a finished run worker): it is no code server."""
    try:
        return proc.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


@pytest.mark.slow
@pytest.mark.timeout(DAEMON_TIMEOUT_SECONDS + 60)
def test_daemon_runs_sensor_requested_analysis(tmp_path: Path, daemon_env, dagster_home: Path, pg_url: str):
    from dagster_deepfake.synthetic import generate_clip

    clip = generate_clip(tmp_path / "clip.mp4", seed=3, duration=2.0, width=320, height=240, audio="speech")
    video_id = partition_key_for_sha256(sha256_file(str(clip.path)))
    results = ResultsDB(pg_url)
    results.create_schema()

    log = tmp_path / "daemon.log"
    proc = _start_daemon(daemon_env, log)
    try:
        # An upload arrives the way a client writes one: a temp name, then a rename.
        staging = tmp_path / "bucket" / "talk clip.mp4.part"
        shutil.copy(clip.path, staging)
        staging.rename(tmp_path / "bucket" / "talk clip.mp4")

        deadline = time.monotonic() + DAEMON_TIMEOUT_SECONDS
        run = None
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"daemon exited:\n{log.read_text()[-4000:]}"
                runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": video_id}))
                run = runs[0] if runs else None
                job = results.get_job(video_id)
                if run is not None and run.is_finished and job and job["status"] in ("completed", "failed"):
                    break
                time.sleep(2)
            assert run is not None, f"no run for {video_id}:\n{log.read_text()[-4000:]}"
            assert run.status == dg.DagsterRunStatus.SUCCESS, log.read_text()[-4000:]
            assert run.tags["dagster/sensor_name"] == "upload_bucket_sensor"
            assert run.job_name == "analyze_video"
            events = [
                r.event_log_entry.dagster_event.event_type
                for r in instance.get_records_for_run(run.run_id).records
                if r.event_log_entry.dagster_event is not None
            ]
            order = [
                dg.DagsterEventType.RUN_ENQUEUED,  # the QueuedRunCoordinator took it
                dg.DagsterEventType.RUN_STARTING,  # the queue daemon released it to the launcher
                dg.DagsterEventType.RUN_START,  # a run worker process picked it up
                dg.DagsterEventType.RUN_SUCCESS,
            ]
            assert [e for e in events if e in order] == order
            assert video_id in instance.get_dynamic_partitions("videos")
            # launched by the production instance's launcher: a fork of the warm worker
            assert run.tags[PID_TAG] and run.tags[WORKER_TAG] != run.tags[PID_TAG]
            # from the code server started beside the daemon, which started none of its own
            # (it would replace that one every 60 s: commands/local_dagster.py)
            assert run.remote_job_origin.location_name == LOCATION_NAME
            assert proc.code_server.poll() is None
            daemon_children = psutil.Process(proc.daemon.pid).children(recursive=True)
            assert not [c for c in daemon_children if {"api", "grpc"} <= set(_cmdline(c))]
    finally:
        proc.stop(timeout_s=20)

    job = results.get_job(video_id)
    assert job["status"] == "completed" and job["run_id"] == run.run_id
    store = ArtifactStore(str(tmp_path / "artifacts"))
    frames = store.read_table("frames", video_id)
    assert len(frames) == 10  # 2 s at 5 FPS
    assert store.has_table("predictions", video_id) or job["result"] is not None


@pytest.mark.slow
@pytest.mark.timeout(DAEMON_TIMEOUT_SECONDS + 60)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to share")
def test_a_burst_goes_as_batch_runs_side_by_side_each_on_its_own_core_share(
    tmp_path: Path, daemon_env, dagster_home: Path, pg_url: str
):
    from assets.batch import BATCH_JOB, CPU_SLOTS_TAG, batch_video_ids
    from dagster_deepfake.synthetic import generate_clip

    _write_config(Path(daemon_env["DAGSTER_DEEPFAKE_CONFIG"]), tmp_path, pg_url, side_by_side_runs=2)
    clips = [
        generate_clip(tmp_path / f"c{i}.mp4", seed=40 + i, duration=1.0, width=320, height=240).path
        for i in range(4)
    ]
    ids = {partition_key_for_sha256(sha256_file(str(c))) for c in clips}
    results = ResultsDB(pg_url)
    results.create_schema()
    log = tmp_path / "daemon.log"
    proc = _start_daemon(daemon_env, log)
    try:
        # One burst: the same modification time on all four, so one sensor tick settles them together.
        stamp = time.time()
        for clip in clips:
            staging = tmp_path / "bucket" / f"{clip.name}.part"
            shutil.copy(clip, staging)
            os.utime(staging, (stamp, stamp))
        for clip in clips:
            (tmp_path / "bucket" / f"{clip.name}.part").rename(tmp_path / "bucket" / clip.name)
        deadline = time.monotonic() + DAEMON_TIMEOUT_SECONDS
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"daemon exited:\n{log.read_text()[-4000:]}"
                runs = instance.get_runs(dg.RunsFilter(job_name=BATCH_JOB))
                states = {(results.get_job(v) or {}).get("status") for v in ids}
                if len(runs) == 2 and all(r.is_finished for r in runs) and states <= {"completed", "failed"}:
                    break
                time.sleep(2)
            assert len(runs) == 2, log.read_text()[-4000:]
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), log.read_text()[-4000:]
            assert sorted(len(batch_video_ids(r)) for r in runs) == [2, 2]
            assert {v for r in runs for v in batch_video_ids(r)} == ids
            assert {r.tags[CPU_SLOTS_TAG] for r in runs} == {"2"}
            pinned = [
                r.event_log_entry.user_message
                for run in runs
                for r in instance.get_records_for_run(run.run_id).records
                if "pinned to cores" in (r.event_log_entry.user_message or "")
            ]
            # Each run took its own share (which share is whose depends on who started first).
            cores = sorted(os.sched_getaffinity(0))
            half = len(cores) // 2
            assert sorted(m.rsplit("cores ", 1)[1] for m in pinned) == sorted(
                [str(cores[:half]), str(cores[half : 2 * half])]
            )
            starts = sorted(r.start_time for r in instance.get_run_records(dg.RunsFilter(job_name=BATCH_JOB)))
            ends = sorted(r.end_time for r in instance.get_run_records(dg.RunsFilter(job_name=BATCH_JOB)))
            assert starts[1] < ends[0], "the two batch runs did not overlap"
    finally:
        proc.stop(timeout_s=20)
    assert all(results.get_job(v)["status"] == "completed" for v in ids)


def test_cluster_files_parse_and_agree_with_the_project():
    """What can be checked here without docker or helm: YAML, pins and the GPU wiring."""
    import re

    values = yaml.safe_load((REPO_ROOT / "deploy" / "k8s" / "values.yaml").read_text())
    gpu_tags = yaml.safe_load((REPO_ROOT / "deploy" / "k8s" / "gpu-step-tags.yaml").read_text())
    instance = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "code_location.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    run_k8s = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert run_k8s["containerConfig"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    gpu_pool = run_k8s["podSpecConfig"]["nodeSelector"]
    assert gpu_tags["pod_spec_config"]["node_selector"] == gpu_pool  # steps and runs land alike
    assert gpu_tags["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The settings the code reads from the env exist in config.py's override table.
    from dagster_deepfake.config import _PLATFORM_ENV

    project_env = {k for k in deployment["env"] if k.startswith("DAGSTER_DEEPFAKE_")}
    assert project_env <= set(_PLATFORM_ENV.values())
    # The cluster and the single host agree on the limits that protect the queue.
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert (
        queue["tagConcurrencyLimits"][0]["key"]
        == instance["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"]
    )
    assert values["concurrency"]["pools"]["defaultLimit"] == queue["maxConcurrentRuns"]

    # The image installs requirements.lock (the file `make setup` installs, hashes required), and
    # the lock carries the torch pair and a dagster-k8s of the release that pyproject pins.
    lock = (REPO_ROOT / "requirements.lock").read_text()

    def pin(name: str, text_: str, pattern: str) -> str:
        found = re.search(pattern, text_, re.M)
        assert found, f"{name} not pinned"
        return found.group(1)

    assert re.search(r"uv pip install .*--require-hashes .*-r requirements\.lock", dockerfile)
    assert "COPY requirements.lock" in dockerfile
    for name in ("torch", "torchvision"):
        assert pin(name, lock, rf"^{name}==([\d.]+)") == pin(name, pyproject, rf'"{name}==([\d.]+)"')
    assert pin("dagster-k8s", lock, r"^dagster-k8s==([\d.]+)") == pin(
        "dagster-postgres", pyproject, r'"dagster-postgres==([\d.]+)"'
    )
    assert "USER dagster" in dockerfile and "deploy/dagster.yaml" in dockerfile
    # every package the instance file names is in the image
    assert instance["run_launcher"]["module"].split(".")[0] in re.findall(r"^COPY (\w+) ", dockerfile, re.M)
