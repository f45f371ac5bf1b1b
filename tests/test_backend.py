"""Backend detection: the real CPU build, and the GPU logic fed through the same seam."""

from __future__ import annotations

import pytest

from tui_infer.core.inference.backend import (
    Device,
    describe_backend,
    parse_system_info,
    probe_devices,
    probe_system_info,
)
from tui_infer.core.inference.memory import MemoryProbe

GPU_BUILD = probe_system_info()[1]
cpu_build_only = pytest.mark.skipif(GPU_BUILD, reason="assumes a CPU build of llama.cpp")


@cpu_build_only
def test_real_cpu_build() -> None:
    info, offload = probe_system_info()
    devices = probe_devices()
    assert "CPU" in parse_system_info(info)
    assert any(d.kind == "cpu" and d.total_bytes > 0 for d in devices)
    b = describe_backend(
        info, devices, offload, requested_gpu_layers=-1, n_layer=30, threads=2, logged_offload=None
    )
    assert b.name == "CPU" and b.offloaded_layers == 0
    assert set(b.cpu_features) >= {"AVX2"} or set(b.cpu_features) >= {"NEON"}
    assert b.summary.startswith("CPU") and "2 threads" in b.summary


CUDA_INFO = "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : AVX2 = 1 | "
H100 = Device("CUDA0", "NVIDIA H100 80GB HBM3", "gpu", 80 * 2**30, 81 * 2**30, "CUDA")
CPU = Device("CPU", "Intel Xeon", "cpu")


def test_cuda_uses_the_offload_llama_cpp_logged() -> None:
    b = describe_backend(
        CUDA_INFO,
        [H100, CPU],
        True,
        requested_gpu_layers=-1,
        n_layer=30,
        threads=8,
        logged_offload=(31, 31),
    )
    assert (b.name, b.device, b.offloaded_layers, b.total_layers) == (
        "CUDA",
        "NVIDIA H100 80GB HBM3",
        31,
        31,
    )
    assert "31/31 layers" in b.summary


def test_partial_offload_without_a_log_line() -> None:
    b = describe_backend(
        CUDA_INFO,
        [H100, CPU],
        True,
        requested_gpu_layers=10,
        n_layer=30,
        threads=8,
        logged_offload=None,
    )
    assert b.name == "CUDA" and b.offloaded_layers == 10


def test_zero_gpu_layers_is_cpu() -> None:
    b = describe_backend(
        CUDA_INFO,
        [H100, CPU],
        True,
        requested_gpu_layers=0,
        n_layer=30,
        threads=8,
        logged_offload=None,
    )
    assert b.name == "CPU" and b.offloaded_layers == 0


def test_metal() -> None:
    metal = Device("MTL0", "Apple M3 Max", "gpu", registry="MTL")  # "Metal" before late 2025
    b = describe_backend(
        "MTL : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 |",
        [metal],
        True,
        requested_gpu_layers=-1,
        n_layer=30,
        threads=8,
        logged_offload=(31, 31),
    )
    assert (b.name, b.device) == ("Metal", "Apple M3 Max")
    assert "NEON" in b.cpu_features


def test_gpu_build_without_a_gpu_falls_back_to_cpu() -> None:
    b = describe_backend(
        CUDA_INFO, [CPU], True, requested_gpu_layers=-1, n_layer=30, threads=8, logged_offload=None
    )
    assert b.name == "CPU"


@cpu_build_only
def test_memory_figures_without_a_gpu() -> None:
    snap = MemoryProbe().snapshot()
    assert snap.rss_bytes > 10 * 2**20
    assert 0 < snap.system_available_bytes <= snap.system_total_bytes
    assert snap.gpus == () and snap.gpu_note.startswith("no GPU")
