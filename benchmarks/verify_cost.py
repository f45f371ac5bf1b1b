"""What verifying a draft costs: one llama_decode of n tokens (logits at every position, as a
draft's check asks) against a decode of one token, at a given depth in the cache.

Speculative decoding pays only if a step that checks k drafted tokens (a batch of k + 1)
emits more tokens than that batch costs in lone decodes. This prints, for each n, the time
of the batch, its cost in lone decodes c(n) / c(1), and the best case: every draft
accepted, (k + 1) / (c(k + 1) / c(1)). When decoding is memory-bound (a model much larger
than the caches, a fast core) c(n) stays near c(1) and drafts are cheap; when it is
compute-bound (a small model on a few cores) c(n) grows with n and even an accepted draft
gains little.

    .venv/bin/python benchmarks/verify_cost.py [--model FILE] [--depth 200] [--threads 2]
        [--reps 40]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.models.bundled import find_bundled_models

SIZES = (1, 2, 3, 5, 9, 17)
_QUIET = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--depth", type=int, default=200, help="tokens in the cache first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=40)
    a = ap.parse_args()
    path = a.model or find_bundled_models()[0].path
    print(on_llama_thread(lambda: measure(path, a.depth, a.threads, a.reps)))


def measure(path: Path, depth: int, threads: int, reps: int) -> str:
    import llama_cpp as L

    global _QUIET
    _QUIET = L.llama_log_callback(lambda *_: None)  # kept alive: llama.cpp calls it later
    L.llama_log_set(_QUIET, None)
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = depth + 256
    cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = 1  # on, as the engine runs
    ctx = L.llama_init_from_model(model, cp)
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(512, 0, 1)

    def decode(start: int, n: int, every: bool) -> None:
        batch.n_tokens = n
        for j in range(n):
            batch.token[j] = 100 + (start + j) % 1000
            batch.pos[j] = start + j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = 1 if (every or j == n - 1) else 0
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    lines = [f"{path.name}, {threads} threads, depth {depth}, median of {reps}"]
    try:
        L.llama_memory_clear(mem, True)
        decode(0, depth, False)
        medians: dict[int, float] = {}
        for n in SIZES:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                decode(depth, n, True)
                times.append(time.perf_counter() - t0)
                L.llama_memory_seq_rm(mem, 0, depth, -1)
            times.sort()
            medians[n] = times[len(times) // 2]
        one = medians[1]
        lines.append(f"{'n':>3} {'ms':>8} {'lone decodes':>13} {'best case (all accepted)':>25}")
        for n, t in medians.items():
            best = "" if n == 1 else f"x{n / (t / one):.2f}"
            lines.append(f"{n:>3} {t * 1e3:>8.2f} {t / one:>13.2f} {best:>25}")
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
