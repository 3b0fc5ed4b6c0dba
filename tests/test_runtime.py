"""Process-level tuning (dagster_deepfake/runtime.py): background load, collector pause, malloc."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import pytest

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.runtime import collector_paused, in_background


def test_in_background_hands_back_the_result_from_another_thread() -> None:
    future = in_background(lambda a, b: (a + b, threading.current_thread().name), 2, 3, name="t-load")
    value, thread_name = future.result(timeout=10)
    assert value == 5
    assert thread_name == "t-load" != threading.current_thread().name


def test_in_background_hands_back_the_exception_to_whoever_waits() -> None:
    def fails() -> None:
        raise FileNotFoundError("no checkpoint at /nowhere")

    with pytest.raises(FileNotFoundError, match="/nowhere"):
        in_background(fails).result(timeout=10)


def test_collector_paused_resumes_the_collector_and_leaves_a_disabled_one_off() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # someone else turned it off: not ours to turn on
    finally:
        gc.enable()


def _keep_freed_memory_in_child(env: dict[str, str]) -> str:
    code = "from dagster_deepfake.runtime import keep_freed_memory as k; print(k(), k())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_raises_glibcs_thresholds_once_unless_the_operator_set_them() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    assert _keep_freed_memory_in_child(env) == "True True"
    # An operator's own threshold wins: nothing is changed.
    assert _keep_freed_memory_in_child({**env, "MALLOC_MMAP_THRESHOLD_": "131072"}) == "False False"
