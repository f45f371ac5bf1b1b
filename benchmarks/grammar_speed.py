"""Grammar-constrained generation against plain generation, and the grammar's shortlist
(grammar.SHORTLIST: the grammar checks the likeliest tokens first) against the grammar over
the whole vocabulary (llama.cpp's grammar sampler first in the chain), side by side in one
process.

Three contenders on the same prompts, in a rotating order on every prompt and repetition so
that the machine's drift hits each alike:

- plain: no grammar (the prompts as they are; the replies run longer, to the token limit);
- whole: --json-schema / --grammar with the grammar over the whole vocabulary;
- shortlist: the same, with the shortlist (the default).

Tasks: assets/examples/person.schema.json and assets/examples/yesno.gbnf, each greedy and
sampled (temperature 0.7, the default top-k 40, top-p 0.95, min-p 0.05, a fixed seed per
prompt). Figures per contender: generation tok/s (tokens after the first over the time from
the first token to the last, summed over all replies), and the milliseconds per token spent
in llama_sampler_sample (wrapped here), which is the part the grammar changes. The
shortlist's replies are checked to be the same text as the whole vocabulary's, and every
structured reply that ended by itself to validate against its schema or grammar.

    .venv/bin/python benchmarks/grammar_speed.py [--reps 1] [--max-tokens 64] [--threads 2]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jsonschema
import llama_cpp

from tui_infer.core.inference import grammar
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.models.bundled import find_bundled_models

EXAMPLES = ROOT / "assets" / "examples"
PERSON = ["Describe a person", "Invent a character for a novel", "Tell me about a scientist"]
YESNO = ["Is water wet?", "Is the sun a star?", "Can fish fly?"]
CONTENDERS = ("plain", "whole", "shortlist")

_sample_s = [0.0]
_samples = [0]
_real_sample = llama_cpp.llama_sampler_sample


def _timed_sample(*args: Any) -> int:
    t = time.perf_counter()
    tok = _real_sample(*args)
    _sample_s[0] += time.perf_counter() - t
    _samples[0] += 1
    return int(tok)


class Tally:
    def __init__(self) -> None:
        self.steps = 0  # tokens after the first
        self.gen_s = 0.0
        self.samples = 0
        self.sample_s = 0.0

    def tps(self) -> float:
        return self.steps / self.gen_s if self.gen_s else 0.0

    def ms_per_sample(self) -> float:
        return 1000 * self.sample_s / self.samples if self.samples else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    models = find_bundled_models()
    if not models:
        print("the default model is not installed: run 'make install'", file=sys.stderr)
        return 2
    engine = Engine.load(models[0].path, LoadOptions(ctx=2048, threads=args.threads))
    llama_cpp.llama_sampler_sample = _timed_sample  # the scheduler calls it through the module

    schema = json.loads((EXAMPLES / "person.schema.json").read_text())
    gbnf = (EXAMPLES / "yesno.gbnf").read_text()
    yesno = re.compile(r"(yes|no)(\.|, [a-z ,]{1,60}\.)")
    tasks: list[tuple[str, list[str], Any]] = [
        ("person.schema.json", PERSON, lambda s: grammar.with_schema(s, schema, "person")),
        ("yesno.gbnf", YESNO, lambda s: grammar.with_grammar(s, gbnf, "yesno")),
    ]
    print(
        f"model {models[0].path.name}, {args.threads} threads, max {args.max_tokens} tokens, "
        f"{args.reps} reps"
    )
    print("figures taken on a shared machine: rough under load; compare within one run only")
    failures = 0
    for name, prompts, constrain in tasks:
        for temperature in (0.0, 0.7):
            tally = {c: Tally() for c in CONTENDERS}
            n_replies = 0
            for rep in range(args.reps):
                for i, prompt in enumerate(prompts):
                    base = SamplingParams(
                        temperature=temperature, seed=100 + i, max_tokens=args.max_tokens
                    )
                    structured = constrain(base)
                    shift = (rep + i) % len(CONTENDERS)
                    replies: dict[str, str] = {}
                    for c in CONTENDERS[shift:] + CONTENDERS[:shift]:
                        grammar.SHORTLIST = c == "shortlist"
                        engine.reset()
                        _sample_s[0], _samples[0] = 0.0, 0
                        stream = engine.chat(
                            [Message("user", prompt)], base if c == "plain" else structured
                        )
                        text = stream.text()
                        st = stream.stats
                        assert st is not None
                        t = tally[c]
                        t.steps += max(st.generated_tokens - 1, 0)
                        t.gen_s += st.generation_s
                        t.samples += _samples[0]
                        t.sample_s += _sample_s[0]
                        replies[c] = text
                        if c != "plain" and st.finish_reason == "stop":
                            failures += _check(name, text, schema, yesno)
                    n_replies += 1
                    if replies["shortlist"] != replies["whole"]:
                        failures += 1
                        print(f"  DIFFERENT: {prompt!r} t={temperature}")
                        print(f"    whole:     {replies['whole']!r}")
                        print(f"    shortlist: {replies['shortlist']!r}")
            grammar.SHORTLIST = True
            _report(name, temperature, tally, n_replies)
    print(f"shortlist/whole tokens: {grammar.COUNTS}")
    print("all replies the same and valid" if not failures else f"{failures} FAILURES")
    return 1 if failures else 0


def _check(name: str, text: str, schema: Any, yesno: re.Pattern[str]) -> int:
    try:
        if name.endswith(".json"):
            jsonschema.validate(json.loads(text), schema)
        elif not yesno.fullmatch(text):
            raise ValueError("does not match the grammar")
    except (ValueError, jsonschema.ValidationError) as exc:
        print(f"  INVALID ({exc.__class__.__name__}): {text!r}")
        return 1
    return 0


def _report(name: str, temperature: float, tally: dict[str, Tally], n: int) -> None:
    plain = tally["plain"].tps()
    kind = "greedy" if temperature == 0 else f"t={temperature}"
    print(f"\n{name}, {kind}, {n} prompts x reps")
    print(f"  {'':10} {'tokens':>7} {'gen tok/s':>10} {'x plain':>8} {'sample ms/tok':>14}")
    for c, t in tally.items():
        ratio = t.tps() / plain if plain else 0.0
        print(f"  {c:10} {t.steps:>7} {t.tps():>10.1f} {ratio:>8.2f} {t.ms_per_sample():>14.2f}")
    w, s = tally["whole"], tally["shortlist"]
    if w.tps() and s.ms_per_sample():
        print(
            f"  shortlist vs whole: {s.tps() / w.tps():.2f}x tok/s, sampling "
            f"{w.ms_per_sample() / s.ms_per_sample():.1f}x less time per token"
        )


if __name__ == "__main__":
    raise SystemExit(main())
