#!/usr/bin/env python3
"""The CMAKE_ARGS to build llama-cpp-python with on this machine, and what keys its wheel.

Used by scripts/install-llama-cpp.sh and the Makefile; standard library only (it runs
before the virtual environment exists). Modes:

  llama_cmake_args.py [--last FILE]              print the CMAKE_ARGS to build with
  llama_cmake_args.py --update FILE [--last F]   write them to FILE if they changed (the
                                                 Makefile's stamp depends on FILE)
  llama_cmake_args.py --cache-key VERSION [--last F]   the wheel cache key
  llama_cmake_args.py --describe [--last FILE]   the build's one-line description and time

Which flags:
* CMAKE_ARGS set in the environment (even to nothing) is the user's choice: e.g.
  CMAKE_ARGS="-DGGML_CUDA=on" for NVIDIA, CMAKE_ARGS= for the default build again.
* Unset, a GPU build installed before is kept (FILE given by --last records the flags
  of the build installed in the venv): a plain `make` never swaps a CUDA build for a
  CPU wheel behind the user's back.
* Otherwise the default: ggml's native build (Metal is on by default on macOS).

On an x86 CPU that advertises AMX, ggml's native build compiles its AMX matmul kernels,
and those crash (SIGSEGV in ggml_backend_amx_mul_mat) on any prompt of more than one
token on the machines we build on. There we build without -march=native and enable every
other SIMD extension the CPU reports instead; a GPU build gets the same CPU flags (its
CPU backend runs whatever is not offloaded), unless the user's flags set GGML_NATIVE.

The cache key covers what makes two builds differ: llama-cpp-python's version, the
Python, the machine, the flags, the CUDA toolkit (nvcc --version) and GPU architectures
of a CUDA build, and the CPU features a native build compiles for.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys

FEATURES = [  # /proc/cpuinfo flag -> ggml CMake option
    ("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"),
    ("bmi2", "GGML_BMI2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"),
    ("avx_vnni", "GGML_AVX_VNNI"), ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"), ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
]  # fmt: skip
# CPU flags a native build of ggml may compile for (x86 and Arm names).
NATIVE_FLAGS = {f for f, _ in FEATURES} | {
    "amx_tile", "amx_int8", "amx_bf16", "avx512bw", "avx512dq", "avx512vl", "avx512_fp16",
    "sse3", "ssse3", "asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16", "sme",
}  # fmt: skip
GPU_OPTIONS = ("GGML_CUDA", "GGML_METAL", "GGML_VULKAN", "GGML_HIP", "GGML_SYCL", "GGML_MUSA")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo on Linux, sysctl on macOS)."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
        return set()
    if platform.system() == "Darwin":
        out = _run(["sysctl", "-a"])
        return {
            k.split(".")[-1]
            for k, _, v in (ln.partition(": ") for ln in out.splitlines())
            if k.startswith("hw.optional.") and v.strip() == "1"
        }
    return set()


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def options(args: str) -> dict[str, str]:
    """'-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89' -> {'GGML_CUDA': 'on', ...}."""
    out = {}
    for m in re.finditer(r"-D\s*([A-Za-z0-9_]+)(?::[A-Z]+)?=(\"[^\"]*\"|'[^']*'|\S*)", args):
        out[m.group(1).upper()] = m.group(2).strip("'\"")
    return out


def _on(value: str | None) -> bool:
    return (value or "").strip().upper() in ("ON", "1", "TRUE", "YES", "Y")


def gpu_backend(args: str) -> str | None:
    """'CUDA', 'METAL', ... when the flags turn a GPU backend on."""
    opts = options(args)
    return next((o.split("_", 1)[1] for o in GPU_OPTIONS if _on(opts.get(o))), None)


def amx_workaround(machine: str, flags: set[str]) -> list[str]:
    """The flags that keep ggml's AMX kernels out of a build on an AMX CPU (else [])."""
    if machine not in ("x86_64", "AMD64") or not {"amx_int8", "amx_tile"} & flags:
        return []
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in FEATURES]
    args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    return args


def read_last(path: str | None) -> str | None:
    """The flags of the build installed last (None: no record)."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        return fh.read().strip()


def cmake_args(
    env: str | None,
    last: str | None,
    machine: str,
    flags: set[str],
    gpu_caps: list[str] | None = None,
) -> tuple[str, str]:
    """(the CMAKE_ARGS to build with, why). `env` is CMAKE_ARGS from the environment
    (None: unset), `last` the flags of the installed build (None: none recorded),
    `gpu_caps` the compute capabilities nvidia-smi reports here ("9.0").

    ggml-cuda compiles for the GPUs present ("native") only while GGML_NATIVE is on;
    the AMX workaround turns it off, so a CUDA build then gets the GPUs' architectures
    explicitly (else ggml's list of every supported one, several times the build)."""
    if env is not None:
        chosen, why = env.strip(), "CMAKE_ARGS from the environment"
    elif last and gpu_backend(last):
        chosen = last
        why = (
            f"keeping the installed {gpu_backend(last)} build's flags"
            " (CMAKE_ARGS= make ... goes back to the default build)"
        )
        return chosen, why
    else:
        chosen, why = "", "default native build"
    if "GGML_NATIVE" in options(chosen):
        return chosen, why
    fix = amx_workaround(machine, flags)
    if fix:
        user = options(chosen)
        fix = [a for a in fix if options(a).keys().isdisjoint(user)]
        if gpu_backend(chosen) == "CUDA" and "CMAKE_CUDA_ARCHITECTURES" not in user:
            caps = sorted({c.replace(".", "") for c in gpu_caps or [] if c})
            if caps:
                fix.append("-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(caps))
            else:
                why += "; no GPU seen here, so for every architecture ggml supports"
        chosen = " ".join([chosen, *fix]).strip()
        why += ", without ggml's AMX kernels (they crash on this CPU)"
    return chosen, why


def nvcc_version() -> str:
    """'release 13.0, V13.0.88' from nvcc --version ('' without nvcc)."""
    for line in _run(["nvcc", "--version"]).splitlines():
        if "release" in line:
            return line.split(",", 1)[1].strip()
    return ""


def cuda_archs(args: str) -> str:
    """The GPU architectures a CUDA build compiles for: the flags', else the GPUs'
    here (ggml's native default), else ggml's default list."""
    arch = options(args).get("CMAKE_CUDA_ARCHITECTURES")
    if arch:
        return arch
    caps = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]).split()
    return ";".join(sorted({c.replace(".", "") for c in caps})) or "ggml default"


def key_parts(
    version: str,
    py_tag: str,
    machine: str,
    args: str,
    flags: set[str],
    nvcc: str = "",
    archs: str = "",
) -> list[str]:
    """What makes two builds differ, in the order hashed."""
    native = options(args).get("GGML_NATIVE", "ON").upper() not in ("OFF", "0", "FALSE")
    parts = [version, py_tag, machine, args]
    if gpu_backend(args) == "CUDA":
        parts += [f"nvcc {nvcc or 'absent'}", f"archs {archs}"]
    if native:
        parts.append("cpu " + " ".join(sorted(flags & NATIVE_FLAGS)))
    return parts


def cache_key(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def legacy_key(version: str, py_tag: str, machine: str, args: str) -> str:
    """The key the script used before GPU builds were keyed apart (a CPU wheel in the
    cache under it is still this machine's default build)."""
    return hashlib.sha256(f"{version}|{py_tag}|{machine}|{args}".encode()).hexdigest()[:16]


def describe(args: str, cores: int) -> str:
    """The build message: what is built and how long it honestly takes."""
    backend = gpu_backend(args)
    if backend == "CUDA":
        return (
            f"a CUDA build compiles ggml's CUDA kernels for each GPU architecture: not timed"
            f" here, expect well over the CPU build's ~5 minutes on 2 cores (often 20-60"
            f" minutes on {cores} cores); -DCMAKE_CUDA_ARCHITECTURES=<your GPU's, e.g. 89>"
            " shortens it"
        )
    if backend == "METAL":
        return "a Metal build: about the CPU build's time (~5 minutes on 2 cores, once)"
    if backend:
        return f"a {backend} build: not timed here, longer than the CPU build's ~5 minutes"
    return f"about 5 minutes on 2 cores (measured), once; {cores} cores here"


def main(argv: list[str]) -> int:
    def opt(name: str) -> str | None:
        return (
            argv[argv.index(name) + 1]
            if name in argv and argv.index(name) + 1 < len(argv)
            else None
        )

    flags = cpu_flags()
    machine = platform.machine()
    caps = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]).split()
    env, last = os.environ.get("CMAKE_ARGS"), read_last(opt("--last"))
    args, why = cmake_args(env, last, machine, flags, caps)
    if "--update" in argv:
        path = opt("--update") or ""
        if read_last(path) != args or not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as fh:
                fh.write(args + "\n")
        return 0
    if "--cache-key" in argv:
        py_tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        version = opt("--cache-key") or ""
        cuda = gpu_backend(args) == "CUDA"
        parts = key_parts(
            version,
            opt("--py-tag") or py_tag,
            machine,
            args,
            flags,
            nvcc_version() if cuda else "",
            cuda_archs(args) if cuda else "",
        )
        print(cache_key(parts))
        if "--legacy" in argv:
            print(legacy_key(version, opt("--py-tag") or py_tag, machine, args))
        return 0
    if "--describe" in argv:
        print(f"  CMAKE_ARGS={args or '<default native build>'} ({why})")
        print(f"  {describe(args, os.cpu_count() or 1)}")
        return 0
    print(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
