"""The GPU paths fed with llama.cpp's real names and log lines (tests/fixtures/llama_logs,
see its README for where each line comes from): CUDA on one and two GPUs, Metal on Apple
Silicon, and the CPU build's own log."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tui_infer.core.inference import llama_log
from tui_infer.core.inference.backend import describe_backend, gpu_name_in
from tui_infer.core.inference.devices import Device, backend_family
from tui_infer.core.inference.memory import gpu_memory

LOGS = Path(__file__).parent / "fixtures" / "llama_logs"
MIB = 1024 * 1024
GIB = 1024 * MIB

CUDA_INFO = "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : AVX2 = 1 | "
METAL_INFO = "MTL : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 |"
CPU_DEV = Device("CPU", "Intel(R) Xeon(R) Platinum 8480+", "cpu", 100 * GIB, 200 * GIB, "CPU")


def log(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


def cuda(i: int, desc: str, free: int, total: int, pci: str) -> Device:
    return Device(f"CUDA{i}", desc, "gpu", free, total, "CUDA", pci)


def test_cuda_single_gpu_all_layers() -> None:
    lines = log("cuda_single.log")
    h100 = cuda(0, "NVIDIA H100 80GB HBM3", 80590 * MIB, 81079 * MIB, "0000:00:07.0")
    b = describe_backend(
        CUDA_INFO, [h100, CPU_DEV], True, -1, 30, 8, llama_log.offloaded_layers(lines), lines
    )
    assert (b.name, b.device, b.devices) == ("CUDA", "NVIDIA H100 80GB HBM3", ("CUDA0",))
    assert (b.offloaded_layers, b.total_layers) == (31, 31)
    assert b.flash_attn is True and "flash attention" not in b.summary
    assert b.summary == "CUDA NVIDIA H100 80GB HBM3 · 31/31 layers · 8 threads"
    assert llama_log.model_buffers(lines) == {
        "CUDA0": round(92.10 * MIB),
        "CPU_Mapped": 27 * MIB,
    }
    assert llama_log.buffers(lines, "KV") == {"CUDA0": 45 * MIB}
    assert set(llama_log.buffers(lines, "compute")) == {"CUDA0", "CUDA_Host"}


def test_cuda_two_gpus_share_the_layers() -> None:
    lines = log("cuda_multi.log")
    gpus = [
        cuda(0, "NVIDIA GeForce RTX 4090", 23884 * MIB, 24270 * MIB, "0000:01:00.0"),
        cuda(1, "NVIDIA GeForce RTX 4090", 23880 * MIB, 24270 * MIB, "0000:02:00.0"),
    ]
    b = describe_backend(
        CUDA_INFO, [*gpus, CPU_DEV], True, -1, 32, 8, llama_log.offloaded_layers(lines), lines
    )
    assert b.devices == ("CUDA0", "CUDA1") and b.device == "2 x NVIDIA GeForce RTX 4090"
    assert (b.offloaded_layers, b.total_layers) == (33, 33)
    kv = llama_log.buffers(lines, "KV")
    assert kv == {"CUDA0": 256 * MIB, "CUDA1": 256 * MIB}


def test_partial_offload_and_flash_attention_turned_off_by_auto() -> None:
    lines = log("cuda_partial_fa_off.log")
    gtx = cuda(0, "NVIDIA GeForce GTX 1080 Ti", 10988 * MIB, 11264 * MIB, "0000:03:00.0")
    b = describe_backend(
        CUDA_INFO, [gtx, CPU_DEV], True, 20, 32, 8, llama_log.offloaded_layers(lines), lines
    )
    assert (b.offloaded_layers, b.total_layers) == (20, 33)
    assert b.flash_attn is False
    assert "CUDA0 has no kernel" in b.flash_attn_note and "run on CPU" in b.flash_attn_note
    assert "flash attention off: auto mode turned it off" in b.summary


def test_metal_on_apple_silicon() -> None:
    lines = log("metal.log")
    mtl = Device("MTL0", "Apple M3 Max", "gpu", 98303 * MIB, 98304 * MIB, "MTL")
    assert mtl.backend == "Metal"
    b = describe_backend(
        METAL_INFO, [mtl, CPU_DEV], True, -1, 30, 8, llama_log.offloaded_layers(lines), lines
    )
    assert (b.name, b.device, b.devices) == ("Metal", "Apple M3 Max", ("MTL0",))
    assert (b.offloaded_layers, b.total_layers) == (31, 31)
    assert "MTL0_Mapped" in llama_log.model_buffers(lines)
    assert gpu_name_in(METAL_INFO) == "Metal"


def test_metal_memory_is_the_working_set_and_says_so() -> None:
    from tui_infer.core.inference import devices as d

    mtl = Device("MTL0", "Apple M3 Max", "gpu", 90 * GIB, 96 * GIB, "MTL")
    real = d.apple_silicon
    try:
        d.apple_silicon = lambda system=None, machine=None: True  # type: ignore[assignment]
        (g,) = gpu_memory([mtl, CPU_DEV], {})
    finally:
        d.apple_silicon = real  # type: ignore[assignment]
    assert g.unified and g.free_bytes == 90 * GIB
    assert g.describe() == [
        "MTL0 Apple M3 Max: 6.0 GiB used by this process of a 96.0 GiB working set (unified memory)"
    ]


def test_cuda_memory_lines_say_whose_figure() -> None:
    h100 = cuda(0, "NVIDIA H100 80GB HBM3", 60 * GIB, 80 * GIB, "0000:00:07.0")
    (g,) = gpu_memory([h100], {"CUDA0": (12 * GIB, 87)})
    assert g.describe() == [
        "CUDA0 NVIDIA H100 80GB HBM3: 20.0 GiB used of 80.0 GiB (whole GPU, all processes)",
        "  this process 12.0 GiB, GPU busy 87 % (NVML)",
    ]


def test_forced_off_and_the_cpu_build() -> None:
    off = llama_log.flash_attention(log("forced_off.log"))
    assert off is not None and off.enabled is False and "flash_attn = false" in off.reason
    on = llama_log.flash_attention(log("cpu.log"))
    assert on is not None and on.enabled is True
    assert llama_log.model_buffers(log("cpu.log")) == {"CPU_Mapped": round(92.10 * MIB)}


def test_names_of_backends() -> None:
    assert [backend_family(n) for n in ("CUDA0", "CUDA12", "MTL0", "MTL", "Metal")] == [
        "CUDA",
        "CUDA",
        "Metal",
        "Metal",
        "Metal",
    ]
    assert [backend_family(n) for n in ("Vulkan1", "ROCm0", "CPU_Mapped", "BLAS")] == [
        "Vulkan",
        "ROCm",
        "CPU",
        "BLAS",
    ]
    assert gpu_name_in(CUDA_INFO) == "CUDA" and gpu_name_in("CPU : AVX2 = 1 |") is None


def test_pacing_from_llama_cpp_s_own_offload_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TUI's redraw pace (app/streaming.pacing_for) from the backend llama.cpp's log
    describes: all n_layer + 1 layers on the GPU frees the CPU, a partial offload not."""
    from tui_infer.app.streaming import pacing_for
    from tui_infer.core.inference.pacing import SHARED, SPARE

    def backend(name: str, gpu: Device, requested: int, n_layer: int) -> object:
        lines = log(name)
        return describe_backend(
            CUDA_INFO,
            [gpu, CPU_DEV],
            True,
            requested,
            n_layer,
            2,
            llama_log.offloaded_layers(lines),
            lines,
        )

    h100 = cuda(0, "NVIDIA H100 80GB HBM3", 80590 * MIB, 81079 * MIB, "0000:00:07.0")
    gtx = cuda(0, "NVIDIA GeForce GTX 1080 Ti", 10988 * MIB, 11264 * MIB, "0000:03:00.0")
    # 2 threads on (say) a 2-core machine: shared, unless the whole model is on the GPU
    whole = backend("cuda_single.log", h100, -1, 30)
    partial = backend("cuda_partial_fa_off.log", gtx, 20, 32)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert pacing_for(whole, 0) is SPARE
    assert pacing_for(partial, 0) is SHARED


def test_a_bundle_names_the_gpu_backend_as_users_do() -> None:
    """A bundle's manifest (core/bundle/cpu.py) from the build's system info: Metal's section
    is "MTL" in current llama.cpp."""
    from tui_infer.core.bundle.cpu import backend_name

    assert backend_name(METAL_INFO, True) == "Metal"
    assert backend_name(CUDA_INFO, True) == "CUDA"
    assert backend_name("CPU : AVX2 = 1 |", False) == "CPU"


def test_a_registry_without_features_in_the_system_info() -> None:
    """llama_print_system_info (src/llama.cpp) writes "NAME : " then "KEY = VALUE | " per
    feature: Metal without GGML_METAL_EMBED_LIBRARY has none and runs into the CPU's."""
    from tui_infer.core.inference.backend import parse_system_info

    info = "MTL : CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 | "
    assert parse_system_info(info) == {
        "MTL": {},
        "CPU": {"NEON": "1", "ARM_FMA": "1", "DOTPROD": "1"},
    }
    assert gpu_name_in(info) == "Metal"
    assert parse_system_info("CPU : AVX2 = 1 | MTL : ") == {"CPU": {"AVX2": "1"}, "MTL": {}}
    b = describe_backend(info, [CPU_DEV], True, -1, 30, 8, None)
    assert "NEON" in b.cpu_features and "DOTPROD" in b.cpu_features


def test_what_is_said_of_nvml_s_figures() -> None:
    """Beside the GPU lines: why NVML has no figure, or that it lists none for this
    process (nothing allocated yet, or a container's PID namespace), else nothing."""
    from tui_infer.core.inference.memory import nvml_note

    missing = "this process's share needs NVML: pip install 'tui-infer[nvidia]'"
    assert nvml_note({}, missing) == missing
    assert "no GPU memory of this process" in nvml_note({"CUDA0": (None, 3)}, "")
    assert nvml_note({"CUDA0": (None, 3), "CUDA1": (512 * MIB, 40)}, "") == ""
