"""Speculative decoding (prompt lookup) against plain decoding, side by side in one process.

1. Copying tasks (the answer repeats the input: rewriting, code editing, extraction),
   temperature 0: `ngram` and `auto` against `off`. Budget: at least 1.3x.
2. Free generation (stories, explanations), temperature 0: `auto` against `off`. Budget:
   never below 0.97.

The contenders alternate in a rotating order on every prompt and repetition, so that the
machine's drift hits each alike; each reply is checked to be the same text as `off`'s
(greedy decoding is byte-identical with drafts). The figure is generated tokens over the
wall time from submit to the last token (the prompt's evaluation included: it is the
same for every contender, the cache reset before each reply). Ratios are of the summed
times over all prompts and repetitions.

    .venv/bin/python benchmarks/speculative.py [--reps 3] [--max-tokens 256] [--threads 2]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.models.bundled import find_bundled_models

CODE = """def load_config(path):
    with open(path) as handle:
        data = json.load(handle)
    if "name" not in data:
        raise KeyError("name")
    return Config(name=data["nmae"], size=data.get("size", 10))
"""
TEXT = (
    "The meeting is moved to Thursday at 3 pm in room 4B. Please bring the quarterly "
    "report, the budget spreadsheet and your laptop. Lunch will be served after the meeting."
)
COPYING = [
    "Repeat the following code exactly, fixing the typo:\n\n" + CODE,
    "Repeat the following code exactly, but rename the function load_config to "
    "read_config:\n\n" + CODE,
    "Repeat the following text exactly, word for word:\n\n" + TEXT,
    "Rewrite the following text, replacing Thursday with Friday and changing nothing "
    "else:\n\n" + TEXT,
    "Copy this list exactly, one item per line:\napples\npears\nplums\ncherries\n"
    "oranges\nbananas\ngrapes\nlemons\nlimes\nmelons",
    "Extract every sentence of this text that mentions the meeting, as written:\n\n" + TEXT,
    "Repeat this JSON exactly:\n"
    '{"name": "Ada", "age": 36, "city": "London", "languages": ["English", "French"], '
    '"active": true}',
    "Repeat the following code exactly:\n\nfor i in range(10):\n    print(i * i)\n"
    "for j in range(5):\n    print(j + 1)\n",
]
FREE = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Give me some tips for learning to cook.",
    "Describe a day at the beach.",
]


def reply(
    engine: Engine, mode: str, prompt: str, sampling: SamplingParams
) -> tuple[str, float, int]:
    engine.scheduler.speculative = mode
    engine.reset()
    t0 = time.perf_counter()
    stream = engine.chat([Message("user", prompt)], sampling)
    text = on_llama_thread(stream.text)
    dt = time.perf_counter() - t0
    assert stream.stats is not None
    return text, dt, stream.stats.generated_tokens


def contest(
    engine: Engine, prompts: list[str], modes: list[str], reps: int, sampling: SamplingParams
) -> dict[str, list[float]]:
    """Seconds and tokens per mode (summed), contenders in a rotating order."""
    totals = {m: [0.0, 0.0] for m in modes}
    order = list(modes)
    for rep in range(reps):
        for i, prompt in enumerate(prompts):
            texts = {}
            k = (rep + i) % len(order)
            for mode in order[k:] + order[:k]:
                text, dt, n = reply(engine, mode, prompt, sampling)
                texts[mode] = text
                totals[mode][0] += dt
                totals[mode][1] += n
            if len(set(texts.values())) != 1:
                print(f"  MISMATCH on prompt {i}: {texts}", file=sys.stderr)
    return totals


def show(title: str, totals: dict[str, list[float]], budget: float, against: str) -> None:
    base_s = totals["off"][0]
    print(title)
    for mode, (s, n) in totals.items():
        ratio = base_s / s if s else 0.0
        mark = "" if mode == "off" else f"  x{ratio:.3f} vs off"
        print(f"  {mode:6s} {n:6.0f} tok  {s:7.2f} s  {n / s if s else 0:6.1f} tok/s{mark}")
    ratio = base_s / totals[against][0]
    ok = "ok" if ratio >= budget else "MISSED"
    print(f"  budget: {against} >= {budget}x off: {ratio:.3f} ({ok})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=0, help="only the first N of each set")
    args = ap.parse_args()
    path = find_bundled_models()[0].path
    engine = Engine.load(path, LoadOptions(ctx=2048, threads=args.threads))
    sampling = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    copying = COPYING[: args.prompts] if args.prompts else COPYING
    free = FREE[: args.prompts] if args.prompts else FREE
    print(f"{path.name}, {args.threads} threads, {args.reps} reps, max {args.max_tokens} tokens")
    try:
        totals = contest(engine, copying, ["off", "ngram", "auto"], args.reps, sampling)
        show("copying tasks (temperature 0):", totals, 1.3, "ngram")
        totals = contest(engine, free, ["off", "auto"], args.reps, sampling)
        show("free generation (temperature 0):", totals, 0.97, "auto")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
