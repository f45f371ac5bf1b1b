"""The one table style of the headless commands (commands/tables.py)."""

from __future__ import annotations

import io

import pytest

from tui_infer.commands.tables import Table


def test_columns_align_numbers_right_and_nothing_is_cut() -> None:
    t = Table("name", "size", "path", right=("size",), title="models")
    long_path = "/very/long/" + "x" * 200 + "/model.gguf"
    t.add_row("tiny", "93.8 MiB", long_path)
    t.add_row("a-much-longer-name", 7, None)
    out = io.StringIO()
    t.print(out)
    assert out.getvalue().splitlines() == [
        "models",
        "name                    size  path",
        "tiny                93.8 MiB  " + long_path,  # whole, at any width
        "a-much-longer-name         7",  # no trailing spaces
    ]


def test_name_value_listing_with_a_multiline_value() -> None:
    t = Table("name", "value", header=False)
    t.add_row("path", "/a/1.gguf\n/a/2.gguf")
    t.add_row("status", "ok")
    assert t.lines() == ["path    /a/1.gguf", "        /a/2.gguf", "status  ok"]


def test_a_row_must_fill_the_columns() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Table("a", "b", "c").add_row(1, 2)
