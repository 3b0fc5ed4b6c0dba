"""The code location for Celery execution: the same assets, jobs and sensors as
`code_location.definitions`, with every step of `analyze_video`, `extract_features` and
`train_calibrate_evaluate` run as a task on Celery workers (dagster-celery).

Load it with `deploy/workspace.celery.yaml` on an instance made from `deploy/dagster.celery.yaml`.
Steps go to queues by their pool (`launchers/celery_executor.py`): `pool="gpu"` steps to `gpu`,
the rest to `cpu`; broker, queues and Celery settings come from deploy/celery.yaml (or the file
named by DAGSTER_DEEPFAKE_CELERY_CONFIG). Nothing passes between steps on local disk: artifacts
go through the artifact store (S3 in a fleet), results to PostgreSQL (docs/DEPLOY.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from code_location.definitions import build_definitions
from dagster_deepfake.config import REPO_ROOT
from launchers.celery_executor import routed_celery_executor

CELERY_CONFIG_ENV = "DAGSTER_DEEPFAKE_CELERY_CONFIG"
DEFAULT_CELERY_CONFIG = REPO_ROOT / "deploy" / "celery.yaml"


def celery_config_path() -> Path:
    return Path(os.environ.get(CELERY_CONFIG_ENV) or DEFAULT_CELERY_CONFIG)


def load_celery_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole file: `execution.config` (dagster-celery's), `routing`, `workers`."""
    return yaml.safe_load(Path(path or celery_config_path()).read_text()) or {}


def celery_executor_def(path: str | os.PathLike | None = None):
    raw = load_celery_config(path)
    config = {**(raw.get("execution") or {}).get("config", {}), **(raw.get("routing") or {})}
    return routed_celery_executor.configured(config, name="celery")


defs = build_definitions(executor_def=celery_executor_def())
