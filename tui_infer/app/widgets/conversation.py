"""The message list: user turns, streamed replies with a figures line, notices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

if TYPE_CHECKING:
    from tui_infer.core.engine import GenerationStats


def reply_footer(stats: GenerationStats) -> str:
    """The small line under a finished reply."""
    reason = {"cancelled": "[stopped]", "length": "[length limit]", "stop": "done"}.get(
        stats.finish_reason, stats.finish_reason
    )
    if stats.error:
        reason = f"error: {stats.error}"
    parts = [
        reason,
        f"{stats.generated_tokens} tokens",
        f"{stats.generation_tps:.1f} tok/s",
        f"TTFT {stats.ttft_s * 1000:.0f} ms",
        f"{stats.total_s:.2f} s",
    ]
    return " · ".join(parts)


class UserTurn(Markdown):
    """What the user sent."""


class Notice(Static):
    """A line from the app inside the conversation (dropped turns, errors)."""


class Reply(Vertical):
    """One assistant reply: streamed Markdown, then a figures line."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.stats: GenerationStats | None = None
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Markdown(classes="reply-body")
        yield Static("generating…", classes="reply-footer", markup=False)

    def on_mount(self) -> None:
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
        footer = self.query_one(".reply-footer", Static)
        if stats is not None:
            footer.update(reply_footer(stats))
            self.set_class(stats.finish_reason == "cancelled", "-stopped")
        else:
            footer.update(f"error: {error}")
            self.add_class("-error")


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

    @property
    def replies(self) -> list[Reply]:
        return list(self.query(Reply))
