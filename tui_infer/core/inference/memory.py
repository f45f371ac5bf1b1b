"""Memory figures: this process, the system, and NVIDIA GPUs through NVML."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    name: str
    used_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class MemorySnapshot:
    rss_bytes: int
    system_available_bytes: int
    system_total_bytes: int
    gpus: tuple[GpuMemory, ...]
    gpu_note: str  # "no GPU", "NVML not installed", ... when gpus is empty


class MemoryProbe:
    """Samples memory; NVML is initialised once, lazily, and its absence is a figure."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._psutil = psutil
        self._nvml: object | None = None
        self._nvml_note = ""
        self._nvml_lock = threading.Lock()
        self._nvml_tried = False

    def _init_nvml(self) -> None:
        self._nvml_tried = True
        try:
            import pynvml  # from nvidia-ml-py, the optional 'nvidia' extra
        except ImportError:
            self._nvml_note = "no GPU (NVML not installed)"
            return
        try:
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() == 0:
                self._nvml_note = "no GPU"
                return
            self._nvml = pynvml
        except Exception:  # NVMLError: no driver, no device
            self._nvml_note = "no GPU"

    def gpus(self) -> tuple[tuple[GpuMemory, ...], str]:
        with self._nvml_lock:
            if not self._nvml_tried:
                self._init_nvml()
            nvml = self._nvml
            if nvml is None:
                return (), self._nvml_note
            out = []
            try:
                for i in range(nvml.nvmlDeviceGetCount()):  # type: ignore[attr-defined]
                    h = nvml.nvmlDeviceGetHandleByIndex(i)  # type: ignore[attr-defined]
                    info = nvml.nvmlDeviceGetMemoryInfo(h)  # type: ignore[attr-defined]
                    name = nvml.nvmlDeviceGetName(h)  # type: ignore[attr-defined]
                    if isinstance(name, bytes):
                        name = name.decode()
                    out.append(GpuMemory(str(name), int(info.used), int(info.total)))
            except Exception as exc:
                return (), f"GPU memory unavailable ({exc})"
            return tuple(out), ""

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
