#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-bench and llama-batched-bench once, from
# the llama-cpp-python sdist of the version installed in the given Python, with
# the CMake flags our wheel is built with (scripts/llama_cmake_args.py: the same
# CPU extensions, no AMX), so a benchmark against them compares the same kernels.
# The binaries are cached outside the repository, keyed by version:
#   ${XDG_CACHE_HOME:-~/.cache}/tui-infer/llama-tools/<version>/bin
# and the build is skipped when they are present. Prints the bin directory last.
# About 10 minutes on 2 cores (set JOBS to change -j).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY=${1:-$here/../.venv/bin/python}
if [[ ! -x "$PY" ]]; then
  echo "error: no Python at $PY; pass one: scripts/build_llama_tools.sh PYTHON" >&2
  exit 2
fi
VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' \
  2>/dev/null) || { echo "error: llama-cpp-python is not installed in $PY" >&2; exit 2; }
root=${XDG_CACHE_HOME:-$HOME/.cache}/tui-infer/llama-tools/$VERSION
bin=$root/bin
tools=(llama-server llama-bench llama-batched-bench)
have=1
for t in "${tools[@]}"; do [[ -x "$bin/$t" ]] || have=0; done
if [[ $have == 1 ]]; then
  echo "$bin"
  exit 0
fi
args=$("$PY" "$here/llama_cmake_args.py")
work=$root/build.tmp
rm -rf "$work" && mkdir -p "$work"
echo "Building ${tools[*]} from llama-cpp-python $VERSION (about 10 minutes on 2 cores, once)" >&2
echo "  flags: ${args:-<default native build>}" >&2
"$PY" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
# shellcheck disable=SC2086  # args is a list of -D flags
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF $args >&2
cmake --build "$work/build" --config Release -j"${JOBS:-2}" --target "${tools[@]}" >&2
mkdir -p "$bin.tmp"
for t in "${tools[@]}"; do cp "$work/build/bin/$t" "$bin.tmp/"; done
printf '%s\n' "$args" >"$bin.tmp/cmake_args.txt"
rm -rf "$bin" && mv "$bin.tmp" "$bin"
rm -rf "$work"
echo "$bin"
