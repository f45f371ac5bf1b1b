"""A small modal asking for the model to load: the path of a .gguf file, or a hub
reference (OWNER/REPO[:QUANT], hf.co/OWNER/REPO:QUANT) that the chat finds here or offers
to download."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from tui_infer.core.errors import TuiInferError
from tui_infer.core.models.resolve import HubRef, parse_hub_ref


class LoadModelScreen(ModalScreen[Path | HubRef | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: Path | None = None) -> None:
        super().__init__()
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="load-dialog"):
            # a Static wraps to the dialog's width (a Label was cut off at it)
            yield Static(
                "Load a model: a .gguf path or a hub model, OWNER/REPO:QUANT "
                "(Enter loads, Esc cancels)",
                id="load-prompt",
            )
            yield Input(
                value=str(self._current) if self._current else "",
                placeholder="~/models/model.gguf or OWNER/REPO:Q4_K_M",
                id="model-path",
            )
            yield Label("", id="load-error")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.query_one("#load-error", Label).update(
                "give a path to a .gguf file or OWNER/REPO:QUANT"
            )
            return
        try:
            ref = parse_hub_ref(text)
        except TuiInferError as exc:  # hf.co/ with no OWNER/REPO after it
            self.query_one("#load-error", Label).update(str(exc))
            return
        self.dismiss(ref if ref is not None else Path(text).expanduser())

    def action_cancel(self) -> None:
        self.dismiss(None)
