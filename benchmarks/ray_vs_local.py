"""Batch on Ray vs a local batch: the same prompts, the same decoder, greedy.

Local: BatchRunner.load, then run() over every prompt (what `tui-infer batch` does).
Ray: RayRunner.start without an address (a fresh local Ray instance: ray.init and the
model source, reported apart as start-up), then run() through a Ray Data actor pool
(actors starting and loading the model, then decoding), then Ray shut down; once with
1 actor of `threads` threads and once with 2 actors of threads/2 each. Throughput is
prompts per second of wall time, model loading included on both sides; the ratio
includes Ray's start-up (budget: >= 0.85 of local for 200 prompts on one machine) and is
also given without it. The outputs of every Ray run must equal the local run's.

    .venv/bin/python benchmarks/ray_vs_local.py [--prompts 200] [--max-tokens 16]
        [--parallel 8] [--threads 2] [--json out.json]
"""

import _scratch  # noqa: F401  (a scratch data dir, first)

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_infer.core.inference.batched import BatchItem, BatchRunner
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.models.bundled import find_bundled_models
from tui_infer.core.static.ray_batch import RayRunner, sha256_of

SUBJECTS = ["a river", "the moon", "bread", "a violin", "winter", "a library", "copper", "tea"]
ASKS = ["Describe {} in one sentence.", "Name one fact about {}.", "Write a title about {}."]


def prompts(n: int) -> list[BatchItem]:
    out = []
    for i in range(n):
        ask = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
        out.append(BatchItem(f"p{i}", (Message("user", f"{ask} ({i})"),)))
    return out


def local(path: Path, items: list[BatchItem], opts: LoadOptions, parallel: int, s: SamplingParams):
    t0 = time.perf_counter()
    runner = BatchRunner.load(path, opts, parallel=parallel)
    load = time.perf_counter() - t0
    with runner:
        texts = {r.id: r.text for r in runner.run(items, s)}
    total = time.perf_counter() - t0
    return {"load_s": load, "total_s": total, "prompts_per_s": len(items) / total}, texts


def on_ray(
    path: Path,
    sha: str,
    items: list[BatchItem],
    opts: LoadOptions,
    parallel: int,
    actors: int,
    s: SamplingParams,
):
    t0 = time.perf_counter()
    runner = RayRunner.start(None, path, sha, opts, parallel, actors=actors)
    startup = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        texts = {r.id: r.text for r in runner.run(items, s)}
        run = time.perf_counter() - t1
    finally:
        runner.close()
    total = startup + run
    return {
        "actors": actors,
        "threads_per_actor": opts.threads,
        "startup_s": startup,
        "first_row_s": runner.stats.first_result_s,
        "run_s": run,
        "total_s": total,
        "prompts_per_s": len(items) / total,
        "prompts_per_s_without_startup": len(items) / run,
    }, texts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8, help="sequences per runner (per actor)")
    ap.add_argument("--threads", type=int, default=2, help="local threads; split over actors")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    path = find_bundled_models()[0].path
    sha = sha256_of(path)
    items = prompts(a.prompts)
    s = SamplingParams(temperature=0.0, max_tokens=a.max_tokens)
    print(f"model {path.name}, {a.prompts} prompts, max_tokens {a.max_tokens}, greedy")
    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()}")
    base, want = local(path, items, LoadOptions(ctx=a.ctx, threads=a.threads), a.parallel, s)
    print(
        f"local  : {a.threads} threads, parallel {a.parallel}: {base['total_s']:.1f} s "
        f"(load {base['load_s']:.1f} s), {base['prompts_per_s']:.2f} prompts/s"
    )
    results = {"local": base, "ray": [], "load_average_before": os.getloadavg()}
    ok = True
    for actors in (1, 2):
        threads = max(1, a.threads // actors)
        opts = LoadOptions(ctx=a.ctx, threads=threads)
        r, got = on_ray(path, sha, items, opts, a.parallel, actors, s)
        same = got == want
        ok = ok and same
        r["ratio"] = r["prompts_per_s"] / base["prompts_per_s"]
        r["ratio_without_startup"] = r["prompts_per_s_without_startup"] / base["prompts_per_s"]
        r["outputs_equal_local"] = same
        results["ray"].append(r)
        print(
            f"ray x{actors}: {threads} thread(s) each, parallel {a.parallel}: start-up "
            f"{r['startup_s']:.1f} s, first row {r['first_row_s']:.1f} s, run {r['run_s']:.1f} s"
            f"; {r['prompts_per_s']:.2f} prompts/s -> ratio {r['ratio']:.3f} "
            f"({r['ratio_without_startup']:.3f} without start-up); outputs equal: {same}"
        )
    results["load_average_after"] = os.getloadavg()
    print(f"load average after {os.getloadavg()}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
