"""A small code location for tests/test_prefork_launcher.py: jobs that say which process ran them."""

import json
import os
import time
from pathlib import Path

import dagster as dg

# Which process imported this module: the warm worker when it was preloaded, else the run's own.
IMPORTED_BY_PID = os.getpid()


class ReportConfig(dg.Config):
    out: str
    # Wait (up to this many seconds) for this file to exist before finishing: a run held open.
    hold_until: str | None = None
    hold_seconds: float = 0.0


@dg.op
def report_process(config: ReportConfig) -> None:
    Path(config.out).write_text(
        json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "imported_by": IMPORTED_BY_PID})
    )
    deadline = time.time() + config.hold_seconds
    while config.hold_until and not Path(config.hold_until).exists() and time.time() < deadline:
        time.sleep(0.1)


@dg.job(executor_def=dg.in_process_executor)
def which_process() -> None:
    report_process()


defs = dg.Definitions(jobs=[which_process])
