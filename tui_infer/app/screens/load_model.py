"""A small modal asking for the path of a .gguf file to load."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class LoadModelScreen(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: Path | None = None) -> None:
        super().__init__()
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="load-dialog"):
            yield Label("Load a model: path to a .gguf file (Enter loads, Esc cancels)")
            yield Input(
                value=str(self._current) if self._current else "",
                placeholder="~/models/model.gguf",
                id="model-path",
            )
            yield Label("", id="load-error")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.query_one("#load-error", Label).update("give a path to a .gguf file")
            return
        self.dismiss(Path(text).expanduser())

    def action_cancel(self) -> None:
        self.dismiss(None)
