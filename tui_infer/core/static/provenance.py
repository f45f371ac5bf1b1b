"""Provenance: what made a batch run, kept with it (`store show`, `store export`).

tui-infer's version, llama.cpp's (the bindings' version, the library's own and the build's
system info), the backend the layers were planned on, the model's and the input file's
sha256 and the command line, with secrets redacted: enough to tell two runs' answers
apart without guessing, and to rerun one.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tui_infer.core.inference.types import LoadOptions

REDACTED = "***"
# flags whose value is a secret: --api-key KEY, --api-key=KEY, --token ..., --password ...
_SECRET_FLAG = re.compile(r"^--?[\w-]*(api[-_]?key|token|secret|password)$", re.IGNORECASE)
_SECRET_ASSIGN = re.compile(r"^(--?[\w-]*(?:api[-_]?key|token|secret|password))=", re.IGNORECASE)
# a bearer token or OpenAI-style key given anywhere else on the line
_SECRET_VALUE = re.compile(r"^(sk-[\w-]{8,}|hf_[\w]{8,})$")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """argv with the value of every --api-key (or token, secret, password) flag replaced."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        assign = _SECRET_ASSIGN.match(arg)
        if assign:
            out.append(f"{assign.group(1)}={REDACTED}")
        elif _SECRET_FLAG.match(arg):
            out.append(arg)
            hide_next = True
        elif _SECRET_VALUE.match(arg):
            out.append(REDACTED)
        else:
            out.append(arg)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tui_infer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tui-infer")
    except PackageNotFoundError:
        return "unknown"


def llama_cpp_build() -> dict[str, Any]:
    """What the bindings say of the library they load: versions and the build's features."""
    import llama_cpp

    def text(fn: str) -> str:
        f = getattr(llama_cpp, fn, None)
        if f is None:
            return ""
        raw = f()
        return raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw)

    return {
        "llama_cpp_python": getattr(llama_cpp, "__version__", ""),
        "llama_cpp": text("llama_version"),
        "system_info": text("llama_print_system_info").rstrip("| ").strip(),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
    }


def backend_summary(options: LoadOptions, n_layer: int) -> str:
    """The backend the model's layers go to with these options (as `doctor` reports it)."""
    from tui_infer.core.inference.backend import (
        describe_backend,
        probe_devices,
        probe_system_info,
    )

    info, gpu = probe_system_info()
    backend = describe_backend(
        info, probe_devices(), gpu, options.gpu_layers, n_layer, options.threads, None
    )
    return backend.summary


def collect(
    *,
    argv: Sequence[str],
    model_path: Path,
    model_sha256: str,
    input_path: Path,
    options: LoadOptions,
    n_layer: int,
) -> dict[str, Any]:
    """The provenance of a run about to start (reads the input file once more to hash it)."""
    build = llama_cpp_build()
    return {
        "tui_infer_version": tui_infer_version(),
        "llama_cpp_version": build["llama_cpp_python"],
        "llama_cpp_build": build,
        "backend": backend_summary(options, n_layer),
        "model_path": str(model_path),
        "model_sha256": model_sha256,
        "input_path": str(input_path),
        "input_sha256": file_sha256(input_path),
        "argv": redact_argv(argv),
        "recorded_at": time.time(),
    }


def describe(prov: dict[str, Any]) -> list[str]:
    """The lines `store show` prints (an empty dict: a run made before provenance was kept)."""
    imported = _imported_line(prov.get("imported"))
    if not prov.keys() - {"imported"}:
        return ["provenance: not recorded (the run predates it)", *imported]
    build = prov.get("llama_cpp_build") or {}
    lines = [
        f"tui-infer {prov.get('tui_infer_version', '?')} · llama-cpp-python "
        f"{build.get('llama_cpp_python') or prov.get('llama_cpp_version', '?')} "
        f"(llama.cpp {build.get('llama_cpp', '?')})",
        f"backend: {prov.get('backend', '?')}",
        f"build: {build.get('system_info', '?')}",
        f"model: {prov.get('model_path', '?')} (sha256 {prov.get('model_sha256', '?')})",
        f"input: {prov.get('input_path', '?')} (sha256 {prov.get('input_sha256', '?')})",
        "command: " + " ".join(_quoted(a) for a in prov.get("argv", [])),
        *imported,
    ]
    return lines


def _imported_line(imp: Any) -> list[str]:
    """The `imported:` line of a run that came in with a bundle (none for a local run)."""
    if not isinstance(imp, dict):
        return []
    when = imp.get("imported_at")
    at = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "?"
    return [
        f"imported: {at} from bundle {str(imp.get('bundle', '?'))[:16]} "
        f"({imp.get('bundle_dir', '?')}), run {imp.get('run_id_in_bundle', '?')} there"
    ]


def _quoted(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
