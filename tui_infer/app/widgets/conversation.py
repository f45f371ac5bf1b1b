"""The message list: user turns, streamed replies with a figures line, notices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static

from tui_infer.app.widgets.stream_tail import BlockSplitter, StreamTail
from tui_infer.core.chat.history import ReplyFigures, figures_line

if TYPE_CHECKING:
    from tui_infer.core.inference.types import GenerationStats


def reply_footer(stats: GenerationStats) -> str:
    """The small line under a finished reply (the same line is kept in the history)."""
    return figures_line(ReplyFigures.from_stats(stats))


class UserTurn(Markdown):
    """What the user sent."""

    def __init__(self, text: str) -> None:
        super().__init__(hard_breaks(text))
        self.text = text


def hard_breaks(text: str) -> str:
    """A message's lines as typed (Ctrl+J): Markdown joins lines of a paragraph into one,
    so each newline outside a code fence becomes a hard line break."""
    out, fenced = [], False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        last = i == len(lines) - 1
        nxt = lines[i + 1] if not last else ""
        joins = not fenced and not last and line.strip() and nxt.strip()
        out.append(line + "\\" if joins and not nxt.lstrip().startswith("```") else line)
    return "\n".join(out)


class Notice(Static):
    """A line from the app inside the conversation (dropped turns, errors)."""


class Reply(Vertical):
    """One assistant reply: Markdown (closed blocks + the open one while streaming), figures."""

    def __init__(self, text: str = "", figures: ReplyFigures | None = None) -> None:
        """With text, a finished reply (from the history); without, one about to stream."""
        super().__init__()
        self.text = text
        self.stats: GenerationStats | None = None
        self.figures = figures
        self._finished = bool(text)
        self._blocks = BlockSplitter()
        self._tail: StreamTail | None = None

    def compose(self) -> ComposeResult:
        body = Markdown(self.text or None, classes="reply-body")
        yield body
        if self._finished:
            footer = figures_line(self.figures) if self.figures else ""
        else:
            # The open block streams here, below the closed ones.
            with Vertical(classes="reply-tail"):
                self._tail = StreamTail(body)
                yield self._tail
            footer = "generating…"
        yield Static(footer, classes="reply-footer", markup=False)

    def on_mount(self) -> None:
        if self.figures is not None:
            self.set_class(self.figures.finish_reason == "cancelled", "-stopped")

    @property
    def body(self) -> Markdown:
        return self.query_one(".reply-body", Markdown)

    async def append(self, fragment: str) -> None:
        """Stream a fragment. Closed paragraphs stay in the tail, which shows them exactly as
        the Markdown would, until the reply ends; any other closed block (code, a list, a
        heading) joins the Markdown at once, with the paragraphs held before it."""
        if not fragment:
            return
        self.text += fragment
        closed = self._blocks.feed(fragment)
        tail = self._tail
        if tail is None:
            return
        if closed:
            tail.hold(closed)
            if not tail.only_paragraphs(closed):
                await self.body.append(tail.release())
        tail.show(self._blocks.open)

    def _close_stream(self) -> None:
        """The reply is complete: once the screen shows its last tokens, make its Markdown
        (a long reply takes a while: about 3 ms a paragraph)."""
        if self._tail is not None:
            self.call_after_refresh(self._to_markdown)

    async def _to_markdown(self) -> None:
        """Move everything the tail holds into the Markdown and drop the tail."""
        tail = self._tail
        if tail is None or not self.is_attached:
            return
        self._tail = None
        rest = tail.release() + self._blocks.open
        self._blocks.open = ""
        if rest:
            await self.body.append(rest)
        await self.query_one(".reply-tail").remove()

    @property
    def shown_text(self) -> str:
        """The Markdown the reply shows now (in its Markdown and, while streaming, its tail)."""
        return self.body.source + (self._tail.text if self._tail is not None else "")

    async def finish(self, stats: GenerationStats | None, error: str | None = None) -> None:
        self._close_stream()
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
        self._close_stream()
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
