"""Small modal dialogs: confirm, ask for a line of text, pick one item, the overflow choice,
the chat template and its ChatML fallback, and the help screen (F1)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no; Esc is no."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "Cancel") -> None:
        super().__init__()
        self._question, self._yes, self._no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self._question, markup=False, classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self._yes, variant="error", id="yes")
                yield Button(self._no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)


class TextPromptScreen(ModalScreen[str | None]):
    """One line of text (rename); Enter accepts, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, label: str, value: str = "") -> None:
        super().__init__()
        self._label, self._value = label, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._label)
            yield Input(value=self._value, id="text-value")
            yield Label("", id="text-error", classes="dialog-error")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.query_one("#text-error", Label).update("it cannot be empty (Esc cancels)")
            return
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class PickScreen(ModalScreen[int | None]):
    """Pick one of several lines; returns its index."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, items: list[str]) -> None:
        super().__init__()
        self._title, self._items = title, items

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title)
            yield OptionList(*[Option(t, id=str(i)) for i, t in enumerate(self._items)])

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class OverflowChoice:
    drop_oldest: bool
    remember: bool


class OverflowScreen(ModalScreen[OverflowChoice]):
    """The conversation no longer fits: drop the oldest turns, or cancel. Never silent."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__()
        self._n, self._n_ctx = prompt_tokens, n_ctx

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="overflow-dialog"):
            yield Label("The context window is full", classes="dialog-title")
            yield Static(
                f"The conversation with your message takes {self._n} tokens; the context "
                f"window holds {self._n_ctx}. Drop the oldest turns (the system prompt is "
                "kept) so that it fits, or cancel and keep your message in the box.",
                markup=False,
                classes="dialog-text",
            )
            yield Checkbox(
                "Remember: always drop the oldest turns (saved in config)", id="remember"
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Drop oldest turns", variant="warning", id="drop")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#drop", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        remember = self.query_one("#remember", Checkbox).value
        self.dismiss(OverflowChoice(event.button.id == "drop", remember))

    def action_cancel(self) -> None:
        self.dismiss(OverflowChoice(False, False))


class TemplateFallbackScreen(ModalScreen[bool]):
    """The model's chat template failed or ran past a bound: use ChatML instead, or not."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, error: str, model_file: str, config_file: str) -> None:
        super().__init__()
        self._text = (
            f"{error}\n\nUse the built-in ChatML template for {model_file}? It is written "
            f"to {config_file} as a [templates] override (remove it there to go back), and "
            "the model is reloaded. Or cancel and write an override of your own there."
        )

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self._text, markup=False, classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Use ChatML", variant="warning", id="chatml")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#chatml", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "chatml")

    def action_cancel(self) -> None:
        self.dismiss(False)


class TemplateScreen(ModalScreen[None]):
    """The chat template in use and the exact text it renders for this conversation."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(
        self, source: str, rendered: str, warning: str | None, override: str | None = None
    ) -> None:
        """override: where the template comes from when config overrides the model's."""
        super().__init__()
        self._source, self._rendered, self._warning = source, rendered, warning
        self._override = override

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="template-dialog"):
            yield Label("Chat template (Esc closes)", classes="dialog-title")
            if self._warning:
                yield Static(f"warning: {self._warning}", markup=False, id="template-warning")
            if self._override:
                yield Static(
                    f"override: {self._override}, not the model's own template",
                    markup=False,
                    id="template-override",
                )
            with VerticalScroll():
                yield Label("Template", classes="section")
                yield Static(self._source, markup=False, id="template-source")
                yield Label("The prompt it renders for this conversation", classes="section")
                # specials such as <|im_start|> stay visible: markup is off
                yield Static(self._rendered, markup=False, id="template-rendered")

    def action_close(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """F1: every key of the chat screen, and where the rest lives (the palette)."""

    BINDINGS = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self._keys = keys

    def compose(self) -> ComposeResult:
        width = max(len(k) for k, _ in self._keys) + 2
        lines = "\n".join(f"{k:<{width}}{what}" for k, what in self._keys)
        with Vertical(classes="dialog", id="help-dialog"):
            yield Label("Keys (Esc closes)", classes="dialog-title")
            with VerticalScroll():
                yield Static(lines, markup=False, id="help-keys")
            yield Static(
                "Ctrl+P opens the command palette: every action is there, with themes.",
                markup=False,
            )

    def action_close(self) -> None:
        self.dismiss(None)
