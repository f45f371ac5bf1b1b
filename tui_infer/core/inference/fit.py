"""Will this model fit? Weights + KV cache + compute buffer against free RAM / VRAM.

A pure function over numbers (the model's header facts, the context, the cache type,
the memory available), so that it is tested with known inputs; `current_machine()`
gathers the machine's figures separately.

The compute buffer allowance follows what llama.cpp reserves: its largest tensor is
the logits of one micro-batch (n_ubatch x n_vocab floats), plus the activations of a
micro-batch; without flash attention the attention scores (n_ubatch x n_ctx x n_head
floats) may be larger than the logits. For SmolLM2-135M at n_ubatch 512 llama.cpp
logs 98.25 MiB and this gives 105 MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from tui_infer.core.config import Settings
from tui_infer.core.inference.memory import GpuMemory
from tui_infer.core.inference.types import KV_TYPE_IDS, ModelInfo, kv_bytes_per_token

MIB = 1024 * 1024
OVERHEAD_BYTES = 64 * MIB  # runtime, tokenizer, the process itself
FITS_FRACTION = 0.8  # below this share of what is available: "fits"; up to 100 %: "tight"
VRAM_USABLE = 0.9  # drivers and fragmentation take the rest

FITS, TIGHT, WONT_FIT = "fits", "tight", "won't fit"


@dataclass(frozen=True)
class FitEstimate:
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    ram_available: int
    ram_needed: int
    verdict: str  # FITS, TIGHT, WONT_FIT
    gpu_free: int | None = None  # free GPU memory over the devices (Metal: working set)
    gpu_layers: int | None = None  # suggested offload for a GPU build (None: CPU only)
    n_layer: int = 0
    note: str = ""
    gpu_devices: int = 0
    unified: bool = False  # GPU memory is the system RAM (Apple Silicon)

    @property
    def offloadable(self) -> int:
        """What llama.cpp counts: the repeating layers and the output layer."""
        return self.n_layer + 1

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes

    def summary(self) -> str:
        ram = "unified memory" if self.unified else "RAM"
        parts = [
            f"{self.verdict}: needs ~{_mib(self.total_bytes)} "
            f"(weights {_mib(self.weights_bytes)}, KV cache {_mib(self.kv_bytes)}, "
            f"compute {_mib(self.compute_bytes)}), {_mib(self.ram_available)} {ram} available"
        ]
        if self.gpu_layers is not None and self.gpu_free is not None:
            where = "Metal working set" if self.unified else "GPU"
            if self.gpu_devices > 1:
                where += f" ({self.gpu_devices} devices)"
            suggest = (
                f"-1 (all {self.offloadable})"
                if self.gpu_layers >= self.offloadable
                else f"{self.gpu_layers} of {self.offloadable}"
            )
            parts.append(f"{where}: {_mib(self.gpu_free)} free, suggest --gpu-layers {suggest}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def _mib(n: int) -> str:
    if n >= 10 * 1024 * MIB:
        return f"{n / (1024 * MIB):.1f} GiB"
    return f"{n / MIB:.0f} MiB"


def compute_buffer_bytes(
    info: ModelInfo, n_vocab: int, ctx: int, n_ubatch: int = 512, flash_attn: bool = True
) -> int:
    logits = n_ubatch * n_vocab * 4
    attention = 0 if flash_attn else n_ubatch * ctx * max(info.n_head, 1) * 4
    activations = n_ubatch * info.n_embd * 4 * 8
    return max(logits, attention) + activations


def embedding_bytes(info: ModelInfo, n_vocab: int) -> int:
    """The token-embedding matrix's share of the file (n_vocab x n_embd of the parameters):
    llama.cpp keeps the input embedding on the CPU always, and the output layer, the
    first to be offloaded, holds a matrix of that size (its own or the tied copy)."""
    if info.parameter_count <= 0 or n_vocab <= 0 or info.n_embd <= 0:
        return 0
    share = min(n_vocab * info.n_embd / info.parameter_count, 1 / 3)
    return int(info.file_size * share)


def offload_split(
    info: ModelInfo,
    n_vocab: int,
    kv: int,
    compute: int,
    gpu_free: int,
    gpu_devices: int = 1,
    limit: int | None = None,
) -> tuple[int, int]:
    """(layers to offload out of n_layer + 1, bytes they take on the GPUs).

    llama.cpp offloads from the top: with n_gpu_layers = k the output layer goes first,
    then the last k - 1 repeating layers with their part of the KV cache. Each device
    that gets layers also reserves a compute buffer; a share of free memory is left for
    the driver. A repeating layer is sized as (weights - embedding) / n_layer, which
    over-counts it slightly for a model whose output matrix is not tied. `limit`: at
    most that many layers (the user's gpu_layers)."""
    n_layer = max(info.n_layer, 1)
    out_unit = embedding_bytes(info, n_vocab)
    layer_unit = (info.file_size - out_unit) / n_layer + kv / n_layer
    budget = gpu_free * VRAM_USABLE - compute * max(gpu_devices, 1)
    if budget < out_unit or budget <= 0:
        return 0, 0
    k = 1 + min(n_layer, int((budget - out_unit) // max(layer_unit, 1)))
    if limit is not None and limit >= 0:
        k = min(k, limit)
    if k == 0:
        return 0, 0
    return k, int(out_unit + (k - 1) * layer_unit)


def estimate_fit(
    info: ModelInfo,
    *,
    n_vocab: int,
    ctx: int,
    ram_available: int,
    kv_type: str = "f16",
    n_ubatch: int = 512,
    flash_attn: bool = True,
    gpu_free: int | None = None,
    gpu_build: bool = False,
    parallel: int = 1,
    gpu_devices: int = 1,
    unified: bool = False,
    requested_layers: int = -1,
) -> FitEstimate:
    """The verdict, and for a GPU build with a known free GPU memory a suggested layer
    count out of llama.cpp's n_layer + 1.

    `requested_layers`: the user's gpu_layers (-1: all). The suggestion is what fits
    whatever the setting; the RAM needed counts only the layers the setting offloads.

    `parallel` sequences each keep `ctx` cells (the scheduler's context): the KV cache
    is ctx x parallel cells. `gpu_free` is the free memory summed over `gpu_devices`
    (llama.cpp splits layers over every visible GPU by their free memory). `unified`:
    the GPU's memory is the system's RAM (Metal on Apple Silicon), so what is offloaded
    is not taken off the RAM needed."""
    if kv_type not in KV_TYPE_IDS:
        raise ValueError(f"unknown KV cache type {kv_type!r}")
    ctx = max(int(ctx), 1)
    parallel = max(int(parallel), 1)
    weights = int(info.file_size)
    kv = int(kv_bytes_per_token(info, kv_type) * ctx * parallel)
    compute = compute_buffer_bytes(info, n_vocab, ctx, n_ubatch, flash_attn)
    n_layer = max(info.n_layer, 1)
    units = n_layer + 1
    gpu_layers: int | None = None
    note = ""
    ram_needed = weights + kv + compute + OVERHEAD_BYTES
    if gpu_build and gpu_free is not None:
        gpu_layers, on_gpu = offload_split(info, n_vocab, kv, compute, gpu_free, gpu_devices)
        placed = gpu_layers
        if 0 <= requested_layers < gpu_layers:
            placed, on_gpu = offload_split(
                info, n_vocab, kv, compute, gpu_free, gpu_devices, limit=requested_layers
            )
        if not unified and placed > 0:
            # What stays in RAM: the layers not offloaded, the input embedding, and a
            # host copy of the logits (the compute buffer moves to the GPU).
            ram_needed = weights + kv - on_gpu + OVERHEAD_BYTES + n_vocab * n_ubatch * 4
        if gpu_layers >= units:
            note = f"all {units} layers fit on the GPU ({n_layer} + output)"
        elif gpu_layers == 0:
            note = "too little free GPU memory to offload any layer"
        else:
            note = f"{gpu_layers} of {units} layers fit on the GPU, the rest runs on the CPU"
        asked = min(requested_layers, units)
        if 0 < asked < gpu_layers:
            note += (
                f"; with gpu_layers = {requested_layers}, {asked} of {units} go to the GPU"
                " (the RAM needed counts the rest)"
            )
        elif asked > gpu_layers:
            note += (
                f"; gpu_layers = {requested_layers} asks for more than fit"
                " (llama.cpp may fail to allocate its GPU buffers)"
            )
    elif gpu_build:
        note = "llama.cpp reports no GPU memory: the fit is for the CPU alone"
    if ctx > info.n_ctx_train > 0:
        note = (note + "; " if note else "") + (
            f"context {ctx} is above the model's trained {info.n_ctx_train}"
        )
    if ram_needed <= ram_available * FITS_FRACTION:
        verdict = FITS
    elif ram_needed <= ram_available:
        verdict = TIGHT
    else:
        verdict = WONT_FIT
    return FitEstimate(
        weights_bytes=weights,
        kv_bytes=kv,
        compute_bytes=compute,
        overhead_bytes=OVERHEAD_BYTES,
        ram_available=int(ram_available),
        ram_needed=int(ram_needed),
        verdict=verdict,
        gpu_free=gpu_free,
        gpu_layers=gpu_layers,
        n_layer=info.n_layer,
        note=note,
        gpu_devices=gpu_devices if gpu_build and gpu_free is not None else 0,
        unified=unified,
    )


@dataclass(frozen=True)
class Machine:
    """What a fit is computed against: free RAM, whether llama.cpp can offload, and the
    GPUs it sees with their memory (llama.cpp's device API)."""

    ram_available: int
    gpu_offload: bool
    gpus: tuple[GpuMemory, ...] = ()

    @property
    def gpu_free(self) -> int | None:
        return sum(g.free_bytes for g in self.gpus) if self.gpus else None

    @property
    def unified(self) -> bool:
        return bool(self.gpus) and all(g.unified for g in self.gpus)


def current_machine() -> Machine:
    """This machine now (imports llama_cpp to ask it)."""
    from tui_infer.core.inference.backend import probe_system_info
    from tui_infer.core.inference.memory import MemoryProbe

    probe = MemoryProbe()
    snap = probe.snapshot()
    _, offload = probe_system_info()
    return Machine(snap.system_available_bytes, bool(offload), snap.gpus)


def gpu_build() -> bool:
    """Whether llama.cpp here can offload (imports llama_cpp: call it only when needed)."""
    from tui_infer.core.inference.backend import probe_system_info

    _, offload = probe_system_info()
    return bool(offload)


_COMPUTE_RE = re.compile(r"compute buffer size\s*=\s*([\d.]+)\s*MiB")


def compute_bytes_reported(lines: list[str]) -> int | None:
    """The compute buffer llama.cpp says it reserved (summed over its backends)."""
    sizes = [float(m.group(1)) for line in lines if (m := _COMPUTE_RE.search(line))]
    return int(round(sum(sizes) * MIB)) if sizes else None


def info_from_metadata(path: str, size: int, md: dict[str, object]) -> ModelInfo:
    """A ModelInfo from the library's stored metadata (no need to reread the header)."""
    from pathlib import Path

    def i(key: str) -> int:
        v = md.get(key)
        return int(v) if isinstance(v, (int, float)) else 0

    return ModelInfo(
        path=Path(path),
        name=str(md.get("name") or ""),
        architecture=str(md.get("architecture") or "unknown"),
        quantization=str(md.get("quantization") or "?"),
        file_size=size,
        parameter_count=i("parameter_count"),
        n_layer=i("n_layer"),
        n_ctx_train=i("n_ctx_train"),
        n_embd=i("n_embd"),
        n_head=i("n_head"),
        n_head_kv=i("n_head_kv"),
        head_dim_k=i("head_dim_k"),
        head_dim_v=i("head_dim_v"),
        chat_template=md.get("chat_template") if isinstance(md.get("chat_template"), str) else None,  # type: ignore[arg-type]
    )


def fit_with_settings(
    info: ModelInfo,
    n_vocab: int,
    settings: Settings,
    ram: int,
    vram: int | None,
    gpu_build: bool = False,
    gpu_devices: int = 1,
    unified: bool = False,
) -> FitEstimate:
    """The fit under the user's settings (context, cache type, batch, flash attention,
    parallel sequences, gpu_layers) with explicit memory figures."""
    return estimate_fit(
        info,
        n_vocab=n_vocab,
        ctx=settings.ctx,
        kv_type=settings.kv_type,
        n_ubatch=settings.batch,
        flash_attn=settings.flash_attn,
        ram_available=ram,
        gpu_free=vram,
        gpu_build=gpu_build,
        parallel=settings.parallel,
        gpu_devices=gpu_devices,
        unified=unified,
        requested_layers=settings.gpu_layers,
    )


def fit_for_machine(
    info: ModelInfo, n_vocab: int, settings: Settings, machine: Machine
) -> FitEstimate:
    """What every caller shows (models CLI, hub download, models screen): the fit under
    the settings on this machine, with its GPUs when the build can offload to them and
    gpu_layers is not 0."""
    gpu = machine.gpu_offload and settings.gpu_layers != 0
    est = fit_with_settings(
        info,
        n_vocab,
        settings,
        machine.ram_available,
        machine.gpu_free if gpu else None,
        gpu_build=gpu,
        gpu_devices=max(1, len(machine.gpus)),
        unified=machine.unified,
    )
    if machine.gpu_offload and machine.gpus and settings.gpu_layers == 0:
        note = "gpu_layers = 0: everything runs on the CPU"
        est = replace(est, note=f"{note}; {est.note}" if est.note else note)
    return est


def fit_label(settings: Settings) -> str:
    """What the fit was computed for, e.g. "ctx 4096 x 2, KV f16"."""
    seqs = f" x {settings.parallel}" if settings.parallel > 1 else ""
    return f"ctx {settings.ctx}{seqs}, KV {settings.kv_type}"


def hub_fit_estimate(hub: Any, model: Any, settings: Settings) -> FitEstimate:
    """The fit of a hub file not yet downloaded, from its header (a ranged request, so
    nothing large is fetched); HubError when the header cannot be read."""
    from tui_infer.core.models.library import header_metadata

    md = header_metadata(hub.read_header(model))
    info = info_from_metadata(model.filename, model.size, md)
    return fit_for_machine(info, md["n_vocab"], settings, current_machine())


def hub_file_fit(hub: Any, model: Any, settings: Settings) -> str:
    """The fit line shown before a download starts (CLI and TUI); an unreachable header
    says so."""
    from tui_infer.core.models.hub_types import HubError

    try:
        est = hub_fit_estimate(hub, model, settings)
    except HubError as exc:
        return f"fit: unknown ({exc})"
    return f"fit at {fit_label(settings)}: {est.summary()}"
