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
"""

from __future__ import annotations

import ctypes
import gc
import os
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
