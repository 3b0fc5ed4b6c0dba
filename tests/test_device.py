"""The CUDA code path, checked where it can be on a CPU-only machine: device selection, the
refusal to fall back silently, and reduced precision off on CPUs without native bf16."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from commands.cli import main
from dagster_deepfake.errors import DeviceUnavailableError
from dagster_deepfake.models import inference
from dagster_deepfake.models.inference import autocast_context, default_bf16, select_device
from resources import TorchDeviceResource


@pytest.fixture
def cuda_present(monkeypatch):
    def set_present(present: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: present)

    return set_present


def test_auto_takes_cuda_only_when_present(cuda_present):
    cuda_present(True)
    assert select_device("auto") == "cuda"
    assert select_device("cpu") == "cpu"  # an explicit CPU wins over a present GPU
    cuda_present(False)
    assert select_device("auto") == "cpu"


def test_configured_cuda_without_a_gpu_is_an_error_not_a_fallback(cuda_present):
    cuda_present(False)
    with pytest.raises(DeviceUnavailableError, match="'cuda'.*no CUDA device"):
        select_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="'cuda:1'"):
        select_device("cuda:1")
    with pytest.raises(dg.Failure, match="no CUDA device"):
        TorchDeviceResource(device="cuda").torch_device()


def test_cli_says_so_in_one_line(cuda_present, monkeypatch, capsys, tmp_path):
    cuda_present(False)
    monkeypatch.setenv("DAGSTER_DEEPFAKE_DEVICE", "cuda")
    assert main(["analyze", str(tmp_path / "never_opened.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device 'cuda' was configured but no CUDA device is available"]


def test_reduced_precision_is_on_for_cuda_and_off_on_cpus_without_bf16(monkeypatch):
    assert default_bf16("cuda") is True
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    assert default_bf16("cpu") is False
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    assert default_bf16("cpu") is True


def test_autocast_context_changes_dtype_only_when_enabled():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_context("cpu", enabled=False):
        assert (a @ b).dtype == torch.float32
    with autocast_context("cpu", enabled=True):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32  # and nothing leaks out of the block


def test_native_bf16_is_read_from_the_cpu_flags_not_onednn():
    # oneDNN also reports bf16 "supported" on plain AVX-512, where it is emulated and slower.
    plain_avx512 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni\n"
    assert inference.cpu_supports_bf16(plain_avx512) is False
    assert inference.cpu_supports_bf16(plain_avx512.replace("avx512_vnni", "avx512_bf16")) is True
    assert inference.cpu_supports_bf16("flags\t\t: avx512f amx_tile amx_bf16\n") is True
    assert inference.cpu_supports_bf16("Features\t: fp asimd sve bf16 i8mm\n") is True  # Arm
