"""`routed_celery_executor`: dagster-celery's executor, with queues chosen by the step's pool.

Every step of a run becomes a Celery task (`dagster_celery.celery_executor`: the run process
submits the steps and waits for their results; workers run them). What this adds is routing by
the kind of work, from what the assets already declare: a step with `pool="gpu"` (the model
steps, `assets/model.py`, `assets/explain.py`, `trained_model`) goes to the queue named for that
pool, every other step (decoding, faces, flow, audio, the report) to the default queue. The
names are configuration (`routing:` in deploy/celery.yaml); an explicit `dagster-celery/queue`
op tag still wins. docs/DEPLOY.md, "Celery workers".
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
from dagster import Field, Permissive
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

ROUTING_CONFIG = {
    "default_queue": Field(str, is_required=False, default_value="cpu", description="Steps with no pool."),
    "pool_queues": Field(
        Permissive(),
        is_required=False,
        default_value={"gpu": "gpu"},
        description="Pool name → Celery queue for the steps that declare that pool.",
    ),
}


class RoutedCeleryExecutor(CeleryExecutor):
    def __init__(self, *, default_queue: str, pool_queues: Mapping[str, str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.default_queue = default_queue
        self.pool_queues = dict(pool_queues)

    def queue_for(self, step) -> str:
        if DAGSTER_CELERY_QUEUE_TAG in step.tags:
            return step.tags[DAGSTER_CELERY_QUEUE_TAG]
        return self.pool_queues.get(step.pool or "", self.default_queue)

    def execute(self, plan_context, execution_plan):
        def submit(app, context, step, queue, priority, known_state):
            routed = self.queue_for(step)
            if routed != queue:  # dagster-celery's own log line named the default queue
                context.log.info(f'Step "{step.key}" (pool {step.pool}) goes to Celery queue "{routed}".')
            return _submit_task(app, context, step, routed, priority, known_state)

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)


@dg.executor(
    name="celery",
    config_schema={**CELERY_CONFIG, **ROUTING_CONFIG},
    requirements=dg.multiple_process_executor_requirements(),
)
def routed_celery_executor(init_context) -> RoutedCeleryExecutor:
    from dagster._core.execution.retries import RetryMode

    config = init_context.executor_config
    source = dict(config.get("config_source") or {})
    # The queue dagster-celery names in its "Submitting" line is the Celery default queue.
    source.setdefault("task_default_queue", config["default_queue"])
    return RoutedCeleryExecutor(
        broker=config.get("broker"),
        backend=config.get("backend"),
        config_source=source,
        include=config.get("include"),
        retries=RetryMode.from_config(config["retries"]),
        default_queue=config["default_queue"],
        pool_queues=config["pool_queues"],
    )
