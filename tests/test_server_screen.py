"""The Server screen (Pilot, the real model, a real server on a free port of 127.0.0.1).

The screen starts the server on the chat's engine, a client in another thread asks it, the
figures and the last-requests table follow; the chat answers while a server request
streams (both are sequences of one scheduler); stop, a model reload and the app's exit each
close the port; an open host without an API key, a taken port and no model are refused.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import httpx2 as httpx  # (the HTTP client huggingface-hub and openai use)
import pytest
from textual.widgets import Button, DataTable, Input, Static

from tests.support.pilot import Recorder, make_app, ready, send, wait_for
from tui_infer.app import messages as msg
from tui_infer.app.screens.server import (
    ServerScreen,
    base_url,
    rate,
    refusal,
    request_row,
)
from tui_infer.core import registry
from tui_infer.server.metrics import RequestRecord

pytestmark = pytest.mark.anyio

SIZE = (120, 40)


def test_an_open_host_needs_a_key_and_loopback_does_not() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert refusal(host, None) is None
    said = refusal("0.0.0.0", None)
    assert said is not None and "would let other machines in" in said
    assert "TUI_INFER_API_KEY" in said
    assert refusal("0.0.0.0", "sekrit") is None
    assert refusal("my-host.example", None) is not None
    assert base_url("::1", 8080) == "http://[::1]:8080/v1"


def test_rates_and_rows() -> None:
    assert rate(None, (10.0, 5)) is None
    assert rate((10.0, 5), (12.0, 9)) == 2.0
    rec = RequestRecord(0.0, "/v1/chat/completions", "a\nlong " * 20, "store", 200, 7, 3, 0.004)
    when, head, source, tokens, seconds = request_row(rec)
    assert head.startswith("a long a long") and head.endswith("…") and "\n" not in head
    assert (source, tokens, seconds) == ("store", "7+3", "0.00")
    failed = RequestRecord(0.0, "/v1/chat/completions", "x", "live", 400, 0, 0, 0.1)
    assert request_row(failed)[2] == "live 400"


def text_of(screen: ServerScreen, widget_id: str) -> str:
    return str(screen.query_one(widget_id, Static).render())


def notified(app: Any, part: str) -> bool:
    return any(part in n.message for n in app._notifications)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Call(threading.Thread):
    """One request to the server from a thread, as another program on this machine would."""

    def __init__(self, url: str, content: str, max_tokens: int, stream: bool = False) -> None:
        super().__init__(daemon=True)
        self.url, self.stream = url, stream
        self.body = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        self.status = 0
        self.text = ""
        self.source = ""
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=120) as client:
                if not self.stream:
                    r = client.post(f"{self.url}/chat/completions", json=self.body)
                    self.status = r.status_code
                    data = r.json()
                    self.text = data["choices"][0]["message"]["content"]
                    self.source = data["x_tui_infer"]["source"]
                    return
                with client.stream("POST", f"{self.url}/chat/completions", json=self.body) as r:
                    self.status = r.status_code
                    for line in r.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        for choice in json.loads(line[6:])["choices"]:
                            self.text += choice["delta"].get("content") or ""
        except BaseException as exc:
            self.error = exc


async def open_server_screen(pilot: Any) -> ServerScreen:
    await pilot.press("f4")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ServerScreen))
    screen = pilot.app.screen
    assert isinstance(screen, ServerScreen)
    return screen


async def start(pilot: Any, screen: ServerScreen, host: str = "127.0.0.1", port: int = 0) -> None:
    screen.query_one("#server-host", Input).value = host
    screen.query_one("#server-port", Input).value = str(port)
    await pilot.click("#server-toggle")
    await wait_for(pilot, lambda: not screen.busy)
    await pilot.pause(0.1)


async def test_the_server_screen_serves_the_chats_model(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUI_INFER_API_KEY", raising=False)
    state = tmp_path / "data" / "state"
    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0.0, max_tokens=8, ctx=512, parallel=2)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        [entry] = registry.list_running(state)
        assert (entry.kind, entry.address, entry.model) == ("app", None, model_path.name)
        screen = await open_server_screen(pilot)
        assert f"Model: {model_path.stem} " in text_of(screen, "#server-model")  # the library name
        assert "2 sequences decode at once" in text_of(screen, "#server-note")

        # refused: an open host without a key; a taken port (one line each, no server)
        await start(pilot, screen, host="0.0.0.0")
        assert screen.serving is None and notified(app, "would let other machines in")
        assert text_of(screen, "#server-status").startswith("not started: host 0.0.0.0")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            await start(pilot, screen, port=taken.getsockname()[1])
            # the port stays taken until the start has failed (on a loaded machine its
            # worker may not have begun when start() returns)
            await wait_for(pilot, lambda: notified(app, "could not listen") or screen.serving)
        assert screen.serving is None and notified(app, "could not listen")
        assert "not started" in text_of(screen, "#server-status")
        assert "serving" not in app.title

        # start on any free port: the address to copy, the header says so, ps lists it
        await start(pilot, screen)
        serving = screen.serving
        assert serving is not None and serving.engine is app.chat.engine  # one model
        port = serving.port
        assert port > 0 and port_open(port)
        url = f"http://127.0.0.1:{port}/v1"
        assert url in text_of(screen, "#server-address")
        assert f"curl {url}/chat/completions" in text_of(screen, "#server-address")
        assert f"serving :{port}" in app.title
        assert str(screen.query_one("#server-toggle", Button).label) == "Stop"
        [entry] = registry.list_running(state)
        assert (entry.kind, entry.address) == ("server", f"http://127.0.0.1:{port}")

        # a request from another thread: answered live; the figures and the table follow
        call = Call(url, "What is the capital of France?", 8)
        await wait_for(pilot, lambda: not call.is_alive(), 120)
        assert call.error is None and call.status == 200 and call.source == "live"
        assert call.text
        table = screen.query_one("#server-requests", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, 5)
        row = [str(cell) for cell in table.get_row_at(0)]
        assert row[1] == "What is the capital of France?" and row[2] == "live"
        assert int(row[3].split("+")[1]) > 0  # prompt+completion tokens
        await wait_for(pilot, lambda: "1 requests" in text_of(screen, "#server-figures"), 5)
        figures = text_of(screen, "#server-figures")
        assert "store hits 0% (0 of 1)" in figures and "active 0/2" in figures
        assert "TTFT p50" in figures and " ms" in figures
        # the tick that first counts it compares with one before it ended: a rate above 0
        assert "requests/s 0.0 " not in figures and "requests/s – " not in figures

        # back in the chat: it answers while a server request streams; both are whole
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ServerScreen))
        assert f"serving :{port}" in app.title  # still running, still said
        streaming = Call(url, "Count from one to twenty.", 48, stream=True)
        await send(pilot, "Say hello.")
        await wait_for(pilot, lambda: bool(rec.of(msg.GenerationFinished)), 120)
        await wait_for(pilot, lambda: not streaming.is_alive(), 120)
        assert streaming.error is None and streaming.status == 200 and streaming.text
        [finished] = rec.of(msg.GenerationFinished)
        assert finished.text and not finished.stats.error
        await pilot.pause(1.2)
        screen = await open_server_screen(pilot)
        await wait_for(pilot, lambda: table.row_count == 2, 5)
        assert str(table.get_row_at(0)[1]) == "Count from one to twenty."  # newest first

        # stop: the port closes, ps says app again
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.serving is None and not screen.busy, 20)
        assert not port_open(port) and "serving" not in app.title
        assert text_of(screen, "#server-status") == "stopped"
        [entry] = registry.list_running(state)
        assert (entry.kind, entry.address, entry.requests) == ("app", None, 2)

        # a model reload (from the chat, as Settings does) stops the server: its scheduler
        # is gone; the screen, hidden, still watches
        await start(pilot, screen)
        assert screen.serving is not None
        port = screen.serving.port
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ServerScreen))
        app.chat.load_model(model_path)
        await wait_for(pilot, lambda: screen.serving is None and not screen.busy, 20)
        assert not port_open(port) and notified(app, "the model was unloaded or replaced")
        assert "serving" not in app.title
        await ready(pilot)
        screen = await open_server_screen(pilot)

        # the app's exit stops a running server
        await wait_for(pilot, lambda: not screen.query_one("#server-toggle", Button).disabled)
        await start(pilot, screen)
        assert screen.serving is not None
        port = screen.serving.port
    assert not port_open(port)
    assert registry.list_running(state) == []


async def test_no_model_no_server(tmp_path: Path, model_path: Path) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = await open_server_screen(pilot)
        assert "No model loaded" in text_of(screen, "#server-model")
        assert screen.query_one("#server-toggle", Button).disabled
        await pilot.press("ctrl+r")
        await pilot.pause(0.1)
        assert screen.serving is None and notified(app, "no model loaded")
        [entry] = registry.list_running(tmp_path / "data" / "state")
        assert entry.model is None
        # a model loaded in the chat: Start is offered, ps names the model
        app.chat.load_model(model_path)
        await ready(pilot)
        await pilot.pause(1.2)
        assert not screen.query_one("#server-toggle", Button).disabled
        assert f"Model: {model_path.stem} " in text_of(screen, "#server-model")
        [entry] = registry.list_running(tmp_path / "data" / "state")
        assert entry.model == model_path.name
