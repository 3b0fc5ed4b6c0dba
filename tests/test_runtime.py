"""Process-level tuning (dagster_deepfake/runtime.py): background load, collector pause, malloc."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import pytest

from dagster_deepfake.config import REPO_ROOT
from dagster_deepfake.runtime import claim_cpu_slot, collector_paused, in_background


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


_CLAIM = """
import os, sys, time
from dagster_deepfake.runtime import claim_cpu_slot
cores = claim_cpu_slot(2, sys.argv[1])
again = claim_cpu_slot(2, sys.argv[1])
import torch
print(cores, again, sorted(os.sched_getaffinity(0)), torch.get_num_threads(), flush=True)
time.sleep(float(sys.argv[2]))
"""


def _claim(lock_dir, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CLAIM, str(lock_dir), str(hold_s)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to share")
def test_processes_side_by_side_each_get_their_own_share_of_the_cores(tmp_path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    first = _claim(tmp_path, 30)
    line1 = first.stdout.readline().strip()  # it holds its share while the others start
    second = _claim(tmp_path, 0)
    third_line = None
    try:
        line2 = second.communicate(timeout=120)[0].strip()
        third = _claim(tmp_path, 0)
        third_line = third.communicate(timeout=120)[0].strip()
    finally:
        first.kill()
        first.wait()
    assert line1 == f"{cores[:half]} {cores[:half]} {cores[:half]} {half}"
    # The second share: pinned there, torch sized to it (imported after the claim).
    assert line2 == f"{cores[half : 2 * half]} {cores[half : 2 * half]} {cores[half : 2 * half]} {half}"
    # The second share is free again once its process ended (the lock goes with the process).
    assert third_line == line2


def test_a_process_with_no_free_share_keeps_every_core(tmp_path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    assert claim_cpu_slot(1, str(tmp_path)) is None  # one share: nothing to pin
    assert claim_cpu_slot(len(cores) + 1, str(tmp_path)) is None  # more shares than cores
    assert sorted(os.sched_getaffinity(0)) == cores and not list(tmp_path.iterdir())
