"""Speculative decoding (prompt lookup, a draft model) against plain decoding, side by side
in one process.

1. Copying tasks (the answer repeats the input: rewriting, code editing, extraction),
   temperature 0: `ngram` and `auto` (and `draft` with --draft) against `off`. Budget: at
   least 1.3x. `--long` adds longer tasks of the same kinds (a 30-line function with a
   rename, a 120-word passage with one word changed, a passage extracted from a longer
   text), where a reply copies for longer than the short prompts' ~30 tokens.
2. Free generation (stories, explanations), temperature 0: `auto` against `off`. Budget:
   never below 0.97.

The contenders alternate in a rotating order on every prompt and repetition, so that the
machine's drift hits each alike; each reply is checked to be the same text as `off`'s
(greedy decoding is byte-identical with drafts). Two figures per contender: tokens over
the wall time from submit to the last token (`wall`: the prompt's evaluation included, the
same for every contender, the cache reset before each reply), and tokens after the first
over the time from the first token to the last (`gen`: what drafting can change). Ratios
are of the summed times over all prompts and repetitions; the budget is judged on `wall`.

--ngram-max, --k-start and --k-max set speculative.py's constants for the run (to see
whether longer n-grams or longer first drafts pay).

    .venv/bin/python benchmarks/speculative.py [--reps 3] [--max-tokens 256] [--threads 2]
        [--long] [--draft MODEL.gguf] [--ngram-max 3] [--k-start 4] [--k-max 16]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui_infer.core.inference import speculative
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
# Longer tasks of the same kinds, so that a reply copies for long: a function of 30 lines
# with one rename, a passage of ~120 words with one word changed, a passage extracted
# verbatim from a longer text.
LONG_CODE = """def parse_order(line):
    fields = line.strip().split(",")
    if len(fields) != 5:
        raise ValueError("expected 5 fields, got " + str(len(fields)))
    order_id = int(fields[0])
    customer = fields[1].strip()
    quantity = int(fields[2])
    price = float(fields[3])
    status = fields[4].strip().lower()
    return order_id, customer, quantity, price, status


def total_value(orders):
    total = 0.0
    for order_id, customer, quantity, price, status in orders:
        if status == "cancelled":
            continue
        total += quantity * price
    return total


def customers(orders):
    seen = set()
    for order_id, customer, quantity, price, status in orders:
        seen.add(customer)
    return sorted(seen)
"""
PASSAGE = (
    "The library opens at nine in the morning and closes at six in the evening on "
    "weekdays. On Saturdays it opens at ten and closes at four, and on Sundays it is "
    "closed. Members may borrow up to eight books at a time for three weeks, and a loan "
    "can be renewed twice unless another member has reserved the book. Late returns cost "
    "twenty cents a day for each book. The reading room on the first floor is kept quiet "
    "at all times, while the group study rooms on the second floor can be booked at the "
    "front desk for up to two hours a day."
)
ARTICLE = (
    "Our town's bicycle scheme started last spring with forty bicycles at six stations. "
    "In its first month riders made about two thousand trips, most of them short rides "
    "between the station and the market square. "
    + PASSAGE
    + " The council plans to add three more stations next year, near the hospital, the "
    "university and the new swimming pool."
)
LONG = [
    "Repeat the following code exactly, but rename the function parse_order to "
    "read_order:\n\n" + LONG_CODE,
    "Rewrite the following text, replacing Saturdays with Fridays and changing nothing "
    "else:\n\n" + PASSAGE,
    "Copy the paragraph about the library from this article, word for word:\n\n" + ARTICLE,
]
FREE = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Give me some tips for learning to cook.",
    "Describe a day at the beach.",
]


def reply(
    engine: Engine, mode: str, prompt: str, sampling: SamplingParams
) -> tuple[str, float, int, float]:
    """The text, the wall time from submit to the last token, the tokens, and the time
    from the first token to the last."""
    engine.scheduler.speculative = mode
    engine.reset()
    t0 = time.perf_counter()
    stream = engine.chat([Message("user", prompt)], sampling)
    text = on_llama_thread(stream.text)
    dt = time.perf_counter() - t0
    assert stream.stats is not None
    return text, dt, stream.stats.generated_tokens, stream.stats.generation_s


def contest(
    engine: Engine, prompts: list[str], modes: list[str], reps: int, sampling: SamplingParams
) -> dict[str, list[float]]:
    """Per mode, summed: wall seconds, tokens, generation seconds; contenders in a
    rotating order."""
    totals = {m: [0.0, 0.0, 0.0] for m in modes}
    order = list(modes)
    for rep in range(reps):
        for i, prompt in enumerate(prompts):
            texts = {}
            k = (rep + i) % len(order)
            for mode in order[k:] + order[:k]:
                text, dt, n, gen_s = reply(engine, mode, prompt, sampling)
                texts[mode] = text
                totals[mode][0] += dt
                totals[mode][1] += n
                totals[mode][2] += gen_s
            if len(set(texts.values())) != 1:
                print(
                    f"  MISMATCH on prompt {i}: {parting(engine, prompt, texts)}", file=sys.stderr
                )
    return totals


def parting(engine: Engine, prompt: str, texts: dict[str, str]) -> str:
    """Where each reply parts from `off`'s: the token of the reply and the KV cell. From
    cell 256 on, llama.cpp's CPU flash attention decodes a single token with its split-KV
    kernel and a draft's batch with the row kernel (ops.cpp: neq1 == 1 && nek1 >= 512), whose
    sums differ in rounding: a near-tie can then go either way (BENCHMARKS.md)."""
    n_prompt = len(engine.tokenize(engine.render([Message("user", prompt)])))
    base = engine.tokenize(texts["off"])
    out = []
    for mode, text in texts.items():
        toks = engine.tokenize(text)
        if mode == "off" or toks == base:
            continue
        pairs = enumerate(zip(base, toks, strict=False))
        at = next((j for j, (a, b) in pairs if a != b), min(len(base), len(toks)))
        out.append(f"{mode} parts at reply token {at}, cell {n_prompt + at}")
    return "; ".join(out)


def show(title: str, totals: dict[str, list[float]], budget: float, against: str) -> None:
    base_s, base_n, base_g = totals["off"]
    print(title)
    for mode, (s, n, g) in totals.items():
        ratio = base_s / s if s else 0.0
        gen = base_g / g if g else 0.0
        mark = "" if mode == "off" else f"  x{ratio:.3f} wall, x{gen:.3f} gen vs off"
        print(
            f"  {mode:6s} {n:6.0f} tok  {s:7.2f} s  {n / s if s else 0:6.1f} tok/s wall"
            f"  {(n - 1) / g if g else 0:6.1f} tok/s gen{mark}"
        )
    ratio = base_s / totals[against][0]
    ok = "ok" if ratio >= budget else "MISSED"
    print(f"  budget: {against} >= {budget}x off (wall): {ratio:.3f} ({ok})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=0, help="only the first N of each set")
    ap.add_argument("--long", action="store_true", help="the longer copying tasks too")
    ap.add_argument("--only-long", action="store_true", help="only the longer copying tasks")
    ap.add_argument("--no-free", action="store_true", help="skip free generation")
    ap.add_argument("--draft", type=Path, help="a draft model: adds the `draft` contender")
    ap.add_argument("--ngram-max", type=int, default=speculative.NGRAM_MAX)
    ap.add_argument("--ngram-min", type=int, default=speculative.NGRAM_MIN)
    ap.add_argument(
        "--repeat-penalty",
        type=float,
        default=SamplingParams.repeat_penalty,
        help="the sampler's (default: the app's); 1.0 lets a reply repeat its input freely",
    )
    ap.add_argument("--k-start", type=int, default=speculative.K_START)
    ap.add_argument("--k-max", type=int, default=speculative.K_MAX)
    args = ap.parse_args()
    speculative.NGRAM_MAX = args.ngram_max
    speculative.NGRAM_MIN = args.ngram_min
    speculative.K_START = args.k_start
    speculative.K_MAX = args.k_max
    path = find_bundled_models()[0].path
    options = LoadOptions(ctx=2048, threads=args.threads)
    if args.draft is not None:
        options = LoadOptions(ctx=2048, threads=args.threads, draft_model=str(args.draft))
    engine = Engine.load(path, options)
    sampling = SamplingParams(
        temperature=0, max_tokens=args.max_tokens, repeat_penalty=args.repeat_penalty
    )
    copying = COPYING[: args.prompts] if args.prompts else list(COPYING)
    if args.only_long:
        copying = list(LONG)
    elif args.long:
        copying += LONG
    free = FREE[: args.prompts] if args.prompts else FREE
    print(
        f"{path.name}, {args.threads} threads, {args.reps} reps, max {args.max_tokens} tokens, "
        f"ngram <= {args.ngram_max}, K {args.k_start}..{args.k_max}"
        + (f", draft {args.draft.name}" if args.draft else "")
    )
    modes = ["off", "ngram", "auto"] + (["draft"] if args.draft else [])
    try:
        totals = contest(engine, copying, modes, args.reps, sampling)
        show(f"copying tasks ({len(copying)}, temperature 0):", totals, 1.3, "ngram")
        if not args.no_free:
            totals = contest(engine, free, ["off", "auto"], args.reps, sampling)
            show("free generation (temperature 0):", totals, 0.97, "auto")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
