"""The pieces of Celery execution without a fleet: queues by pool, the worker's bounded
model cache, the project's Redis keeping queued messages over a restart, and one config file
that the executor and the workers read alike (docs/DEPLOY.md, "Celery workers")."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from code_location.celery import DEFAULT_CELERY_CONFIG, celery_executor_def, load_celery_config
from dagster_deepfake.broker import ping, redis_pid, start_redis, stop_redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gpu_pool_steps_go_to_the_gpu_queue_and_the_rest_to_cpu(monkeypatch):
    from dagster._core.execution.api import create_execution_plan
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    from assets.common import CELERY_QUEUE_TAG
    from code_location.celery import defs

    # The assets spell dagster-celery's tag as a literal (importing dagster_celery costs ~1 s).
    assert CELERY_QUEUE_TAG == DAGSTER_CELERY_QUEUE_TAG
    for name in ("DAGSTER_CELERY_BROKER_URL", "DAGSTER_CELERY_BACKEND_URL"):
        monkeypatch.setenv(name, "redis://127.0.0.1:6379/0")  # the executor's config names them
    default_queue = load_celery_config()["execution"]["config"]["config_source"]["task_default_queue"]
    assert default_queue == "cpu"

    def queue_for(step) -> str:  # dagster-celery's rule (core_celery_execution_loop)
        return step.tags.get(DAGSTER_CELERY_QUEUE_TAG, default_queue)

    job = defs.resolve_job_def("analyze_video")
    assert job.executor_def.name == "celery"
    plan = create_execution_plan(job, run_config={})
    queues = {step.key: queue_for(step) for step in plan.get_all_steps_in_topo_order()}
    pools = {step.key: step.pool for step in plan.get_all_steps_in_topo_order()}
    assert {k for k, q in queues.items() if q == "gpu"} == {k for k, p in pools.items() if p == "gpu"}
    assert {"audio_embeddings", "predictions", "saliency"} <= {k for k, q in queues.items() if q == "gpu"}
    assert {"raw_video", "frames", "aligned_faces", "optical_flow", "audio", "report"} <= {
        k for k, q in queues.items() if q == "cpu"
    }
    train = defs.resolve_job_def("train_calibrate_evaluate")
    assert train.executor_def.name == "celery"
    train_plan = create_execution_plan(train, run_config={})
    assert queue_for(train_plan.get_step_by_key("trained_model")) == "gpu"
    assert queue_for(train_plan.get_step_by_key("dataset_manifest")) == "cpu"
    # The local code location's jobs are the same jobs, in-process.
    from code_location.definitions import defs as local

    assert local.resolve_job_def("analyze_video").executor_def.name == "in_process"


def test_executor_and_workers_read_one_file(monkeypatch):
    from dagster_celery.cli import get_validated_config

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "redis://broker.example:6379/0")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "redis://broker.example:6379/1")
    worker = get_validated_config(str(DEFAULT_CELERY_CONFIG))  # what `dagster-celery worker start -y` writes
    assert worker["broker"] == "redis://broker.example:6379/0"
    source = worker["config_source"]
    assert source["task_acks_late"] and source["task_reject_on_worker_lost"]
    assert source["worker_prefetch_multiplier"] == 1
    executor = celery_executor_def()
    assert executor.name == "celery"


def test_the_worker_model_cache_is_bounded_and_follows_a_republished_checkpoint(tmp_path: Path):
    from dagster_deepfake.models.checkpoint import ModelStore, build_untrained, save_checkpoint

    store = ModelStore(max_models=1)
    folders = []
    for name in ("a", "b"):
        model, manifest = build_untrained("tiny")
        save_checkpoint(tmp_path / name, model, manifest)
        folders.append(tmp_path / name)
    first, _ = store.get(folders[0])
    assert store.get(folders[0])[0] is first  # loaded once
    store.get(folders[1])
    assert len(store) == 1  # the least recently used one was dropped
    assert store.get(folders[0])[0] is not first  # and is loaded again when asked for
    again, _ = store.get(folders[0])
    time.sleep(0.01)
    os.utime(folders[0] / "manifest.json")  # training publishes a new checkpoint in place
    assert store.get(folders[0])[0] is not again


@pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="redis-server not installed")
def test_the_project_redis_keeps_queued_messages_over_a_restart(tmp_path: Path):
    import redis

    port = _free_port()
    url = start_redis(tmp_path / "redis", port)
    try:
        assert start_redis(tmp_path / "redis", port) == url  # a running one is reused
        redis.Redis.from_url(url).lpush("cpu", b"task-1", b"task-2")
        pid = redis_pid(tmp_path / "redis")
        assert stop_redis(tmp_path / "redis") and not ping(url)
        start_redis(tmp_path / "redis", port)
        assert redis_pid(tmp_path / "redis") != pid
        assert redis.Redis.from_url(url).lrange("cpu", 0, -1) == [b"task-2", b"task-1"]
    finally:
        stop_redis(tmp_path / "redis")
    assert not stop_redis(tmp_path / "redis")


def test_the_fleet_creates_dagsters_tables_once_before_its_processes_start(tmp_path: Path, pg_url: str):
    """On a fresh database, daemon, webserver and workers each creating Dagster's tables at once
    race (`relation "instance_info" already exists`); `cluster` creates them first."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    from commands.cluster import base_env, create_dagster_storage, dagster_storage_url, make_home

    admin = create_engine(make_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS dagster_prepared WITH (FORCE)"))
    admin.dispose()
    dagster_pg = dagster_storage_url(pg_url, "dagster_prepared")
    env = base_env(os.environ, broker_url="redis://127.0.0.1:1/0", dagster_pg_url=dagster_pg)
    home = make_home(tmp_path / "home")
    engine = create_engine(dagster_pg)
    assert inspect(engine).get_table_names() == []

    create_dagster_storage(home, env)
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "instance_info", "event_logs", "jobs", "alembic_version"} <= tables
    create_dagster_storage(home, env)  # a second start finds them and changes nothing
    assert set(inspect(engine).get_table_names()) == tables
    engine.dispose()


def test_a_fleet_that_cannot_reach_dagsters_database_says_so_in_one_line(tmp_path: Path):
    """`cluster` prints it as `error: ...` (commands/cli.py) before starting any process."""
    from commands.cluster import base_env, create_dagster_storage, make_home
    from dagster_deepfake.errors import DeepfakeError

    dead = f"postgresql+psycopg2://nobody@127.0.0.1:{_free_port()}/dagster"
    env = base_env(os.environ, broker_url="redis://127.0.0.1:1/0", dagster_pg_url=dead)
    with pytest.raises(DeepfakeError, match=r"could not create Dagster's storage") as failed:
        create_dagster_storage(make_home(tmp_path / "home"), env)
    assert "\n" not in str(failed.value) and "Traceback" not in str(failed.value)
