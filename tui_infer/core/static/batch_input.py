"""Reading a batch's input: JSONL, plain text (one prompt per line), CSV, or OpenAI's
batch input format (one request a line: custom_id, method, url, body).

A malformed line does not stop the batch: it becomes a Reject with its line
number and the reason, and the rest runs. That holds for bytes too: the file is decoded
with surrogateescape, so a line that is not UTF-8 is rejected on its own (its bad bytes
become lone surrogates, found per line), as is a JSON string holding a lone surrogate
escape ("\\ud800"), which no UTF-8 prompt can carry. Only a file that is not text at all
(NUL bytes, or mostly undecodable) or holds nothing is refused whole.

Items get the id the input gives, else "line-N". The format comes from the file's
extension (.jsonl/.json, .csv, anything else is text) unless given, except that a file
whose first line is a JSON object with a "custom_id" is OpenAI's batch format whatever
its name.

Sampling per line: a JSONL object may carry temperature, top_p, top_k, min_p,
repeat_penalty, seed (null: random), stop (a string or up to 4) and max_tokens, and an
OpenAI line's body max_tokens/max_completion_tokens, temperature, top_p, seed, stop (and
vLLM's top_k, min_p, repetition_penalty); they override the run's for that line. A JSONL
line written by `store misses` also names the model_sha256 and template_sha256 it missed
with; the batch checks them. An OpenAI `/v1/completions` line is a raw prompt: rendered
through no chat template (InputItem.raw_prompt).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import Message

ROLES = ("system", "user", "assistant")
FORMATS = ("jsonl", "text", "csv", "openai")
CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
MAX_STOPS = 4  # OpenAI's limit (as inference/stops.py)


class BatchInputError(TuiInferError):
    pass


@dataclass(frozen=True)
class InputItem:
    id: str
    line: int
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    # the line's own sampling fields (SamplingParams names; stop as a tuple): the run's rest
    sampling: dict[str, Any] = field(default_factory=dict, compare=False)
    raw_prompt: str | None = None  # an OpenAI /v1/completions line: no chat template
    model: str | None = None  # an OpenAI body's "model" (the run's -m answers it)
    model_sha256: str | None = None  # a `store misses` line: what it missed with
    template_sha256: str | None = None


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    text: str
    custom_id: str | None = None  # an OpenAI line's, when it has one

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "error": self.reason, "text": self.text}
        if self.custom_id is not None:
            out["custom_id"] = self.custom_id
        return out


@dataclass(frozen=True)
class BatchInput:
    items: list[InputItem]
    rejects: list[Reject]
    format: str  # jsonl, text, csv or openai: what the file was read as


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
    got = read_batch_input(path, fmt, column)
    return got.items, got.rejects


def _by_content(text: str) -> str | None:
    """ "openai" when the first non-blank line is a JSON object with a "custom_id"."""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        return "openai" if isinstance(obj, dict) and "custom_id" in obj else None
    return None


def read_batch_input(path: Path, fmt: str | None = None, column: str | None = None) -> BatchInput:
    """Parse the whole file, telling the format it was read as; raises BatchInputError if
    nothing in it can run."""
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
    if fmt is None and path.suffix.lower() not in (".csv", ".tsv"):
        fmt = _by_content(text)
    fmt = fmt or detect_format(path)
    if fmt == "openai":
        items, rejects = _openai(text)
    elif fmt == "jsonl":
        items, rejects = _jsonl(text)
    elif fmt == "csv":
        items, rejects = _csv(text, column, delimiter="\t" if path.suffix == ".tsv" else ",")
    elif fmt == "text":
        items, rejects = _text(text)
    else:
        raise BatchInputError(f"unknown input format {fmt!r}; use jsonl, text, csv or openai")
    items, dup = _dedupe_ids(items, fmt == "openai")
    rejects = sorted(rejects + dup, key=lambda r: r.line)
    if not items and not rejects:
        raise BatchInputError(f"{path}: the input is empty; give one prompt per line or item")
    if not items:
        raise BatchInputError(
            f"{path}: none of its {len(rejects)} lines is a usable prompt (line "
            f"{rejects[0].line}: {rejects[0].reason})"
        )
    return BatchInput(items, rejects, fmt)


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


def _dedupe_ids(
    items: list[InputItem], openai: bool = False
) -> tuple[list[InputItem], list[Reject]]:
    seen: dict[str, int] = {}
    keep, rejects = [], []
    for it in items:
        if it.id in seen:
            name = "custom_id" if openai else "id"
            rejects.append(
                Reject(
                    it.line,
                    f"{name} {it.id!r} already used on line {seen[it.id]}",
                    it.id,
                    it.id if openai else None,
                )
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
    max_tokens = _max_tokens(obj, "max_tokens")
    sampling = _sampling(obj, {})
    shas = {}
    for name in ("model_sha256", "template_sha256"):
        v = obj.get(name)
        if v is not None and (not isinstance(v, str) or not v):
            raise ValueError(f"'{name}' must be a non-empty string")
        shas[name] = v
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
    return InputItem(str(item_id), n, messages, max_tokens, sampling, **shas)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _max_tokens(obj: dict[str, Any], name: str) -> int | None:
    v = obj.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"'{name}' must be a positive integer")
    return v


# a line's sampling field -> (the SamplingParams name, its check, what it must be)
_CHECKS: dict[str, tuple[Any, str]] = {
    "temperature": (lambda v: _number(v) and v >= 0, "a number, 0 or more"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "0 or more"),
    "min_p": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "repeat_penalty": (lambda v: _number(v) and v > 0, "a number above 0"),
}


def _sampling(obj: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    """The line's own sampling fields, checked, by SamplingParams name (a JSON null leaves
    the run's value, except seed: null is a random seed)."""
    out: dict[str, Any] = {}
    for name, (ok, what) in _CHECKS.items():
        for key in (name, *[a for a, n in aliases.items() if n == name]):
            v = obj.get(key)
            if v is None:
                continue
            if not ok(v):
                raise ValueError(f"'{key}' must be {what}, got {v!r}")
            out[name] = float(v) if name != "top_k" else int(v)
    if "seed" in obj:
        seed = obj["seed"]
        if seed is None:
            out["seed"] = -1
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < -1:
            raise ValueError(f"'seed' must be an integer (null or -1: random), got {seed!r}")
        else:
            out["seed"] = seed
    stop = obj.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and s for s in stops)
        ):
            raise ValueError(f"'stop' must be a non-empty string or a list of up to {MAX_STOPS}")
        for s in stops:
            if reason := _lone_surrogate(s):
                raise ValueError(f"'stop' {reason}")
        out["stop"] = tuple(stops)
    # structured output: response_format (OpenAI's shape), json_schema or grammar
    from tui_infer.core.inference.grammar import line_fields

    out.update(line_fields(obj))
    return out


def _openai(text: str) -> tuple[list[InputItem], list[Reject]]:
    items: list[InputItem] = []
    rejects: list[Reject] = []
    for n, line in _text_lines(text, rejects):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(n, f"not valid JSON ({exc.msg} at column {exc.colno})", line))
            continue
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        cid = cid if isinstance(cid, str) and cid and not _lone_surrogate(cid) else None
        try:
            items.append(_openai_item(obj, n))
        except ValueError as exc:
            rejects.append(Reject(n, str(exc), line, cid))
    return items, rejects


_OPENAI_ALIASES = {"repetition_penalty": "repeat_penalty"}


def _openai_item(obj: Any, n: int) -> InputItem:
    """One line of OpenAI's batch input format (the shapes of vLLM's run_batch)."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with custom_id, method, url and body")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise ValueError("'custom_id' must be a non-empty string")
    if reason := _lone_surrogate(cid):
        raise ValueError(f"'custom_id' {reason}")
    method = obj.get("method")
    if method != "POST":
        raise ValueError(f"method {method!r}: a batch line must be POST")
    url = obj.get("url")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        raise ValueError(f"unknown url {url!r}; a batch runs {CHAT_URL} and {COMPLETIONS_URL}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ValueError("missing body: give the request's body as a JSON object")
    n_choices = body.get("n")
    if n_choices is not None and n_choices != 1:
        raise ValueError(f"n = {n_choices!r}: a batch line makes one choice (n = 1)")
    if body.get("stream"):
        raise ValueError("stream = true: a batch line is answered whole; leave stream out")
    model = body.get("model")
    model = model if isinstance(model, str) else None
    max_tokens = _max_tokens(body, "max_completion_tokens") or _max_tokens(body, "max_tokens")
    sampling = _sampling(body, _OPENAI_ALIASES)
    if url == COMPLETIONS_URL:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list):
            raise ValueError("'prompt' holds several prompts: give one request a line")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("'prompt' must be a non-empty string")
        if reason := _lone_surrogate(prompt):
            raise ValueError(f"'prompt' {reason}")
        return InputItem(cid, n, (Message("user", prompt),), max_tokens, sampling, prompt, model)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        content = _content(m.get("content") if isinstance(m, dict) else None)
        if role not in ROLES or content is None:
            raise ValueError(
                f"messages[{i}] must be {{'role': system|user|assistant, 'content': text}}"
            )
        if reason := _lone_surrogate(content):
            raise ValueError(f"messages[{i}] {reason}")
        out.append(Message(role, content))
    if out[-1].role != "user":
        raise ValueError("the last message must be the user's")
    return InputItem(cid, n, tuple(out), max_tokens, sampling, None, model)


def _content(content: Any) -> str | None:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            if not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "".join(parts)
    return None


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
