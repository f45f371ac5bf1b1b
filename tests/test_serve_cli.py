"""`tui-infer serve` as a user runs it: a real process on a free port (the real model, the
state, data and config directories in tmp_path), listed by `tui-infer ps`, stopped by
`tui-infer stop PORT` or SIGTERM while a client streams, its queue bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tui_infer.cli import main
from tui_infer.commands.serve import KEY_ON_COMMAND_LINE
from tui_infer.core.registry import list_running

KEY = "sk-b-3f9c2e7a-do-not-show"  # recognizable: it must appear nowhere but in the request
STORY = "Write a long story about a dragon who learns to fly."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(model_path: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """A `tui-infer serve` process, once /health says ready."""
    port = free_port()
    argv = [sys.executable, "-m", "tui_infer", "serve", "-m", str(model_path)]
    argv += ["--port", str(port), "--ctx", "1024", "--temperature", "0", *flags]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"serve exited {proc.returncode}: {proc.communicate()[1]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server never said ready"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> str:
    """End the process whatever happened; its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def state_dir() -> Path:
    return Path(os.environ["TUI_INFER_STATE_DIR"])


def ps_json(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["ps", "--json"]) == 0
    out = capsys.readouterr().out
    assert KEY not in out
    return list(json.loads(out))


def test_ps_shows_the_server_never_its_key_and_stop_port_ends_it(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, url = start(model_path, "--parallel", "2", "--api-key", KEY, "--cors",
                      "http://example.test")  # fmt: skip
    port = int(url.rsplit(":", 1)[1])
    try:
        assert main(["ps"]) == 0
        out = capsys.readouterr().out
        assert KEY not in out
        row = [line.split() for line in out.splitlines() if line.split()[0] == str(proc.pid)]
        assert row and row[0][1:4] == ["server", url, model_path.name]

        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            headers={"authorization": f"Bearer {KEY}", "origin": "http://example.test"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "http://example.test"  # --cors
        deadline = time.monotonic() + 30
        while True:  # the registry's heartbeat carries the count
            [entry] = ps_json(capsys)
            if entry["requests"] == 1:
                break
            assert time.monotonic() < deadline, entry
            time.sleep(0.2)
        assert (entry["pid"], entry["port"], entry["kind"]) == (proc.pid, port, "server")
        for f in state_dir().rglob("*"):
            assert not f.is_file() or KEY.encode() not in f.read_bytes(), f

        assert main(["stop", str(port)]) == 0
        assert capsys.readouterr().out == f"stopped the server on {url} (pid {proc.pid})\n"
        assert proc.poll() == 0  # stop waited until it was gone
        assert list_running(state_dir()) == []
    finally:
        err = stop(proc)
    assert err.count(KEY_ON_COMMAND_LINE) == 1 and KEY not in err
    assert "Traceback" not in err


def test_sigterm_while_a_client_streams(model_path: Path, tmp_path: Path) -> None:
    proc, url = start(model_path, "--parallel", "2")
    lines: list[str] = []
    body = {
        "messages": [{"role": "user", "content": STORY}],
        "max_tokens": 900,
        "stream": True,
    }
    cut: Exception | None = None
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    if len(lines) == 3:  # the opening chunk and two pieces: decoding
                        proc.send_signal(signal.SIGTERM)
    except httpx.HTTPError as exc:
        cut = exc
    finally:
        err = stop(proc)
    assert cut is None and proc.returncode == 0, (cut, proc.returncode, lines[-3:], err)
    assert "Traceback" not in err and "stopping" in err, err
    # the stream ended whole: its closing chunk, then [DONE] (not cut by the shutdown)
    assert lines[-1] == "data: [DONE]"
    closing = json.loads(lines[-2].removeprefix("data: "))
    assert closing["choices"][0]["finish_reason"] in ("stop", "length")
    with sqlite3.connect(tmp_path / "data" / "store.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM misses").fetchone()[0] >= 1  # it was written


def test_a_full_queue_is_a_429_with_retry_after(model_path: Path) -> None:
    proc, url = start(model_path, "--parallel", "1", "--queue", "1")
    body = {"messages": [{"role": "user", "content": STORY}], "max_tokens": 900, "stream": True}
    try:
        client = httpx.Client(timeout=120)
        with client, client.stream("POST", f"{url}/v1/chat/completions", json=body) as first:
            pieces = first.iter_lines()
            while "content" not in next(pieces):  # decoding: the one slot is taken
                pass
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as second:
                assert second.status_code == 200
                deadline = time.monotonic() + 60
                while "tui_infer_queue_depth 1.0" not in client.get(f"{url}/metrics").text:
                    assert time.monotonic() < deadline, "the second request never queued"
                    time.sleep(0.05)
                third = client.post(f"{url}/v1/chat/completions", json={**body, "stream": False})
                assert third.status_code == 429, third.text
                assert third.json()["error"]["type"] == "rate_limit_error"
                assert int(third.headers["retry-after"]) >= 1
    finally:
        err = stop(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--queue", "0"], "--queue must be 1 to 100000"),
        (["--api-key", "k", "--api-key-file", "f"], "give one of them"),
        (["--cors", "example.test"], "is not an origin"),
    ],
)
def test_bad_flags_are_one_line(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_a_key_on_the_command_line_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--api-key", KEY, "--queue", "0"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning == KEY_ON_COMMAND_LINE and "--queue" in error and KEY not in error


def test_a_taken_port_is_one_line_before_the_model_loads(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "-m", str(model_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is taken" in err
    assert list_running(state_dir()) == []
