"""The CPU features llama.cpp was compiled for, and how to check a machine has them.

llama.cpp's system info ("CPU : AVX = 1 | AVX2 = 1 | ...") reports what ggml was *compiled*
with (ggml_cpu_has_avx2() is `#if defined(__AVX2__)`): a CPU without one of these dies on an
illegal instruction at the first matmul. Each feature maps to the flag Linux lists in
/proc/cpuinfo and to what macOS reports through sysctl (a word of machdep.cpu.features on
Intel, an hw.optional.* key on Apple silicon). install.sh checks them before installing.
"""

from __future__ import annotations

from typing import Any

from tui_infer.core.inference.backend import gpu_name_in, parse_system_info

# ggml's feature name -> (Linux /proc/cpuinfo flag, macOS sysctl word or hw.* key or None)
FEATURES: dict[str, tuple[str, str | None]] = {
    "SSE3": ("pni", "SSE3"),
    "SSSE3": ("ssse3", "SSSE3"),
    "AVX": ("avx", "AVX1.0"),
    "AVX2": ("avx2", "AVX2"),
    "AVX_VNNI": ("avx_vnni", None),
    "F16C": ("f16c", "F16C"),
    "FMA": ("fma", "FMA"),
    "BMI2": ("bmi2", "BMI2"),
    "AVX512": ("avx512f", "AVX512F"),
    "AVX512_VBMI": ("avx512vbmi", "AVX512VBMI"),
    "AVX512_VNNI": ("avx512_vnni", "AVX512VNNI"),
    "AVX512_BF16": ("avx512_bf16", None),
    "AMX_INT8": ("amx_int8", None),
    "NEON": ("asimd", "hw.optional.neon"),
    "ARM_FMA": ("asimd", "hw.optional.neon"),
    "FP16_VA": ("asimdhp", "hw.optional.arm.FEAT_FP16"),
    "DOTPROD": ("asimddp", "hw.optional.arm.FEAT_DotProd"),
    "MATMUL_INT8": ("i8mm", "hw.optional.arm.FEAT_I8MM"),
    "SVE": ("sve", None),
    "SME": ("sme", "hw.optional.arm.FEAT_SME"),
}
# entries of the CPU section that are build options, not instructions the CPU must have
NOT_INSTRUCTIONS = ("LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "KLEIDIAI", "BLAS")


def compiled_features(system_info: str) -> list[str]:
    """The instruction-set features the build was compiled for, in llama.cpp's order."""
    cpu = parse_system_info(system_info).get("CPU", {})
    return [k for k, v in cpu.items() if v == "1" and k not in NOT_INSTRUCTIONS]


def requirements(features: list[str]) -> dict[str, Any]:
    """What install.sh checks: {'linux': [flags], 'darwin': [words or hw.* keys],
    'unchecked': [features with no known flag]} (each list without repeats)."""
    linux: list[str] = []
    darwin: list[str] = []
    unchecked: list[str] = []
    for f in features:
        if f not in FEATURES:
            unchecked.append(f)
            continue
        flag, mac = FEATURES[f]
        if flag not in linux:
            linux.append(flag)
        if mac is not None and mac not in darwin:
            darwin.append(mac)
    return {"linux": linux, "darwin": darwin, "unchecked": unchecked}


def backend_name(system_info: str, gpu_offload: bool) -> str:
    """CPU, or the GPU backend the build carries as users call it (CUDA, Metal: its
    section is "MTL" in current llama.cpp, ...)."""
    if gpu_offload:
        return gpu_name_in(system_info) or "GPU"
    return "CPU"


def build_info() -> dict[str, Any]:
    """The installed llama.cpp build as a manifest records it (imports llama_cpp)."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    info = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    info = info.strip().rstrip("|").strip()
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    features = compiled_features(info)
    sections = parse_system_info(info)
    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", ""),
        "backend": backend_name(info, gpu),
        "gpu_offload": gpu,
        "gpu": {k: v for k, v in sections.items() if k != "CPU"},
        "system_info": info,
        "cpu_features": features,
        "cpu_requires": requirements(features),
    }
