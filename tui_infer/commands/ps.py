"""`tui-infer ps` and `tui-infer stop PORT|PID`: the servers and apps running on this
machine, from the registry in the state directory (core/registry.py), and stopping one.

Only the standard library is imported at the top (--help stays instant).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tui_infer.core.errors import RunTimeFailure, TuiInferError

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths
    from tui_infer.core.registry import Entry

STOP_WAIT_S = 15.0  # the server's own grace for in-flight streams is shorter (runner.GRACE_S)
NOTHING = "no tui-infer server or app is running"


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "ps",
        help="the tui-infer servers and apps running on this machine",
        description="List the running tui-infer servers ('tui-infer serve') and apps (the "
        "chat TUI): pid, kind, address, model, uptime, requests answered (as of the last "
        "few seconds). Read from the state directory; a process that died is dropped.",
    )
    from tui_infer.commands.tables import output_flags

    output_flags(p, quiet="the pids")
    s = sub.add_parser(
        "stop",
        help="stop a running tui-infer server (or app) gracefully",
        description="Stop the server listening on PORT, or the server or app whose pid is "
        "PID (see 'tui-infer ps'): a server stops accepting, lets the replies in flight "
        "end, and exits; the app quits as Ctrl+Q does. Waits up to "
        f"{STOP_WAIT_S:.0f} s for it to go.",
    )
    s.add_argument("target", metavar="PORT|PID", help="a port or a pid from 'tui-infer ps'")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.registry import list_running

    entries = list_running(paths.state_dir or paths.data_dir / "state")
    if args.command == "stop":
        return _stop(entries, args.target)
    if args.json:
        from tui_infer.commands.tables import print_json

        print_json([_as_json(e) for e in entries])
        return 0
    if getattr(args, "quiet", False):
        for e in entries:
            print(e.pid)
        return 0
    if not entries:
        print(NOTHING)
        return 0
    from tui_infer.commands.tables import Table

    now = time.time()
    t = Table("pid", "kind", "address", "model", "uptime", "requests", right=("pid", "requests"))
    for e in entries:
        t.add_row(e.pid, e.kind, e.address or "-", e.model or "-", uptime(e.uptime_s(now)),
                  e.requests)  # fmt: skip
    t.print()
    return 0


def _as_json(e: Entry) -> dict[str, Any]:
    return {
        "pid": e.pid,
        "kind": e.kind,
        "address": e.address,
        "port": e.port,
        "model": e.model,
        "started_at": e.started_at,
        "uptime_s": round(e.uptime_s(), 3),
        "requests": e.requests,
    }


def uptime(seconds: float) -> str:
    """42 -> '42s', 125 -> '2m 05s', 7384 -> '2h 03m', 200000 -> '2d 07h'."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _describe(e: Entry) -> str:
    return f"{e.address} (pid {e.pid})" if e.address else f"pid {e.pid} ({e.kind})"


def _the(e: Entry) -> str:
    """'the server on http://... (pid N)', 'the app (pid N)'."""
    return f"the {e.kind} on {e.address} (pid {e.pid})" if e.address else f"the app (pid {e.pid})"


def _stop(entries: list[Entry], target: str) -> int:
    if not target.isdigit():
        raise TuiInferError(f"stop takes a port or a pid (a number), got {target!r}")
    number = int(target)
    by_port = [e for e in entries if e.port == number]
    by_pid = [e for e in entries if e.pid == number]
    found = {e.pid: e for e in by_port + by_pid}
    if not found:
        if not entries:
            raise TuiInferError(f"no tui-infer server or app on port or pid {number}: {NOTHING}")
        running = ", ".join(_describe(e) for e in entries)
        raise TuiInferError(
            f"no tui-infer server or app on port or pid {number}; running: {running} "
            "('tui-infer ps' lists them)"
        )
    if len(found) > 1:
        raise TuiInferError(
            f"{number} is the port of {_describe(by_port[0])} and the pid of another "
            f"process, {_describe(by_pid[0])}: stop it by the other one's port or pid"
        )
    entry = next(iter(found.values()))
    import psutil

    try:
        proc = psutil.Process(entry.pid)
        proc.terminate()  # SIGTERM: uvicorn stops accepting and ends the streams in flight
    except psutil.NoSuchProcess:
        print(f"{_the(entry)} had already stopped")
        return 0
    except psutil.AccessDenied:
        raise TuiInferError(
            f"not allowed to stop pid {entry.pid} (another user's process?)"
        ) from None
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except psutil.TimeoutExpired:
        raise RunTimeFailure(
            f"{_the(entry)} is still running {STOP_WAIT_S:.0f} s after SIGTERM; "
            f"'kill -9 {entry.pid}' ends it at once"
        ) from None
    print(f"stopped {_the(entry)}")
    return 0
