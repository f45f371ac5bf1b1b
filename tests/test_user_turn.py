"""A message written on several lines (Ctrl+J) shows on several lines in the chat: it used
to show as one, Markdown joining the lines of a paragraph."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pilot import ready, synthetic_app
from tui_infer.app.widgets.conversation import UserTurn, hard_breaks

pytestmark = pytest.mark.anyio


def test_newlines_become_hard_breaks_outside_code() -> None:
    assert hard_breaks("one\ntwo") == "one\\\ntwo"
    assert hard_breaks("one\n\ntwo") == "one\n\ntwo"  # a paragraph break stays one
    fenced = "see:\n```\na\nb\n```"
    assert hard_breaks(fenced) == fenced  # code keeps its lines by itself


async def test_a_two_line_message_shows_two_lines(tmp_path: Path) -> None:
    app = synthetic_app(tmp_path, max_tokens=2)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.chat.prompt_input.insert("first line\nsecond line")
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)
        turn = app.chat.query(UserTurn).first()
        assert turn.text == "first line\nsecond line"  # what is saved: as typed
        (paragraph,) = turn.query("MarkdownParagraph")
        shown = str(paragraph.render())
        assert shown.splitlines() == ["first line", "second line"], shown
