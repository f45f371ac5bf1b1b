"""The devices llama.cpp sees, as it names them, through ggml's backend device API.

ggml registers one backend per compiled-in library ("CPU", "CUDA", "MTL", "Vulkan",
"BLAS", ...) and each registers its devices: "CPU", "CUDA0", "CUDA1", "MTL0" (older
builds: registry and device both "Metal"), "Vulkan0". `probe_devices()` walks
ggml_backend_dev_count/ggml_backend_dev_get and asks each device its name, description,
type, memory and PCI id (ggml_backend_dev_get_props) and its registry's name. The
bindings of llama-cpp-python 0.3.36 do not wrap these functions; they are bound here
with ctypes against the libggml that llama_cpp loaded.

The memory figures are the device's: CUDA's cudaMemGetInfo (free and total of the whole
card, every process counted), Metal's recommendedMaxWorkingSetSize as the total and that
minus this process's currentAllocatedSize as the free (ggml-metal-device.m). The CUDA
runtime applies CUDA_VISIBLE_DEVICES before ggml enumerates, so the list holds exactly
the GPUs llama.cpp may use, renumbered from CUDA0. NVML does not apply it: the helpers
at the bottom match NVML's devices to ggml's (by PCI bus id, else by the variable).

Everything but `probe_devices` is pure, so that it is tested with llama.cpp's real
strings on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# enum ggml_backend_dev_type (ggml-backend.h)
KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
GPU_KINDS = ("gpu", "igpu")

# ggml registry name -> what a user calls the backend. CUDA's registry is GGML_CUDA_NAME:
# "CUDA", or "ROCm" / "MUSA" when the same code is built for HIP or MUSA.
_FAMILIES = {
    "CUDA": "CUDA",
    "ROCM": "ROCm",
    "HIP": "ROCm",
    "MUSA": "MUSA",
    "MTL": "Metal",
    "METAL": "Metal",
    "VULKAN": "Vulkan",
    "SYCL": "SYCL",
    "OPENCL": "OpenCL",
    "CANN": "CANN",
    "RPC": "RPC",
    "BLAS": "BLAS",
    "CPU": "CPU",
}


@dataclass(frozen=True)
class Device:
    name: str  # ggml's name: "CPU", "CUDA0", "MTL0" ("Metal" before late 2025), "Vulkan0"
    description: str  # "NVIDIA H100 80GB HBM3", "Apple M3 Max", the CPU model
    kind: str  # "cpu", "gpu", "igpu", "accel", "meta"
    free_bytes: int = 0
    total_bytes: int = 0
    registry: str = ""  # ggml's backend registry: "CPU", "CUDA", "MTL", "Metal", ...
    device_id: str | None = None  # the PCI bus id ("0000:c1:00.0") where the backend has one

    @property
    def backend(self) -> str:
        """The backend's usual name: "CUDA", "Metal", "Vulkan", ..."""
        return backend_family(self.registry or self.name)

    @property
    def is_gpu(self) -> bool:
        return self.kind in GPU_KINDS

    @property
    def unified(self) -> bool:
        """Memory shared with the CPU: Metal on Apple Silicon, an integrated GPU."""
        return self.kind == "igpu" or (self.backend == "Metal" and apple_silicon())


def backend_family(name: str) -> str:
    """ "CUDA0" -> "CUDA", "MTL0"/"MTL"/"Metal" -> "Metal", "Vulkan1" -> "Vulkan"."""
    stem = name.rstrip("0123456789").split("_")[0].strip()
    return _FAMILIES.get(stem.upper(), stem or name)


def apple_silicon(system: str | None = None, machine: str | None = None) -> bool:
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    return system == "Darwin" and machine == "arm64"


def gpu_devices(devices: Sequence[Device]) -> list[Device]:
    """The devices a model's layers go to by default, in llama.cpp's order: its default
    selection (llama_prepare_model_devices, src/llama.cpp): every discrete GPU, but one
    whose PCI id an earlier GPU already has is skipped (a card seen by two backends, say
    CUDA and Vulkan: "skipping device ... with the same id"); integrated GPUs only when
    there is no discrete one, and only those of the first iGPU's backend. RPC servers
    (remote, only there when added by hand) are left out."""
    gpus: list[Device] = []
    igpus: list[Device] = []
    for d in devices:
        if d.kind == "gpu" and d.backend != "RPC":
            if d.device_id and any(g.device_id == d.device_id for g in gpus):
                continue
            gpus.append(d)
        elif d.kind == "igpu" and (not igpus or igpus[-1].registry == d.registry):
            igpus.append(d)
    return gpus or igpus


# ----- the real library ---------------------------------------------------------------------


class _Caps(ctypes.Structure):
    _fields_ = [
        ("async_", ctypes.c_bool),
        ("host_buffer", ctypes.c_bool),
        ("buffer_from_host_ptr", ctypes.c_bool),
        ("events", ctypes.c_bool),
        ("mmap_support", ctypes.c_bool),
    ]


class _Props(ctypes.Structure):
    """struct ggml_backend_dev_props as in the ggml-backend.h shipped with the wheel."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("memory_free", ctypes.c_size_t),
        ("memory_total", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("device_id", ctypes.c_char_p),
        ("caps", _Caps),
        ("_spare", ctypes.c_char * 64),  # room should a later ggml append fields
    ]


_bound: dict[str, Any] | None = None


def _bind() -> dict[str, Any] | None:
    """The ggml functions, bound once; None when the library has no device API."""
    global _bound
    if _bound is not None:
        return _bound or None
    libs: list[Any] = []
    try:
        from llama_cpp import llama_cpp as lib_mod

        libs.append(lib_mod._lib)  # dlsym on libllama finds libggml's symbols too
    except (ImportError, OSError, AttributeError):
        pass
    try:
        from llama_cpp._ggml import libggml

        libs.insert(0, libggml)
    except (ImportError, OSError, AttributeError):
        pass
    vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    spec: dict[str, tuple[Any, list[Any]]] = {
        "ggml_backend_dev_count": (sz, []),
        "ggml_backend_dev_get": (vp, [sz]),
        "ggml_backend_dev_name": (cp, [vp]),
        "ggml_backend_dev_description": (cp, [vp]),
        "ggml_backend_dev_type": (ctypes.c_int, [vp]),
        "ggml_backend_dev_memory": (None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
        "ggml_backend_dev_get_props": (None, [vp, ctypes.POINTER(_Props)]),
        "ggml_backend_dev_backend_reg": (vp, [vp]),
        "ggml_backend_reg_name": (cp, [vp]),
    }
    optional = (
        "ggml_backend_dev_get_props",
        "ggml_backend_dev_backend_reg",
        "ggml_backend_reg_name",
    )
    for lib in libs:
        out: dict[str, Any] = {}
        for fname, (restype, argtypes) in spec.items():
            fn = getattr(lib, fname, None)
            if fn is None:
                continue
            fn.restype, fn.argtypes = restype, argtypes
            out[fname] = fn
        if all(k in out for k in spec if k not in optional):
            _bound = out
            return out
    _bound = {}
    return None


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode(errors="replace").strip()


def probe_devices() -> list[Device]:
    """ggml's devices in its order, with their memory now. Empty without the device API."""
    f = _bind()
    if f is None:
        return []
    out = []
    for i in range(f["ggml_backend_dev_count"]()):
        dev = f["ggml_backend_dev_get"](i)
        name = _text(f["ggml_backend_dev_name"](dev))
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        f["ggml_backend_dev_memory"](dev, ctypes.byref(free), ctypes.byref(total))
        device_id = None
        if "ggml_backend_dev_get_props" in f:
            props = _Props()
            f["ggml_backend_dev_get_props"](dev, ctypes.byref(props))
            # The struct is this wheel's; were a build's to differ, its name would not match.
            if _text(props.name) == name:
                device_id = _text(props.device_id) or None
        reg = f["ggml_backend_dev_backend_reg"](dev) if "ggml_backend_reg_name" in f else None
        out.append(
            Device(
                name=name,
                description=_text(f["ggml_backend_dev_description"](dev)),
                kind=KINDS.get(f["ggml_backend_dev_type"](dev), "accel"),
                free_bytes=free.value,
                total_bytes=total.value,
                registry=_text(f["ggml_backend_reg_name"](reg)) if reg else "",
                device_id=device_id,
            )
        )
    return out


# ----- NVML beside ggml ----------------------------------------------------------------------


def normalise_pci(bus_id: str | None) -> str | None:
    """'00000000:C1:00.0' (NVML) and '0000:c1:00.0' (ggml) -> '0000:c1:00.0'."""
    if not bus_id:
        return None
    try:
        domain, bus, rest = bus_id.strip().lower().split(":")
        dev, _, fn = rest.partition(".")
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn or '0', 16):x}"
    except ValueError:
        return None


@dataclass(frozen=True)
class NvmlDevice:
    index: int  # NVML's index (PCI order, every GPU of the machine)
    uuid: str  # "GPU-5c0b4a1e-..."
    pci_bus_id: str | None
    name: str


def visible_nvml(nvml: Sequence[NvmlDevice], cuda_visible_devices: str | None) -> list[NvmlDevice]:
    """NVML's devices as CUDA numbers them under CUDA_VISIBLE_DEVICES (CUDA0 first).

    CUDA's rules: unset, every device; a list of indices or UUIDs (a unique prefix
    will do) in the order given; the list stops at the first entry that names no
    device; empty, or -1, none. Indices here are NVML's, which equal CUDA's only with
    CUDA_DEVICE_ORDER=PCI_BUS_ID; that is why a PCI bus id is matched first when ggml
    reports one (see match_nvml)."""
    if cuda_visible_devices is None:
        return list(nvml)
    out: list[NvmlDevice] = []
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        found: NvmlDevice | None = None
        if entry.lstrip("-").isdigit():
            found = next((d for d in nvml if d.index == int(entry)), None)
        elif entry:
            hits = [d for d in nvml if d.uuid.lower().startswith(entry.lower())]
            if not hits and not entry.upper().startswith(("GPU-", "MIG-")):
                hits = [d for d in nvml if d.uuid.lower().startswith("gpu-" + entry.lower())]
            found = hits[0] if len(hits) == 1 else None
        if found is None or found in out:
            break
        out.append(found)
    return out


def match_nvml(
    devices: Sequence[Device], nvml: Sequence[NvmlDevice], cuda_visible_devices: str | None
) -> dict[str, NvmlDevice]:
    """ggml CUDA device name -> its NVML device. By PCI bus id where ggml gives one
    (exact whatever the ordering), else the i-th visible NVML device for CUDA<i>."""
    cuda = [d for d in devices if d.backend == "CUDA" and d.is_gpu]
    by_pci = {normalise_pci(n.pci_bus_id): n for n in nvml if n.pci_bus_id}
    visible = visible_nvml(nvml, cuda_visible_devices)
    out: dict[str, NvmlDevice] = {}
    for i, d in enumerate(cuda):
        pci = normalise_pci(d.device_id)
        if pci and pci in by_pci:
            out[d.name] = by_pci[pci]
        elif i < len(visible):
            out[d.name] = visible[i]
    return out
