"""Which backend really runs: CPU (SIMD features, threads), CUDA or Metal.

`describe_backend` is pure: it turns what llama.cpp reports (system info string,
ggml's device list, the offload count it logged) into a BackendInfo. `probe_*`
read those facts from the real library. The split lets the GPU logic be tested
on this CPU-only machine with the CPU build's real inputs.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

GPU_BACKENDS = ("CUDA", "Metal", "Vulkan", "ROCm", "HIP", "SYCL", "MUSA", "OpenCL", "CANN")


@dataclass(frozen=True)
class Device:
    name: str  # ggml's name: "CPU", "CUDA0", "Metal", ...
    description: str  # e.g. "NVIDIA H100 80GB HBM3", the CPU model
    kind: str  # "cpu", "gpu", "igpu", "accel"
    free_bytes: int = 0
    total_bytes: int = 0


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "CPU", "CUDA", "Metal", ...
    device: str  # the device that runs the layers
    gpu_offload_supported: bool
    offloaded_layers: int
    total_layers: int
    threads: int
    cpu_features: tuple[str, ...]
    system_info: str

    @property
    def summary(self) -> str:
        if self.name == "CPU":
            simd = " ".join(f for f in self.cpu_features if f in _HEADLINE_FEATURES)
            return f"CPU {simd} · {self.threads} threads".replace("  ", " ")
        return (
            f"{self.name} {self.device} · {self.offloaded_layers}/{self.total_layers} layers"
            f" · {self.threads} threads"
        )


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
    """'CUDA : ARCHS = 890 | CPU : AVX = 1 | ...' -> {'CUDA': {'ARCHS': '890'}, 'CPU': {...}}."""
    sections: dict[str, dict[str, str]] = {}
    current = "CPU"
    for part in info.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:
            section, part = part.split(" : ", 1)
            current = section.strip()
            sections.setdefault(current, {})
        if "=" in part:
            key, value = part.split("=", 1)
            sections.setdefault(current, {})[key.strip()] = value.strip()
    return sections


def describe_backend(
    system_info: str,
    devices: list[Device],
    gpu_offload_supported: bool,
    requested_gpu_layers: int,
    n_layer: int,
    threads: int,
    logged_offload: tuple[int, int] | None,
) -> BackendInfo:
    sections = parse_system_info(system_info)
    cpu = sections.get("CPU", {})
    features = tuple(k for k, v in cpu.items() if v == "1")
    gpus = [d for d in devices if d.kind in ("gpu", "igpu")]
    total_layers = n_layer + 1  # llama.cpp counts the output layer too
    if logged_offload is not None:
        offloaded, total_layers = logged_offload
    elif gpu_offload_supported and gpus:
        wanted = total_layers if requested_gpu_layers < 0 else requested_gpu_layers
        offloaded = min(wanted, total_layers)
    else:
        offloaded = 0
    if offloaded > 0 and gpus:
        gpu = gpus[0]
        name = next((b for b in GPU_BACKENDS if gpu.name.upper().startswith(b.upper())), None)
        if name is None:
            name = next((b for b in GPU_BACKENDS if b in sections), gpu.name)
        return BackendInfo(
            name=name,
            device=gpu.description or gpu.name,
            gpu_offload_supported=gpu_offload_supported,
            offloaded_layers=offloaded,
            total_layers=total_layers,
            threads=threads,
            cpu_features=features,
            system_info=system_info,
        )
    cpu_dev = next((d for d in devices if d.kind == "cpu"), None)
    return BackendInfo(
        name="CPU",
        device=cpu_dev.description if cpu_dev else "CPU",
        gpu_offload_supported=gpu_offload_supported,
        offloaded_layers=0,
        total_layers=total_layers,
        threads=threads,
        cpu_features=features,
        system_info=system_info,
    )


_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def probe_devices() -> list[Device]:
    """ggml's device registry, through the symbols libllama's handle exposes.

    The Python bindings do not wrap ggml_backend_dev_*; dlsym on libllama's
    handle finds them in its dependency libggml. Absent, the list is empty.
    """
    try:
        from llama_cpp import llama_cpp as lib_mod

        lib = lib_mod._lib
        count = lib.ggml_backend_dev_count
        get = lib.ggml_backend_dev_get
        name = lib.ggml_backend_dev_name
        desc = lib.ggml_backend_dev_description
        typ = lib.ggml_backend_dev_type
        mem = lib.ggml_backend_dev_memory
    except (AttributeError, ImportError, OSError):
        return []
    count.restype, count.argtypes = ctypes.c_size_t, []
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    name.restype = desc.restype = ctypes.c_char_p
    name.argtypes = desc.argtypes = typ.argtypes = [ctypes.c_void_p]
    typ.restype = ctypes.c_int
    mem.restype = None
    mem.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    out = []
    for i in range(count()):
        dev = get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        mem(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            Device(
                name=(name(dev) or b"").decode(errors="replace"),
                description=(desc(dev) or b"").decode(errors="replace").strip(),
                kind=_KINDS.get(typ(dev), "accel"),
                free_bytes=free.value,
                total_bytes=total.value,
            )
        )
    return out


def probe_system_info() -> tuple[str, bool]:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return info, bool(llama_cpp.llama_supports_gpu_offload())
