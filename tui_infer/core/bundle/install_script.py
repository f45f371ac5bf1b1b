"""install.sh, written into every bundle: `./install.sh [VENV]` from any folder.

Paths are taken relative to the script's own location. Before anything is created it
checks, with the Python it will use, that this machine can run the bundle: the same
operating system and architecture, the Python version the wheels are for, every CPU
feature llama.cpp was compiled for (from manifest.json: /proc/cpuinfo on Linux, sysctl on
macOS), and every wheel's sha256. Then a venv (default: tui-infer-venv beside the bundle)
and `pip install --no-index --find-links wheels`: no network is needed or tried.
"""

from __future__ import annotations

INSTALL_SH = r"""#!/usr/bin/env bash
# Install tui-infer from this bundle, with no network: ./install.sh [VENV]
# VENV defaults to tui-infer-venv beside the bundle's folder. PYTHON=/path/to/python3.X
# chooses the interpreter (default: the Python version the wheels are for, else python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${1:-$(dirname "$here")/tui-infer-venv}
want=$(sed -n 's/.*"version_short": "\([0-9.]*\)".*/\1/p' "$here/manifest.json" | head -1)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for c in "python$want" python3; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
if [[ -z "$PY" ]] || ! command -v "$PY" >/dev/null 2>&1; then
  echo "install.sh: error: no Python $want found; install it," \
    "or run PYTHON=/path/to/python$want $0" >&2
  exit 2
fi
"$PY" - "$here" <<'CHECK'
import hashlib, json, os, platform, subprocess, sys
root = sys.argv[1]
m = json.load(open(os.path.join(root, "manifest.json"), encoding="utf-8"))
py, build = m["python"], m.get("llama_cpp") or {}
def refuse(msg, code=2):
    print("install.sh: error: " + msg, file=sys.stderr)
    sys.exit(code)
system, machine = platform.system(), platform.machine().lower()
if system != py["system"] or machine != py["machine"].lower():
    refuse(f"this bundle is for {py['system']} {py['machine']}; this machine is "
           f"{system} {machine}: export a bundle on a machine like this one")
have = "%d.%d" % sys.version_info[:2]
if have != py["version_short"]:
    refuse(f"this bundle's wheels are for Python {py['version_short']}; {sys.executable} is "
           f"Python {have}: run PYTHON=/path/to/python{py['version_short']} {root}/install.sh")
req = build.get("cpu_requires") or {}
missing = []
if system == "Linux":
    flags = set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        flags = None
    if flags is not None:
        missing = [f for f in req.get("linux", []) if f not in flags]
elif system == "Darwin":
    def sysctl(name):
        r = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    text = sysctl("machdep.cpu.features") + " " + sysctl("machdep.cpu.leaf7_features")
    words = set(text.upper().split())
    for f in req.get("darwin", []):
        ok = sysctl(f) == "1" if f.startswith("hw.") else f.upper() in words
        if not ok:
            missing.append(f)
if missing:
    names = ", ".join(missing)
    refuse(f"this CPU lacks {names}, which llama.cpp in this bundle was compiled for "
           f"({' '.join(build.get('cpu_features', []))}); it would stop on an illegal instruction. "
           "Export the bundle on a machine whose CPU this one matches, or with a llama-cpp-python "
           "built for this CPU (CMAKE_ARGS=-DGGML_NATIVE=OFF and the features it has)")
wheels = [f for f in m["files"] if f["path"].startswith("wheels/")]
if not wheels:
    refuse("this bundle carries no wheels (exported with --no-wheels): install tui-infer "
           f"another way, then run 'tui-infer bundle import {root}'")
if (m.get("wheels") or {}).get("llama_cpp_python") == "sdist":
    import shutil
    cc = [c for c in ("cc", "gcc", "clang") if shutil.which(c)]
    cxx = [c for c in ("c++", "g++", "clang++") if shutil.which(c)]
    if not cc or not cxx:
        refuse("llama-cpp-python comes as source in this bundle and is compiled here: install "
               "a C and C++ compiler first (Debian/Ubuntu: build-essential; macOS: "
               "xcode-select --install)")
    print("note: llama-cpp-python is compiled here, for this CPU (several minutes; "
          "CMAKE_ARGS applies)", file=sys.stderr)
bad = []
for f in wheels:
    p = os.path.join(root, f["path"])
    try:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != f["sha256"]:
            bad.append(f["path"] + " (altered)")
    except OSError:
        bad.append(f["path"] + " (missing)")
if bad:
    refuse("the bundle is damaged: " + ", ".join(bad) + "; copy it again", 1)
backend = build.get("backend", "CPU")
if backend != "CPU":
    print(f"note: llama.cpp in this bundle is built for {backend}: this machine needs its "
          "driver and runtime", file=sys.stderr)
CHECK
if [[ -z "${CMAKE_ARGS+set}" && -f "$here/llama_cmake_args.py" ]]; then
  # llama-cpp-python is compiled here: with the flags tui-infer builds with on this CPU
  # (native, except on AMX CPUs, whose AMX kernels crash in this llama.cpp)
  CMAKE_ARGS=$("$PY" "$here/llama_cmake_args.py")
  export CMAKE_ARGS
  echo "llama.cpp: CMAKE_ARGS=${CMAKE_ARGS:-<default native build>}"
fi
echo "Creating $venv"
"$PY" -m venv "$venv"
# --no-cache-dir: pip's cache of wheels built from source ignores CMAKE_ARGS, and would
# hand back a llama.cpp compiled with other flags
PIP_NO_INDEX=1 "$venv/bin/python" -m pip --disable-pip-version-check install -q --no-index \
  --no-cache-dir --find-links "$here/wheels" -r "$here/wheels/requirements.txt"
echo "Installed: $venv/bin/tui-infer"
echo "Next: $venv/bin/tui-infer bundle import $here"
"""
