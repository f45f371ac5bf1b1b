"""What every part of the chat screen shares: its state, its widgets, the model.

The chat screen is one Screen assembled from parts by concern (chat.py: sending and
streaming; chat_saved.py: the saved chats; chat_store.py: answers from the prediction
store). Each part is a subclass of this one, so Textual finds their handlers and mypy
knows what they share. The conversation's rules are not here but in
core.chat.session.ChatSession, which the screen calls.

Every call into llama.cpp (load, count, chat, reset) runs in a thread worker and holds
`_engine_lock`, so only one worker uses the engine at a time. Workers post messages
(tui_infer.app.messages); handlers, on the UI thread, update widgets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.screen import Screen
from textual.widgets import Static

from tui_infer.app import messages as msg
from tui_infer.app.screens.settings import SAMPLING
from tui_infer.app.streaming import QuietCollector, pacing_for
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.app.widgets.conversation import Conversation, Reply
from tui_infer.app.widgets.prompt_input import PromptInput
from tui_infer.app.widgets.stats import StatsPanel
from tui_infer.core.chat.history import History, ReplyFigures
from tui_infer.core.chat.session import ChatSession
from tui_infer.core.config import Settings, template_override
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.pacing import SPARE
from tui_infer.core.inference.types import ChatEngine, LoadOptions, Message


class ChatScreenBase(Screen[None]):
    """The chat screen's shared state and helpers; ChatScreen is the whole of it."""

    def __init__(
        self,
        *,
        settings: Settings,
        model_path: Path | None,
        startup_error: str | None,
        engine_loader: Callable[[Path, LoadOptions], ChatEngine],
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
        self.session = ChatSession(settings.system)  # the turns and the rules
        self._gen_conversation: int | None = None  # where the reply being generated belongs
        self.model_path = model_path
        self.startup_error = startup_error
        self.engine: ChatEngine | None = None  # an Engine, or a stand-in (tests/support)
        self._focus_input_when_loaded = False
        self.loading = False
        self._generating = False
        self._collector = QuietCollector()
        self.pacing = SPARE  # how often the screen redraws while a reply streams
        self._engine_loader = engine_loader
        self._memory_probe = memory_probe
        self._engine_lock = threading.Lock()
        self._cancel = threading.Event()
        self._reply: Reply | None = None

    # ----- the session's state, by the names the tests and handlers use ---------------------

    @property
    def history(self) -> list[Message]:
        """The user/assistant turns; the system prompt is added when sending."""
        return self.session.turns

    @history.setter
    def history(self, turns: list[Message]) -> None:
        self.session.turns = turns

    @property
    def system_prompt(self) -> str:
        return self.session.system_prompt  # per conversation

    @system_prompt.setter
    def system_prompt(self, text: str) -> None:
        self.session.system_prompt = text

    @property
    def figures(self) -> dict[int, ReplyFigures]:
        """History position -> the reply's figures."""
        return self.session.figures

    def _system_messages(self) -> list[Message]:
        return self.session.system_messages()

    # ----- widgets --------------------------------------------------------------------------

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
        self._collector.quiet(value)
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

    async def _show_history(self) -> None:
        await self.conversation.show_turns(
            [(m.role, m.content, self.figures.get(i)) for i, m in enumerate(self.history)]
        )

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
            self.notify(
                f"{what}: {type(exc).__name__}: {exc}",
                title="History",
                severity="error",
                timeout=10,
            )
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
        self._load(path, old, self._serving(old))

    def _serving(self, engine: Any) -> Any:
        """The server the Server screen runs on this chat's engine, or None: it stops before
        the engine closes (its clients get the graceful end, not "model unloaded" errors)."""
        screen = getattr(self.app, "server_screen", None)
        serving = getattr(screen, "serving", None)
        return serving if serving is not None and serving.engine is engine else None

    @work(thread=True, exclusive=True, exit_on_error=False, group="model", name="load model")
    def _load(self, path: Path, old: Any, serving: Any) -> None:
        if serving is not None:
            serving.stop()  # idempotent; the Server screen's tick then shows why
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
        if self._focus_input_when_loaded:
            self._focus_input_when_loaded = False
            self.prompt_input.focus()
        info = event.engine.info
        name = self.model_name(event.path)
        self.sub_title = f"{name} · {info.quantization}"
        warning = event.engine.template.warning
        self._show_banner(f"warning: {warning}" if warning else "", "warning")
        self.stats_panel.show_model(name, info.quantization, event.engine.backend.summary, event.kv)
        self.pacing = pacing_for(event.engine.backend, self.settings.redraws)
        self.stats_panel.figures_s = self.pacing.figures_s
        self._count_context()
        cid = self.conversation_id
        if cid is not None:
            self._db(
                "saving the model",
                lambda h: h.update(cid, model_name=name, model_path=str(event.path)),
            )

    def model_name(self, path: Path) -> str:
        """The library's name for the model (its file stem, unique in the library), not the
        GGUF's general.name: what `models list` shows and `-m` takes."""
        from tui_infer.core.models.names import library_name

        paths = getattr(self.app, "paths", None)
        return library_name(path, paths.data_dir if paths is not None else None)

    @on(msg.ModelLoadFailed)
    def _model_load_failed(self, event: msg.ModelLoadFailed) -> None:
        self.loading = False
        self.sub_title = "no model"
        self._show_banner(
            f"{event.error}\nLoad another model with Ctrl+O (or Ctrl+P → Load model…).", "error"
        )
        self.stats_panel.show_no_model()

    @work(thread=True, exclusive=True, exit_on_error=False, group="reset", name="reset chat")
    def _reset(self, engine: ChatEngine) -> None:
        with self._engine_lock:
            engine.reset()
            kv = engine.kv_usage()
        self.post_message(msg.ConversationReset(kv))

    @on(msg.ConversationReset)
    def _conversation_reset(self, event: msg.ConversationReset) -> None:
        if event.kv is not None and self.engine is not None:
            self.stats_panel.show_kv(event.kv)

    # ----- the context gauge ----------------------------------------------------------------

    def _count_context(self) -> None:
        if self.engine is not None:
            self._count(self.engine, self.session.in_context())

    @work(thread=True, exclusive=True, exit_on_error=False, group="count", name="count tokens")
    def _count(self, engine: ChatEngine, turns: list[Message]) -> None:
        with self._engine_lock:
            n = engine.count_tokens(turns) if turns else 0
            n_ctx = engine.n_ctx
        self.post_message(msg.ContextCounted(n, n_ctx))

    @on(msg.ContextCounted)
    def _context_counted(self, event: msg.ContextCounted) -> None:
        self.stats_panel.show_context(event.tokens, event.n_ctx)
