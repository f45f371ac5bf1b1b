"""Reading a batch's input: JSONL, plain text (one prompt per line) or CSV.

A malformed line does not stop the batch: it becomes a Reject with its line
number and the reason, and the rest runs. Items get the id the input gives,
else "line-N". The format comes from the file's extension (.jsonl/.json,
.csv, anything else is text) unless given.
"""

from __future__ import annotations

import csv
import io
import json
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
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchInputError(
            f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8"
        ) from None
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


def _text(text: str) -> tuple[list[InputItem], list[Reject]]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            items.append(InputItem(f"line-{n}", n, (Message("user", line),)))
    return items, []


def _jsonl(text: str) -> tuple[list[InputItem], list[Reject]]:
    items, rejects = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
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
