"""The chat screen: owns the conversation, the model and the workers that drive it.

Every call into llama.cpp (load, count, chat, reset) runs in a thread worker and
holds `_engine_lock`, so only one worker uses the engine at a time. Workers post
messages (tui_infer.app.messages); handlers here, on the UI thread, update widgets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, WorkerState

from tui_infer.app import messages as msg
from tui_infer.app.screens.load_model import LoadModelScreen
from tui_infer.app.widgets.conversation import Conversation, Reply
from tui_infer.app.widgets.prompt_input import PromptInput
from tui_infer.app.widgets.stats import StatsPanel
from tui_infer.core.config import Settings
from tui_infer.core.engine import LoadOptions, SamplingParams
from tui_infer.core.errors import TuiInferError
from tui_infer.core.resolve import NO_MODEL_HELP
from tui_infer.core.template import Message

FLUSH_S = 0.1  # tokens reach the UI at most this often: each update reflows the screen
MEMORY_S = 1.0  # memory is sampled this often


class ChatScreen(Screen[None]):
    AUTO_FOCUS = "PromptInput"
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+o", "load_model", "Load model"),
        Binding("ctrl+j", "noop", "Newline", show=True, key_display="^j"),
    ]

    def __init__(
        self,
        *,
        settings: Settings,
        model_path: Path | None,
        startup_error: str | None,
        engine_loader: Callable[[Path, LoadOptions], Any],
        memory_probe: Any,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.model_path = model_path
        self.startup_error = startup_error
        self.engine: Any = None  # an Engine, or anything with its interface
        self.history: list[Message] = []  # user/assistant turns; the system prompt is added
        self.loading = False
        self.generating = False
        self._engine_loader = engine_loader
        self._memory_probe = memory_probe
        self._engine_lock = threading.Lock()
        self._cancel = threading.Event()
        self._reply: Reply | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield Static("", id="banner", markup=False)
                yield Conversation(id="conversation")
                yield Static("", id="notice", markup=False)
                yield PromptInput(id="prompt", placeholder="Message (Enter sends, Ctrl+J newline)")
            yield StatsPanel(id="stats")
        yield Footer()

    def on_mount(self) -> None:
        # AUTO_FOCUS alone loses it: the box is briefly hidden during the first layout.
        self.call_after_refresh(self.prompt_input.focus)
        if self.startup_error:
            self._show_banner(self.startup_error, "error")
            self.query_one(StatsPanel).show_no_model()
        elif self.model_path is None:
            self._show_banner(NO_MODEL_HELP, "error")
            self.query_one(StatsPanel).show_no_model()
        else:
            self.load_model(self.model_path)
        self._sample_memory()
        self.set_interval(MEMORY_S, self._sample_memory)

    def on_unmount(self) -> None:
        # A reply still decoding would hold the executor open at exit: stop it.
        self._cancel.set()

    # ----- small helpers --------------------------------------------------------------------

    @property
    def conversation(self) -> Conversation:
        return self.query_one(Conversation)

    @property
    def stats_panel(self) -> StatsPanel:
        return self.query_one(StatsPanel)

    @property
    def prompt_input(self) -> PromptInput:
        return self.query_one(PromptInput)

    def _show_banner(self, text: str, kind: str) -> None:
        banner = self.query_one("#banner", Static)
        banner.update(text)
        banner.set_classes(f"-{kind}" if text else "")
        banner.display = bool(text)

    def _show_notice(self, text: str, kind: str = "information") -> None:
        notice = self.query_one("#notice", Static)
        notice.update(text)
        notice.set_classes(f"-{kind}" if text else "")
        notice.display = bool(text)

    def _system_messages(self) -> list[Message]:
        return [Message("system", self.settings.system)] if self.settings.system else []

    # ----- model loading --------------------------------------------------------------------

    def load_model(self, path: Path) -> None:
        self._cancel.set()  # a running reply stops; the load waits for its lock
        old, self.engine = self.engine, None
        self.loading = True
        self.model_path = path
        self.sub_title = f"loading {path.name}…"
        self._show_banner(f"Loading {path} …", "loading")
        self.stats_panel.show_no_model(f"loading {path.name}…")
        self._load(path, old)

    @work(thread=True, exclusive=True, exit_on_error=False, group="model", name="load model")
    def _load(self, path: Path, old: Any) -> None:
        with self._engine_lock:
            if old is not None:
                old.close()
            t0 = time.perf_counter()
            try:
                engine = self._engine_loader(path, LoadOptions.from_settings(self.settings))
            except TuiInferError as exc:
                self.post_message(msg.ModelLoadFailed(path, str(exc)))
                return
            kv = engine.kv_usage()
        self.post_message(msg.ModelLoaded(engine, path, time.perf_counter() - t0, kv))

    @on(msg.ModelLoaded)
    def _model_loaded(self, event: msg.ModelLoaded) -> None:
        self.loading = False
        self.engine = event.engine
        info = event.engine.info
        self.sub_title = f"{info.name} · {info.quantization}"
        warning = event.engine.template.warning
        self._show_banner(f"warning: {warning}" if warning else "", "warning")
        self.stats_panel.show_model(
            info.name, info.quantization, event.engine.backend.summary, event.kv
        )

    @on(msg.ModelLoadFailed)
    def _model_load_failed(self, event: msg.ModelLoadFailed) -> None:
        self.loading = False
        self.sub_title = "no model"
        self._show_banner(
            f"{event.error}\nLoad another model with Ctrl+O (or Ctrl+P → Load model…).", "error"
        )
        self.stats_panel.show_no_model()

    # ----- sending --------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _prompt_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self.generating:
            self._show_notice("a reply is still being generated: Esc stops it", "warning")
            return
        if self.engine is None:
            if self.loading:
                hint = "the model is still loading; try again in a moment"
            elif self.model_path is None and not self.startup_error:
                hint = f"there is no model loaded. {NO_MODEL_HELP}"
            else:
                hint = "there is no model loaded. Load one with Ctrl+O (a .gguf path)"
            self._show_notice(f"not sent: {hint}", "error")
            return
        self.generating = True
        self._cancel = threading.Event()
        self._show_notice("")
        self._generate(self.engine, list(self.history), text, self._cancel)

    def _fit(self, engine: Any, turns: list[Message]) -> tuple[list[Message], int, int]:
        """Drop the oldest turns until the prompt fits (the 'drop-oldest' policy)."""
        system = self._system_messages()
        n = engine.count_tokens(system + turns)
        dropped = 0
        while n >= engine.n_ctx and len(turns) > 1:
            turns = turns[1:]
            dropped += 1
            # a conversation starts with a user turn
            while len(turns) > 1 and turns[0].role != "user":
                turns = turns[1:]
                dropped += 1
            n = engine.count_tokens(system + turns)
        return turns, n, dropped

    @work(thread=True, exclusive=True, exit_on_error=False, group="chat", name="generate")
    def _generate(
        self, engine: Any, history: list[Message], text: str, cancel: threading.Event
    ) -> None:
        settings = self.settings
        with self._engine_lock:
            turns = [*history, Message("user", text)]
            try:
                n_ctx = engine.n_ctx
                n = engine.count_tokens(self._system_messages() + turns)
                dropped = 0
                if n >= n_ctx:
                    if settings.overflow == "drop-oldest":
                        turns, n, dropped = self._fit(engine, turns)
                    if n >= n_ctx:
                        alone = " (this message alone)" if len(turns) == 1 else ""
                        self.post_message(
                            msg.PromptRefused(
                                text,
                                f"not sent: the conversation{alone} takes {n} tokens and the "
                                f"context window holds {n_ctx}. Start a new chat (Ctrl+N), "
                                'shorten the message, set overflow = "drop-oldest", '
                                "or raise --ctx.",
                            )
                        )
                        return
                warning = None
                if n + settings.max_tokens > n_ctx:
                    warning = (
                        f"the prompt takes {n} of {n_ctx} context tokens: the reply can be at "
                        f"most {n_ctx - n} tokens, not max_tokens={settings.max_tokens}"
                    )
                self.post_message(msg.PromptAccepted(text, turns, n, n_ctx, dropped, warning))
                stream = engine.chat(
                    self._system_messages() + turns, SamplingParams.from_settings(settings), cancel
                )
                pending: list[str] = []
                reply: list[str] = []
                last = None
                flushed = time.monotonic()
                for chunk in stream:
                    pending.append(chunk.text)
                    last = chunk
                    now = time.monotonic()
                    if now - flushed >= FLUSH_S:
                        piece = "".join(pending)
                        reply.append(piece)
                        pending.clear()
                        flushed = now
                        self.post_message(msg.TokensStreamed(piece, chunk))
                if last is not None and pending:
                    piece = "".join(pending)
                    reply.append(piece)
                    self.post_message(msg.TokensStreamed(piece, last))
            except TuiInferError as exc:
                self.post_message(msg.GenerationFailed(str(exc)))
                return
        assert stream.stats is not None
        self.post_message(msg.GenerationFinished(stream.stats, "".join(reply)))

    @on(msg.PromptRefused)
    def _prompt_refused(self, event: msg.PromptRefused) -> None:
        # The text stays in the input box: nothing the user typed is lost.
        self.generating = False
        self._show_notice(event.error, "error")
        self.notify(event.error, title="Context window full", severity="error", timeout=8)

    @on(msg.PromptAccepted)
    async def _prompt_accepted(self, event: msg.PromptAccepted) -> None:
        if self._cancel.is_set():
            # stopped (or a new chat begun) before it started: the text stays in the box
            return
        prompt = self.prompt_input
        if prompt.text.strip() == event.text:
            prompt.clear()
        self.history = list(event.turns)
        if event.dropped_turns:
            note = (
                f"dropped the {event.dropped_turns} oldest turn(s) to fit the context window "
                f"({event.prompt_tokens}/{event.n_ctx} tokens now)"
            )
            self.notify(note, title="Context window", severity="warning", timeout=8)
            await self.conversation.add_notice(note, "warning")
        if event.warning:
            self._show_notice(f"warning: {event.warning}", "warning")
        await self.conversation.add_user_turn(event.text)
        self._reply = await self.conversation.start_reply()
        self.stats_panel.reply_started(event.prompt_tokens)

    @on(msg.TokensStreamed)
    async def _tokens_streamed(self, event: msg.TokensStreamed) -> None:
        self.stats_panel.tokens_streamed(event.last)
        if self._reply is not None:
            await self._reply.append(event.text)

    @on(msg.GenerationFinished)
    async def _generation_finished(self, event: msg.GenerationFinished) -> None:
        self.generating = False
        stats = event.stats
        if self._reply is not None:
            # (None when a new chat was begun meanwhile: the reply belongs to no one)
            if event.text:
                self.history.append(Message("assistant", event.text))
            await self._reply.finish(stats)
            self._reply = None
        self.stats_panel.reply_finished(stats)
        if stats.error:
            self.notify(stats.error, title="Generation failed", severity="error")

    @on(msg.GenerationFailed)
    async def _generation_failed(self, event: msg.GenerationFailed) -> None:
        self.generating = False
        if self._reply is not None:
            await self._reply.finish(None, event.error)
            self._reply = None
        self.stats_panel.reply_failed()
        self._show_notice(event.error, "error")
        self.notify(event.error, title="Generation failed", severity="error")

    # ----- memory ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="memory", name="sample memory")
    def _sample_memory(self) -> None:
        self.post_message(msg.MemorySampled(self._memory_probe.snapshot()))

    @on(msg.MemorySampled)
    def _memory_sampled(self, event: msg.MemorySampled) -> None:
        self.stats_panel.show_memory(event.snapshot)

    # ----- workers --------------------------------------------------------------------------

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state not in (WorkerState.ERROR, WorkerState.CANCELLED):
            return
        # Bookkeeping only; the app's handler reports the error.
        if event.worker.group == "chat" and self.generating:
            self.generating = False
            if self._reply is not None:
                self.call_later(self._reply.finish, None, "the reply failed")
                self._reply = None
            self.stats_panel.reply_failed()
        elif event.worker.group == "model" and self.loading:
            self.loading = False
            self._show_banner("the model could not be loaded (see the notification)", "error")
            self.stats_panel.show_no_model()
        if event.state == WorkerState.ERROR:
            self.post_message(
                msg.WorkerFailed(event.worker.name or event.worker.group, event.worker.error)
            )

    # ----- actions --------------------------------------------------------------------------

    def action_noop(self) -> None:
        """Ctrl+J is handled by the input; the binding only shows it in the footer."""

    def action_stop(self) -> None:
        """Stop the reply now; what was generated stays."""
        if self.generating:
            self._cancel.set()

    async def action_new_chat(self) -> None:
        self._cancel.set()
        self.history = []
        self._reply = None
        await self.conversation.clear()
        self._show_notice("")
        self.prompt_input.clear()
        self.prompt_input.focus()
        if self.engine is not None:
            self._reset(self.engine)

    @work(thread=True, exclusive=True, exit_on_error=False, group="reset", name="reset chat")
    def _reset(self, engine: Any) -> None:
        with self._engine_lock:
            engine.reset()
            kv = engine.kv_usage()
        self.post_message(msg.ConversationReset(kv))

    @on(msg.ConversationReset)
    def _conversation_reset(self, event: msg.ConversationReset) -> None:
        if event.kv is not None and self.engine is not None:
            self.stats_panel.show_kv(event.kv)

    def action_focus_input(self) -> None:
        self.prompt_input.focus()

    def action_reload_model(self) -> None:
        if self.model_path is None:
            self.action_load_model()
        else:
            self.load_model(self.model_path)

    def action_load_model(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.load_model(path)

        self.app.push_screen(LoadModelScreen(self.model_path), chosen)
