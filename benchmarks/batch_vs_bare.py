"""Batch runner vs a bare batched llama.cpp loop vs the one-sequence engine; store speed.

1. Aggregate generation tokens/s at each parallelism: tui-infer's BatchRunner
   (continuous batching, shared prefix, per-sequence samplers, detokenising)
   against the least a Python program can do over the low-level bindings: one
   llama_batch holding every sequence, llama_decode, a greedy sampler per
   sequence, no detokenising. Same model, threads, context, n_seq_max, prompts
   and token counts (the bare loop generates exactly as many tokens per prompt
   as the runner did, in fixed groups of `parallel`). Throughput is end to end:
   generated tokens over wall time, prompt evaluation included.
   Budget: runner >= 0.9 of bare at every parallelism.
2. The same prompts through the one-sequence Engine, one after another.
   Budget: runner at 8 >= 1.5 x engine on this 2-core CPU.
3. Store lookups per second (budget >= 20,000/s) and the wall time of
   `tui-infer batch` rerun over a fully cached 1,000-prompt input (budget < 2 s).

Repetitions alternate runner / bare so that the machine's drift hits both.

    .venv/bin/python benchmarks/batch_vs_bare.py [--parallel 1 8] [--reps 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_infer.core.inference.llama_thread import on_llama_thread  # noqa: E402
from tui_infer.core.inference.batched import BatchItem, BatchRunner  # noqa: E402
from tui_infer.core.inference.engine import Engine  # noqa: E402
from tui_infer.core.inference.types import KV_TYPE_IDS, LoadOptions, SamplingParams  # noqa: E402
from tui_infer.core.models.bundled import find_bundled_models  # noqa: E402
from tui_infer.core.inference.types import Message  # noqa: E402

TOPICS = [
    "rivers",
    "bread",
    "the moon",
    "chess",
    "volcanoes",
    "trains",
    "bees",
    "glass",
    "music",
    "winter",
    "maps",
    "copper",
    "owls",
    "tea",
    "bridges",
    "clocks",
]


class BareBatch:
    """The bare loop: prompts prefilled together, then one token per sequence per decode."""

    def __init__(self, path: Path, opts: LoadOptions, parallel: int) -> None:
        import llama_cpp as L

        self.L = L
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_ctx = opts.ctx
        cp.n_batch = cp.n_ubatch = opts.batch
        cp.n_seq_max = parallel
        cp.n_threads = cp.n_threads_batch = opts.threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.type_k = cp.type_v = KV_TYPE_IDS[opts.kv_type]
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.parallel = parallel
        self.batch = L.llama_batch_init(max(opts.batch, parallel), 0, 1)
        self.n_batch = opts.batch

    def _add(self, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def run(self, prompts: list[list[int]], n_gen: list[int]) -> tuple[int, float]:
        """Groups of `parallel` prompts; returns (generated tokens, generation seconds)."""
        L = self.L
        total, gen_s = 0, 0.0
        for g in range(0, len(prompts), self.parallel):
            group = list(range(g, min(g + self.parallel, len(prompts))))
            L.llama_memory_clear(self.mem, True)
            samplers = []
            for _ in group:
                ch = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
                L.llama_sampler_chain_add(ch, L.llama_sampler_init_greedy())
                samplers.append(ch)
            n, idx = 0, {}
            for s, k in enumerate(group):
                for j, tok in enumerate(prompts[k]):
                    self._add(n, tok, j, s, j == len(prompts[k]) - 1)
                    n += 1
                idx[s] = n - 1
            self.batch.n_tokens = n
            L.llama_decode(self.ctx, self.batch)
            t0 = time.perf_counter()
            pos = {s: len(prompts[k]) for s, k in enumerate(group)}
            left = {s: n_gen[k] for s, k in enumerate(group)}
            while any(v > 0 for v in left.values()):
                n, nidx = 0, {}
                for s in idx:
                    tok = L.llama_sampler_sample(samplers[s], self.ctx, idx[s])
                    left[s] -= 1
                    total += 1
                    if left[s] > 0:
                        self._add(n, tok, pos[s], s, True)
                        nidx[s] = n
                        pos[s] += 1
                        n += 1
                idx = nidx
                if n:
                    self.batch.n_tokens = n
                    L.llama_decode(self.ctx, self.batch)
            gen_s += time.perf_counter() - t0
            for ch in samplers:
                L.llama_sampler_free(ch)
        return total, gen_s

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def store_benchmarks(n_lookups: int, n_prompts: int) -> tuple[float, float]:
    from tui_infer.core.static.store import PredictionStore

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TUI_INFER_DATA_DIR": tmp, "TUI_INFER_CONFIG": f"{tmp}/c.toml"}
        src = Path(tmp) / "in.txt"
        src.write_text("".join(f"Say the number {i}.\n" for i in range(n_prompts)))
        cmd = [
            sys.executable,
            "-m",
            "tui_infer",
            "batch",
            str(src),
            "-o",
            f"{tmp}/o.jsonl",
            "--max-tokens",
            "1",
            "--parallel",
            "8",
            "--ctx",
            "2048",
            "--publish",
        ]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        rerun_s = time.perf_counter() - t0
        with PredictionStore(Path(tmp) / "store.sqlite3") as store:
            run_id = store.runs()[-1].id
            keys = [p.key for p in store.predictions(run_id)]
            t0 = time.perf_counter()
            hits = 0
            for i in range(n_lookups):
                hits += store.lookup(keys[i % len(keys)], "m") is not None
            lookups = n_lookups / (time.perf_counter() - t0)
            assert hits == n_lookups
    return lookups, rerun_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per prompt")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-store", action="store_true")
    a = ap.parse_args()
    path = find_bundled_models()[0].path
    sampling = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=a.tokens)
    items = [
        BatchItem(str(i), (Message("user", f"Write a short paragraph about {TOPICS[i % 16]}."),))
        for i in range(a.prompts)
    ]
    print(
        f"model: {path.name}  threads: {a.threads}  prompts: {a.prompts}  "
        f"max tokens: {a.tokens}  reps: {a.reps}"
    )

    # One-sequence engine over the same prompts.
    engine = Engine.load(path, LoadOptions(ctx=2048, threads=a.threads))
    eng_tps = []
    for _ in range(a.reps):
        n, secs = 0, 0.0
        for it in items:
            engine.reset()
            s = engine.chat(list(it.messages), sampling)
            s.text()
            assert s.stats is not None
            n += s.stats.generated_tokens
            secs += s.stats.total_s
        eng_tps.append(n / secs)
    engine.close()
    eng = statistics.mean(eng_tps)
    print(f"engine (1 sequence at a time): {eng:.1f} ± {statistics.pstdev(eng_tps):.1f} tok/s")

    print(f"{'parallel':>8}{'runner tok/s':>18}{'bare tok/s':>18}{'ratio':>8}{'x engine':>10}")
    for par in a.parallel:
        opts = LoadOptions(ctx=512 * par, threads=a.threads)
        runner = BatchRunner.load(path, opts, parallel=par)
        bare = on_llama_thread(lambda o=opts, p=par: BareBatch(path, o, p))  # see engine_vs_bare
        prompts = [runner.tokenize(runner.render(it.messages)) for it in items]
        r_tps, b_tps = [], []
        n_gen: list[int] = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            res = {r.id: r for r in runner.run(items, sampling)}
            wall = time.perf_counter() - t0
            n_gen = [
                res[it.id].generated_tokens + (res[it.id].finish_reason == "stop") for it in items
            ]
            total = sum(r.generated_tokens for r in res.values())
            t_b0 = time.perf_counter()
            n_b, _ = on_llama_thread(lambda b=bare, p=prompts, g=n_gen: b.run(p, g))
            bare_wall = time.perf_counter() - t_b0
            r_tps.append(total / wall)
            b_tps.append(n_b / bare_wall)
        r, b = statistics.mean(r_tps), statistics.mean(b_tps)
        sr, sb = statistics.pstdev(r_tps), statistics.pstdev(b_tps)
        print(
            f"{par:>8}{r:>11.1f} ± {sr:<5.1f}{b:>11.1f} ± {sb:<5.1f}{r / b:>8.3f}{r / eng:>10.2f}"
        )
        runner.close()
        bare.close()

    if not a.skip_store:
        lookups, rerun = store_benchmarks(50_000, 1000)
        print(f"store lookups: {lookups:,.0f}/s (budget >= 20,000)")
        print(f"fully cached 1,000-prompt batch rerun: {rerun:.2f} s (budget < 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
