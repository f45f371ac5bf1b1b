"""The Textual app: bindings, the command palette's actions, worker failures.

Behaviour lives in the screens (screens/chat.py); this file stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tui_infer.app.messages import WorkerFailed
from tui_infer.app.screens.chat import ChatScreen
from tui_infer.core.config import Settings
from tui_infer.core.engine import Engine, LoadOptions
from tui_infer.core.errors import TuiInferError
from tui_infer.core.paths import Paths


class TuiInferApp(App[None]):
    TITLE = "tui-infer"
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(
        self,
        *,
        settings: Settings,
        paths: Paths,
        model_path: Path | None = None,
        startup_error: str | None = None,
        engine_loader: Callable[[Path, LoadOptions], Any] = Engine.load,
        memory_probe: Any = None,
    ) -> None:
        """engine_loader and memory_probe let benchmarks and tests inject synthetic ones."""
        super().__init__()
        self.settings = settings
        self.paths = paths
        self._model_path = model_path
        self._startup_error = startup_error
        self._engine_loader = engine_loader
        if memory_probe is None:
            from tui_infer.core.memory import MemoryProbe

            memory_probe = MemoryProbe()
        self._memory_probe = memory_probe

    def get_default_screen(self) -> Screen[Any]:
        return ChatScreen(
            settings=self.settings,
            model_path=self._model_path,
            startup_error=self._startup_error,
            engine_loader=self._engine_loader,
            memory_probe=self._memory_probe,
        )

    @property
    def chat(self) -> ChatScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, ChatScreen)
        return screen

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        chat = self.chat
        yield SystemCommand("New chat", "Clear the conversation (Ctrl+N)", chat.action_new_chat)
        yield SystemCommand("Stop generation", "Stop the reply now (Esc)", chat.action_stop)
        yield SystemCommand(
            "Focus input", "Move the cursor to the message box", chat.action_focus_input
        )
        yield SystemCommand(
            "Load model…", "Load a .gguf file by path (Ctrl+O)", chat.action_load_model
        )
        yield SystemCommand(
            "Reload model", "Load the current model again", chat.action_reload_model
        )
        yield from super().get_system_commands(screen)

    @on(WorkerFailed)
    def _worker_failed(self, event: WorkerFailed) -> None:
        """The one place an unexpected worker exception becomes a notification."""
        err = event.error
        text = str(err) if isinstance(err, TuiInferError) else f"{type(err).__name__}: {err}"
        self.notify(text, title=f"{event.worker_name} failed", severity="error", timeout=10)
