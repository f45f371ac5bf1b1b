"""The chat screen: owns the conversation, the model and the workers that drive it.

Every call into llama.cpp (load, count, chat, reset) runs in a thread worker and
holds `_engine_lock`, so only one worker uses the engine at a time. Workers post
messages (tui_infer.app.messages); handlers here, on the UI thread, update widgets.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message as UIMessage
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, WorkerState

from tui_infer.app import messages as msg
from tui_infer.app.screens.dialogs import (
    ConfirmScreen,
    HelpScreen,
    OverflowChoice,
    OverflowScreen,
    PickScreen,
    TemplateScreen,
    TextPromptScreen,
)
from tui_infer.app.screens.load_model import LoadModelScreen
from tui_infer.app.screens.settings import SAMPLING, SettingsScreen, reload_needed
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.app.widgets.conversation import Conversation, Reply
from tui_infer.app.widgets.prompt_input import PromptInput
from tui_infer.app.widgets.stats import StatsPanel
from tui_infer.core.chat.history import History, ReplyFigures, derive_title
from tui_infer.core.config import Settings, template_override, write_config_key
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.pacing import SPARE, stream_pacing
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.models.resolve import NO_MODEL_HELP

MEMORY_S = 1.0  # memory is sampled this often
SIDEBAR_MIN_WIDTH = 120  # below this many columns the chat list starts hidden
CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.S)
NOT_PRECOMPUTED = (
    "not precomputed: the prediction store holds no published answer for this model, "
    'conversation and these sampling settings (serve = "store"); set serve to '
    '"store-then-live" in Settings (Ctrl+S) to ask the model'
)


class ServedFromStore(UIMessage):
    """A published prediction answered the request (posted from the generate worker)."""

    def __init__(self, prediction: Any, lookup_s: float) -> None:
        super().__init__()
        self.prediction = prediction  # a core.store.Prediction
        self.lookup_s = lookup_s


class NotPrecomputed(UIMessage):
    """serve = "store" and the store could not answer: nothing is generated."""

    def __init__(self, text: str, error: str) -> None:
        super().__init__()
        self.text = text
        self.error = error


def store_note(prediction: Any) -> str:
    """The figures line of a reply served from the store: which run, published when."""
    reason = {"length": "[length limit]", "stop": "done"}.get(
        prediction.finish_reason, prediction.finish_reason
    )
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(prediction.published_at or 0))
    return (
        f"{reason} · {prediction.generated_tokens} tokens · from store · "
        f"run {prediction.run_id} · published {when}"
    )


class ChatScreen(Screen[None]):
    AUTO_FOCUS = "PromptInput"
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("f1", "help", "Help"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+b", "toggle_sidebar", "Chats"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+g", "edit_message", "Edit"),
        Binding("f5", "copy_reply", "Copy"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+t", "show_template", "Template"),
        Binding("f2", "rename_chat", "Rename"),
        Binding("f8", "delete_chat", "Delete"),
        Binding("ctrl+f", "search_chats", "Search", show=False),
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
        chat_db: History | None = None,
        config_file: Path | None = None,
        exports_dir: Path | None = None,
        store: Any = None,
    ) -> None:
        super().__init__()
        self.store = store  # a PredictionStore (serving), or None: always live
        self.settings = settings
        self.chat_db = chat_db  # None: history unavailable (the app said why)
        self.config_file = config_file
        self.exports_dir = exports_dir
        self.conversation_id: int | None = None  # None until the first message is sent
        self.system_prompt = settings.system  # per conversation
        self.figures: dict[int, ReplyFigures] = {}  # history position -> the reply's figures
        self.context_start = 0  # oldest turns dropped from the context (still shown and kept)
        self._fork_at: int | None = None  # the next send replaces history from this position
        self._gen_conversation: int | None = None  # where the reply being generated belongs
        self.model_path = model_path
        self.startup_error = startup_error
        self.engine: Any = None  # an Engine, or anything with its interface
        self.history: list[Message] = []  # user/assistant turns; the system prompt is added
        self.loading = False
        self._generating = False
        self._gc_threshold = gc.get_threshold()
        self.pacing = SPARE  # how often the screen redraws while a reply streams
        self._engine_loader = engine_loader
        self._memory_probe = memory_probe
        self._engine_lock = threading.Lock()
        self._cancel = threading.Event()
        self._reply: Reply | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ChatList(id="sidebar")
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
        self._show_store_rate()
        self.query_one(ChatList).display = self.app.size.width >= SIDEBAR_MIN_WIDTH
        self.refresh_chat_list()

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

    @property
    def generating(self) -> bool:
        return self._generating

    @generating.setter
    def generating(self, value: bool) -> None:
        if value != self._generating:
            # While a reply streams, the collector's full passes (40-50 ms each, over
            # every object the app holds) are kept to what the reply allocates, and its
            # young passes run a tenth as often (Textual allocates much per frame).
            if value:
                gc.freeze()
                self._gc_threshold = gc.get_threshold()
                gc.set_threshold(self._gc_threshold[0] * 10, *self._gc_threshold[1:])
            else:
                gc.set_threshold(*self._gc_threshold)
                gc.unfreeze()
        self._generating = value
        # A blinking cursor costs a frame twice a second, CPU a reply is streaming with.
        for box in self.query(PromptInput):
            box.cursor_blink = not value

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
        return [Message("system", self.system_prompt)] if self.system_prompt else []

    def _sampling_dict(self) -> dict[str, Any]:
        return {name: getattr(self.settings, name) for name in SAMPLING}

    def _db(self, what: str, fn: Callable[[History], Any]) -> Any:
        """A history write; a failure is shown, never silent, and the chat goes on."""
        if self.chat_db is None:
            return None
        try:
            return fn(self.chat_db)
        except TuiInferError as exc:
            self.notify(f"{what}: {exc}", title="History", severity="error", timeout=10)
        except Exception as exc:  # sqlite3 errors: disk full, locked for too long
            self.notify(f"{what}: {type(exc).__name__}: {exc}", title="History",
                        severity="error", timeout=10)  # fmt: skip
        return None

    def refresh_chat_list(self) -> None:
        if self.chat_db is None:
            return
        chat_list = self.query_one(ChatList)
        chats = self._db("listing chats", lambda h: h.conversations(chat_list.search_text))
        chat_list.show(chats or [], self.conversation_id)

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
                override = template_override(self.config_file, path)  # [templates] in config
                options = LoadOptions.from_settings(self.settings, template_override=override)
                engine = self._engine_loader(path, options)
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
        backend = event.engine.backend
        self.pacing = stream_pacing(
            backend.threads,
            os.cpu_count(),
            backend.offloaded_layers,
            backend.total_layers,
            self.settings.redraws,
        )
        self.stats_panel.figures_s = self.pacing.figures_s
        self._count_context()
        cid = self.conversation_id
        if cid is not None:
            self._db(
                "saving the model",
                lambda h: h.update(cid, model_name=info.name, model_path=str(event.path)),
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
        self._send(text)

    def _send(self, text: str, drop_oldest: bool = False) -> None:
        self.generating = True
        self._cancel = threading.Event()
        self._show_notice("")
        fork = self._fork_at
        history = self.history[: fork if fork is not None else len(self.history)]
        start = self.context_start if self.context_start <= len(history) else 0
        self._generate(self.engine, history[start:], text, self._cancel, fork, drop_oldest)

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
        self,
        engine: Any,
        history: list[Message],
        text: str,
        cancel: threading.Event,
        fork_at: int | None = None,
        drop_oldest: bool = False,
    ) -> None:
        settings = self.settings
        if self._serve_from_store(engine, history, text, fork_at):
            return
        with self._engine_lock:
            turns = [*history, Message("user", text)]
            try:
                n_ctx = engine.n_ctx
                n = engine.count_tokens(self._system_messages() + turns)
                dropped = 0
                if n >= n_ctx:
                    if settings.overflow == "ask" and not drop_oldest and len(turns) > 1:
                        # the user chooses (OverflowScreen); nothing is sent meanwhile
                        self.post_message(msg.PromptOverflowed(text, n, n_ctx))
                        return
                    if settings.overflow == "drop-oldest" or drop_oldest:
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
                self.post_message(
                    msg.PromptAccepted(text, turns, n, n_ctx, dropped, warning, fork_at)
                )
                stream = engine.chat(
                    self._system_messages() + turns, SamplingParams.from_settings(settings), cancel
                )
                reply: list[str] = []
                every = self.pacing.text_s

                def stream_reply() -> None:
                    # Runs on the llama.cpp thread, which decodes: no thread is woken per
                    # token, only the screen, with a message per `every` seconds.
                    pending: list[str] = []
                    last = None
                    flushed = time.monotonic()
                    for chunk in stream:
                        pending.append(chunk.text)
                        last = chunk
                        now = time.monotonic()
                        if now - flushed >= every:
                            piece = "".join(pending)
                            reply.append(piece)
                            pending.clear()
                            flushed = now
                            self.post_message(msg.TokensStreamed(piece, chunk))
                    if last is not None and pending:
                        piece = "".join(pending)
                        reply.append(piece)
                        self.post_message(msg.TokensStreamed(piece, last))

                on_llama_thread(stream_reply, cancel.set)
            except TuiInferError as exc:
                self.post_message(msg.GenerationFailed(str(exc)))
                return
        assert stream.stats is not None
        self.post_message(msg.GenerationFinished(stream.stats, "".join(reply)))

    def _serve_from_store(
        self, engine: Any, history: list[Message], text: str, fork_at: int | None
    ) -> bool:
        """In the generate worker: answer from a published prediction; True when handled
        (served, or refused as not precomputed). A miss is recorded and goes live."""
        mode = self.settings.serve
        template = getattr(engine, "template", None)
        if mode == "live" or self.store is None or self.model_path is None or template is None:
            return False
        if mode != "store" and not Path(self.model_path).is_file():
            return False  # (an engine that did not come from a file: nothing to key it by)
        from tui_infer.core import request_path as rp

        turns = [*history, Message("user", text)]
        t0 = time.perf_counter()
        try:
            # the same path as `run` and `batch`: keyed from what the engine renders
            target = rp.LoadedModel(Path(self.model_path), template.source)
            request = rp.prepare(self.store, target, self._system_messages() + turns,
                                 SamplingParams.from_settings(self.settings))  # fmt: skip
            hit = rp.lookup(self.store, request)
        except (TuiInferError, OSError) as exc:
            if mode == "store":
                self.post_message(NotPrecomputed(text, f"the prediction store failed: {exc}"))
                return True
            self.app.call_from_thread(self.notify, f"{exc}; answering with the model",
                                      title="Prediction store", severity="warning")  # fmt: skip
            return False
        if hit is None:
            if mode == "store":
                self.post_message(NotPrecomputed(text, NOT_PRECOMPUTED))
                return True
            return False
        lookup_s = time.perf_counter() - t0
        self.post_message(
            msg.PromptAccepted(text, turns, hit.prompt_tokens, engine.n_ctx, 0, None, fork_at)
        )
        self.post_message(ServedFromStore(hit, lookup_s))
        return True

    @on(ServedFromStore)
    async def _served_from_store(self, event: ServedFromStore) -> None:
        self.generating = False
        hit = event.prediction
        figures = ReplyFigures(
            ttft_s=event.lookup_s, prompt_tokens=hit.prompt_tokens, prompt_tps=0.0,
            generated_tokens=hit.generated_tokens, generation_tps=0.0, total_s=event.lookup_s,
            finish_reason=hit.finish_reason, source="store",
        )  # fmt: skip
        target = self._gen_conversation
        if target is not None and self._reply is not None:
            self._db("saving the reply",
                     lambda h: h.add_message(target, "assistant", hit.output, figures))  # fmt: skip
            self.refresh_chat_list()
        if self._reply is not None:
            self.figures[len(self.history)] = figures
            self.history.append(Message("assistant", hit.output))
            await self._reply.append(hit.output)
            await self._reply.finish_served(figures, store_note(hit))
            self._reply = None
            if self.engine is not None:
                self.stats_panel.show_context(
                    hit.prompt_tokens + hit.generated_tokens, self.engine.n_ctx
                )
        self.stats_panel.reply_served(figures, hit.run_id)
        self._show_store_rate()

    @on(NotPrecomputed)
    def _not_precomputed(self, event: NotPrecomputed) -> None:
        # Nothing was sent: the text stays in the input box.
        self.generating = False
        self._show_notice(event.error, "error")
        self.notify(event.error, title="Not precomputed", severity="error", timeout=8)
        self._show_store_rate()

    def _show_store_rate(self) -> None:
        store = self.store
        if store is None:
            self.stats_panel.show_store(0, 0, "unavailable")
        else:
            self.stats_panel.show_store(store.session_hits, store.session_misses,
                                        self.settings.serve)  # fmt: skip

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
        if event.fork_at is not None:
            # Edit/regenerate: the conversation forks here; the old branch is dropped.
            await self._truncate(event.fork_at)
        self._fork_at = None
        self.history.append(Message("user", event.text))
        # the turns sent are the last len(event.turns) of the history
        self.context_start = len(self.history) - len(event.turns)
        self._persist_user_turn(event.text)
        self.stats_panel.show_context(event.prompt_tokens, event.n_ctx)
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

    def _persist_user_turn(self, text: str) -> None:
        if self.chat_db is None:
            return
        if self.conversation_id is None:
            info = getattr(self.engine, "info", None)
            self.conversation_id = self._db("creating the chat", lambda h: h.create(
                derive_title(text),
                model_name=getattr(info, "name", None),
                model_path=str(self.model_path) if self.model_path else None,
                settings=self._sampling_dict(),
                system_prompt=self.system_prompt,
            ))  # fmt: skip
        if self.conversation_id is not None:
            cid = self.conversation_id
            self._db("saving your message", lambda h: h.add_message(cid, "user", text))
        self._gen_conversation = self.conversation_id
        self.refresh_chat_list()

    async def _truncate(self, keep: int) -> None:
        """Keep history[:keep]; drop the rest, shown and stored."""
        self.history = self.history[:keep]
        self.figures = {k: v for k, v in self.figures.items() if k < keep}
        self.context_start = min(self.context_start, keep)
        if self.conversation_id is not None:
            cid = self.conversation_id
            self._db("forking the chat", lambda h: h.truncate(cid, keep))
        await self._show_history()

    async def _show_history(self) -> None:
        await self.conversation.show_turns(
            [(m.role, m.content, self.figures.get(i)) for i, m in enumerate(self.history)]
        )

    @on(msg.PromptOverflowed)
    def _prompt_overflowed(self, event: msg.PromptOverflowed) -> None:
        self.generating = False

        def chosen(choice: OverflowChoice | None) -> None:
            if choice is None or not choice.drop_oldest:
                self._show_notice(
                    f"not sent: the conversation takes {event.prompt_tokens} tokens and the "
                    f"context window holds {event.n_ctx}; your message is kept",
                    "warning",
                )
                return
            if choice.remember:
                self.settings = replace(self.settings, overflow="drop-oldest")
                if self.config_file is not None:
                    try:
                        write_config_key(self.config_file, "overflow", "drop-oldest")
                        self.notify(f'overflow = "drop-oldest" saved in {self.config_file}',
                                    title="Context window")  # fmt: skip
                    except TuiInferError as exc:
                        self.notify(str(exc), title="Config not saved", severity="error")
            if self.engine is not None and not self.generating:
                self._send(event.text, drop_oldest=True)

        self.app.push_screen(OverflowScreen(event.prompt_tokens, event.n_ctx), chosen)

    @on(msg.TokensStreamed)
    async def _tokens_streamed(self, event: msg.TokensStreamed) -> None:
        self.stats_panel.tokens_streamed(event.last)
        if self._reply is not None:
            await self._reply.append(event.text)

    @on(msg.GenerationFinished)
    async def _generation_finished(self, event: msg.GenerationFinished) -> None:
        self.generating = False
        stats = event.stats
        figures = ReplyFigures.from_stats(stats)
        target = self._gen_conversation
        if event.text and target is not None:
            # Saved even when the user moved to another chat meanwhile: it is theirs.
            self._db("saving the reply",
                     lambda h: h.add_message(target, "assistant", event.text, figures))  # fmt: skip
            self.refresh_chat_list()
        if self._reply is not None:
            # (None when a new chat was begun meanwhile: the reply belongs to no one)
            if event.text:
                self.figures[len(self.history)] = figures
                self.history.append(Message("assistant", event.text))
            await self._reply.finish(stats)
            self._reply = None
            if self.engine is not None:
                self.stats_panel.show_context(
                    stats.prompt_tokens + stats.generated_tokens, self.engine.n_ctx
                )
        self.stats_panel.reply_finished(stats)
        self._show_store_rate()
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
        self.figures = {}
        self.context_start = 0
        self._fork_at = None
        self.conversation_id = None
        self.system_prompt = self.settings.system
        self._reply = None
        await self.conversation.clear()
        self.refresh_chat_list()
        if self.engine is not None:
            self.stats_panel.show_context(0, self.engine.n_ctx)
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

    # ----- the context gauge ----------------------------------------------------------------

    def _count_context(self) -> None:
        if self.engine is not None:
            turns = self._system_messages() + self.history[self.context_start :]
            self._count(self.engine, turns)

    @work(thread=True, exclusive=True, exit_on_error=False, group="count", name="count tokens")
    def _count(self, engine: Any, turns: list[Message]) -> None:
        with self._engine_lock:
            n = engine.count_tokens(turns) if turns else 0
            n_ctx = engine.n_ctx
        self.post_message(msg.ContextCounted(n, n_ctx))

    @on(msg.ContextCounted)
    def _context_counted(self, event: msg.ContextCounted) -> None:
        self.stats_panel.show_context(event.tokens, event.n_ctx)

    # ----- conversations --------------------------------------------------------------------

    @on(ChatList.SearchChanged)
    def _search_changed(self) -> None:
        self.refresh_chat_list()

    @on(ChatList.Chosen)
    async def _chat_chosen(self, event: ChatList.Chosen) -> None:
        await self.open_conversation(event.conversation_id)

    async def open_conversation(self, conversation_id: int) -> None:
        """Show a saved conversation and continue it: its messages become the context."""
        if self.chat_db is None:
            return
        conv = self._db("opening the chat", lambda h: h.get(conversation_id))
        if conv is None:
            return
        self._cancel.set()
        self._reply = None
        self.conversation_id = conv.id
        self.history = [Message(m.role, m.content) for m in conv.messages if m.role != "system"]
        self.figures = {
            i: m.figures
            for i, m in enumerate(m for m in conv.messages if m.role != "system")
            if m.figures is not None
        }
        self.context_start = 0
        self._fork_at = None
        self.system_prompt = conv.system_prompt
        sampling = {k: v for k, v in conv.settings.items() if k in SAMPLING}
        try:
            self.settings = self.settings.with_overrides(**sampling)
        except TuiInferError as exc:
            self.notify(f"this chat's saved settings were not applied: {exc}", severity="warning")
        await self._show_history()
        self._show_notice("")
        self.refresh_chat_list()
        self.prompt_input.focus()  # ready to continue it
        # its model, when it is another one and still there
        if conv.model_path and (self.model_path is None or
                                Path(conv.model_path) != Path(self.model_path)):  # fmt: skip
            if Path(conv.model_path).is_file():
                self.notify(f"loading this chat's model: {conv.model_name or conv.model_path}")
                self.load_model(Path(conv.model_path))
                return
            self.notify(
                f"this chat used {conv.model_name or conv.model_path}, which is no longer at "
                f"{conv.model_path}; continuing with the current model",
                severity="warning",
            )
        if self.engine is not None:
            self._reset(self.engine)
            self._count_context()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(ChatList)
        sidebar.display = not sidebar.display
        if sidebar.display:
            self.refresh_chat_list()

    def action_search_chats(self) -> None:
        sidebar = self.query_one(ChatList)
        sidebar.display = True
        self.query_one("#chat-search").focus()

    def _need_chat(self) -> int | None:
        if self.conversation_id is None:
            self.notify("this chat is not saved yet: send a message first", severity="warning")
        return self.conversation_id

    def action_rename_chat(self) -> None:
        cid = self._need_chat()
        if cid is None or self.chat_db is None:
            return
        title = self._db("reading the chat", lambda h: h.get(cid).title) or ""

        def renamed(new: str | None) -> None:
            if new:
                self._db("renaming the chat", lambda h: h.rename(cid, new))
                self.refresh_chat_list()

        self.app.push_screen(TextPromptScreen("Rename this chat", title), renamed)

    def action_delete_chat(self) -> None:
        cid = self._need_chat()
        if cid is None or self.chat_db is None:
            return
        title = self._db("reading the chat", lambda h: h.get(cid).title) or ""

        async def confirmed(yes: bool | None) -> None:
            if yes:
                self._db("deleting the chat", lambda h: h.delete(cid))
                self.notify(f"deleted '{title}'")
                await self.action_new_chat()

        self.app.push_screen(
            ConfirmScreen(
                f"Delete the chat '{title}' and all its messages? This cannot be undone.",
                yes="Delete",
            ),  # fmt: skip
            confirmed,
        )

    def export_chat(self, fmt: str) -> Path | None:
        """Write the chat to exports_dir as Markdown or JSON; say where."""
        cid = self._need_chat()
        if cid is None or self.chat_db is None or self.exports_dir is None:
            return None
        text = self._db("exporting", lambda h: h.export_markdown(cid) if fmt == "md"
                        else h.export_json(cid))  # fmt: skip
        if text is None:
            return None
        target = self.exports_dir / f"chat-{cid}.{fmt}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
        except OSError as exc:
            self.notify(f"{target}: cannot write ({exc})", severity="error")
            return None
        self.notify(f"exported to {target}", title="Export")
        return target

    # ----- editing --------------------------------------------------------------------------

    def _busy(self) -> bool:
        if self.generating:
            self._show_notice("a reply is still being generated: Esc stops it", "warning")
        elif self.engine is None:
            self._show_notice("there is no model loaded", "error")
        return self.generating or self.engine is None

    def action_regenerate(self) -> None:
        """Generate the last reply again (the old one is replaced)."""
        if self._busy():
            return
        last_user = max((i for i, m in enumerate(self.history) if m.role == "user"), default=None)
        if last_user is None:
            self.notify("nothing to regenerate yet", severity="warning")
            return
        self._fork_at = last_user
        self._send(self.history[last_user].content)

    def action_edit_message(self) -> None:
        """Pick one of your messages; it goes back into the box; sending forks from it."""
        users = [(i, m.content) for i, m in enumerate(self.history) if m.role == "user"]
        if not users:
            self.notify("no message to edit yet", severity="warning")
            return

        def picked(index: int | None) -> None:
            if index is None:
                return
            position, text = users[index]
            self._fork_at = position
            box = self.prompt_input
            box.clear()
            box.insert(text)
            box.focus()
            later = len(self.history) - position - 1
            self._show_notice(
                f"editing message {index + 1}: Enter sends it and replaces it and the "
                f"{later} message(s) after it (the old branch is dropped); Ctrl+N cancels",
                "warning",
            )

        items = [f"{i + 1}. {' '.join(t.split())[:70]}" for i, (_, t) in enumerate(users)]
        self.app.push_screen(PickScreen("Edit which message? (Esc cancels)", items), picked)

    def _last_reply(self) -> str | None:
        return next((m.content for m in reversed(self.history) if m.role == "assistant"), None)

    def action_copy_reply(self) -> None:
        text = self._last_reply()
        if text is None:
            self.notify("no reply to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(text)
        self.notify(
            f"copied the last reply ({len(text)} characters) with OSC 52; if nothing arrives, "
            "your terminal refuses OSC 52 (tmux: set-clipboard on)",
            title="Clipboard",
        )

    def action_copy_code(self) -> None:
        text = self._last_reply() or ""
        blocks = CODE_BLOCK.findall(text)
        if not blocks:
            self.notify("the last reply has no code block", severity="warning")
            return
        self.app.copy_to_clipboard(blocks[-1])
        self.notify(f"copied the last code block ({len(blocks[-1])} characters) with OSC 52",
                    title="Clipboard")  # fmt: skip

    # ----- settings, template, help --------------------------------------------------------

    def action_settings(self) -> None:
        current = replace(self.settings, system=self.system_prompt)

        def saved(new: Settings | None) -> None:
            if new is None:
                return
            reload = reload_needed(current, new)
            self.system_prompt = new.system
            self.settings = replace(new, system=self.settings.system)
            if self.conversation_id is not None:
                cid = self.conversation_id
                self._db(
                    "saving the settings",
                    lambda h: h.update(
                        cid, settings=self._sampling_dict(), system_prompt=self.system_prompt
                    ),
                )
            if reload and self.model_path is not None:
                self.notify(f"reloading the model ({', '.join(reload)} changed)",
                            title="Settings")  # fmt: skip
                self.load_model(self.model_path)
            else:
                self.notify("settings saved for this chat", title="Settings")
                self._count_context()

        self.app.push_screen(SettingsScreen(current, self.config_file), saved)

    def action_show_template(self) -> None:
        engine = self.engine
        if engine is None:
            self.notify("load a model first: the template comes from it", severity="warning")
            return
        messages = self._system_messages() + self.history[self.context_start :]
        if not messages:
            messages = [Message("user", "(your next message)")]
        try:
            rendered = engine.render(messages)
        except TuiInferError as exc:
            rendered = f"(the template failed: {exc})"
        template = engine.template
        override = (
            f"[templates] in {self.config_file}"
            if getattr(engine, "template_overridden", False)
            else None
        )
        self.app.push_screen(TemplateScreen(template.source, rendered, template.warning, override))

    KEY_HELP: dict[str, str] = {
        "stop": "stop the reply now (what was generated stays)",
        "help": "this help",
        "new_chat": "start a new chat (the current one stays saved)",
        "toggle_sidebar": "show or hide the list of saved chats",
        "regenerate": "generate the last reply again (it replaces the old one)",
        "edit_message": "edit one of your messages and resend (the chat forks there; "
        "the old branch is dropped)",
        "copy_reply": "copy the last reply to the clipboard (OSC 52)",
        "settings": "settings: sampling, system prompt, context, GPU layers, threads, KV type",
        "show_template": "the chat template and the exact prompt it renders",
        "rename_chat": "rename this chat",
        "delete_chat": "delete this chat (asks first)",
        "search_chats": "search chats by title and text",
        "load_model": "load a .gguf file by path",
    }

    def help_keys(self) -> list[tuple[str, str]]:
        keys = [("Enter", "send"), ("Ctrl+J", "new line in the message")]
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            if b.action != "noop":
                described = self.KEY_HELP.get(b.action, b.description)
                keys.append((self.app.get_key_display(b), described))
        keys += [("Ctrl+P", "command palette (every action)"), ("Ctrl+Q", "quit")]
        return keys

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.help_keys()))
