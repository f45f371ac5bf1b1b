"""Conversation history on a real SQLite file: write, read back, search, fork, export, import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tui_infer.core.chat.history import (
    History,
    HistoryError,
    ReplyFigures,
    derive_title,
    figures_line,
)
from tui_infer.core.db import StoreError

FIG = ReplyFigures(
    ttft_s=0.042,
    prompt_tokens=31,
    prompt_tps=410.0,
    generated_tokens=12,
    generation_tps=95.5,
    total_s=0.21,
    finish_reason="stop",
)


def test_conversation_round_trips_with_figures(tmp_path: Path) -> None:
    path = tmp_path / "data" / "history.sqlite3"
    with History(path) as h:
        cid = h.create(
            "Capital of France",
            model_name="SmolLM2",
            model_path="/m/smol.gguf",
            settings={"temperature": 0.0},
            system_prompt="Be terse.",
        )
        assert h.add_message(cid, "user", "What is the capital of France?") == 0
        assert h.add_message(cid, "assistant", "Paris.", FIG) == 1
    # a new connection, as after a restart
    with History(path) as h:
        conv = h.get(cid)
    assert conv.title == "Capital of France" and conv.model_name == "SmolLM2"
    assert conv.settings == {"temperature": 0.0} and conv.system_prompt == "Be terse."
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
    ]
    assert conv.messages[0].figures is None
    assert conv.messages[1].figures == FIG


def test_list_newest_first_and_search(tmp_path: Path) -> None:
    h = History.in_data_dir(tmp_path)
    a = h.create("About rivers", created_at=100.0)
    h.add_message(a, "user", "tell me about the Danube", created_at=101.0)
    b = h.create("Cooking", created_at=200.0)
    h.add_message(b, "user", "a recipe for 100% rye_bread", created_at=201.0)
    assert [c.id for c in h.conversations()] == [b, a]
    assert [c.id for c in h.conversations("danube")] == [a]  # message text, any case
    assert [c.id for c in h.conversations("cook")] == [b]  # title
    assert [c.id for c in h.conversations("100%")] == [b]  # % is literal, not a wildcard
    assert h.conversations("0%r") == []
    assert h.conversations("r_e") == [] and [c.id for c in h.conversations("e_br")] == [b]
    # a new message makes a conversation the newest
    h.add_message(a, "assistant", "It flows east.", FIG, created_at=300.0)
    assert [c.id for c in h.conversations()] == [a, b]
    assert h.conversations()[0].messages == 2


def test_rename_delete_truncate_and_errors(tmp_path: Path) -> None:
    h = History.in_data_dir(tmp_path)
    cid = h.create("x")
    for i in range(4):
        h.add_message(cid, "user" if i % 2 == 0 else "assistant", f"m{i}")
    h.rename(cid, "  A   better title ")
    assert h.get(cid).title == "A better title"
    with pytest.raises(HistoryError, match="cannot be empty"):
        h.rename(cid, "   ")
    assert h.truncate(cid, 2) == 2
    assert [m.content for m in h.get(cid).messages] == ["m0", "m1"]
    assert h.add_message(cid, "user", "m2'") == 2  # positions continue after a fork
    h.update(cid, system_prompt="new system", settings={"top_k": 5})
    assert h.get(cid).system_prompt == "new system" and h.get(cid).settings == {"top_k": 5}
    with pytest.raises(HistoryError, match="unknown role"):
        h.add_message(cid, "robot", "beep")
    h.delete(cid)
    with pytest.raises(HistoryError, match="no conversation with id"):
        h.get(cid)
    with pytest.raises(HistoryError, match="chats list"):
        h.delete(cid)
    assert h.conversations() == []


def test_kill_minus_9_loses_only_the_reply_in_progress(tmp_path: Path) -> None:
    """A process killed while a reply is being generated keeps everything committed before."""
    path = tmp_path / "history.sqlite3"
    code = f"""
import os, signal
from pathlib import Path
from tui_infer.core.chat.history import History, ReplyFigures
h = History(Path({str(path)!r}))
cid = h.create("t")
h.add_message(cid, "user", "first")
h.add_message(cid, "assistant", "reply one",
              ReplyFigures(0.1, 5, 50.0, 3, 30.0, 0.2, "stop"))
h.add_message(cid, "user", "second")
# the second reply is being generated when the power goes
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    with History(path) as h:
        [conv] = [h.get(c.id) for c in h.conversations()]
    assert [m.content for m in conv.messages] == ["first", "reply one", "second"]
    assert conv.messages[1].figures is not None and conv.messages[1].figures.generated_tokens == 3


def test_export_json_and_markdown_and_import(tmp_path: Path) -> None:
    h = History.in_data_dir(tmp_path)
    cid = h.create("Rivers", model_name="SmolLM2", system_prompt="Be terse.")
    h.add_message(cid, "user", "Longest river?")
    h.add_message(cid, "assistant", "The **Nile**.", FIG)
    data = json.loads(h.export_json(cid))
    assert data["format"] == "tui-infer.conversation" and data["messages"][1]["figures"]
    md = h.export_markdown(cid)
    assert md.startswith("# Rivers\n") and "## System\n\nBe terse." in md
    assert "## Assistant\n\nThe **Nile**." in md and "95.5 tok/s" in md
    new = h.import_dict(data)
    assert new != cid
    a, b = h.get(cid), h.get(new)
    assert (a.title, a.system_prompt, a.model_name, a.messages) == (
        b.title,
        b.system_prompt,
        b.model_name,
        b.messages,
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ([1, 2], "not a tui-infer conversation export"),
        ({"format": "other"}, "not a tui-infer conversation export"),
        ({"format": "tui-infer.conversation", "version": 99}, "upgrade tui-infer"),
        ({"format": "tui-infer.conversation", "version": 1, "messages": "hi"}, "must be a list"),
        (
            {
                "format": "tui-infer.conversation",
                "version": 1,
                "messages": [{"role": "user", "content": "ok"}, {"role": "bot", "content": "x"}],
            },
            "message 2 needs a role",
        ),
        (
            {
                "format": "tui-infer.conversation",
                "version": 1,
                "messages": [{"role": "assistant", "content": "x", "figures": {"ttft_s": 1}}],
            },
            "message 1: reply figures are incomplete",
        ),
    ],
)
def test_bad_imports_are_refused_and_leave_nothing(
    tmp_path: Path, data: object, error: str
) -> None:
    h = History.in_data_dir(tmp_path)
    keep = h.create("mine")
    with pytest.raises(HistoryError, match=error):
        h.import_dict(data, source="x.json")
    assert [c.id for c in h.conversations()] == [keep]


def test_not_a_database_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "history.sqlite3"
    bad.write_text("not sqlite, just notes\n" * 100)
    with pytest.raises(StoreError, match="move it aside"):
        History(bad)
    assert bad.read_text().startswith("not sqlite")  # left as it was


def test_titles_and_figures_line() -> None:
    assert derive_title("\n  What is   the capital\nof France?") == "What is the capital"
    long = derive_title("word " * 40)
    assert len(long) == 48 and long.endswith("…")
    assert derive_title("   ") == "New chat"
    line = figures_line(FIG)
    assert "done · 12 tokens · 95.5 tok/s · TTFT 42 ms · prompt 31 tok · 410 tok/s" in line
    assert "from the store" in figures_line(ReplyFigures(0, 1, 0, 1, 0, 0, "stop", "store"))
