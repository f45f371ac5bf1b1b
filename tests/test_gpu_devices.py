"""Device enumeration through the real bindings (the CPU build here), and the rules that
place NVML's figures beside ggml's devices (CUDA_VISIBLE_DEVICES, PCI bus ids)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tui_infer.core.inference.backend import probe_system_info
from tui_infer.core.inference.devices import (
    Device,
    NvmlDevice,
    gpu_devices,
    match_nvml,
    normalise_pci,
    probe_devices,
    visible_nvml,
)
from tui_infer.core.inference.memory import MemoryProbe, gpu_memory

GPU_BUILD = probe_system_info()[1]
cpu_build_only = pytest.mark.skipif(GPU_BUILD, reason="assumes a CPU build of llama.cpp")


@cpu_build_only
def test_real_enumeration_on_the_cpu_build() -> None:
    devices = probe_devices()
    cpu = [d for d in devices if d.kind == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].registry == "CPU"
    assert cpu[0].backend == "CPU" and cpu[0].total_bytes > 0
    assert not any(d.is_gpu for d in devices)
    gpus, note = MemoryProbe().gpus()
    assert (
        gpus == () and note == "no GPU (llama.cpp sees: " + ", ".join(d.name for d in devices) + ")"
    )


def test_enumeration_matches_llama_cpp_s_own_count() -> None:
    """Whatever the build: the list is ggml's (its count), GPUs and CPU alike."""
    from llama_cpp import llama_cpp as lib

    devices = probe_devices()
    assert len(devices) == int(lib._lib.ggml_backend_dev_count())
    assert bool([d for d in devices if d.is_gpu]) <= GPU_BUILD


NVML = [
    NvmlDevice(0, "GPU-aaaa1111-0000", "00000000:01:00.0", "NVIDIA A100"),
    NvmlDevice(1, "GPU-bbbb2222-0000", "00000000:41:00.0", "NVIDIA A100"),
    NvmlDevice(2, "GPU-cccc3333-0000", "00000000:81:00.0", "NVIDIA A100"),
    NvmlDevice(3, "GPU-dddd4444-0000", "00000000:C1:00.0", "NVIDIA A100"),
]


@pytest.mark.parametrize(
    "env, expected",
    [
        (None, [0, 1, 2, 3]),
        ("2,0", [2, 0]),
        ("GPU-dddd", [3]),
        ("dddd4444", [3]),
        ("1,7,2", [1]),  # CUDA stops at the first entry that names no device
        ("", []),
        ("-1", []),
        ("1,1", [1]),
    ],
)
def test_cuda_visible_devices(env: str | None, expected: list[int]) -> None:
    assert [d.index for d in visible_nvml(NVML, env)] == expected


def test_nvml_matched_by_pci_bus_id_whatever_the_order() -> None:
    assert normalise_pci("00000000:C1:00.0") == normalise_pci("0000:c1:00.0") == "0000:c1:00.0"
    ggml = [
        Device("CUDA0", "NVIDIA A100", "gpu", 1, 2, "CUDA", "0000:c1:00.0"),
        Device("CUDA1", "NVIDIA A100", "gpu", 1, 2, "CUDA", "0000:01:00.0"),
        Device("CPU", "x", "cpu"),
    ]
    got = match_nvml(ggml, NVML, "3,0")
    assert {k: v.index for k, v in got.items()} == {"CUDA0": 3, "CUDA1": 0}
    # without PCI ids (older llama.cpp): CUDA<i> is the i-th visible device
    bare = [Device(d.name, d.description, d.kind, 1, 2, d.registry) for d in ggml]
    assert {k: v.index for k, v in match_nvml(bare, NVML, "2,1").items()} == {
        "CUDA0": 2,
        "CUDA1": 1,
    }


GIB = 1024**3
CPU = Device("CPU", "Intel(R) Core(TM) i9-13900K", "cpu", 60 * GIB, 64 * GIB, "CPU")
# ggml-cuda: "CUDA<i>", the PCI bus id lower-cased; ggml-vulkan: "Vulkan<i>", the same card's
# PCI id, type IGPU for an integrated one (ggml_backend_vk_device_get_type).
RTX = Device("CUDA0", "NVIDIA GeForce RTX 4090", "gpu", 23 * GIB, 24 * GIB, "CUDA", "0000:01:00.0")
RTX_VK = Device(
    "Vulkan0", "NVIDIA GeForce RTX 4090", "gpu", 23 * GIB, 24 * GIB, "Vulkan", "0000:01:00.0"
)
UHD = Device(
    "Vulkan1", "Intel(R) UHD Graphics 770", "igpu", 30 * GIB, 32 * GIB, "Vulkan", "0000:00:02.0"
)


def test_the_gpus_llama_cpp_puts_layers_on() -> None:
    """llama_prepare_model_devices' default selection: a card seen by two backends once, an
    integrated GPU only when there is no discrete one; the memory figures (and so the fit)
    count the same devices, so neither the iGPU's share of the RAM nor a card twice."""
    assert gpu_devices([RTX, RTX_VK, UHD, CPU]) == [RTX]
    assert gpu_devices([CPU, UHD]) == [UHD]
    rpc = Device("RPC[10.0.0.2:50052]", "RPC", "gpu", 8 * GIB, 8 * GIB, "RPC")
    assert gpu_devices([rpc, CPU]) == []
    two = Device(
        "CUDA1", "NVIDIA GeForce RTX 4090", "gpu", 23 * GIB, 24 * GIB, "CUDA", "0000:02:00.0"
    )
    assert gpu_devices([RTX, two, RTX_VK, CPU]) == [RTX, two]
    # without PCI ids nothing is taken for a duplicate
    bare = [
        Device(d.name, d.description, d.kind, d.free_bytes, d.total_bytes, d.registry)
        for d in (RTX, two)
    ]
    assert gpu_devices(bare) == bare
    mem = gpu_memory([RTX, RTX_VK, UHD, CPU], {})
    assert [g.name for g in mem] == ["CUDA0"] and mem[0].free_bytes == 23 * GIB


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    not (ROOT / ".venv/bin/tui-infer").exists() or sys.platform == "win32",
    reason="scripts/gpu-check.sh runs the project's .venv",
)
@pytest.mark.skipif(
    any(d.is_gpu and d.backend != "CUDA" for d in probe_devices()),
    reason="a Metal/Vulkan GPU is not hidden by CUDA_VISIBLE_DEVICES",
)
def test_gpu_check_says_no_gpu_and_skips(tmp_path: Path) -> None:
    """With no GPU to see (CPU build, or every CUDA device hidden by an empty
    CUDA_VISIBLE_DEVICES, which CUDA applies before ggml enumerates) the check says so
    and stops with status 2, skipping the GPU checks rather than failing each."""
    report = tmp_path / "report.txt"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_REPORT": str(report)}
    env.pop("GPU_CHECK_FORCE", None)
    env.pop("GPU_CHECK_WHEEL", None)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu-check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "FAIL 1 detection: no GPU: llama.cpp sees CPU" in out.stdout
    assert "SKIP 2-6: no GPU here" in out.stdout
    text = report.read_text()
    assert "CUDA_VISIBLE_DEVICES" in text and "(empty: no GPU)" in text
