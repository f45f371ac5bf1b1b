"""llama.cpp's own tools (llama-server, llama-bench, llama-batched-bench), as the benchmarks
that compare against them find them: built once by scripts/build_llama_tools.sh from the
llama-cpp-python sdist of the installed version, with our wheel's CMake flags, and cached
outside the repository, keyed by that version."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("llama-server", "llama-bench", "llama-batched-bench")
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_tools.sh"


def tools_dir() -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/tui-infer/llama-tools/<llama-cpp-python version>/bin"""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tui-infer" / "llama-tools" / md.version("llama-cpp-python") / "bin"


def llama_tool(name: str) -> Path:
    """Where the tool `name` is (or would be, once built)."""
    return tools_dir() / name


def ensure_llama_tools() -> Path:
    """The bin directory, building the tools first if one is missing (about 10 minutes on
    2 cores, once; the script skips the build when they are all there)."""
    if all(os.access(llama_tool(t), os.X_OK) for t in TOOLS):
        return tools_dir()
    print(f"building llama.cpp's tools with {BUILD_SCRIPT.name} (once)", file=sys.stderr)
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), sys.executable], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def cmake_flags() -> str:
    """The CMake flags the cached tools were built with (the build script records them)."""
    try:
        return (tools_dir() / "cmake_args.txt").read_text().strip()
    except OSError:
        return "?"
