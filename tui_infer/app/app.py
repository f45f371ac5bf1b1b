"""The Textual app: bindings, the command palette's actions, worker failures.

Behaviour lives in the screens (screens/chat.py); the chat's palette commands are in
chat_commands.py. This file stays small.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import App, SystemCommand
from textual.screen import Screen

from tui_infer.app.chat_commands import chat_commands
from tui_infer.app.keys import bound, key_label
from tui_infer.app.messages import ModelLoaded, WorkerFailed
from tui_infer.app.screens.chat import ChatScreen
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import ChatEngine, LoadOptions
from tui_infer.core.models.resolve import HubRef
from tui_infer.core.paths import Paths

if TYPE_CHECKING:
    from tui_infer.app.screens.server import ServerScreen


class TuiInferApp(App[None]):
    TITLE = "tui-infer"
    CSS_PATH = "app.tcss"
    # the keys come from core.config.DEFAULT_KEYS; [keys] in the config rebinds them
    BINDINGS = [
        bound("quit", "Quit", priority=True),
        bound("bench", "Bench", show=False, priority=True),
        bound("models", "Models", show=False),
        bound("batch", "Batch", show=False),
        bound("server", "Server", show=False),
        # priority, as F7: the chat's input box (a TextArea) takes F6 for "select line"
        bound("drift", "Drift", show=False, priority=True),
        # F10, not F5: F5 copies the last reply in the chat
        bound("quant", "Quant", show=False, priority=True),
    ]

    def __init__(
        self,
        *,
        settings: Settings,
        paths: Paths,
        model_path: Path | None = None,
        startup_error: str | None = None,
        download_offer: HubRef | None = None,
        engine_loader: Callable[[Path, LoadOptions], ChatEngine] = Engine.load,
        memory_probe: Any = None,
        debug: bool = False,
    ) -> None:
        """engine_loader and memory_probe let benchmarks and tests inject synthetic ones;
        debug (--debug) prints an internal error's traceback instead of logging it;
        download_offer: the hub model named (-m OWNER/REPO:QUANT) is not here, and the app
        opens offering to download it."""
        super().__init__()
        self._print_tracebacks = debug
        self.crash_line: str | None = None
        self.settings = settings
        self.paths = paths
        self._model_path = model_path
        self._startup_error = startup_error
        self._download_offer = download_offer
        self._engine_loader = engine_loader
        if memory_probe is None:
            from tui_infer.core.inference.memory import MemoryProbe

            memory_probe = MemoryProbe()
        self._memory_probe = memory_probe
        self.server_screen: ServerScreen | None = None  # installed when first opened
        self.registration: Any = None  # this process in `tui-infer ps` (core/registry.py)
        self._keys_and_theme()

    def _keys_and_theme(self) -> None:
        """[keys] from the config as Textual's keymap (checked: the CLI refused a bad one
        before the app started), and the saved theme; a theme chosen later is saved."""
        from tui_infer.core.config import keys_in_force, load_keys

        self.keys = keys_in_force(self.paths.config_file)
        self.set_keymap(load_keys(self.paths.config_file))
        wanted = self.settings.theme
        if wanted and wanted in self.available_themes:
            self.theme = wanted
        elif wanted:
            known = ", ".join(sorted(self.available_themes))
            self.call_later(
                self.notify,
                f"no theme named '{wanted}' (theme in {self.paths.config_file}); the themes: "
                f"{known}",
                title="Theme",
                severity="error",
                timeout=15,
            )

    def _save_theme(self, theme: Any) -> None:
        """A theme chosen in the palette (Ctrl+P → Change theme) stays: `theme = "..."`."""
        name = getattr(theme, "name", str(theme))
        if name == self.settings.theme:
            return
        from dataclasses import replace

        from tui_infer.core.config import write_config_key

        self.settings = replace(self.settings, theme=name)
        try:
            write_config_key(self.paths.config_file, "theme", name)
        except TuiInferError as exc:
            self.notify(f"the theme is not saved: {exc}", title="Theme", severity="warning")

    def _handle_exception(self, error: Exception) -> None:
        """An error nothing else caught ends the app, as in Textual, but the terminal shows
        one line: the traceback goes to the log in the state dir (the CLI's rule too)."""
        super()._handle_exception(error)
        if self._print_tracebacks:
            return
        from rich.text import Text

        from tui_infer.core.crashlog import one_line, record
        from tui_infer.core.disk import explain

        storage = explain(error)
        where = record(error, self.paths.log_file, "tui-infer (the TUI)")
        if storage is not None:
            line = f"tui-infer: error: {storage}"
        else:
            saved = f"the traceback is in {where}" if where else "the traceback could not be saved"
            line = f"tui-infer: error: internal error ({one_line(error)}); {saved}"
        self.crash_line = line  # what the terminal shows at exit
        self._exit_renderables.clear()
        self._exit_renderables.append(Text(line))

    def get_default_screen(self) -> Screen[Any]:
        from tui_infer.core.chat.history import History

        chat_db = None
        try:
            chat_db = History.in_data_dir(self.paths.data_dir)
        except TuiInferError as exc:
            # the chat still works; nothing is saved, and the user is told why
            self.call_later(
                self.notify,
                f"{exc}; this session is not saved",
                title="History unavailable",
                severity="error",
                timeout=15,
            )
        self.chat_db = chat_db
        self.store = self._open_store()
        return ChatScreen(
            settings=self.settings,
            model_path=self._model_path,
            startup_error=self._startup_error,
            engine_loader=self._engine_loader,
            memory_probe=self._memory_probe,
            chat_db=chat_db,
            config_file=self.paths.config_file,
            exports_dir=self.paths.data_dir / "exports",
            store=self.store,
        )

    def _open_store(self) -> Any:
        from tui_infer.core.static.store import PredictionStore

        try:
            return PredictionStore.in_data_dir(self.paths.data_dir)
        except TuiInferError as exc:
            # the chat still works, always live
            self.call_later(
                self.notify,
                f"{exc}; replies come from the model only",
                title="Prediction store unavailable",
                severity="error",
            )
            return None

    def on_mount(self) -> None:
        # A terminal that goes away without a SIGHUP reaching us (the app started by
        # `make run`, then the terminal closed: make gets the signal, not this process)
        # leaves Textual's input thread spinning on the dead tty at 100 % of a core.
        # Once a second: if the terminal the app started on is gone, quit.
        fd = sys.__stdin__.fileno() if sys.__stdin__ is not None else -1
        if not self.is_headless and fd >= 0 and os.isatty(fd):
            self.set_interval(1.0, lambda: self._check_terminal(fd))
        if not self.is_headless:
            # `tui-infer stop PID|PORT` sends SIGTERM: quit as Ctrl+Q does (the server
            # stops, the terminal is given back), not killed mid-frame
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit)
        self.registration = self._enter_registry()
        self.theme_changed_signal.subscribe(self, self._save_theme)  # saved when chosen
        if self._download_offer is not None:
            self.call_later(self.chat.offer_download, self._download_offer)

    def _enter_registry(self) -> Any:
        """`tui-infer ps` lists the app (as a server while its Server screen serves)."""
        from tui_infer.core import registry

        state_dir = self.paths.state_dir or self.paths.data_dir / "state"
        model = self._model_path.name if self._model_path is not None else None
        return registry.register("app", None, model, self._requests_served, state_dir)

    def _requests_served(self) -> int:
        """What the registry's heartbeat (a thread) reads: the Server screen's total."""
        screen = self.server_screen
        return screen.requests_served() if screen is not None else 0

    @on(ModelLoaded)
    def _model_loaded(self, event: ModelLoaded) -> None:
        if self.registration is not None:
            self.registration.update(model=event.path.name)

    def _check_terminal(self, fd: int) -> None:
        if not os.isatty(fd):
            self.exit(return_code=129)  # as if hung up (128 + SIGHUP)

    def on_unmount(self) -> None:
        if self.server_screen is not None:
            self.server_screen.shut_down()  # a running server stops (a few seconds at most)
        if self.registration is not None:
            self.registration.close()
        chat_db = getattr(self, "chat_db", None)
        if chat_db is not None:
            chat_db.close()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    @property
    def chat(self) -> ChatScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, ChatScreen)
        return screen

    def action_models(self) -> None:
        """The models screen is installed once: a download keeps running while it is hidden."""
        from tui_infer.app.screens.models import ModelsScreen

        if not self.is_screen_installed("models"):
            self.install_screen(
                ModelsScreen(lambda: self.chat.settings, self.paths.data_dir), "models"
            )
        if not isinstance(self.screen, ModelsScreen):
            self.push_screen("models")

    def action_bench(self) -> None:
        from tui_infer.app.screens.bench import BenchScreen

        if isinstance(self.screen, BenchScreen):
            return
        self.push_screen(BenchScreen(self.settings, self.chat.model_path, self.paths.data_dir))

    def action_batch(self) -> None:
        from tui_infer.app.screens.batch import BatchScreen

        if not isinstance(self.screen, BatchScreen):
            self.push_screen(BatchScreen(self.store, self.settings, self.chat.model_path))

    def action_drift(self) -> None:
        from tui_infer.app.screens.drift import DriftScreen

        if not isinstance(self.screen, DriftScreen):
            self.push_screen(DriftScreen(self.store, self.settings, self.chat.model_path))

    def action_quant(self) -> None:
        from tui_infer.app.screens.quant import QuantScreen

        if not isinstance(self.screen, QuantScreen):
            self.push_screen(QuantScreen(self.settings, self.chat.model_path, self.paths.data_dir))

    def action_server(self) -> None:
        """Installed once: the server it starts keeps running while the chat is shown."""
        from tui_infer.app.screens.server import ServerScreen

        if self.server_screen is None:
            self.server_screen = ServerScreen(
                lambda: self.chat, self.paths.data_dir, self.registration
            )
            self.install_screen(self.server_screen, "server")
        if not isinstance(self.screen, ServerScreen):
            self.push_screen("server")

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        chat = self.chat

        def k(action: str) -> str:
            return f" ({key_label(self, action)})"

        yield SystemCommand(
            "Server",
            "Serve the loaded model over an OpenAI-compatible HTTP API; its live traffic"
            + k("server"),
            self.action_server,
        )
        yield SystemCommand(
            "Batch runs",
            "Review, publish and roll back the prediction store's runs; start a batch" + k("batch"),
            self.action_batch,
        )
        yield SystemCommand(
            "Drift",
            "The store's hit rate and misses over time; batch the top misses next" + k("drift"),
            self.action_drift,
        )
        yield SystemCommand(
            "Models",
            "The library, import, remove, the hub, downloads" + k("models"),
            self.action_models,
        )
        yield SystemCommand(
            "Bench", "Measure pp/tg tokens/s of this model" + k("bench"), self.action_bench
        )
        yield SystemCommand(
            "Quant",
            "What each quant and KV cache type of this model costs: agreement, KL, speed"
            + k("quant"),
            self.action_quant,
        )
        yield from chat_commands(chat)
        yield from super().get_system_commands(screen)

    @on(WorkerFailed)
    def _worker_failed(self, event: WorkerFailed) -> None:
        """The one place an unexpected worker exception becomes a notification."""
        err = event.error
        text = str(err) if isinstance(err, TuiInferError) else f"{type(err).__name__}: {err}"
        self.notify(text, title=f"{event.worker_name} failed", severity="error", timeout=10)
