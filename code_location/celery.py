"""The code location for Celery execution: the same assets, jobs and sensors as
`code_location.definitions`, with every step of `analyze_video`, `extract_features` and
`train_calibrate_evaluate` run as a task on Celery workers (dagster-celery).

Load it with `deploy/workspace.celery.yaml` on an instance made from `deploy/dagster.celery.yaml`.
The executor is dagster-celery's own `celery_executor`; steps that declare `pool="gpu"` carry its
queue tag (`assets/common.py`) and go to the `gpu` queue, the rest to Celery's
`task_default_queue`, `cpu`. Broker, queues and Celery settings come from deploy/celery.yaml (or
the file named by DAGSTER_DEEPFAKE_CELERY_CONFIG). Nothing passes between steps on local disk: artifacts
go through the artifact store (S3 in a fleet), results to PostgreSQL (docs/DEPLOY.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from dagster_celery import celery_executor

from code_location.definitions import build_definitions
from dagster_deepfake.config import REPO_ROOT

CELERY_CONFIG_ENV = "DAGSTER_DEEPFAKE_CELERY_CONFIG"
DEFAULT_CELERY_CONFIG = REPO_ROOT / "deploy" / "celery.yaml"


def celery_config_path() -> Path:
    return Path(os.environ.get(CELERY_CONFIG_ENV) or DEFAULT_CELERY_CONFIG)


def load_celery_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole file: `execution.config` (dagster-celery's) and the `workers` of `make cluster`."""
    return yaml.safe_load(Path(path or celery_config_path()).read_text()) or {}


def celery_executor_def(path: str | os.PathLike | None = None):
    config = (load_celery_config(path).get("execution") or {}).get("config", {})
    return celery_executor.configured(config, name="celery")


defs = build_definitions(executor_def=celery_executor_def())
