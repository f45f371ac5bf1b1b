"""A streaming reply: closed blocks and the open one, the tail that shows them at a cost
that does not grow with the reply, and the Markdown the reply becomes when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.widgets import Markdown

import tui_infer.app as app_package
from tui_infer.app.widgets.conversation import Conversation, Reply
from tui_infer.app.widgets.stream_tail import BlockSplitter, StreamTail

pytestmark = pytest.mark.anyio

STORY = (
    "The dragon **woke** early.\nShe lit the `stove`.\n\n"
    "Then she cooked.\n\n\n"
    "```python\nprint('a')\n\nprint('b')\n```\n"
    "After the code, a paragraph.\n\n"
    "~~~~\n```\nstill code\n~~~~\n"
    "- a list\n- of two\n\n"
    "The end"
)


def split_all(text: str, step: int) -> tuple[list[str], str]:
    splitter = BlockSplitter()
    closed = [c for i in range(0, len(text), step) if (c := splitter.feed(text[i : i + step]))]
    return closed, splitter.open


def test_blocks_close_at_blank_lines_and_fence_ends() -> None:
    closed, open_block = split_all(STORY, len(STORY))
    assert "".join(closed) + open_block == STORY
    closed, open_block = split_all(STORY, 1)
    assert closed == [
        "The dragon **woke** early.\nShe lit the `stove`.\n\n",
        "Then she cooked.\n\n",
        "\n",
        # a blank line inside a fence does not close it; the closing fence does
        "```python\nprint('a')\n\nprint('b')\n```\n",
        "After the code, a paragraph.\n\n",
        # a ``` line inside a ~~~~ fence is code: only a ~~~~ (or longer) fence closes it
        "~~~~\n```\nstill code\n~~~~\n",
        "- a list\n- of two\n\n",
    ]
    assert open_block == "The end"
    joined = "".join(closed)
    # the same blocks whatever the fragment size
    for step in (2, 3, 7, 50):
        again, rest = split_all(STORY, step)
        assert "".join(again) == joined and rest == open_block


def test_an_unclosed_fence_stays_open() -> None:
    splitter = BlockSplitter()
    assert splitter.feed("Intro.\n\n") == "Intro.\n\n"
    assert splitter.feed("```\ncode\n\nmore code\n") == ""
    assert splitter.open == "```\ncode\n\nmore code\n"
    assert splitter.feed("``\n") == ""  # too short to close a ``` fence
    assert splitter.feed("```\n") == "```\ncode\n\nmore code\n``\n```\n"
    assert splitter.open == ""


class ConversationApp(App[None]):
    CSS_PATH = Path(app_package.__file__).parent / "app.tcss"

    def compose(self) -> ComposeResult:
        yield Conversation(id="conversation")


async def stream(pilot: Any, reply: Reply, text: str, step: int) -> None:
    for i in range(0, len(text), step):
        await reply.append(text[i : i + step])
        await pilot.pause()


async def test_paragraphs_stream_in_the_tail_and_end_as_markdown() -> None:
    app = ConversationApp()
    async with app.run_test(size=(80, 30)) as pilot:
        reply = await app.query_one(Conversation).start_reply()
        await pilot.pause()
        text = "First **bold** paragraph with `code`.\n\nSecond paragraph, still open"
        await stream(pilot, reply, text, 9)
        tail = reply.query_one(StreamTail)
        # closed paragraphs are held in the tail: nothing has been mounted in the Markdown
        assert reply.body.source == ""
        assert reply.shown_text == text
        assert tail.open == "Second paragraph, still open"
        # styled as the Markdown styles them: no asterisks, a bold span
        plain = "\n".join(line.text for line in tail._lines)
        assert "First bold paragraph" in plain and "**" not in plain and "`" not in plain
        assert any(
            s.style and s.style.bold for line in tail._lines for s in line if "bold" in s.text
        )
        await reply.finish(None, "stopped for the test")
        await pilot.pause()
        await pilot.pause()
        assert reply.body.source == text
        assert not reply.query(StreamTail) and not reply.query(".reply-tail")
        assert [type(b).__name__ for b in reply.body.children] == [
            "MarkdownParagraph",
            "MarkdownParagraph",
        ]


async def test_a_closed_code_block_joins_the_markdown_at_once() -> None:
    app = ConversationApp()
    async with app.run_test(size=(80, 30)) as pilot:
        reply = await app.query_one(Conversation).start_reply()
        await pilot.pause()
        await stream(pilot, reply, "Intro.\n\n```python\nx = 1\n", 5)
        assert reply.body.source == ""  # the fence is still open: plain text in the tail
        assert "```python" in "\n".join(line.text for line in reply.query_one(StreamTail)._lines)
        await stream(pilot, reply, "```\nAfter.", 5)
        assert reply.body.source == "Intro.\n\n```python\nx = 1\n```\n"
        assert reply.query_one(StreamTail).open == "After."
        assert reply.query_one(Markdown).query("MarkdownFence")


async def test_the_tail_repaints_changed_lines_and_reflows_in_steps() -> None:
    app = ConversationApp()
    async with app.run_test(size=(80, 30)) as pilot:
        reply = await app.query_one(Conversation).start_reply()
        await pilot.pause()
        await stream(pilot, reply, "word " * 40, 40)  # a few lines, laid out once
        tail = reply.query_one(StreamTail)
        step = max(4, app.size.height // 3)
        assert tail.size.height == step
        calls: list[tuple[tuple[Region, ...], bool]] = []
        refresh = tail.refresh

        def spy(*regions: Region, layout: bool = False, **kw: Any) -> Any:
            calls.append((regions, layout))
            return refresh(*regions, layout=layout, **kw)

        tail.refresh = spy  # type: ignore[method-assign]
        await reply.append("more ")
        # one more word: one line repainted, no layout
        assert calls == [((Region(0, calls[0][0][0].y, tail.size.width, 1),), False)]
        calls.clear()
        # enough text for more lines than are reserved: one layout, a taller tail
        await stream(pilot, reply, "word " * 200, 500)
        assert any(layout for _, layout in calls)
        assert tail.size.height % step == 0 and tail.size.height > step
