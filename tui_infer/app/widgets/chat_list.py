"""The sidebar: saved conversations, newest first, with a search box (title and text)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from tui_infer.core.chat.history import ConversationSummary


class ChatList(Vertical):
    class Chosen(Message):
        """The user picked a conversation (Enter or click)."""

        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self) -> ComposeResult:
        yield Label("Chats", classes="section")
        yield Input(placeholder="search chats", id="chat-search", compact=True)
        yield OptionList(id="chat-options", compact=True)

    @property
    def options(self) -> OptionList:
        return self.query_one(OptionList)

    @property
    def search_text(self) -> str:
        return self.query_one("#chat-search", Input).value

    def show(self, chats: list[ConversationSummary], current: int | None) -> None:
        options = self.options
        options.clear_options()
        options.add_options(
            [Option(("● " if c.id == current else "  ") + c.title, id=str(c.id)) for c in chats]
        )
        if not chats:
            options.add_option(
                Option("(no chats yet)" if not self.search_text else "(no match)", disabled=True)
            )
        for i, c in enumerate(chats):
            if c.id == current:
                options.highlighted = i

    @property
    def titles(self) -> list[str]:
        """What the list shows, for tests and screen readers."""
        o = self.options
        return [str(o.get_option_at_index(i).prompt) for i in range(o.option_count)]

    @on(Input.Changed, "#chat-search")
    def _search_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    @on(Input.Submitted, "#chat-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        options = self.options
        if options.highlighted is None and options.option_count:
            options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Chosen(int(event.option.id)))
