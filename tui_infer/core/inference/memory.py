"""Memory figures: this process, the system, and the GPUs llama.cpp uses.

GPU memory comes from llama.cpp's own device API (devices.py), which every backend
answers: CUDA with cudaMemGetInfo (the whole card, every process), Metal with its
recommended working-set size and what this process has allocated in it (Apple Silicon:
unified memory, the same RAM the CPU uses). NVML (the optional 'nvidia' extra) adds
what only it knows: this process's share of a card and how busy the card is. Each
figure says whose it is.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any


def _size(n: int) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


@dataclass(frozen=True)
class GpuMemory:
    name: str  # ggml's device name: "CUDA0", "MTL0"
    used_bytes: int  # total - free: the whole card (CUDA), this process's allocations (Metal)
    total_bytes: int  # the card's memory; Metal: its recommended working-set size
    description: str = ""  # "NVIDIA H100 80GB HBM3", "Apple M3 Max"
    backend: str = ""  # "CUDA", "Metal", "Vulkan", ...
    unified: bool = False  # shares the system RAM (Apple Silicon, integrated GPUs)
    process_bytes: int | None = None  # NVML: this process on this card
    utilisation: int | None = None  # NVML: % of the last sample period a kernel ran (card)

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)

    def describe(self) -> list[str]:
        """The lines doctor and the stats panel show, each saying whose figure it is."""
        head = f"{self.name} {self.description}".strip()
        if self.backend == "Metal":
            lines = [
                f"{head}: {_size(self.used_bytes)} used by this process of a"
                f" {_size(self.total_bytes)} working set"
                + (" (unified memory)" if self.unified else "")
            ]
        elif self.unified:
            lines = [
                f"{head}: {_size(self.free_bytes)} free of {_size(self.total_bytes)}"
                " (shared with the CPU)"
            ]
        else:
            lines = [
                f"{head}: {_size(self.used_bytes)} used of {_size(self.total_bytes)}"
                " (whole GPU, all processes)"
            ]
        extra = []
        if self.process_bytes is not None:
            extra.append(f"this process {_size(self.process_bytes)}")
        if self.utilisation is not None:
            extra.append(f"GPU busy {self.utilisation} %")
        if extra:
            lines.append("  " + ", ".join(extra) + " (NVML)")
        return lines


@dataclass(frozen=True)
class MemorySnapshot:
    rss_bytes: int
    system_available_bytes: int
    system_total_bytes: int
    gpus: tuple[GpuMemory, ...]
    gpu_note: str  # "no GPU (...)" when gpus is empty; what is missing otherwise


def gpu_memory(
    devices: list[Any], nvml: dict[str, tuple[int | None, int | None]]
) -> list[GpuMemory]:
    """GpuMemory per GPU that llama.cpp would put layers on (devices.gpu_devices: not a
    card seen twice, nor an integrated GPU beside a discrete one); `nvml` maps a device
    name to (this process's bytes, utilisation %) where NVML had them."""
    from tui_infer.core.inference.devices import gpu_devices

    out = []
    for d in gpu_devices(devices):
        process, util = nvml.get(d.name, (None, None))
        out.append(
            GpuMemory(
                name=d.name,
                used_bytes=max(0, d.total_bytes - d.free_bytes),
                total_bytes=d.total_bytes,
                description=d.description,
                backend=d.backend,
                unified=d.unified,
                process_bytes=process,
                utilisation=util,
            )
        )
    return out


def no_gpu_note(devices: list[Any]) -> str:
    if not devices:
        return "no GPU (llama.cpp's device list is unavailable)"
    names = ", ".join(d.name for d in devices)
    return f"no GPU (llama.cpp sees: {names})"


def nvml_note(figures: dict[str, tuple[int | None, int | None]], unavailable: str) -> str:
    """What to say beside the GPU lines about NVML's figures: why there are none
    (`unavailable`), or that NVML lists no memory of this process: it has allocated none
    yet, or it runs in another PID namespace (a container) than the one NVML reports."""
    if not figures:
        return unavailable
    if all(process is None for process, _ in figures.values()):
        return (
            "NVML lists no GPU memory of this process (none allocated yet, or a container's"
            " PID namespace hides it)"
        )
    return ""


class MemoryProbe:
    """Samples memory. The device list is read from llama.cpp at each sample (cheap);
    NVML is initialised once, lazily, only when llama.cpp has a CUDA device."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._psutil = psutil
        self._nvml: Any = None
        self._nvml_note = ""
        self._nvml_lock = threading.Lock()
        self._nvml_tried = False

    def _init_nvml(self) -> None:
        self._nvml_tried = True
        try:
            import pynvml  # from nvidia-ml-py, the optional 'nvidia' extra
        except ImportError:
            self._nvml_note = "this process's share needs NVML: pip install 'tui-infer[nvidia]'"
            return
        try:
            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # NVMLError: no driver
            self._nvml_note = f"NVML unavailable ({exc})"

    def _nvml_figures(self, devices: list[Any]) -> dict[str, tuple[int | None, int | None]]:
        from tui_infer.core.inference.devices import NvmlDevice, match_nvml

        with self._nvml_lock:
            if not self._nvml_tried:
                self._init_nvml()
            nvml = self._nvml
            if nvml is None:
                return {}
            try:
                handles, listed = [], []
                for i in range(nvml.nvmlDeviceGetCount()):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    handles.append(h)
                    listed.append(
                        NvmlDevice(
                            index=i,
                            uuid=_str(nvml.nvmlDeviceGetUUID(h)),
                            pci_bus_id=_str(nvml.nvmlDeviceGetPciInfo(h).busId),
                            name=_str(nvml.nvmlDeviceGetName(h)),
                        )
                    )
                matched = match_nvml(devices, listed, os.environ.get("CUDA_VISIBLE_DEVICES"))
                out: dict[str, tuple[int | None, int | None]] = {}
                pid = os.getpid()
                for name, n in matched.items():
                    h = handles[n.index]
                    procs = nvml.nvmlDeviceGetComputeRunningProcesses(h)
                    mine = [p.usedGpuMemory for p in procs if p.pid == pid and p.usedGpuMemory]
                    util = int(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                    out[name] = (sum(mine) if mine else None, util)
                return out
            except Exception as exc:  # NVMLError
                self._nvml_note = f"NVML figures unavailable ({exc})"
                return {}

    def gpus(self) -> tuple[tuple[GpuMemory, ...], str]:
        try:
            from tui_infer.core.inference.devices import gpu_devices, probe_devices

            devices = probe_devices()
        except Exception as exc:  # an unloadable llama.cpp costs only this figure
            return (), f"no GPU figures (llama.cpp: {exc})"
        used = gpu_devices(devices)
        if not used:
            return (), no_gpu_note(devices)
        nvml = self._nvml_figures(devices) if any(d.backend == "CUDA" for d in used) else {}
        return tuple(gpu_memory(devices, nvml)), nvml_note(nvml, self._nvml_note)

    def snapshot(self) -> MemorySnapshot:
        vm = self._psutil.virtual_memory()
        gpus, note = self.gpus()
        return MemorySnapshot(
            rss_bytes=int(self._process.memory_info().rss),
            system_available_bytes=int(vm.available),
            system_total_bytes=int(vm.total),
            gpus=gpus,
            gpu_note=note,
        )


def _str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
