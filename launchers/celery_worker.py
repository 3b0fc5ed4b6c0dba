"""The Celery app a worker runs: `dagster-celery worker start -A launchers.celery_worker`.

It is dagster-celery's own app (`dagster_celery.app`: the `execute_plan` task, configured from
the `-y` file) plus a preload: the worker's main process imports the Celery code location, and
with it torch, transformers and timm, once; its pool processes are forked from it and so start
warm. Each pool process lives for many tasks (no `max_tasks_per_child`), so the models it
loaded stay in its `ModelStore` (bounded: `DAGSTER_DEEPFAKE_MODEL_CACHE_SIZE`, reloaded when
the published checkpoint changes). Fork safety as for the prefork launcher
(launchers/prefork.py): the main process only imports, it runs no torch op.
"""

from __future__ import annotations

import os

from dagster_celery.app import app, execute_job, execute_plan, resume_job  # noqa: F401

if os.environ.get("DAGSTER_DEEPFAKE_WORKER_PRELOAD", "1") != "0":
    import code_location.celery  # noqa: F401  (the definitions, the assets, torch)
    import dagster_deepfake.analyze  # noqa: F401
    import dagster_deepfake.explain.gradcam  # noqa: F401
    import dagster_deepfake.models.store  # noqa: F401
