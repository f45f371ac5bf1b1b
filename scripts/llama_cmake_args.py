#!/usr/bin/env python3
"""Print the CMAKE_ARGS to build llama-cpp-python with on this machine.

A user's own CMAKE_ARGS (e.g. -DGGML_CUDA=on, -DGGML_METAL=on) win. Otherwise,
on an x86 CPU that advertises AMX, ggml's native build compiles its AMX matmul
kernels, and those crash (SIGSEGV in ggml_backend_amx_mul_mat) on any prompt of
more than one token on the machines we build on. There we build without
-march=native and enable every other SIMD extension the CPU reports instead.
Elsewhere the default native build is kept.
"""

from __future__ import annotations

import os
import platform
import sys

FEATURES = [  # /proc/cpuinfo flag -> ggml CMake option
    ("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"),
    ("bmi2", "GGML_BMI2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"),
    ("avx_vnni", "GGML_AVX_VNNI"), ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"), ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
]  # fmt: skip


def main() -> int:
    user = os.environ.get("CMAKE_ARGS", "").strip()
    if user:
        print(user)
        return 0
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        return 0
    flags: set[str] = set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if "amx_int8" not in flags and "amx_tile" not in flags:
        return 0
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in FEATURES]
    args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    print(" ".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
