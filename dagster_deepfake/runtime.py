"""Process-level tuning for a process that runs the models: memory reuse and import cost.

**Freed memory.** glibc serves an allocation above its mmap threshold (dynamic, at most 32 MB)
with a fresh `mmap`, gives it back on `free`, and trims the heap's free top above the trim
threshold. The backbone's activations (tens of MB per layer for a batch of faces) and decoded
frames are allocated and freed thousands of times per video, so each pass pays its page faults
again: measured on the 2-core build machine (AMD EPYC, bf16), `analyze` of a 30 s 720p clip
took 1.5 M minor faults and the model stage 6.2–7.6 s; with both thresholds raised, 0.35 M
faults and 3.2–3.8 s (alternating runs), at the same peak RSS (docs/ARCHITECTURE.md §7). The cost is that a process
keeps its peak heap resident until it exits, which a run worker or `analyze` does soon anyway.
A threshold the operator set (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
`GLIBC_TUNABLES`) wins; off glibc this does nothing.

**Imports.** Importing torch, transformers and timm creates millions of objects, and the cyclic
garbage collector walks them again and again while it does (measured: 6.1–6.5 s with it,
4.5–5.0 s without); nothing those imports create is garbage. And they need one core for
seconds while decoding and face detection spend theirs in ffmpeg and ONNX Runtime with the GIL
released, so the model is loaded `in_background` beside the first video's first stages.

**Cores.** One analysis process keeps two cores only ~1.25 busy (ffprobe/ffmpeg waits, GIL-bound
glue between the parallel kernels), and two processes that each size their thread pools to the
whole machine fight over it: measured on the 2-core build machine, 40 short clips took 60–65 s
in one process, 93 s as two processes side by side with default threads, and 45–52 s as two
processes each pinned to one core (docs/ARCHITECTURE.md §7). `claim_cpu_slot` gives a process
one of `slots` equal shares of this host's cores, held by an advisory file lock until it exits,
before any thread pool exists: torch (OpenMP), ONNX Runtime, OpenCV and ffmpeg children all
size themselves from the affinity mask.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: mallopt parameters (malloc.h) and the value for both: allocations above 1 GB still mmap.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30

OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; whether they are raised now."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = _raise_malloc_thresholds()
        return _applied


def _raise_malloc_thresholds() -> bool:
    if any(name in os.environ for name in OPERATOR_SETTINGS):
        return False
    try:  # the C library this process already runs on; find_library would spawn ldconfig
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt (macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: setting either turns glibc's dynamic threshold off, and a trim threshold
    # alone would leave every allocation above 128 KB to mmap (4.4 M faults, measured).
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (the model code's imports).

    Reference counting still frees everything meanwhile; the collector resumes after it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def in_background(fn: Callable[..., T], *args: Any, name: str = "model-load") -> Future[T]:
    """`fn(*args)` in a daemon thread, its result or exception in the returned future.

    A daemon thread: a video refused meanwhile is reported at once, without waiting for the load,
    and the process exits without joining it.
    """
    future: Future[T] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


_slot: tuple[int, list[int]] | None = None  # (lock file descriptor, cores) once claimed


def cpu_slot_dir() -> str:
    """Where slot lock files live: this host's temp folder, per user (runs of one host share it)."""
    return os.path.join(tempfile.gettempdir(), f"dagster-deepfake-cpu-slots-{os.getuid()}")


def claim_cpu_slot(slots: int, lock_dir: str | None = None) -> list[int] | None:
    """Pin this process to a free one of `slots` equal shares of its cores; the cores, or None.

    None (nothing changes) when `slots` <= 1, there are fewer cores than slots, or every slot is
    held (more processes than slots: they share the machine as before). Once per process; the
    lock is released when the process exits, however it exits.
    """
    global _slot
    with _lock:
        if _slot is not None:
            return list(_slot[1])
        cores = sorted(os.sched_getaffinity(0))
        if slots <= 1 or len(cores) < slots:
            return None
        folder = lock_dir or cpu_slot_dir()
        os.makedirs(folder, mode=0o700, exist_ok=True)
        per = len(cores) // slots
        for i in range(slots):
            fd = os.open(os.path.join(folder, f"slot-{i}-of-{slots}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            share = cores[i * per : (i + 1) * per]
            _pin(share)
            _slot = (fd, share)
            return list(share)
        return None


def _pin(cores: list[int]) -> None:
    """Every thread of this process onto `cores` (sched_setaffinity is per thread on Linux), and
    the pools that already exist resized."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cores)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(cores))
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(len(cores))
