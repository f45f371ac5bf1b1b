"""The registry of running processes (core/registry.py) and `tui-infer ps` / `stop` on it:
real files in a tmp state dir, real processes (no model: the server runs are in
test_serve_cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.commands.ps import uptime
from tui_infer.core.registry import HEARTBEAT_S, list_running, processes_dir, register


@pytest.fixture
def state_dir(isolated_env: Path) -> Path:
    return Path(os.environ["TUI_INFER_STATE_DIR"])


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_entry(state_dir: Path, pid: int, **fields: object) -> Path:
    folder = processes_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entry = {
        "pid": pid,
        "kind": "server",
        "address": "http://127.0.0.1:9",
        "model": "m.gguf",
        "started_at": time.time(),
        "requests": 0,
        "heartbeat_at": time.time(),
        "process_started": time.time(),
        **fields,
    }
    path = folder / f"{pid}.json"
    path.write_text(json.dumps(entry))
    return path


def test_an_entry_lives_as_long_as_its_registration(state_dir: Path) -> None:
    served = [0]
    with register("server", "http://127.0.0.1:8123", "m.gguf", lambda: served[0], state_dir) as r:
        [entry] = list_running(state_dir)
        assert (entry.pid, entry.kind, entry.port, entry.model) == (os.getpid(), "server", 8123,
                                                                    "m.gguf")  # fmt: skip
        served[0] = 7
        deadline = time.monotonic() + 10 * HEARTBEAT_S
        while list_running(state_dir)[0].requests != 7:  # the heartbeat carries the count
            assert time.monotonic() < deadline, "the heartbeat never wrote the new count"
            time.sleep(0.1)
        r.update(address="http://127.0.0.1:8124")
        assert list_running(state_dir)[0].port == 8124
        assert r.path.exists()
    assert not r.path.exists() and list_running(state_dir) == []


def test_the_entry_of_a_dead_or_reused_pid_is_dropped(state_dir: Path) -> None:
    gone = dead_pid()
    dead = write_entry(state_dir, gone)
    # a live pid whose process started at another time: the pid was reused
    reused = write_entry(state_dir, os.getpid(), process_started=1000.0)
    junk = processes_dir(state_dir) / f".{gone}.abcd.tmp"  # a writer killed mid-write
    junk.write_text("{")
    assert list_running(state_dir) == []
    assert not dead.exists() and not reused.exists() and not junk.exists()
    assert main(["ps"]) == 0


def test_ps_lists_the_live_entries_and_nothing_else(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ps"]) == 0
    assert capsys.readouterr().out == "no tui-infer server or app is running\n"
    assert main(["ps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    write_entry(state_dir, dead_pid())
    with register("app", None, "chat.gguf", lambda: 3, state_dir):
        assert main(["ps"]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        assert header.split() == ["pid", "kind", "address", "model", "uptime", "requests"]
        assert len(rows) == 1 and rows[0].split()[:4] == [str(os.getpid()), "app", "-",
                                                          "chat.gguf"]  # fmt: skip
        assert main(["ps", "--json"]) == 0
        [entry] = json.loads(capsys.readouterr().out)
        assert entry["pid"] == os.getpid() and entry["kind"] == "app"
        assert entry["address"] is None and entry["requests"] == 3


def test_stop_refuses_what_it_cannot_stop(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stop", "8080"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tui-infer server or app is running" in err
    assert main(["stop", "port80"]) == 2
    assert "a port or a pid" in capsys.readouterr().err
    with register("app", None, "chat.gguf", lambda: 0, state_dir):
        assert main(["stop", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"running: pid {os.getpid()} (app)" in err


SERVER_STANDIN = """
import signal, sys, time
from pathlib import Path
from tui_infer.core.registry import register
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
with register(sys.argv[3], "http://127.0.0.1:" + sys.argv[1], "m.gguf", lambda: 0,
              Path(sys.argv[2])):
    print("registered", flush=True)
    while not stop:
        time.sleep(0.05)
"""


@pytest.mark.parametrize("kind", ["server", "app"])
def test_stop_by_pid_ends_the_process_and_its_entry(
    state_dir: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # a process that registers and exits on SIGTERM (the real server's run is in
    # test_serve_cli.py, stopped by port; the app's in test_server_screen.py)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_STANDIN, "8125", str(state_dir), kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "registered\n"
        assert [e.pid for e in list_running(state_dir)] == [proc.pid]
        assert main(["stop", str(proc.pid)]) == 0
        assert proc.wait(timeout=5) == 0
        assert f"stopped the {kind} on http://127.0.0.1:8125 (pid {proc.pid})" in (
            capsys.readouterr().out
        )
        assert list_running(state_dir) == []
        assert not any(processes_dir(state_dir).iterdir())
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (59.9, "59s"), (125, "2m 05s"), (7384, "2h 03m"), (200000, "2d 07h")],
)
def test_uptime_is_short_and_whole(seconds: float, shown: str) -> None:
    assert uptime(seconds) == shown
