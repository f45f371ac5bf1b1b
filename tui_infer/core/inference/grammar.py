"""Structured output: a reply constrained by llama.cpp's grammar sampler.

A request may carry a GBNF grammar (SamplingParams.grammar) and, when it came from a JSON
schema, that schema (SamplingParams.json_schema, normalized JSON text). The sampler chain
(decoding.make_sampler) starts with llama_sampler_init_grammar over the model's vocabulary,
so that every token drawn keeps the reply inside the grammar and the end of the reply is
allowed only once the grammar is complete: a reply that ends by itself parses. One cut by
the token limit ends with finish_reason "length" and is incomplete.

A JSON schema becomes GBNF through llama-cpp-python's json_schema_to_gbnf (llama.cpp's own
converter, ported); some keywords (minimum, maximum, ...) are not enforced by it, so a
front end also validates the finished reply (`validate`). The key of a structured request
holds the normalized schema, or the grammar's text (keys.normalize_params); a request with
neither keeps the key it always had.

This module imports only the standard library at the top: llama_cpp is imported where a
grammar is compiled or checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.core.errors import TuiInferError

if TYPE_CHECKING:
    from tui_infer.core.inference.types import SamplingParams

# OpenAI's {"type": "json_object"}: any JSON object
JSON_OBJECT_SCHEMA = '{"type":"object"}'


class GrammarError(TuiInferError):
    """A JSON schema or GBNF grammar that cannot be compiled (exit 2)."""


def normalize_schema(schema: Any, where: str = "the JSON schema") -> str:
    """The schema as the key holds it: compact JSON, keys sorted."""
    if not isinstance(schema, dict):
        raise GrammarError(f"{where} must be a JSON object, got {type(schema).__name__}")
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalize_grammar(text: str) -> str:
    """A GBNF grammar as the key holds it: line ends LF, outer whitespace stripped."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


@lru_cache(maxsize=64)
def schema_to_gbnf(schema_text: str) -> str:
    """GBNF for a normalized JSON schema; GrammarError names what cannot be compiled."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = str(json_schema_to_gbnf(schema_text))
    except RecursionError:
        raise GrammarError("the JSON schema cannot be compiled: it nests too deep") from None
    except Exception as exc:  # the converter asserts, raises ValueError, KeyError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GrammarError(f"the JSON schema cannot be compiled to a grammar: {reason}") from None
    # the Python port lets a string hold raw control characters, which JSON forbids
    # (llama.cpp's own converter excludes them): a reply must parse with json.loads
    return gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)


_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def with_schema(sampling: SamplingParams, schema: Any, where: str) -> SamplingParams:
    """`sampling` constrained to JSON that matches `schema` (a parsed JSON object)."""
    text = normalize_schema(schema, where)
    try:
        gbnf = schema_to_gbnf(text)
    except GrammarError as exc:
        raise GrammarError(f"{where}: {exc}") from None
    return replace(sampling, json_schema=text, grammar=gbnf)


def with_grammar(sampling: SamplingParams, grammar: str, where: str) -> SamplingParams:
    text = normalize_grammar(grammar)
    if not text:
        raise GrammarError(f"{where}: the grammar is empty; give GBNF rules with a 'root' rule")
    return replace(sampling, json_schema=None, grammar=text)


def read_schema_file(path: Path) -> Any:
    """A JSON schema file, parsed; GrammarError names the file and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GrammarError(f"{path}: cannot read the JSON schema ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GrammarError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "give a JSON schema file"
        ) from None


def read_grammar_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GrammarError(f"{path}: cannot read the grammar ({exc})") from None


def from_files(
    sampling: SamplingParams, schema_file: Path | None, grammar_file: Path | None
) -> SamplingParams:
    """--json-schema FILE / --grammar FILE applied to `sampling` (at most one of them)."""
    if schema_file is not None and grammar_file is not None:
        raise GrammarError("give --json-schema or --grammar, not both")
    if schema_file is not None:
        return with_schema(sampling, read_schema_file(schema_file), str(schema_file))
    if grammar_file is not None:
        return with_grammar(sampling, read_grammar_file(grammar_file), str(grammar_file))
    return sampling


def response_format(value: Any) -> dict[str, Any]:
    """OpenAI's response_format as SamplingParams fields ({} for text); ValueError with
    what is wrong. Takes {"type": "text"}, {"type": "json_object"} (llama-server's
    "schema" beside it too) and {"type": "json_schema", "json_schema": {"schema": {...}}}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError('\'response_format\' must be an object such as {"type": "json_object"}')
    kind = value.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        schema = value.get("schema")
        text = JSON_OBJECT_SCHEMA if schema is None else _schema_text(schema)
    elif kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ValueError(
                "'response_format' of type json_schema needs json_schema.schema, a JSON "
                "schema object"
            )
        text = _schema_text(spec["schema"])
    else:
        raise ValueError(
            f"'response_format' type {kind!r} is not supported (text, json_object, json_schema)"
        )
    try:
        gbnf = schema_to_gbnf(text)
    except GrammarError as exc:
        raise ValueError(str(exc)) from None
    return {"json_schema": text, "grammar": gbnf}


def _schema_text(schema: Any) -> str:
    try:
        return normalize_schema(schema)
    except GrammarError as exc:
        raise ValueError(str(exc)) from None


def line_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """A batch line's own structured output: 'response_format' (OpenAI's shape), or
    'json_schema' (a schema object) or 'grammar' (GBNF text); ValueError names the field."""
    given = [k for k in ("response_format", "json_schema", "grammar") if obj.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f"give one of {', '.join(repr(k) for k in given)}, not several")
    if not given:
        return {}
    name = given[0]
    value = obj[name]
    if name == "response_format":
        return response_format(value)
    if name == "json_schema":
        fields = response_format({"type": "json_object", "schema": value})
        return fields
    if not isinstance(value, str) or not normalize_grammar(value):
        raise ValueError("'grammar' must be GBNF text with a 'root' rule")
    return {"json_schema": None, "grammar": normalize_grammar(value)}


# ----- compiling with llama.cpp ----------------------------------------------------------


def grammar_sampler(lib: Any, vocab: Any, gbnf: str, capture: bool = False) -> Any:
    """llama.cpp's grammar sampler for `gbnf` (root rule "root"); GrammarError with
    llama.cpp's reason when it does not compile. llama.cpp prints a parse error straight
    to stderr: with `capture` (a check before a request) it is caught there and becomes
    the reason instead of lines on the user's terminal."""
    from tui_infer.core.inference import llama_log

    llama_log.install()
    mark = llama_log.mark()
    printed = ""
    if capture:
        sampler, printed = _with_stderr_caught(
            lambda: lib.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        )
    else:
        sampler = lib.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        lines = printed.splitlines() + llama_log.lines_since(mark)
        reason = _reason(lines)
        raise GrammarError(f"the grammar does not compile: {reason}")
    return sampler


def _with_stderr_caught(call: Any) -> tuple[Any, str]:
    """call(), with what C code writes to file descriptor 2 meanwhile caught and returned."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return result, tmp.read().decode("utf-8", errors="replace")


def _reason(lines: list[str]) -> str:
    for line in lines:
        if "error parsing grammar:" in line:
            text = line.split("error parsing grammar:", 1)[1].strip()
            return text.rstrip(" :") or "llama.cpp could not parse it"
    for line in lines:
        low = line.lower()
        if any(w in low for w in ("parse", "undefined", "recursion", "error", "symbol")):
            text = line.strip()
            for prefix in ("llama_grammar_init_impl: ", "parse: "):
                text = text.replace(prefix, "")
            if text and "failed to parse grammar" not in text.lower():
                return text
    return "llama.cpp could not parse it (GBNF needs a 'root' rule)"


def check_vocab(lib: Any, vocab: Any, gbnf: str) -> None:
    """GrammarError unless `gbnf` compiles over this vocabulary (before a request is
    submitted: a sampler that cannot be built must not fail the scheduler's step)."""
    lib.llama_sampler_free(grammar_sampler(lib, vocab, gbnf, capture=True))


_checked: dict[tuple[str, str], str | None] = {}


def check_with_model(model_path: Path, grammars: Iterable[str]) -> dict[str, str]:
    """Compile each grammar against the model's vocabulary (loaded alone, vocab_only:
    no weights), before a run: {grammar: why it does not compile} for the bad ones."""
    todo = [g for g in dict.fromkeys(grammars) if (str(model_path), g) not in _checked]
    if todo:
        import llama_cpp as lib

        from tui_infer.core.inference import llama_log

        llama_log.install()
        lib.llama_backend_init()
        mp = lib.llama_model_default_params()
        mp.vocab_only = True
        mark = llama_log.mark()
        model = lib.llama_model_load_from_file(str(model_path).encode(), mp)
        if not model:
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise GrammarError(f"{model_path}: cannot read its vocabulary ({reason})")
        try:
            vocab = lib.llama_model_get_vocab(model)
            for g in todo:
                try:
                    lib.llama_sampler_free(grammar_sampler(lib, vocab, g, capture=True))
                    _checked[(str(model_path), g)] = None
                except GrammarError as exc:
                    _checked[(str(model_path), g)] = str(exc)
        finally:
            lib.llama_model_free(model)
    return {
        g: why
        for g in dict.fromkeys(grammars)
        if (why := _checked.get((str(model_path), g))) is not None
    }


def check_sampling(model_path: Path, sampling: SamplingParams, where: str) -> None:
    """GrammarError (exit 2) when the request's grammar does not compile for this model."""
    if sampling.grammar is None:
        return
    bad = check_with_model(model_path, [sampling.grammar])
    if bad:
        raise GrammarError(f"{where}: {bad[sampling.grammar]}")


# ----- checking a reply ----------------------------------------------------------------


def validate(text: str, schema_text: str) -> str | None:
    """None when `text` is JSON valid against the schema; else why not, in one line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at column {exc.colno})"
    import jsonschema

    try:
        jsonschema.validate(value, json.loads(schema_text))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        return f"at {where}: {exc.message}"
    except jsonschema.SchemaError as exc:
        return f"the schema itself is invalid: {exc.message}"
    return None
