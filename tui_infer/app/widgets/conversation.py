"""The message list: user turns, streamed replies with a figures line, notices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from tui_infer.core.history import ReplyFigures, figures_line

if TYPE_CHECKING:
    from tui_infer.core.engine import GenerationStats


def reply_footer(stats: GenerationStats) -> str:
    """The small line under a finished reply (the same line is kept in the history)."""
    return figures_line(ReplyFigures.from_stats(stats))


class UserTurn(Markdown):
    """What the user sent."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Notice(Static):
    """A line from the app inside the conversation (dropped turns, errors)."""


class Reply(Vertical):
    """One assistant reply: streamed Markdown, then a figures line."""

    def __init__(self, text: str = "", figures: ReplyFigures | None = None) -> None:
        """With text, a finished reply (from the history); without, one about to stream."""
        super().__init__()
        self.text = text
        self.stats: GenerationStats | None = None
        self.figures = figures
        self._finished = bool(text)
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Markdown(self.text or None, classes="reply-body")
        if self._finished:
            footer = figures_line(self.figures) if self.figures else ""
        else:
            footer = "generating…"
        yield Static(footer, classes="reply-footer", markup=False)

    def on_mount(self) -> None:
        if self.figures is not None:
            self.set_class(self.figures.finish_reason == "cancelled", "-stopped")
        if not self._finished:
            # get_stream appends fragments as they come, batching when the UI is busy,
            # without re-parsing what is already shown.
            self._stream = Markdown.get_stream(self.query_one(Markdown))

    async def append(self, fragment: str) -> None:
        self.text += fragment
        if self._stream is not None and fragment:
            await self._stream.write(fragment)

    async def finish(self, stats: GenerationStats | None, error: str | None = None) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.stats = stats
        self._finished = True
        footer = self.query_one(".reply-footer", Static)
        if stats is not None:
            self.figures = ReplyFigures.from_stats(stats)
            footer.update(figures_line(self.figures))
            self.set_class(stats.finish_reason == "cancelled", "-stopped")
        else:
            footer.update(f"error: {error}")
            self.add_class("-error")

    async def finish_served(self, figures: ReplyFigures, note: str) -> None:
        """A reply answered from the prediction store: all its text is there; note: from where."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self._finished = True
        self.figures = figures
        self.query_one(".reply-footer", Static).update(note)
        self.add_class("-from-store")


class Conversation(VerticalScroll):
    """Scrolls with the newest output unless the user scrolls away."""

    can_focus = False

    def on_mount(self) -> None:
        self.anchor()

    async def add_user_turn(self, text: str) -> None:
        await self.mount(UserTurn(text))
        self.anchor()

    async def start_reply(self) -> Reply:
        reply = Reply()
        await self.mount(reply)
        self.anchor()
        return reply

    async def add_notice(self, text: str, severity: str = "information") -> None:
        await self.mount(Notice(text, markup=False, classes=f"-{severity}"))
        self.anchor()

    async def clear(self) -> None:
        await self.remove_children()

    async def show_turns(self, turns: list[tuple[str, str, ReplyFigures | None]]) -> None:
        """Replace what is shown with stored turns (role, text, figures)."""
        await self.remove_children()
        widgets: list[UserTurn | Reply] = [
            UserTurn(text) if role == "user" else Reply(text or " ", figures)
            for role, text, figures in turns
        ]
        if widgets:
            await self.mount_all(widgets)
        self.anchor()

    @property
    def replies(self) -> list[Reply]:
        return list(self.query(Reply))
