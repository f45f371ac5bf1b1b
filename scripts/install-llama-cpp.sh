#!/usr/bin/env bash
# Install llama-cpp-python into the given Python, building it once per machine
# and configuration. pip's own wheel cache ignores CMAKE_ARGS, so a wheel built
# with other flags (or a broken native one) would be reused silently; we keep
# our own cache keyed by version, Python and flags.
set -euo pipefail
PY=${1:?usage: install-llama-cpp.sh PYTHON}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
here=$(cd "$(dirname "$0")" && pwd)
args=$("$PY" "$here/llama_cmake_args.py")
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key=$(printf '%s|%s|%s|%s' "$VERSION" "$tag" "$(uname -m)" "$args" | sha256sum | cut -c1-16)
cache=${TUI_INFER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tui-infer/wheels}/$key
if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "Building llama-cpp-python $VERSION (about 5 minutes on 2 cores, once)"
  echo "  CMAKE_ARGS=${args:-<default native build>}"
  mkdir -p "$cache.tmp"
  CMAKE_ARGS="$args" "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$cache.tmp" \
    "llama-cpp-python==$VERSION"
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$cache"/llama_cpp_python-*.whl
