"""The fit estimate: known inputs, and one check against llama.cpp's own load log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui_infer.core.inference import llama_log
from tui_infer.core.inference.backend import probe_system_info
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.fit import (
    FITS,
    MIB,
    OVERHEAD_BYTES,
    TIGHT,
    WONT_FIT,
    compute_bytes_reported,
    estimate_fit,
)
from tui_infer.core.inference.types import LoadOptions, ModelInfo
from tui_infer.core.models.gguf import read_header

GIB = 1024 * MIB
GPU_BUILD = probe_system_info()[1]


def model(**kw: object) -> ModelInfo:
    base: dict[str, object] = dict(
        path=Path("x.gguf"),
        name="x",
        architecture="llama",
        quantization="Q4_K_M",
        file_size=4 * GIB,
        parameter_count=7_000_000_000,
        n_layer=32,
        n_ctx_train=8192,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        head_dim_k=128,
        head_dim_v=128,
        chat_template=None,
    )
    base.update(kw)
    return ModelInfo(**base)  # type: ignore[arg-type]


def test_kv_and_compute_from_known_dimensions() -> None:
    m = model()
    est = estimate_fit(m, n_vocab=32000, ctx=4096, ram_available=64 * GIB)
    # 32 layers x 8 KV heads x (128 + 128) x 2 bytes = 131072 bytes per token, f16
    assert est.kv_bytes == 131072 * 4096 == 512 * MIB
    assert est.compute_bytes == 512 * 32000 * 4 + 512 * 4096 * 4 * 8
    assert est.total_bytes == 4 * GIB + 512 * MIB + est.compute_bytes + OVERHEAD_BYTES
    assert est.verdict == FITS and est.gpu_layers is None


def test_parallel_sequences_multiply_the_kv_cache() -> None:
    one = estimate_fit(model(), n_vocab=32000, ctx=4096, ram_available=64 * GIB)
    four = estimate_fit(model(), n_vocab=32000, ctx=4096, ram_available=64 * GIB, parallel=4)
    assert four.kv_bytes == 4 * one.kv_bytes == 4 * 512 * MIB
    assert four.compute_bytes == one.compute_bytes
    assert four.total_bytes - one.total_bytes == 3 * 512 * MIB


def test_quantized_cache_is_smaller() -> None:
    f16 = estimate_fit(model(), n_vocab=32000, ctx=8192, ram_available=64 * GIB)
    q8 = estimate_fit(model(), n_vocab=32000, ctx=8192, ram_available=64 * GIB, kv_type="q8_0")
    assert q8.kv_bytes == f16.kv_bytes * 34 // 64  # q8_0: 34 bytes per 32 elements


@pytest.mark.parametrize(
    "ram_gib, verdict",
    [(16, FITS), (5.3, TIGHT), (4.9, TIGHT), (4.4, WONT_FIT), (5.6, FITS), (1, WONT_FIT)],
)
def test_verdict_thresholds(ram_gib: float, verdict: str) -> None:
    est = estimate_fit(model(), n_vocab=32000, ctx=2048, ram_available=int(ram_gib * GIB))
    # needs 4 GiB + 256 MiB + ~126 MiB + 64 MiB = ~4.43 GiB
    assert est.verdict == verdict, est.summary()


def test_gpu_layers_suggested_from_free_vram() -> None:
    """llama.cpp offloads n_layer + 1 layers (the output layer first): "all" is 33 of 33
    for a 32-layer model, never 32 (which leaves the output layer on the CPU)."""
    m = model()
    everything = estimate_fit(
        m, n_vocab=32000, ctx=4096, ram_available=8 * GIB, gpu_free=24 * GIB, gpu_build=True
    )
    assert everything.gpu_layers == everything.offloadable == 33
    assert "all 33 layers" in everything.note
    assert "--gpu-layers -1 (all 33)" in everything.summary()
    # 2 GiB free: the output layer (the n_vocab x n_embd matrix's share of the file),
    # then as many repeating layers (weights less that matrix, plus KV) as fit
    half = estimate_fit(
        m, n_vocab=32000, ctx=4096, ram_available=8 * GIB, gpu_free=2 * GIB, gpu_build=True
    )
    out = int(4 * GIB * 32000 * 4096 / 7_000_000_000)
    layer = (4 * GIB - out) / 32 + 512 * MIB / 32
    budget = 2 * GIB * 0.9 - half.compute_bytes
    assert half.gpu_layers == 1 + int((budget - out) // layer) == 12
    assert "12 of 33 layers" in half.summary() and "--gpu-layers 12 of 33" in half.summary()
    assert half.ram_needed < everything.total_bytes
    none = estimate_fit(
        m, n_vocab=32000, ctx=4096, ram_available=8 * GIB, gpu_free=64 * MIB, gpu_build=True
    )
    assert none.gpu_layers == 0 and "too little" in none.note
    # Offloading turns a model that does not fit in RAM alone into one that does.
    cpu = estimate_fit(m, n_vocab=32000, ctx=4096, ram_available=3 * GIB)
    gpu = estimate_fit(
        m, n_vocab=32000, ctx=4096, ram_available=3 * GIB, gpu_free=24 * GIB, gpu_build=True
    )
    assert cpu.verdict == WONT_FIT and gpu.verdict == FITS


def test_unified_memory_is_not_counted_twice() -> None:
    """Metal on Apple Silicon: the working set is the RAM, so offloading frees none of it."""
    m = model()
    est = estimate_fit(
        m,
        n_vocab=32000,
        ctx=4096,
        ram_available=3 * GIB,
        gpu_free=24 * GIB,
        gpu_build=True,
        unified=True,
    )
    assert est.gpu_layers == 33 and est.ram_needed == est.total_bytes
    assert est.verdict == WONT_FIT
    assert "Metal working set" in est.summary() and "unified memory available" in est.summary()


def test_every_gpu_reserves_a_compute_buffer() -> None:
    one = estimate_fit(
        model(), n_vocab=32000, ctx=4096, ram_available=8 * GIB, gpu_free=4 * GIB, gpu_build=True
    )
    two = estimate_fit(
        model(),
        n_vocab=32000,
        ctx=4096,
        ram_available=8 * GIB,
        gpu_free=4 * GIB,
        gpu_build=True,
        gpu_devices=2,
    )
    assert two.gpu_layers is not None and one.gpu_layers is not None
    assert two.gpu_layers < one.gpu_layers and "(2 devices)" in two.summary()


def test_context_above_training_is_noted() -> None:
    est = estimate_fit(model(n_ctx_train=2048), n_vocab=32000, ctx=4096, ram_available=64 * GIB)
    assert "above the model's trained 2048" in est.summary()


def test_unknown_kv_type() -> None:
    with pytest.raises(ValueError, match="unknown KV cache type"):
        estimate_fit(model(), n_vocab=1, ctx=1, ram_available=1, kv_type="q3")


@pytest.mark.skipif(
    GPU_BUILD,
    reason="assumes a CPU build: a GPU build splits the buffers over devices"
    " (scripts/gpu-check.sh's check 3 compares them there)",
)
def test_estimate_matches_llama_cpp_load(model_path: Path) -> None:
    """The real model: KV bytes exact, compute allowance within 20 % above what llama.cpp
    reserved, weights as the mapped model buffer."""
    header = read_header(model_path)
    info = ModelInfo.from_header(header)
    n_vocab = header.get("tokenizer.ggml.tokens").length
    mark = llama_log.mark()
    eng = Engine.load(model_path, LoadOptions(ctx=2048, threads=1))
    try:
        lines = llama_log.lines_since(mark)
    finally:
        eng.close()
    reported_compute = compute_bytes_reported(lines)
    reported_kv = llama_log.kv_bytes_reported(lines)
    assert reported_compute and reported_kv
    est = estimate_fit(info, n_vocab=n_vocab, ctx=2048, ram_available=64 * GIB)
    assert est.kv_bytes == reported_kv
    assert reported_compute <= est.compute_bytes <= reported_compute * 1.2
    model_buf = [ln for ln in lines if "model buffer size" in ln]
    # ctx x parallel: what llama.cpp allocates for the scheduler's sequences
    mark = llama_log.mark()
    eng = Engine.load(model_path, LoadOptions(ctx=1024, threads=1, parallel=3))
    try:
        reported_par = llama_log.kv_bytes_reported(llama_log.lines_since(mark))
        assert eng.kv_usage().allocated_bytes == reported_par
    finally:
        eng.close()
    par = estimate_fit(info, n_vocab=n_vocab, ctx=1024, ram_available=64 * GIB, parallel=3)
    assert par.kv_bytes == reported_par
    assert (
        model_buf
        and abs(est.weights_bytes / MIB - float(model_buf[0].split("=")[1].split()[0])) < 8
    )


def test_every_caller_s_fit_uses_the_machine_s_gpus() -> None:
    """fit_for_machine (models info, the models screen, a hub download): a GPU build with
    GPUs gives a GPU verdict, never a CPU-only one; gpu_layers = 0 keeps it on the CPU."""
    from dataclasses import replace

    from tui_infer.core.config import Settings
    from tui_infer.core.inference.fit import Machine, fit_for_machine
    from tui_infer.core.inference.memory import GpuMemory

    two = (
        GpuMemory("CUDA0", 2 * GIB, 24 * GIB, "NVIDIA GeForce RTX 4090", "CUDA"),
        GpuMemory("CUDA1", 2 * GIB, 24 * GIB, "NVIDIA GeForce RTX 4090", "CUDA"),
    )
    s = Settings(ctx=4096)
    est = fit_for_machine(model(), 32000, s, Machine(3 * GIB, True, two))
    assert est.gpu_free == 44 * GIB and est.gpu_devices == 2
    assert est.gpu_layers == 33 and est.verdict == FITS and "(2 devices)" in est.summary()
    cpu = fit_for_machine(model(), 32000, replace(s, gpu_layers=0), Machine(3 * GIB, True, two))
    assert cpu.gpu_layers is None and cpu.verdict == WONT_FIT
    assert "gpu_layers = 0" in cpu.summary()
    none = fit_for_machine(model(), 32000, s, Machine(3 * GIB, True, ()))
    assert none.gpu_layers is None and "no GPU memory" in none.summary()
    plain = fit_for_machine(model(), 32000, s, Machine(3 * GIB, False, ()))
    assert plain.gpu_layers is None and plain.note == ""


def test_the_user_s_gpu_layers_count_in_the_ram_needed() -> None:
    """gpu_layers = N offloads N of n_layer + 1 whatever else would fit: the RAM needed
    counts the layers left on the CPU, the suggestion stays what fits; asking for more
    than fits says so."""
    from dataclasses import replace

    from tui_infer.core.config import Settings
    from tui_infer.core.inference.fit import Machine, fit_for_machine
    from tui_infer.core.inference.memory import GpuMemory

    card = (GpuMemory("CUDA0", 0, 24 * GIB, "NVIDIA GeForce RTX 4090", "CUDA"),)
    s = Settings(ctx=4096)
    every = fit_for_machine(model(), 32000, s, Machine(3 * GIB, True, card))
    five = fit_for_machine(model(), 32000, replace(s, gpu_layers=5), Machine(3 * GIB, True, card))
    assert every.gpu_layers == five.gpu_layers == 33  # what fits, suggested either way
    assert five.ram_needed > every.ram_needed and "5 of 33 go to the GPU" in five.note
    assert every.verdict == FITS and five.verdict == WONT_FIT  # 28 layers stay in 3 GiB
    # 1 layer: the output layer alone; 33 or more: all of them, nothing to say
    one = fit_for_machine(model(), 32000, replace(s, gpu_layers=1), Machine(8 * GIB, True, card))
    out = int(4 * GIB * 32000 * 4096 / 7_000_000_000)
    assert one.ram_needed == (
        one.weights_bytes + one.kv_bytes - out + one.overhead_bytes + 32000 * 512 * 4
    )
    many = fit_for_machine(model(), 32000, replace(s, gpu_layers=99), Machine(3 * GIB, True, card))
    assert many.ram_needed == every.ram_needed and "gpu_layers" not in many.note
    small = (GpuMemory("CUDA0", 22 * GIB, 24 * GIB, "NVIDIA GeForce RTX 4090", "CUDA"),)
    over = fit_for_machine(model(), 32000, replace(s, gpu_layers=30), Machine(8 * GIB, True, small))
    assert over.gpu_layers == 12 and "asks for more than fit" in over.note
