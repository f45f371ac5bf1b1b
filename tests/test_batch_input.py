"""Batch input is judged line by line, bytes included; only a file that is not text, or
is empty, is refused whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui_infer.core.static.batch_input import BatchInputError, read_input

LATIN1 = "Café crème".encode("latin-1")  # not UTF-8: 0xe9 then a space


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_line_that_is_not_utf8_is_rejected_alone_in_every_format(tmp_path: Path) -> None:
    jsonl = b'{"prompt": "one"}\n{"prompt": "' + LATIN1 + b'"}\n{"prompt": "three"}\n'
    items, rejects = read_input(write(tmp_path, "in.jsonl", jsonl))
    assert [i.line for i in items] == [1, 3]
    [bad] = rejects
    assert bad.line == 2 and "not valid UTF-8 (byte 0xe9 at column 16)" in bad.reason
    assert "\ufffd" in bad.text
    json.dumps(bad.as_dict(), ensure_ascii=False).encode("utf-8")  # the rejects file holds it

    text = b"first\n" + LATIN1 + b"\nthird\n"
    items, rejects = read_input(write(tmp_path, "in.txt", text))
    assert [i.messages[0].content for i in items] == ["first", "third"]
    assert [r.line for r in rejects] == [2] and "not valid UTF-8" in rejects[0].reason

    csv = b"id,prompt\na,one\nb," + LATIN1 + b"\nc,three\n"
    items, rejects = read_input(write(tmp_path, "in.csv", csv))
    assert [i.id for i in items] == ["a", "c"]
    assert [r.line for r in rejects] == [3] and "not valid UTF-8" in rejects[0].reason


def test_lone_surrogate_escapes_are_rejected(tmp_path: Path) -> None:
    lines = [
        '{"id": "ok", "prompt": "fine"}',
        '{"prompt": "bad \\ud800 here"}',
        '{"messages": [{"role": "user", "content": "\\udfff"}]}',
        '{"id": "\\ud834", "prompt": "x"}',
        '{"prompt": "a real pair \\ud83d\\ude00 is fine"}',
    ]
    items, rejects = read_input(write(tmp_path, "s.jsonl", "\n".join(lines).encode()))
    assert [i.line for i in items] == [1, 5]
    assert items[1].messages[0].content == "a real pair \U0001f600 is fine"
    assert [r.line for r in rejects] == [2, 3, 4]
    assert "'prompt' holds a lone surrogate escape (\\ud800)" in rejects[0].reason
    assert "messages[0] holds a lone surrogate" in rejects[1].reason
    assert "'id' holds a lone surrogate" in rejects[2].reason


def test_bom_is_dropped(tmp_path: Path) -> None:
    items, rejects = read_input(write(tmp_path, "b.txt", b"\xef\xbb\xbfhello\n"))
    assert items[0].messages[0].content == "hello" and not rejects


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50, "not a text file"),
        (bytes(range(128, 256)) * 20, "not a text file"),
        (b"", "the input is empty"),
        (b"\n  \n\n", "the input is empty"),
        (LATIN1 + b"\n", "none of its 1 lines is a usable prompt (line 1: not valid UTF-8"),
    ],
)
def test_only_non_text_or_empty_files_are_refused_whole(
    tmp_path: Path, data: bytes, message: str
) -> None:
    with pytest.raises(BatchInputError, match=message.replace("(", r"\(")):
        read_input(write(tmp_path, "x.txt", data))


line_bytes = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(line_bytes, min_size=1, max_size=12))
def test_every_line_is_an_item_or_a_reject_exactly_once(tmp_path: Path, lines: list[bytes]) -> None:
    """Whatever the bytes, each non-blank line of a text input is used or rejected, once,
    with its own line number; nothing else is raised than BatchInputError."""
    path = write(tmp_path, "p.txt", b"\n".join(lines))
    try:
        items, rejects = read_input(path)
    except BatchInputError:
        return
    seen = [i.line for i in items] + [r.line for r in rejects]
    assert sorted(seen) == sorted(set(seen))
    text = path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    blank = {n for n, ln in enumerate(text.splitlines(), 1) if not ln.strip()}
    assert set(seen) == set(range(1, len(text.splitlines()) + 1)) - blank
    for item in items:
        item.messages[0].content.encode("utf-8")  # every prompt is real text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(line_bytes, min_size=1, max_size=12))
def test_jsonl_never_raises_but_batch_input_error(tmp_path: Path, lines: list[bytes]) -> None:
    path = write(tmp_path, "p.jsonl", b"\n".join(lines))
    try:
        items, rejects = read_input(path)
    except BatchInputError:
        return
    for r in rejects:
        json.dumps(r.as_dict(), ensure_ascii=False).encode("utf-8")
