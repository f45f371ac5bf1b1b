"""Speculative decoding in `tui-infer batch` (BatchRunner, batched.py): off, ngram and auto
side by side at each --parallel, in one process.

Each contender answers the whole set of prompts in one BatchRunner.run (the runner and
the loop `tui-infer batch` uses, without the prediction store around it), at temperature
0, on copying tasks (the answer repeats the input: benchmarks/speculative.py's COPYING) and
on free generation (its FREE). The contenders alternate in a rotating order on every
repetition, so that the machine's drift hits each alike; every output is checked to be the
same text as off's (greedy decoding is byte-identical with drafts). Figures: generated
tokens over the wall time of the run (prompts included, the same work for every
contender), and the ratio to off's; and the same over the process's CPU time (`cpu`), which
a busy machine disturbs far less than the wall time: with --threads 1 (no OpenMP team
spinning at its barriers) it is the decoding's own work. What it decides: AUTO_MAX_WIDTH in
batched.py (auto must never make a batch slower; ngram shows what drafting gives at each
width).

    .venv/bin/python benchmarks/batch_speculative.py [--parallel 1,4] [--reps 2]
        [--max-tokens 128] [--threads 2] [--no-free] [--prompts N]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speculative import COPYING, FREE  # noqa: E402

from tui_infer.core.inference.batched import (  # noqa: E402
    AUTO_MAX_WIDTH,
    BatchItem,
    BatchProgress,
    BatchRunner,
)
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams  # noqa: E402
from tui_infer.core.models.bundled import find_bundled_models  # noqa: E402

MODES = ["off", "ngram", "auto"]


def one_run(
    runner: BatchRunner, items: list[BatchItem], sampling: SamplingParams, mode: str
) -> tuple[dict[str, str], float, int, BatchProgress]:
    progress = BatchProgress()
    c0 = time.process_time()
    t0 = time.perf_counter()
    texts = {r.id: r.text for r in runner.run(items, sampling, 0, None, None, progress, mode)}
    progress.cpu_s = time.process_time() - c0  # type: ignore[attr-defined]
    return texts, time.perf_counter() - t0, progress.generated_tokens, progress


def contest(
    runner: BatchRunner, prompts: list[str], reps: int, sampling: SamplingParams
) -> dict[str, list[float]]:
    """Per mode, summed: seconds, tokens, drafted, accepted, CPU seconds."""
    items = [BatchItem(f"p{i}", (Message("user", p),)) for i, p in enumerate(prompts)]
    totals = {m: [0.0, 0.0, 0.0, 0.0, 0.0] for m in MODES}
    for rep in range(reps):
        k = rep % len(MODES)
        texts = {}
        for mode in MODES[k:] + MODES[:k]:
            got, dt, n, progress = one_run(runner, items, sampling, mode)
            texts[mode] = got
            t = totals[mode]
            t[0] += dt
            t[1] += n
            t[2] += progress.drafted
            t[3] += progress.accepted
            t[4] += progress.cpu_s  # type: ignore[attr-defined]
        for mode in MODES[1:]:
            if texts[mode] != texts["off"]:
                bad = [i for i in texts["off"] if texts["off"][i] != texts[mode].get(i)]
                print(f"  MISMATCH {mode} vs off on {bad}", file=sys.stderr)
    return totals


def show(title: str, totals: dict[str, list[float]]) -> None:
    base_s, base_c = totals["off"][0], totals["off"][4]
    print(title)
    for mode, (s, n, drafted, accepted, c) in totals.items():
        ratio = f"  x{base_s / s:.3f} wall, x{base_c / c:.3f} cpu vs off" if mode != "off" else ""
        acc = f"  {accepted:.0f}/{drafted:.0f} accepted" if drafted else ""
        print(
            f"  {mode:6s} {n:6.0f} tok  {s:7.2f} s  {n / s if s else 0:6.1f} tok/s wall"
            f"  {n / c if c else 0:6.1f} tok/cpu-s{ratio}{acc}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", default="1,4", help="comma-separated widths")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=0, help="only the first N of each set")
    ap.add_argument("--no-free", action="store_true", help="skip free generation")
    ap.add_argument("--no-copying", action="store_true", help="skip the copying tasks")
    args = ap.parse_args()
    path = find_bundled_models()[0].path
    sampling = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    copying = COPYING[: args.prompts] if args.prompts else COPYING
    free = FREE[: args.prompts] if args.prompts else FREE
    print(
        f"{path.name}, {args.threads} threads, {args.reps} reps, max {args.max_tokens} tokens, "
        f"auto drafts at <= {AUTO_MAX_WIDTH} sequences"
    )
    for parallel in (int(p) for p in args.parallel.split(",")):
        options = LoadOptions(ctx=2048 * parallel, threads=args.threads)
        with BatchRunner.load(path, options, parallel=parallel) as runner:
            if not args.no_copying:
                totals = contest(runner, copying, args.reps, sampling)
                show(f"--parallel {parallel}, copying tasks ({len(copying)}):", totals)
            if not args.no_free:
                totals = contest(runner, free, args.reps, sampling)
                show(f"--parallel {parallel}, free generation ({len(free)}):", totals)


if __name__ == "__main__":
    main()
