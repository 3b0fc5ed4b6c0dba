"""What the bench ran on: CPU model and the flags that decide the fast paths, bf16, torch, CUDA."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

# The flags the model's speed depends on (oneDNN picks kernels by them).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def machine_info() -> dict[str, Any]:
    import torch

    from dagster_deepfake.models.inference import cpu_supports_bf16

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?"
    )
    flags = set(
        next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    )
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu_model": model or platform.processor() or "?",
        "cpus": cpus,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "bf16": cpu_supports_bf16(cpuinfo) if cpuinfo else False,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cuda": None,
    }
    if torch.cuda.is_available():
        info["cuda"] = {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    try:
        with open("/proc/loadavg") as f:
            info["load_average_at_start"] = float(f.read().split()[0])
    except OSError:
        pass
    return info


def markdown(info: dict[str, Any]) -> str:
    cuda = info.get("cuda")
    return (
        f"Machine: {info['cpu_model']}, {info['cpus']} CPUs (flags: {', '.join(info['cpu_flags']) or 'none of note'}); "
        f"bf16 {'on (native)' if info['bf16'] else 'off (not native: fp32)'}; torch {info['torch']} "
        f"({info['torch_threads']} threads); "
        + (f"CUDA {cuda['device']} ×{cuda['count']}" if cuda else "no CUDA device")
        + f"; {info['platform']}; {info['date']}; load average at start {info.get('load_average_at_start', '?')}."
    )
