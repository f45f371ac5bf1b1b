"""The Server screen (F4): the OpenAI-compatible server on the model the chat has loaded.

Start and Stop, the address to copy, and once a second the server's figures (requests/s,
queue, active sequences, store hit rate, tokens/s, TTFT, KV use) and its last requests.
The server shares the chat's engine: a chat reply and a server request are sequences of
the one scheduler, so there is no second copy of the weights; with parallel = 1 they take
turns.

The app installs this screen once: the server keeps running while the user is back in
the chat, and the screen's timer keeps watching it (the header says "serving"). It stops
when the model is unloaded or replaced (the scheduler refuses new sequences from then on)
and when the app exits.

uvicorn and Starlette are imported by the worker that starts the server, never when the
app starts; the server's store connection is its own (its hits are not the chat's).
"""

from __future__ import annotations

import collections
import ipaddress
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Static
from textual.worker import Worker, WorkerState

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import ChatEngine
from tui_infer.core.models.names import library_name

if TYPE_CHECKING:
    from tui_infer.app.screens.chat_base import ChatScreenBase
    from tui_infer.server.metrics import MetricsSnapshot, RequestRecord
    from tui_infer.server.runner import BackgroundServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
REFRESH_S = 1.0
RATE_WINDOW_S = 5.0  # requests/s and tokens/s: between the snapshot this long ago and now
API_KEY_ENV = "TUI_INFER_API_KEY"
PROMPT_HEAD = 48  # characters of a prompt in the last-requests table


def loopback(host: str) -> bool:
    """Only this machine can connect (the CLI's rule, copied: the app never imports it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusal(host: str, api_key: str | None) -> str | None:
    """Why `host` is refused (an open address and no API key), or None."""
    if loopback(host) or api_key:
        return None
    return (
        f"host {host} would let other machines in: set an API key ({API_KEY_ENV} in the "
        f"environment the app starts in), or keep the default {DEFAULT_HOST}"
    )


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def rate(before: tuple[float, int] | None, now: tuple[float, int]) -> float | None:
    """Events a second between two (time, total) readings; None before the second one."""
    if before is None or now[0] <= before[0]:
        return None
    return max(0, now[1] - before[1]) / (now[0] - before[0])


def figures_text(snap: MetricsSnapshot, requests_s: float | None, tokens_s: float | None) -> str:
    """The live figures, two lines."""

    def per_s(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    looked_up = snap.store_hits + snap.store_misses
    hit_rate = f"{snap.store_hits / looked_up:.0%}" if looked_up else "–"
    ttft = "–" if snap.ttft_p50_s is None else f"{snap.ttft_p50_s * 1000:.0f} ms"
    f = snap.figures
    if f is None:
        batch = "queue – · active –"
    else:
        kv = f"{f.kv_tokens / f.kv_cells:.0%}" if f.kv_cells else "–"
        batch = f"queue {f.queued} · active {f.active}/{f.parallel} · KV {kv}"
    return (
        f"requests/s {per_s(requests_s)} · tokens/s {per_s(tokens_s)} (last "
        f"{RATE_WINDOW_S:.0f} s) · TTFT p50 {ttft}\n"
        f"{batch} · store hits {hit_rate} ({snap.store_hits} of {looked_up}) · "
        f"{snap.requests} requests"
    )


def request_row(rec: RequestRecord) -> tuple[str, str, str, str, str]:
    """One row of the last-requests table: time, prompt head, source, tokens, seconds."""
    head = " ".join(rec.prompt_head.split())
    if len(head) > PROMPT_HEAD:
        head = head[: PROMPT_HEAD - 1] + "…"
    source = rec.source if rec.status < 400 else f"{rec.source} {rec.status}"
    return (
        time.strftime("%H:%M:%S", time.localtime(rec.at)),
        head,
        source,
        f"{rec.prompt_tokens}+{rec.completion_tokens}",
        f"{rec.seconds:.2f}",
    )


class Serving:
    """A running server and what belongs to it: the engine it serves, its store connection.
    stop() may be called from any thread, more than once."""

    def __init__(self, background: BackgroundServer, store: Any, engine: ChatEngine) -> None:
        self.background = background
        self.store = store
        self.engine = engine
        self.model = background.server.name
        self.host = background.host
        self.port = background.port
        self.url = base_url(self.host, self.port)
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.background.stop()
        finally:
            self.store.close()

    def requests(self) -> int:
        return self.background.metrics.snapshot().requests


class ServerStarted(Message):
    def __init__(self, serving: Serving) -> None:
        super().__init__()
        self.serving = serving


class ServerStopped(Message):
    def __init__(self, error: str | None, why: str | None = None) -> None:
        super().__init__()
        self.error = error  # the start failed: the one line to show
        self.why = why  # stopped for a reason the user did not give (the model went)


class ServerScreen(Screen[None]):
    """Start/Stop, the address, the live figures and the last requests; see the module."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("ctrl+r", "start_stop", "Start/Stop"),
    ]

    def __init__(
        self, chat: Callable[[], ChatScreenBase], data_dir: Path, registration: Any = None
    ) -> None:
        super().__init__()
        self._chat = chat  # the chat screen: its engine, model file and settings
        self.data_dir = data_dir
        self.registration = registration  # the app's entry in `tui-infer ps`, or None
        self._served_before = 0  # requests answered by the servers stopped since
        self.serving: Serving | None = None
        self.busy = False  # starting or stopping
        # (time, requests, tokens) of the last RATE_WINDOW_S of snapshots, oldest first
        self._readings: collections.deque[tuple[float, int, int]] = collections.deque()
        self._shown_recent: tuple[Any, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="server-body"):
            yield Static("", id="server-model", markup=False)
            with Horizontal(id="server-form"):
                yield Label("host")
                yield Input(DEFAULT_HOST, id="server-host")
                yield Label("port")
                yield Input(str(DEFAULT_PORT), id="server-port", restrict=r"[0-9]*")
                yield Button("Start", id="server-toggle", variant="primary")
            yield Static("", id="server-status", markup=False)
            yield Static("", id="server-address", markup=False)
            yield Static("", id="server-note", markup=False)
            yield Static("", id="server-figures", markup=False)
            yield Label("Last requests (newest first)", classes="section")
            yield DataTable(id="server-requests", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "the OpenAI-compatible server"
        table = self.query_one("#server-requests", DataTable)
        table.add_columns("time", "prompt", "source", "tokens", "seconds")
        self._tick()
        self.set_interval(REFRESH_S, self._tick)

    # ----- what the screen shows ----------------------------------------------------------

    def _status(self, text: str) -> None:
        self.query_one("#server-status", Static).update(text)

    def _tick(self) -> None:
        """Once a second, on screen or not: the model, the button, the figures."""
        chat = self._chat()
        serving = self.serving
        if serving is not None and not self.busy and chat.engine is not serving.engine:
            # the model was unloaded or replaced: its scheduler takes no more sequences
            self._stop("the model was unloaded or replaced")
        self._show_model(chat)
        if self.serving is not None and not self.busy:
            self._show_figures(self.serving)

    def _show_model(self, chat: ChatScreenBase) -> None:
        engine = chat.engine
        button = self.query_one("#server-toggle", Button)
        note = self.query_one("#server-note", Static)
        model = self.query_one("#server-model", Static)
        if self.serving is not None:
            button.label, button.variant, button.disabled = "Stop", "error", self.busy
        else:
            button.label, button.variant = "Start", "primary"
            button.disabled = self.busy or engine is None
        if engine is None:
            what = "the model is loading…" if chat.loading else "No model loaded"
            model.update(f"{what}: load one in the chat (Ctrl+O), then start the server here.")
            note.update("")
            return
        path = chat.model_path
        name = library_name(path, self.data_dir) if path else engine.info.name
        model.update(f"Model: {name} (the chat's, shared)")
        parallel = _parallel(engine)
        if parallel == 1:
            note.update(
                "parallel is 1: a server request waits while the chat replies, and the other "
                "way round. Raise parallel in the chat's Settings (Ctrl+S; the model reloads "
                "and the server stops)."
            )
        else:
            note.update(f"{parallel} sequences decode at once: the chat's reply is one of them.")

    def _show_figures(self, serving: Serving) -> None:
        snap = serving.background.metrics.snapshot()
        now = time.monotonic()
        readings = self._readings
        while len(readings) > 1 and now - readings[1][0] >= RATE_WINDOW_S:
            readings.popleft()
        requests_s = tokens_s = None
        if readings:
            t, requests, tokens = readings[0]
            requests_s = rate((t, requests), (now, snap.requests))
            tokens_s = rate((t, tokens), (now, snap.generated_tokens))
        readings.append((now, snap.requests, snap.generated_tokens))
        self.query_one("#server-figures", Static).update(figures_text(snap, requests_s, tokens_s))
        if snap.recent != self._shown_recent:
            self._shown_recent = snap.recent
            table = self.query_one("#server-requests", DataTable)
            table.clear()
            for rec in snap.recent:
                table.add_row(*request_row(rec))

    def _show_address(self, serving: Serving | None) -> None:
        address = self.query_one("#server-address", Static)
        if serving is None:
            address.update("")
            return
        keyed = serving.background.server.api_key is not None
        auth = f' -H "Authorization: Bearer ${API_KEY_ENV}"' if keyed else ""
        address.update(
            f"{serving.url}   (OpenAI clients: base_url={serving.url!r})\n"
            f"curl {serving.url}/chat/completions -H 'content-type: application/json'{auth} "
            """-d '{"messages":[{"role":"user","content":"Hello"}]}'"""
        )

    def _serving_label(self) -> None:
        """The header of every screen says a server is running (the app's title)."""
        base = type(self.app).TITLE or "tui-infer"
        serving = self.serving
        self.app.title = base if serving is None else f"{base} · serving :{serving.port}"

    # ----- start and stop -----------------------------------------------------------------

    @on(Button.Pressed, "#server-toggle")
    def _toggle_pressed(self) -> None:
        self.action_start_stop()

    @on(Input.Submitted)
    def _input_submitted(self) -> None:
        if self.serving is None:
            self.action_start_stop()

    def action_start_stop(self) -> None:
        if self.busy:
            return
        if self.serving is not None:
            self._stop(None)
            return
        chat = self._chat()
        host = self.query_one("#server-host", Input).value.strip()
        port_text = self.query_one("#server-port", Input).value.strip()
        key = os.environ.get(API_KEY_ENV) or None
        if chat.engine is None or chat.model_path is None:
            refused: str | None = "no model loaded: load one in the chat first (Ctrl+O)"
        elif not host:
            refused = "give a host to listen on (127.0.0.1: this machine only)"
        elif not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            refused = "the port is a number from 0 to 65535 (0: any free one)"
        else:
            refused = refusal(host, key)
        if refused is not None or chat.engine is None or chat.model_path is None:
            self._status(f"not started: {refused}")
            self.notify(str(refused), title="Server not started", severity="error", timeout=10)
            return
        self.busy = True
        self._status(f"starting on {host}:{port_text}…")
        self._show_model(chat)
        self._start(chat.engine, chat.model_path, chat.settings, host, int(port_text), key)

    @work(thread=True, exclusive=True, group="server", exit_on_error=False, name="start server")
    def _start(
        self,
        engine: ChatEngine,
        model_path: Path,
        settings: Settings,
        host: str,
        port: int,
        key: str | None,
    ) -> None:
        from tui_infer.core.static.store import PredictionStore
        from tui_infer.server.runner import BackgroundServer

        try:
            store = PredictionStore.in_data_dir(self.data_dir)
        except TuiInferError as exc:
            self.post_message(ServerStopped(f"the prediction store: {exc}"))
            return
        try:
            background = BackgroundServer(
                engine, model_path, store, settings, host, port, key, data_dir=self.data_dir
            )
            background.start()
        except TuiInferError as exc:
            store.close()
            self.post_message(ServerStopped(str(exc)))
            return
        self.post_message(ServerStarted(Serving(background, store, engine)))

    @on(ServerStarted)
    def _started(self, event: ServerStarted) -> None:
        self.busy = False
        serving = event.serving
        self.serving = serving
        self._readings.clear()
        if self._chat().engine is not serving.engine:  # the model went while it started
            self._stop("the model was unloaded or replaced")
            return
        self._status(f"serving on {serving.host}:{serving.port} · Ctrl+R or Stop ends it")
        self._update_registry(serving)
        self._show_address(serving)
        self._serving_label()
        self._tick()

    def _stop(self, why: str | None) -> None:
        serving = self.serving
        if serving is None or self.busy:
            return
        self.busy = True
        self._status("stopping (requests in flight get a few seconds to end)…")
        self._show_model(self._chat())
        self._stop_worker(serving, why)

    @work(thread=True, group="server-stop", exit_on_error=False, name="stop server")
    def _stop_worker(self, serving: Serving, why: str | None) -> None:
        serving.stop()
        self.post_message(ServerStopped(None, why))

    def requests_served(self) -> int:
        """Requests this app's servers have answered (`tui-infer ps`); any thread."""
        serving = self.serving
        return self._served_before + (serving.requests() if serving is not None else 0)

    def _update_registry(self, serving: Serving | None) -> None:
        """`tui-infer ps` lists this process as a server while one runs, else as the app."""
        if self.registration is None:
            return
        if serving is None:
            self.registration.update(kind="app", address=None)
        else:
            address = base_url(serving.host, serving.port).removesuffix("/v1")
            self.registration.update(kind="server", address=address, model=serving.model)

    @on(ServerStopped)
    def _stopped(self, event: ServerStopped) -> None:
        self.busy = False
        if self.serving is not None:
            self._served_before += self.serving.requests()
        self.serving = None
        self._update_registry(None)
        self._readings.clear()
        self._show_address(None)
        self._serving_label()
        if event.error is not None:
            self._status(f"not started: {event.error}")
            self.notify(event.error, title="Server not started", severity="error", timeout=10)
        elif event.why is not None:
            self._status(f"stopped: {event.why}")
            self.notify(f"the server stopped: {event.why}", title="Server", severity="warning")
        else:
            self._status("stopped")
        self._show_model(self._chat())

    def shut_down(self) -> None:
        """At the app's exit: stop the server now (in-flight requests get GRACE_S)."""
        serving, self.serving = self.serving, None
        if serving is not None:
            serving.stop()

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        """A failure nothing in the worker caught ends 'starting…', as one line."""
        if event.state != WorkerState.ERROR or event.worker.group not in ("server", "server-stop"):
            return
        error = event.worker.error
        text = f"{type(error).__name__}: {error}"
        if event.worker.group == "server":
            self.post_message(ServerStopped(text))
        else:
            self.post_message(ServerStopped(None, f"stopping failed ({text})"))

    def action_close(self) -> None:
        self.app.pop_screen()


def _parallel(engine: ChatEngine) -> int | None:
    scheduler = getattr(engine, "scheduler", None)
    return getattr(scheduler, "parallel", None)
