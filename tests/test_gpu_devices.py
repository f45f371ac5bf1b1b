"""Device enumeration through the real bindings (the CPU build here), and the rules that
place NVML's figures beside ggml's devices (CUDA_VISIBLE_DEVICES, PCI bus ids)."""

from __future__ import annotations

import pytest

from tui_infer.core.inference.backend import probe_system_info
from tui_infer.core.inference.devices import (
    Device,
    NvmlDevice,
    match_nvml,
    normalise_pci,
    probe_devices,
    visible_nvml,
)
from tui_infer.core.inference.memory import MemoryProbe

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
