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

import ctypes
import itertools
import json
import math
from collections import deque
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


# ----- sampling under a grammar: a shortlist first ----------------------------------------
#
# llama.cpp's grammar sampler checks every candidate it is given against the grammar's
# stacks: over the whole vocabulary (49k tokens for SmolLM2) that is milliseconds per token,
# as long as decoding a token of a small model. llama.cpp's own common sampler
# (common/sampling.cpp, common_sampler_sample with grammar_first=false) samples without the
# grammar first and checks only the token drawn, going over the whole vocabulary only when
# that token is rejected; with top-k, top-p and min-p that changes what a sampled reply
# draws from (the truncation then saw tokens the grammar forbids).
#
# The shortlist does the same work in a way that keeps the result: the grammar checks only
# the likeliest tokens (all those whose logit is within a width of the best: 2 nats for
# greedy, -log(min_p) + 3 when sampling, then wider), and the rest of the chain runs on
# them once the shortlist holds what it would keep from the whole constrained vocabulary.
# Every token left out has a lower logit than the shortlist's threshold (the repetition
# penalty's effect on the recent tokens reckoned in):
#
# - greedy: one allowed token at or above the threshold. It is then the best allowed token
#   of the vocabulary; the shortlist is in vocabulary order, so a tie breaks as it would.
# - top-k: k allowed tokens at or above the threshold, which are the k best allowed tokens
#   of the vocabulary. Or fewer, when top-p and min-p keep the same tokens whatever allowed
#   tokens were left out (_rest_cut): min-p's floor (best + log(min_p)) lies above the
#   threshold, and top-p cuts at the same place for any probability mass that top-k could
#   add from below the threshold.
# - top-k off (top-p over the whole vocabulary): the grammar over the whole vocabulary.
#
# When the shortlist would be half the vocabulary, the grammar goes over the whole of it.
# The draw is the chain's own (one uniform number per token from its seeded generator), so
# a seeded reply is the same text with the shortlist as without; only two tokens with
# exactly equal logits at the top-k boundary may be ordered otherwise. A repetition penalty
# above 1 only lowers logits: it runs on the shortlist alone (below 1, over the whole array
# first; the grammar only sets -inf, so the two commute either way).
#
# The shortlist is a llama.cpp sampler written in Python (llama_sampler_init with a
# llama_sampler_i of ctypes callbacks) that holds the grammar, the penalties and the rest
# of the chain; make_sampler returns a chain with it alone, so llama_sampler_sample, accept
# and free work on it as on any chain. SHORTLIST = False makes the plain chain (the grammar
# over the whole vocabulary first) again: tests and benchmarks compare the two.

SHORTLIST = True
ROUNDING = 1e-3  # room left for float32 rounding where a logit comparison decides
RELATIVE = 1e-4  # the same for top-p's normalizer
WIDEN = 3.0  # nats added to the shortlist's width while it holds too little
# tokens sampled from a shortlist, and with the grammar over the whole vocabulary
COUNTS = {"shortlist": 0, "whole": 0}


class _Shortlist:
    """The state of one shortlist sampler: its grammar, penalties (or None) and the rest
    of the chain (greedy, or top-k ... dist), and how many allowed tokens it needs."""

    def __init__(
        self,
        lib: Any,
        grammar: Any,
        pre: Any,
        post: Any,
        sampling: SamplingParams,
        penalty_last_n: int,
    ):
        import numpy as np

        self.np = np
        self.lib = lib
        self.grammar = grammar
        self.pre = pre
        # a repetition penalty above 1 only lowers logits, so a token left out of the
        # shortlist stays below it: the penalty runs on the shortlist alone (else on all)
        self.pre_lowers = sampling.repeat_penalty >= 1.0
        self.penalty = np.float32(sampling.repeat_penalty)
        self.recent: deque[int] = deque(maxlen=penalty_last_n)  # the tokens it penalizes
        self.post = post
        self.greedy = sampling.greedy
        # how many allowed tokens the chain keeps: None when it takes the whole vocabulary
        self.k: int | None = (
            1 if sampling.greedy else sampling.top_k if sampling.top_k > 0 else None
        )
        self.top_p = sampling.top_p
        self.min_p = sampling.min_p
        # the first shortlist's width: 2 nats for greedy (the best token is often one the
        # grammar forbids), 3 more than min-p keeps when sampling (measured: the fewest
        # shortlists per token on the example schema)
        self.first_width = (
            2.0
            if sampling.greedy
            else -math.log(sampling.min_p) + 3.0
            if sampling.min_p > 0
            else 6.0
        )
        self.small = lib.llama_token_data_array()

    def apply(self, cur_p: Any) -> None:
        lib = self.lib
        pre_first = self.pre is not None and not self.pre_lowers
        if pre_first:
            lib.llama_sampler_apply(self.pre, cur_p)
        try:
            done = self.k is not None and self._shortlist(cur_p, not pre_first)
        except Exception:
            done = False  # never leave the array without a selected token: the whole way
        if not done:
            COUNTS["whole"] += 1
            if self.pre is not None and not pre_first:
                lib.llama_sampler_apply(self.pre, cur_p)
            lib.llama_sampler_apply(self.grammar, cur_p)
            lib.llama_sampler_apply(self.post, cur_p)

    def _shortlist(self, cur_p: Any, pre_here: bool) -> bool:
        """Sample from shortlists of the tokens whose logit is within `width` of the best
        (then 2x, 4x, ... as wide) until one holds what the chain keeps; False when the
        shortlist would be half the vocabulary (then the grammar goes over all of it)."""
        np, lib = self.np, self.lib
        assert self.k is not None
        cur = cur_p.contents
        n = int(cur.size)
        addr = ctypes.cast(cur.data, ctypes.c_void_p).value
        if not addr or n == 0:
            return False
        view = np.frombuffer(
            (ctypes.c_char * (n * _TOKEN_DATA.itemsize)).from_address(addr), _TOKEN_DATA
        )
        logits = np.ascontiguousarray(view["logit"])  # a copy
        if pre_here and self.recent:
            # the penalty's own float32 arithmetic on the recent tokens' logits, to place
            # the shortlist (the shortlist's logits come from the penalty sampler itself)
            ids = np.fromiter(set(self.recent), np.int64)
            ids = ids[ids < n]
            if bool((view["id"][ids] == ids).all()):  # the array is in vocabulary order
                v = logits[ids]
                logits[ids] = np.where(v <= 0, v * self.penalty, v / self.penalty)
        top = float(logits.max())
        width = self.first_width
        arr = self.small
        while True:
            thr = np.float32(top - width)
            # vocabulary order; a little wider than thr, so that every token left out is
            # below thr however the penalty's arithmetic above rounded
            at = np.flatnonzero(logits >= thr - ROUNDING)
            if 2 * len(at) >= n:
                return False
            small = view[at]  # a copy, contiguous
            arr.data = ctypes.cast(small.ctypes.data, ctypes.POINTER(lib.llama_token_data))
            if pre_here and self.pre is not None:
                self._reset_small(len(small))
                lib.llama_sampler_apply(self.pre, ctypes.byref(arr))
            self._reset_small(len(small))
            lib.llama_sampler_apply(self.grammar, ctypes.byref(arr))
            # every token left out is below thr, penalized or not; the shortlist's own
            # logits are now penalized, and -inf where the grammar forbids
            values = small["logit"]
            allowed = values != -np.inf
            enough = int((allowed & (values >= thr)).sum()) >= self.k
            if not enough and not self.greedy and allowed.any():
                enough = self._rest_cut(values[allowed], float(thr))
            if enough:
                self._reset_small(len(small))
                lib.llama_sampler_apply(self.post, ctypes.byref(arr))
                if not 0 <= arr.selected < len(small):
                    return False
                tok = int(small["id"][arr.selected])
                ids = view["id"]
                i = (
                    tok
                    if 0 <= tok < n and int(ids[tok]) == tok
                    else int(np.flatnonzero(ids == tok)[0])
                )
                cur.selected = i
                COUNTS["shortlist"] += 1
                return True
            # wider: at once as wide as the best allowed token shows is needed, else by
            # WIDEN (the tokens left out then weigh e^-3 = 1/20 as much)
            need = 0.0
            if allowed.any():
                need = top - float(values[allowed].max()) + 2 * ROUNDING
                if not self.greedy and self.min_p > 0:
                    need -= math.log(self.min_p)
            width = need if need > width else width + WIDEN

    def _reset_small(self, size: int) -> None:
        arr = self.small
        arr.size = size
        arr.selected = -1
        arr.sorted = False

    def _rest_cut(self, allowed: Any, thr: float) -> bool:
        """With fewer than k allowed tokens at or above `thr` in the shortlist (`allowed`:
        the shortlist's allowed logits; every token left out is below thr): do top-p and
        min-p keep the same tokens whatever allowed tokens were left out? Then the draw is
        the same as over the whole vocabulary.

        Top-k's pick holds the n allowed tokens at or above thr and up to k - n more, each
        below thr: top-p's normalizer lies in [z_lo, z_hi], and the more it holds, the
        later top-p cuts. Min-p then keeps the sorted prefix at or above best + log(min_p),
        all of it in the shortlist when thr is below that. The same tokens survive when the
        cut is the same at both ends of the range (widened for float32 rounding)."""
        np = self.np
        assert self.k is not None
        best = float(allowed.max())
        known = np.sort(allowed[allowed >= thr])[::-1].astype(np.float64)
        if self.min_p > 0:
            floor = best + math.log(self.min_p)
            if thr >= floor - ROUNDING or bool(np.any(np.abs(allowed - floor) < ROUNDING)):
                return False
            n_keep = int((known > floor).sum())
        else:
            n_keep = len(known)
        if self.top_p >= 1.0:  # no top-p cut: min-p alone decides, if there is one
            return self.min_p > 0
        q = np.exp(known - best)
        cum = np.cumsum(q)
        z_lo = float(cum[-1]) * (1 - RELATIVE)
        z_hi = (float(cum[-1]) + (self.k - len(known)) * math.exp(thr - best)) * (1 + RELATIVE)

        def cut(z: float) -> int:  # top-p keeps this many (len + 1: none of the known)
            i = int(np.searchsorted(cum, self.top_p * z))
            return i + 1 if i < len(cum) else len(cum) + 1

        lo, hi = cut(z_lo), cut(z_hi)
        if self.min_p > 0:
            return min(lo, n_keep) == min(hi, n_keep)
        return lo == hi <= len(known)

    def accept(self, token: int) -> None:
        lib = self.lib
        lib.llama_sampler_accept(self.grammar, token)
        if self.pre is not None:
            lib.llama_sampler_accept(self.pre, token)
            self.recent.append(token)
        lib.llama_sampler_accept(self.post, token)

    def reset(self) -> None:
        lib = self.lib
        self.recent.clear()
        for s in (self.grammar, self.pre, self.post):
            if s is not None:
                lib.llama_sampler_reset(s)

    def free(self) -> None:
        lib = self.lib
        for s in (self.grammar, self.pre, self.post):
            if s is not None:
                lib.llama_sampler_free(s)
        self.grammar = self.pre = self.post = None


_TOKEN_DATA: Any = None  # numpy's view of llama_token_data: int32 id, float32 logit, p
_states: dict[int, _Shortlist] = {}
_ids = itertools.count(1)
_iface: Any = None  # the llama_sampler_i, built once
_callbacks: list[Any] = []
_NAME = ctypes.create_string_buffer(b"grammar-shortlist")


def _state(smpl: Any) -> _Shortlist:
    return _states[int(smpl.contents.ctx)]


def _build_iface(lib: Any) -> Any:
    """The llama_sampler_i of the shortlist sampler (clone and the backend hooks NULL:
    nothing here clones a sampler or samples on the device)."""
    import numpy as np

    global _TOKEN_DATA
    _TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    assert _TOKEN_DATA.itemsize == ctypes.sizeof(lib.llama_token_data)
    ptr = lib.llama_sampler_p_ctypes

    # the name as a plain address: a c_char_p result from a callback warns of a leak
    @ctypes.CFUNCTYPE(ctypes.c_void_p, ptr)
    def name(smpl: Any) -> int:
        return ctypes.addressof(_NAME)

    @lib.llama_sampler_i_accept
    def accept(smpl: Any, token: int) -> None:
        _state(smpl).accept(token)

    @lib.llama_sampler_i_apply
    def apply(smpl: Any, cur_p: Any) -> None:
        _state(smpl).apply(cur_p)

    @lib.llama_sampler_i_reset
    def reset(smpl: Any) -> None:
        _state(smpl).reset()

    @lib.llama_sampler_i_free
    def free(smpl: Any) -> None:
        state = _states.pop(int(smpl.contents.ctx), None)
        if state is not None:
            state.free()

    iface = lib.llama_sampler_i()
    iface.name = ctypes.cast(name, lib.llama_sampler_i_name)
    iface.accept, iface.apply, iface.reset, iface.free = accept, apply, reset, free
    _callbacks.extend((name, accept, apply, reset, free))  # they outlive every sampler
    return iface


def shortlist_sampler(
    lib: Any, grammar: Any, pre: Any, post: Any, sampling: SamplingParams, penalty_last_n: int
) -> Any:
    """A llama.cpp sampler that samples as the chain [grammar, pre, post] does, checking
    the grammar over a shortlist of the likeliest tokens (see above). It owns the three
    samplers given (pre: the repetition penalty over the last `penalty_last_n` tokens, or
    None) and frees them with itself."""
    global _iface
    if _iface is None:
        _iface = _build_iface(lib)
    key = next(_ids)
    _states[key] = _Shortlist(lib, grammar, pre, post, sampling, penalty_last_n)
    return lib.llama_sampler_init(ctypes.byref(_iface), ctypes.c_void_p(key))
