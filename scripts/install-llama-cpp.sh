#!/usr/bin/env bash
# Install llama-cpp-python into the given Python, building it once per machine and
# configuration. pip's own wheel cache ignores CMAKE_ARGS, so a wheel built with other
# flags (or a broken native one) would be reused silently; we keep our own cache keyed
# by what makes builds differ (scripts/llama_cmake_args.py: version, Python, machine,
# flags, CUDA toolkit and GPU architectures, CPU features).
#
#   scripts/install-llama-cpp.sh [--dry-run] PYTHON
#
# CMAKE_ARGS="-DGGML_CUDA=on" builds for NVIDIA GPUs; unset, the flags of the build
# installed before are kept when it was a GPU build (CMAKE_ARGS= goes back to the
# default). --dry-run prints the decision (flags, key, cached or built) and changes
# nothing.
set -euo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
PY=${1:?usage: install-llama-cpp.sh [--dry-run] PYTHON}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
here=$(cd "$(dirname "$0")" && pwd)
venv=$(cd "$(dirname "$PY")/.." && pwd)
last="$venv/.llama-cpp-build"  # the flags of the build installed in this venv
helper=("$PY" "$here/llama_cmake_args.py" --last "$last")
args=$("${helper[@]}")
keys=$("${helper[@]}" --cache-key "$VERSION" --legacy)
key=$(echo "$keys" | sed -n 1p)
legacy=$(echo "$keys" | sed -n 2p)
root=${TUI_INFER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tui-infer/wheels}
cache=$root/$key
have() { ls "$1"/llama_cpp_python-*.whl >/dev/null 2>&1; }
# A wheel cached before GPU builds were keyed apart: a default (CPU) build of this
# machine under the old key is adopted; a GPU build never is.
if ! have "$cache" && [ -n "$legacy" ] && have "$root/$legacy" \
  && ! echo "$args" | grep -Eiq 'GGML_(CUDA|METAL|VULKAN|HIP|SYCL|MUSA)=(on|1|true|yes)'; then
  if [ "$dry" = 1 ]; then echo "would adopt the wheel cached under $legacy"; else mv "$root/$legacy" "$cache"; fi
fi
if [ "$dry" = 1 ]; then
  echo "llama-cpp-python $VERSION"
  "${helper[@]}" --describe
  echo "  cache key $key: $(have "$cache" && echo "cached, install only" || echo "not cached, would build")"
  exit 0
fi
if ! have "$cache"; then
  echo "Building llama-cpp-python $VERSION"
  "${helper[@]}" --describe
  mkdir -p "$cache.tmp"
  CMAKE_ARGS="$args" "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$cache.tmp" \
    "llama-cpp-python==$VERSION"
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$cache"/llama_cpp_python-*.whl
printf '%s\n' "$args" >"$last"
