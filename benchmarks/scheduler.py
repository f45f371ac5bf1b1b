"""The scheduler against the engine it replaced, a bare loop, and itself at 2/4/8 requests.

1. One request alone (tg, greedy, the same prompt and token count for all), side by side
   in one process, repetitions alternating in a rotating order so that the machine's
   drift hits every contender alike:
   - "engine (old)": the one-sequence engine as it was before the scheduler (its source
     read from git, --old-rev), consumed on the llama.cpp thread as `run` does;
   - "sched inline": today's Engine (parallel 1, so its scheduler), consumed on the
     llama.cpp thread as `run` and the TUI do (the consumer drives the steps);
   - "sched thread": the same, consumed from the main thread (a background driver on
     the llama.cpp thread hands each chunk over a queue, as the server will);
   - "bare": llama_decode on llama_batch_get_one and a greedy sampler, nothing else.
2. Aggregate generation: N requests submitted at once (each from its own thread) to an
   Engine with parallel 8; generated tokens over the wall time from the first submit to
   the last token, prompts included; next to the old engine answering the same N
   requests one after another.

    .venv/bin/python benchmarks/scheduler.py [--reps 5] [--tg 128] [--agg-tokens 64]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_vs_bare import BareLoop
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.types import LoadOptions, SamplingParams
from tui_infer.core.models.bundled import find_bundled_models

STARTS = [
    "Once upon a time, in a land far away,",
    "The history of the city begins with",
    "In the morning the fishermen",
    "The recipe for good bread starts with",
    "When the train left the station,",
    "The old clockmaker opened his shop and",
    "Deep in the forest there was",
    "The first rule of chess is that",
]


def old_engine_module(rev: str) -> Any:
    """engine.py as it was at `rev` (the one-sequence engine), loaded as a module."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:tui_infer/core/inference/engine.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mod = types.ModuleType("old_engine")
    mod.__file__ = f"<{rev}:engine.py>"
    sys.modules["old_engine"] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def tg_inline(engine: Any, prompt: list[int], p: SamplingParams) -> tuple[float, int]:
    engine.reset()
    s = engine.complete_tokens(prompt, p)
    on_llama_thread(lambda: [None for _ in s])
    return s.stats.generation_tps, s.stats.generated_tokens


def tg_thread(engine: Any, prompt: list[int], p: SamplingParams) -> tuple[float, int]:
    engine.reset()
    s = engine.complete_tokens(prompt, p)
    for _ in s:
        pass
    return s.stats.generation_tps, s.stats.generated_tokens


def aggregate(engine: Engine, prompts: list[list[int]], p: SamplingParams) -> float:
    """N requests at once, each submitted and read from its own thread."""
    engine.reset()
    n_gen = [0] * len(prompts)
    gate = threading.Barrier(len(prompts) + 1)

    def one(i: int) -> None:
        gate.wait()
        s = engine.complete_tokens(prompts[i], p)
        for _ in s:
            pass
        n_gen[i] = s.stats.generated_tokens if s.stats else 0

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(n_gen) / (time.perf_counter() - t0)


def sequential(engine: Any, prompts: list[list[int]], p: SamplingParams) -> float:
    t0 = time.perf_counter()
    n = 0
    for prompt in prompts:
        engine.reset()
        s = engine.complete_tokens(prompt, p)
        on_llama_thread(lambda s=s: [None for _ in s])
        n += s.stats.generated_tokens
    return n / (time.perf_counter() - t0)


def fmt(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):7.1f} ± {sd:<5.1f} (median {statistics.median(xs):5.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--agg-tokens", type=int, default=64)
    ap.add_argument("--agg-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old-rev", default="c930865", help="git revision of the old engine")
    a = ap.parse_args()
    path = a.model or find_bundled_models()[0].path
    opts = LoadOptions(ctx=2048, threads=a.threads, batch=512, flash_attn=True, kv_type="f16")
    old = old_engine_module(a.old_rev).Engine.load(path, opts)
    new = Engine.load(path, opts)
    bare = on_llama_thread(lambda: BareLoop(path, opts))
    prompt = new.tokenize(STARTS[0])
    greedy = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=a.tg)

    def bare_tg(n: int) -> float:
        secs, k = on_llama_thread(lambda: bare.generate(prompt, n))
        return (k - 1) / secs

    contenders = {
        "engine (old)": lambda: tg_inline(old, prompt, greedy),
        "sched inline": lambda: tg_inline(new, prompt, greedy),
        "sched thread": lambda: tg_thread(new, prompt, greedy),
    }
    res: dict[str, list[float]] = {k: [] for k in [*contenders, "bare"]}
    for f in contenders.values():  # warm-up
        f()
    names = list(res)
    n_gen = a.tg
    for rep in range(a.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for who in order:
            if who == "bare":
                res[who].append(bare_tg(n_gen))
            else:
                tps, n_gen = contenders[who]()
                res[who].append(tps)
        print(f"rep {rep}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()), flush=True)

    print(f"model: {path.name}  threads: {a.threads}  reps: {a.reps}  tg{n_gen} (greedy)")
    base = statistics.mean(res["engine (old)"])
    bare_mean = statistics.mean(res["bare"])
    print(f"{'one request':<16}{'tok/s':>34}{'/ old':>8}{'/ bare':>8}")
    for who, xs in res.items():
        m = statistics.mean(xs)
        print(f"{who:<16}{fmt(xs):>34}{m / base:>8.3f}{m / bare_mean:>8.3f}", flush=True)

    if a.agg_reps <= 0:
        new.close()
        old.close()
        return 0
    # Aggregate: N requests at once through one context of 8 sequences.
    par = Engine.load(path, LoadOptions(ctx=512, threads=a.threads, batch=512, parallel=8))
    p = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=a.agg_tokens)
    prompts = [par.tokenize(s) for s in STARTS]
    agg: dict[int, list[float]] = {n: [] for n in (1, 2, 4, 8)}
    seq: dict[int, list[float]] = {n: [] for n in (1, 2, 4, 8)}
    aggregate(par, prompts[:2], p)  # warm-up
    for rep in range(a.agg_reps):
        for n in agg:
            agg[n].append(aggregate(par, prompts[:n], p))
            seq[n].append(sequential(old, prompts[:n], p))
            print(
                f"agg rep {rep} n={n}: scheduler {agg[n][-1]:.1f}  old in turn {seq[n][-1]:.1f}",
                flush=True,
            )
    print(f"\n{'requests':<10}{'scheduler p=8 tok/s':>34}{'old engine, in turn':>34}{'ratio':>8}")
    for n in agg:
        r = statistics.mean(agg[n]) / statistics.mean(seq[n])
        print(f"{n:<10}{fmt(agg[n]):>34}{fmt(seq[n]):>34}{r:>8.2f}")
    print(
        f"(aggregate: generated tokens / wall time from submit to the last token, "
        f"{a.agg_tokens} tokens each, prompts included; {a.agg_reps} reps)"
    )
    par.close()
    new.close()
    old.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
