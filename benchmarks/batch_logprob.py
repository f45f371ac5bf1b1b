"""What keeping each token's log-probability costs the batch runner.

BatchRunner folds each sampled token's log-probability (a log-softmax of its row of
logits, float32, over the logits within 20 of the maximum) into a running mean and minimum
per sequence, for `store verify`. This runs the same batch with it and without it (the
method replaced by one returning 0.0 on the same runner: the rest of the loop is
identical), alternating so that the machine's drift hits both, and reports:

- wall throughput with / without (generated tokens per second, median of the repetitions);
- CPU seconds per generated token with / without (the whole process, llama.cpp's threads
  included): steadier than wall time on a shared machine;
- the time inside the log-probability itself, per token and as a share of the run's wall time.

Budget: with >= 0.97 x without.

    .venv/bin/python benchmarks/batch_logprob.py [--parallel 8] [--reps 5] [--tokens 64]
"""

from __future__ import annotations

import _scratch  # noqa: F401

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_infer.core.inference.batched import BatchItem, BatchRunner
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.models.bundled import find_bundled_models

TOPICS = ["rivers", "bread", "the moon", "chess", "volcanoes", "trains", "bees", "glass"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--model", type=Path)
    a = ap.parse_args()
    model = a.model or find_bundled_models()[0].path
    items = [
        BatchItem(f"i{k}", (Message("user", f"Write a long essay about {TOPICS[k % 8]} ({k})."),))
        for k in range(a.parallel * 2)
    ]
    opts = LoadOptions(ctx=512 * a.parallel, threads=a.threads, gpu_layers=a.gpu_layers)
    sampling = SamplingParams(temperature=0.0, max_tokens=a.tokens)
    runner = BatchRunner.load(model, opts, parallel=a.parallel)
    real = runner._logprobs
    inside = [0.0, 0]

    def timed(slots: list, toks: list) -> list:
        t = time.perf_counter()
        v = real(slots, toks)
        inside[0] += time.perf_counter() - t
        inside[1] += len(slots)
        return v

    def without(slots: list, toks: list) -> list:
        return [0.0] * len(slots)

    def once(fn: object) -> tuple[float, float, float]:
        runner._logprobs = fn  # type: ignore[method-assign]
        inside[:] = [0.0, 0]
        c0, t0 = time.process_time(), time.perf_counter()
        n = sum(r.generated_tokens for r in runner.run(items, sampling))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return n / wall, cpu / n, inside[0] / wall

    once(timed)
    once(without)  # warm both
    w_tps, wo_tps, w_cpu, wo_cpu, share, per_tok = [], [], [], [], [], []
    for _ in range(a.reps):
        tps, cpu, _ = once(without)
        wo_tps.append(tps)
        wo_cpu.append(cpu)
        tps, cpu, sh = once(timed)
        w_tps.append(tps)
        w_cpu.append(cpu)
        share.append(sh)
        per_tok.append(inside[0] / max(1, inside[1]))
    runner.close()
    ratio = [w / wo for w, wo in zip(w_tps, wo_tps, strict=True)]
    med = statistics.median
    print(
        f"parallel {a.parallel}, {len(items)} prompts x {a.tokens} tokens, {a.reps} reps "
        f"({'GPU' if a.gpu_layers else 'CPU'}, {a.threads} threads)"
    )
    print(
        f"wall: with {med(w_tps):.1f} tok/s, without {med(wo_tps):.1f} tok/s, with/without "
        f"median {med(ratio):.4f} (each: {', '.join(f'{r:.3f}' for r in ratio)})"
    )
    print(
        f"CPU per token: with {med(w_cpu) * 1e3:.2f} ms, without {med(wo_cpu) * 1e3:.2f} ms "
        f"(without/with {med(wo_cpu) / med(w_cpu):.4f})"
    )
    print(
        f"the log-probability itself: {med(per_tok) * 1e6:.1f} us a token, "
        f"{med(share):.2%} of the run's wall time"
    )


if __name__ == "__main__":
    main()
