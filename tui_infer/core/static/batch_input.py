"""Reading a batch's input: JSONL, plain text (one prompt per line) or CSV.

A malformed line does not stop the batch: it becomes a Reject with its line
number and the reason, and the rest runs. That holds for bytes too: the file is decoded
with surrogateescape, so a line that is not UTF-8 is rejected on its own (its bad bytes
become lone surrogates, found per line), as is a JSON string holding a lone surrogate
escape ("\\ud800"), which no UTF-8 prompt can carry. Only a file that is not text at all
(NUL bytes, or mostly undecodable) or holds nothing is refused whole.

Items get the id the input gives, else "line-N". The format comes from the file's
extension (.jsonl/.json, .csv, anything else is text) unless given.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import Message

ROLES = ("system", "user", "assistant")


class BatchInputError(TuiInferError):
    pass


@dataclass(frozen=True)
class InputItem:
    id: str
    line: int
    messages: tuple[Message, ...]
    max_tokens: int | None = None


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.reason, "text": self.text}


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    return "text"


def read_input(
    path: Path, fmt: str | None = None, column: str | None = None
) -> tuple[list[InputItem], list[Reject]]:
    """Parse the whole file; raises BatchInputError if nothing in it can run."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BatchInputError(
            f"{path}: no such file; give the path of a JSONL, text or CSV file"
        ) from None
    except IsADirectoryError:
        raise BatchInputError(f"{path}: is a directory; give a JSONL, text or CSV file") from None
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read it ({exc.strerror})") from None
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if _looks_binary(raw, text):
        raise BatchInputError(
            f"{path}: not a text file (binary data); give a JSONL, text or CSV file in UTF-8"
        )
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        items, rejects = _jsonl(text)
    elif fmt == "csv":
        items, rejects = _csv(text, column, delimiter="\t" if path.suffix == ".tsv" else ",")
    elif fmt == "text":
        items, rejects = _text(text)
    else:
        raise BatchInputError(f"unknown input format {fmt!r}; use jsonl, text or csv")
    items, dup = _dedupe_ids(items)
    rejects = sorted(rejects + dup, key=lambda r: r.line)
    if not items and not rejects:
        raise BatchInputError(f"{path}: the input is empty; give one prompt per line or item")
    if not items:
        raise BatchInputError(
            f"{path}: none of its {len(rejects)} lines is a usable prompt (line "
            f"{rejects[0].line}: {rejects[0].reason})"
        )
    return items, rejects


def _looks_binary(raw: bytes, text: str) -> bool:
    """NUL bytes, or a third of the first 8 KiB undecodable: not a text file. (A text in
    Latin-1 has far fewer: its lines are rejected one by one instead.)"""
    head = text[:8192]
    if b"\x00" in raw[:8192]:
        return True
    bad = sum(1 for ch in head if "\udc80" <= ch <= "\udcff")
    return bool(head) and bad * 3 > len(head)


def _undecodable(line: str) -> str | None:
    """Why this line of the file cannot be used as text, or None."""
    for col, ch in enumerate(line, 1):
        if "\udc80" <= ch <= "\udcff":
            byte = ord(ch) - 0xDC00
            return f"not valid UTF-8 (byte 0x{byte:02x} at column {col}); convert the line to UTF-8"
    return None


def _lone_surrogate(value: str) -> str | None:
    for ch in value:
        if "\ud800" <= ch <= "\udfff":
            return f"holds a lone surrogate escape (\\u{ord(ch):04x}), which is not text"
    return None


def _shown(line: str) -> str:
    """The line as the rejects file can hold it (bad bytes as U+FFFD)."""
    return line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _dedupe_ids(items: list[InputItem]) -> tuple[list[InputItem], list[Reject]]:
    seen: dict[str, int] = {}
    keep, rejects = [], []
    for it in items:
        if it.id in seen:
            rejects.append(
                Reject(it.line, f"id {it.id!r} already used on line {seen[it.id]}", it.id)
            )
            continue
        seen[it.id] = it.line
        keep.append(it)
    return keep, rejects


def _text_lines(text: str, rejects: list[Reject]) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line that is text; blank lines skipped, undecodable
    ones rejected on their own."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if reason := _undecodable(line):
            rejects.append(Reject(n, reason, _shown(line)))
            continue
        yield n, line


def _text(text: str) -> tuple[list[InputItem], list[Reject]]:
    rejects: list[Reject] = []
    items = [
        InputItem(f"line-{n}", n, (Message("user", line),))
        for n, line in _text_lines(text, rejects)
    ]
    return items, rejects


def _jsonl(text: str) -> tuple[list[InputItem], list[Reject]]:
    items: list[InputItem] = []
    rejects: list[Reject] = []
    for n, line in _text_lines(text, rejects):
        try:
            items.append(_json_item(json.loads(line), n))
        except json.JSONDecodeError as exc:
            rejects.append(Reject(n, f"not valid JSON ({exc.msg} at column {exc.colno})", line))
        except ValueError as exc:
            rejects.append(Reject(n, str(exc), line))
    return items, rejects


def _json_item(obj: Any, n: int) -> InputItem:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with 'prompt' or 'messages'")
    item_id = obj.get("id", f"line-{n}")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise ValueError("'id' must be a string or an integer")
    if isinstance(item_id, str) and (reason := _lone_surrogate(item_id)):
        raise ValueError(f"'id' {reason}")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError("'max_tokens' must be a positive integer")
    if "prompt" in obj and "messages" in obj:
        raise ValueError("give 'prompt' or 'messages', not both")
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("'prompt' must be a non-empty string")
        if reason := _lone_surrogate(prompt):
            raise ValueError(f"'prompt' {reason}")
        messages: tuple[Message, ...] = (Message("user", prompt),)
    elif "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise ValueError(
                    f"messages[{i}] must be {{'role': system|user|assistant, 'content': text}}"
                )
            if reason := _lone_surrogate(m["content"]):
                raise ValueError(f"messages[{i}] {reason}")
            out.append(Message(m["role"], m["content"]))
        if out[-1].role != "user":
            raise ValueError("the last message must be the user's")
        messages = tuple(out)
    else:
        raise ValueError("no 'prompt' or 'messages' in this object")
    return InputItem(str(item_id), n, messages, max_tokens)


def _csv(text: str, column: str | None, delimiter: str) -> tuple[list[InputItem], list[Reject]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as exc:
        raise BatchInputError(f"the CSV header does not parse ({exc})") from None
    names = [h.strip() for h in header]
    if column is None:
        if "prompt" not in names:
            raise BatchInputError(
                f"the CSV has no 'prompt' column (columns: {', '.join(names)}); "
                "name the prompt column with --column"
            )
        column = "prompt"
    if column not in names:
        raise BatchInputError(
            f"the CSV has no column {column!r} (columns: {', '.join(names)}); fix --column"
        )
    col = names.index(column)
    id_col = names.index("id") if "id" in names else None
    items, rejects = [], []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rejects.append(Reject(reader.line_num, f"CSV row does not parse ({exc})", ""))
            continue
        n = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        joined = ",".join(row)
        if reason := _undecodable(joined):
            rejects.append(Reject(n, reason, _shown(joined)))
            continue
        if len(row) != len(names):
            rejects.append(
                Reject(n, f"{len(row)} fields where the header has {len(names)}", ",".join(row))
            )
            continue
        prompt = row[col]
        if not prompt.strip():
            rejects.append(Reject(n, f"the {column!r} cell is empty", ",".join(row)))
            continue
        item_id = row[id_col].strip() if id_col is not None and row[id_col].strip() else f"line-{n}"
        items.append(InputItem(item_id, n, (Message("user", prompt),)))
    return items, rejects
