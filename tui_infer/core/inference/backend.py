"""Which backend really runs: CPU (SIMD features, threads), CUDA or Metal.

`describe_backend` is pure: it turns what llama.cpp reports (system info string,
ggml's device list, the lines it logged while loading) into a BackendInfo. `probe_*`
read those facts from the real library. The split lets the GPU logic be tested
on this CPU-only machine with the CPU build's real inputs and llama.cpp's real strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tui_infer.core.inference import llama_log
from tui_infer.core.inference.devices import Device, backend_family, gpu_devices, probe_devices

__all__ = [
    "GPU_BACKENDS",
    "BackendInfo",
    "Device",
    "describe_backend",
    "parse_system_info",
    "probe_devices",
    "probe_system_info",
]

# Section names llama_print_system_info gives GPU backends (a registry's name: Metal's
# is "MTL" in current llama.cpp, "Metal" before).
GPU_BACKENDS = ("CUDA", "Metal", "MTL", "Vulkan", "ROCm", "HIP", "SYCL", "MUSA", "OpenCL", "CANN")


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "CPU", "CUDA", "Metal", ...
    device: str  # the device(s) that run the layers
    gpu_offload_supported: bool
    offloaded_layers: int
    total_layers: int  # n_layer + 1: llama.cpp counts the output layer
    threads: int
    cpu_features: tuple[str, ...]
    system_info: str
    devices: tuple[str, ...] = ()  # ggml names of the GPUs holding layers: ("CUDA0", "CUDA1")
    flash_attn: bool | None = None  # what llama.cpp settled on (None: not known)
    flash_attn_note: str = ""  # why it is off

    @property
    def summary(self) -> str:
        if self.name == "CPU":
            simd = " ".join(f for f in self.cpu_features if f in _HEADLINE_FEATURES)
            text = f"CPU {simd} · {self.threads} threads".replace("  ", " ")
        else:
            text = (
                f"{self.name} {self.device} · {self.offloaded_layers}/{self.total_layers} layers"
                f" · {self.threads} threads"
            )
        if self.flash_attn is False:
            text += " · flash attention off" + (
                f": {self.flash_attn_note}" if self.flash_attn_note else ""
            )
        return text


_HEADLINE_FEATURES = (
    "AVX",
    "AVX2",
    "AVX512",
    "AVX_VNNI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_INT8",
    "F16C",
    "FMA",
    "NEON",
    "ARM_FMA",
    "SVE",
    "DOTPROD",
    "MATMUL_INT8",
    "SME",
    "RISCV_V",
)


def parse_system_info(info: str) -> dict[str, dict[str, str]]:
    """'CUDA : ARCHS = 890 | CPU : AVX = 1 | ...' -> {'CUDA': {'ARCHS': '890'}, 'CPU': {...}}.

    llama_print_system_info writes each registry's name, " : ", then its features each
    followed by " | ": a registry with no feature (a Metal build without its embedded
    library) runs into the next one, "MTL : CPU : NEON = 1 | "."""
    sections: dict[str, dict[str, str]] = {}
    current = "CPU"
    for part in info.split("|"):
        part = part.strip()
        if not part:
            continue
        if part.endswith(" :"):  # the last registry, with no feature
            part += " "
        while " : " in part:
            section, part = part.split(" : ", 1)
            current = section.strip()
            sections.setdefault(current, {})
        if "=" in part:
            key, value = part.split("=", 1)
            sections.setdefault(current, {})[key.strip()] = value.strip()
    return sections


def describe_backend(
    system_info: str,
    devices: Sequence[Device],
    gpu_offload_supported: bool,
    requested_gpu_layers: int,
    n_layer: int,
    threads: int,
    logged_offload: tuple[int, int] | None,
    load_log: Sequence[str] = (),
) -> BackendInfo:
    """`logged_offload` is llama.cpp's "offloaded N/M layers to GPU"; `load_log` the lines
    it logged while loading (which devices got model buffers, flash attention's fate)."""
    sections = parse_system_info(system_info)
    cpu = sections.get("CPU", {})
    features = tuple(k for k, v in cpu.items() if v == "1")
    gpus = gpu_devices(devices)
    total_layers = n_layer + 1  # llama.cpp counts the output layer too
    if logged_offload is not None:
        offloaded, total_layers = logged_offload
    elif gpu_offload_supported and gpus:
        wanted = total_layers if requested_gpu_layers < 0 else requested_gpu_layers
        offloaded = min(wanted, total_layers)
    else:
        offloaded = 0
    fa = llama_log.flash_attention(list(load_log)) if load_log else None
    cpu_dev = next((d for d in devices if d.kind == "cpu"), None)
    name, device = "CPU", cpu_dev.description if cpu_dev else "CPU"
    used_names: tuple[str, ...] = ()
    if offloaded > 0 and gpus:
        # The GPUs that hold model buffers, when the log says; else every visible one
        # (llama.cpp splits layers over all of them by default).
        buffers = llama_log.model_buffers(list(load_log))
        used = [g for g in gpus if any(b.split("_")[0] == g.name for b in buffers)] or gpus
        descs = [g.description or g.name for g in used]
        device = descs[0] if len(set(descs)) == 1 else " + ".join(descs)
        if len(used) > 1 and len(set(descs)) == 1:
            device = f"{len(used)} x {device}"
        name, used_names = used[0].backend, tuple(g.name for g in used)
    else:
        offloaded = 0
    return BackendInfo(
        name=name,
        device=device,
        gpu_offload_supported=gpu_offload_supported,
        offloaded_layers=offloaded,
        total_layers=total_layers,
        threads=threads,
        cpu_features=features,
        system_info=system_info,
        devices=used_names,
        flash_attn=fa.enabled if fa else None,
        flash_attn_note=fa.reason if fa else "",
    )


def gpu_name_in(system_info: str) -> str | None:
    """The GPU backend a build's system info names ("CUDA", "Metal", ...), if any."""
    for section in parse_system_info(system_info):
        family = backend_family(section)
        if family not in ("CPU", "BLAS", "RPC") and section.upper() in (
            b.upper() for b in GPU_BACKENDS
        ):
            return family
    return None


def probe_system_info() -> tuple[str, bool]:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return info, bool(llama_cpp.llama_supports_gpu_offload())
