"""The grammar's shortlist (grammar.SHORTLIST): under a grammar, the sampler checks the
likeliest tokens against it instead of the whole vocabulary, with the same result. Greedy
replies are byte-identical to the grammar-over-the-whole-vocabulary path, seeded sampled
replies too (the same draws), on the engine's scheduler and on the batch runner, and every
reply still validates. COUNTS shows which way each token was sampled, so a test whose
shortlist never ran (or always fell back to the whole vocabulary) fails."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.test_structured import PROMPTS, SCHEMA
from tui_infer.cli import main
from tui_infer.core.inference import grammar
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import Message, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
PERSON = json.loads((ROOT / "assets" / "examples" / "person.schema.json").read_text())
YESNO = (ROOT / "assets" / "examples" / "yesno.gbnf").read_text()
YESNO_RE = re.compile(r"(yes|no)(\.|, [a-z ,]{1,60}\.)")
LIST = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4}
SCHEMAS: list[tuple[str, Any]] = [("person", PERSON), ("answer", SCHEMA), ("list", LIST)]


def both_ways(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, prompt: str, sampling: SamplingParams
) -> tuple[str, str, str, dict[str, int]]:
    """The reply with the grammar over the whole vocabulary, then with the shortlist (each
    from an empty cache), its finish reason, and how the shortlist's tokens were sampled."""
    replies = []
    finish = ""
    counts = {}
    for shortlist in (False, True):
        monkeypatch.setattr(grammar, "SHORTLIST", shortlist)
        before = dict(grammar.COUNTS)
        engine.reset()
        stream = engine.chat([Message("user", prompt)], sampling)
        replies.append(stream.text())
        assert stream.stats is not None
        finish = stream.stats.finish_reason
        counts = {k: grammar.COUNTS[k] - before[k] for k in before}
        if not shortlist:
            assert counts == {"shortlist": 0, "whole": 0}  # the plain chain: no shortlist
    return replies[0], replies[1], finish, counts


def check(name: str, schema: Any, text: str) -> None:
    if schema is None:
        assert YESNO_RE.fullmatch(text), text
    else:
        jsonschema.validate(json.loads(text), schema)


def test_greedy_replies_are_the_same_with_the_shortlist(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=64)
    tasks = [(name, schema, grammar.with_schema(greedy, schema, name)) for name, schema in SCHEMAS]
    tasks.append(("yesno", None, grammar.with_grammar(greedy, YESNO, "yesno")))
    short = whole = finished = 0
    for name, schema, sampling in tasks:
        for prompt in (PROMPTS[0], PROMPTS[8], PROMPTS[16], "Describe a person"):
            full, fast, finish, counts = both_ways(engine, monkeypatch, prompt, sampling)
            assert fast == full, (name, prompt)
            if finish == "stop":
                check(name, schema, fast)
                finished += 1
            short += counts["shortlist"]
            whole += counts["whole"]
    assert finished >= 12
    # the shortlist sampled nearly every token (the whole vocabulary only where the
    # likeliest tokens are all forbidden, at a reply's first token for instance)
    assert short > 200 and whole * 10 < short, (short, whole)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the defaults: top-k 40, top-p 0.95, min-p 0.05, repetition penalty 1.1
        {"min_p": 0.0, "top_p": 0.9},  # top-p alone cuts
        {"top_k": 5, "temperature": 1.2},
        {"repeat_penalty": 0.9},  # a penalty that raises logits: applied to the whole array
    ],
    ids=["defaults", "top-p", "top-k-5", "penalty-below-1"],
)
def test_seeded_sampled_replies_are_the_same_draws(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    """The shortlist keeps what top-k, top-p and min-p keep over the whole constrained
    vocabulary, and the chain's own seeded draw picks from it: the same reply."""
    short = 0
    for seed, prompt in enumerate((PROMPTS[1], PROMPTS[9], "Describe a person")):
        base = replace(SamplingParams(temperature=0.8, seed=seed, max_tokens=48), **overrides)
        sampling = grammar.with_schema(base, PERSON, "person")
        full, fast, finish, counts = both_ways(engine, monkeypatch, prompt, sampling)
        assert fast == full, (overrides, prompt)
        if finish == "stop":
            check("person", PERSON, fast)
        short += counts["shortlist"]
    assert short > 30


def test_without_top_k_the_grammar_goes_over_the_whole_vocabulary(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Top-p over the whole vocabulary needs every allowed token: no shortlist, and the
    reply is still the same and valid."""
    sampling = grammar.with_schema(
        SamplingParams(temperature=0.8, top_k=0, seed=4, max_tokens=48), PERSON, "person"
    )
    full, fast, finish, counts = both_ways(engine, monkeypatch, "Describe a person", sampling)
    assert fast == full
    assert counts["shortlist"] == 0 and counts["whole"] > 5
    if finish == "stop":
        check("person", PERSON, fast)


def test_the_samplers_are_freed(engine: Engine) -> None:
    """Each shortlist sampler's state lives as long as its llama.cpp sampler."""
    sampling = grammar.with_grammar(SamplingParams(temperature=0, max_tokens=8), YESNO, "y")
    engine.reset()
    engine.chat([Message("user", "Is water wet?")], sampling).text()
    assert grammar._states == {}


def test_batch_replies_are_the_same_with_the_shortlist(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch runner builds its samplers the same way: several sequences at once,
    greedy and seeded, the same outputs either way, each one valid."""
    src = tmp_path / "in.jsonl"
    rows: list[dict[str, Any]] = [{"id": f"g{i}", "prompt": p} for i, p in enumerate(PROMPTS[:4])]
    rows += [{"id": f"s{i}", "prompt": p, "temperature": 0.8, "seed": i} for i, p in
             enumerate(PROMPTS[10:12])]  # fmt: skip
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    outputs = []
    for shortlist in (False, True):
        monkeypatch.setattr(grammar, "SHORTLIST", shortlist)
        # a store of its own for each run: the second must decode, not read the first's
        monkeypatch.setenv("TUI_INFER_DATA_DIR", str(tmp_path / f"data-{shortlist}"))
        before = grammar.COUNTS["shortlist"]
        out = tmp_path / f"out-{shortlist}.jsonl"
        argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--json-schema"]
        assert main([*argv, str(schema), "--max-tokens", "64", "--parallel", "3"]) == 0
        got = {r["id"]: r for r in (json.loads(x) for x in out.read_text().splitlines())}
        outputs.append({k: (r["output"], r["finish_reason"]) for k, r in got.items()})
        used = grammar.COUNTS["shortlist"] - before
        assert (used > 100) if shortlist else used == 0
    assert outputs[0] == outputs[1]
    for text, finish in outputs[1].values():
        if finish == "stop":
            jsonschema.validate(json.loads(text), SCHEMA)
