"""The install path's decisions, without building anything: which CMAKE_ARGS, whether a
plain reinstall keeps a GPU build, what the wheel cache key covers (scripts/)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
AMX_CPU = {"avx", "avx2", "fma", "f16c", "avx512f", "amx_tile", "amx_int8", "amx_bf16"}
PLAIN_CPU = {"avx", "avx2", "fma", "f16c"}


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cmake_args", ROOT / "scripts/llama_cmake_args.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


m = load()


def test_default_build_and_the_amx_workaround() -> None:
    assert m.cmake_args(None, None, "x86_64", PLAIN_CPU) == ("", "default native build")
    args, why = m.cmake_args(None, None, "x86_64", AMX_CPU)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args and "AMX" in why
    assert m.cmake_args(None, None, "arm64", AMX_CPU)[0] == ""


def test_a_cuda_build_on_an_amx_host_keeps_the_workaround_and_its_gpu_archs() -> None:
    args, _ = m.cmake_args("-DGGML_CUDA=on", None, "x86_64", AMX_CPU, ["9.0", "9.0"])
    opts = m.options(args)
    assert opts["GGML_CUDA"] == "on" and opts["GGML_NATIVE"] == "OFF"
    assert opts["GGML_AMX_INT8"] == "OFF" and opts["CMAKE_CUDA_ARCHITECTURES"] == "90"
    # no GPU visible at build time: ggml's own list, and the message says so
    args, why = m.cmake_args("-DGGML_CUDA=on", None, "x86_64", AMX_CPU, [])
    assert "CMAKE_CUDA_ARCHITECTURES" not in args and "every architecture" in why
    # the user's own GGML_NATIVE or architectures win
    assert m.cmake_args("-DGGML_CUDA=on -DGGML_NATIVE=ON", None, "x86_64", AMX_CPU)[0] == (
        "-DGGML_CUDA=on -DGGML_NATIVE=ON"
    )
    args, _ = m.cmake_args(
        "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89", None, "x86_64", AMX_CPU, ["9.0"]
    )
    assert m.options(args)["CMAKE_CUDA_ARCHITECTURES"] == "89"


def test_a_plain_reinstall_keeps_the_gpu_build() -> None:
    cuda = "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"
    args, why = m.cmake_args(None, cuda, "x86_64", PLAIN_CPU)
    assert args == cuda and "keeping the installed CUDA build" in why
    # set, even to nothing, CMAKE_ARGS is the user's choice
    assert m.cmake_args("", cuda, "x86_64", PLAIN_CPU)[0] == ""
    # a CPU build installed before is no reason to keep its flags
    assert m.cmake_args(None, "-DGGML_BLAS=ON", "x86_64", PLAIN_CPU)[0] == ""


def test_the_cache_key_covers_what_makes_builds_differ() -> None:
    def key(args: str = "", flags: set[str] = PLAIN_CPU, nvcc: str = "", archs: str = "") -> str:
        return m.cache_key(m.key_parts("0.3.36", "cp311", "x86_64", args, flags, nvcc, archs))

    cuda = "-DGGML_CUDA=on"
    base = key(cuda, nvcc="release 13.0, V13.0.88", archs="90")
    assert base != key()  # flags
    assert base != key(cuda, nvcc="release 12.4, V12.4.131", archs="90")  # toolkit
    assert base != key(cuda, nvcc="release 13.0, V13.0.88", archs="89")  # GPU archs
    assert key() != key(flags=PLAIN_CPU | {"avx512f"})  # a native build's CPU features
    # with GGML_NATIVE=OFF the CPU features are spelled out in the flags themselves
    off = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"
    assert key(off) == key(off, flags=PLAIN_CPU | {"avx512f"})
    assert "not timed here" in m.describe(cuda, 16) and "measured" in m.describe("", 2)


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_install_script_dry_run_keeps_a_cuda_build(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".llama-cpp-build").write_text("-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89\n")
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    env["TUI_INFER_WHEEL_CACHE"] = str(tmp_path / "wheels")

    def dry(**extra: str) -> str:
        out = subprocess.run(
            [
                "bash",
                str(ROOT / "scripts/install-llama-cpp.sh"),
                "--dry-run",
                str(venv / "bin/python"),
            ],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    kept = dry()
    assert "-DGGML_CUDA=on" in kept and "keeping the installed CUDA build" in kept
    assert "not cached, would build" in kept and "not timed here" in kept
    back = dry(CMAKE_ARGS="")
    assert "GGML_CUDA" not in back
    # the stamp's flags file is rewritten only when the flags change
    flags = tmp_path / "flags"
    helper = [sys.executable, str(ROOT / "scripts/llama_cmake_args.py")]
    cmd = [*helper, "--update", str(flags), "--last", str(venv / ".llama-cpp-build")]
    subprocess.run(cmd, env=env, check=True, timeout=60)
    first = flags.stat().st_mtime_ns
    os.utime(flags, ns=(first - 10**9, first - 10**9))
    subprocess.run(cmd, env=env, check=True, timeout=60)
    assert flags.stat().st_mtime_ns == first - 10**9 and "GGML_CUDA=on" in flags.read_text()
    subprocess.run(cmd, env={**env, "CMAKE_ARGS": ""}, check=True, timeout=60)
    assert flags.stat().st_mtime_ns != first - 10**9 and "GGML_CUDA" not in flags.read_text()


@pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("make") is None, reason="needs make and bash"
)
def test_make_rebuilds_when_the_flags_change_and_keeps_a_cuda_build(tmp_path: Path) -> None:
    """The real Makefile, its install recipe run against a venv in tmp_path whose python
    runs the scripts for real and only logs what it is asked of pip (nothing is built or
    installed): the stamp is remade exactly when the llama.cpp flags change."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pip_log = tmp_path / "pip.log"
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -m ]; then echo "$*" >>{pip_log}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "MAKEFLAGS", "MFLAGS")}
    env["TUI_INFER_WHEEL_CACHE"] = str(tmp_path / "wheels")

    def make(**extra: str) -> str:
        """What pip was asked during `make install` ("" when nothing was remade)."""
        pip_log.write_text("")
        out = subprocess.run(
            ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={sys.executable}", "install"],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return pip_log.read_text()

    installed = venv / ".llama-cpp-build"
    assert "pip wheel" in make()  # first install: builds
    assert "GGML_CUDA" not in installed.read_text()
    assert make() == ""  # nothing changed: nothing remade
    assert "pip wheel" in make(CMAKE_ARGS="-DGGML_CUDA=on")  # CMAKE_ARGS=... make run rebuilds
    assert "-DGGML_CUDA=on" in installed.read_text()
    assert make() == ""  # a plain make keeps the CUDA build
    assert "-DGGML_CUDA=on" in (venv / ".llama-cmake-args").read_text()
    assert "pip wheel" in make(CMAKE_ARGS="")  # back to the default build
    assert "GGML_CUDA" not in installed.read_text()
