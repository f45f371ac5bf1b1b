"""`tui-infer chats list|export|import`, run as real processes on a real history file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tui_infer.core.chat.history import History, ReplyFigures

FIG = ReplyFigures(0.05, 20, 400.0, 7, 88.0, 0.13, "stop")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui_infer", "chats", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=os.environ.copy(),
        timeout=60,
    )


def data_dir() -> Path:
    return Path(os.environ["TUI_INFER_DATA_DIR"])


def make_chat() -> int:
    with History.in_data_dir(data_dir()) as h:
        cid = h.create("Rivers of Europe", model_name="SmolLM2-135M", system_prompt="Be terse.")
        h.add_message(cid, "user", "Which river flows through Vienna?")
        h.add_message(cid, "assistant", "The **Danube**.\n\n```\nprint('hi')\n```", FIG)
        return cid


def test_list_export_import_round_trip(tmp_path: Path) -> None:
    empty = cli("list")
    assert empty.returncode == 0 and "no chats yet" in empty.stdout
    assert not (data_dir() / "history.sqlite3").exists()  # listing creates nothing

    cid = make_chat()
    listed = cli("list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["id", "updated", "messages", "model", "title"]
    assert row.split()[0] == str(cid) and row.endswith("Rivers of Europe")
    assert "SmolLM2-135M" in row
    assert "Rivers" in cli("list", "--search", "vienna").stdout
    assert "no chats match" in cli("list", "--search", "tokyo").stdout

    md = cli("export", str(cid))
    assert md.returncode == 0
    assert md.stdout.startswith("# Rivers of Europe\n")
    assert "## User\n\nWhich river flows through Vienna?" in md.stdout
    assert "88.0 tok/s" in md.stdout and "```\nprint('hi')\n```" in md.stdout

    out = tmp_path / "chat.json"
    js = cli("export", str(cid), "--format", "json", "-o", str(out))
    assert js.returncode == 0 and js.stdout == ""
    exported = json.loads(out.read_text())
    assert exported["messages"][1]["figures"]["generation_tps"] == 88.0

    imported = cli("import", str(out))
    assert imported.returncode == 0, imported.stderr
    assert "imported as chat" in imported.stdout
    with History.in_data_dir(data_dir()) as h:
        chats = h.conversations()
        assert len(chats) == 2
        new = chats[0].id if chats[0].id != cid else chats[1].id
        a, b = h.get(cid), h.get(new)
    assert (a.title, a.system_prompt, a.model_name, a.messages) == (
        b.title,
        b.system_prompt,
        b.model_name,
        b.messages,
    )
    # exporting the copy gives the same file, but for the times of the import
    again = json.loads(cli("export", str(new), "--format", "json").stdout)
    assert again["messages"] == exported["messages"] and again["title"] == exported["title"]

    # stdin works too
    assert cli("import", "-", stdin=out.read_text()).returncode == 0
    assert len(History.in_data_dir(data_dir()).conversations()) == 3


def test_errors_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    cid = make_chat()
    before = (data_dir() / "history.sqlite3").stat().st_size

    missing = cli("export", "999")
    assert missing.returncode == 2
    assert (
        missing.stderr
        == "tui-infer: error: no conversation with id 999; 'tui-infer chats list' shows them\n"
    )

    notes = tmp_path / "notes.json"
    notes.write_text("these are notes, not JSON")
    bad = cli("import", str(notes))
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    assert bad.stderr.count("\n") == 1

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"messages": []}))
    assert "not a tui-infer conversation export" in cli("import", str(other)).stderr

    nofile = cli("import", str(tmp_path / "nope.json"))
    assert nofile.returncode == 2 and "no such file" in nofile.stderr

    broken = tmp_path / "broken.json"
    broken.write_text(
        json.dumps(
            {"format": "tui-infer.conversation", "version": 1, "messages": [{"role": "user"}]}
        )
    )
    assert "message 1 needs a role" in cli("import", str(broken)).stderr

    with History.in_data_dir(data_dir()) as h:
        assert [c.id for c in h.conversations()] == [cid]
    assert (data_dir() / "history.sqlite3").stat().st_size == before

    unwritable = cli("export", str(cid), "-o", str(tmp_path / "no" / "dir" / "x.md"))
    assert unwritable.returncode == 2 and "no such folder" in unwritable.stderr
    assert ".tmp" not in unwritable.stderr  # (it named a temporary file before)


def test_export_picks_the_format_by_extension_and_refuses_a_mismatch(tmp_path: Path) -> None:
    """`chats export 2 -o c2.json` writes JSON, which `chats import` reads back; a --format
    that contradicts the file name is refused (exit 2) and writes nothing."""
    cid = make_chat()
    out = tmp_path / "c2.json"
    done = cli("export", str(cid), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["title"]
    done = cli("import", str(out))
    assert done.returncode == 0 and "imported as chat" in done.stdout
    md = tmp_path / "c2.md"
    assert cli("export", str(cid), "-o", str(md)).returncode == 0
    assert md.read_text().startswith("#")
    bad = tmp_path / "wrong.json"
    done = cli("export", str(cid), "--format", "md", "-o", str(bad))
    assert done.returncode == 2 and not bad.exists()
    assert "is a json file name but --format is md" in done.stderr
    assert len(done.stderr.splitlines()) == 1
