"""The bench: llama-bench's method, configurations that can be compared, a ceiling.

Definitions (as llama-bench's):
- pp N: a prompt of N tokens evaluated in n_batch chunks into an empty context (after
  `depth` tokens when given); tokens/s = N / time.
- tg N: N tokens decoded one at a time (each its own llama_decode) from an empty context
  (or after `depth` tokens); no sampling: the input tokens are drawn at random, as
  llama-bench does, so that the sampler's cost is not in the figure.
Each test runs once to warm up, then `repetitions` times; we report the mean and the
sample standard deviation of tokens/s over the repetitions.
"""

from __future__ import annotations

import math
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tui_infer import __version__
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.types import LoadOptions
from tui_infer.core.models.digest import DigestCache, sha256_file


@dataclass(frozen=True)
class BenchConfig:
    threads: int
    gpu_layers: int
    ctx: int
    batch: int
    kv_type: str
    flash_attn: bool

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            ctx=self.ctx,
            threads=self.threads,
            gpu_layers=self.gpu_layers,
            batch=self.batch,
            flash_attn=self.flash_attn,
            kv_type=self.kv_type,
        )


@dataclass(frozen=True)
class BenchResult:
    test: str  # "pp512", "tg128", "tg128@d512"
    kind: str  # "pp" or "tg"
    n_tokens: int
    depth: int
    config: BenchConfig
    samples_tps: tuple[float, ...]
    ceiling_tps: float | None = None  # memory-bandwidth bound, tg only

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_tps)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples_tps) if len(self.samples_tps) > 1 else 0.0

    @property
    def ceiling_fraction(self) -> float | None:
        return self.mean / self.ceiling_tps if self.ceiling_tps else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_tps"] = list(self.samples_tps)
        d.update(mean_tps=self.mean, stdev_tps=self.stdev, ceiling_fraction=self.ceiling_fraction)
        return d


@dataclass(frozen=True)
class Comparison:
    test: str
    a_mean: float
    b_mean: float
    ratio: float  # b / a
    noise: float  # the difference that the deviations could explain
    significant: bool


def compare_results(a: BenchResult, b: BenchResult) -> Comparison:
    """b against a. A difference counts only beyond twice its standard error
    (Welch: sqrt(sa²/na + sb²/nb)), about the 95 % level; one sample gives no
    error estimate, so nothing from it is called significant."""
    na, nb = len(a.samples_tps), len(b.samples_tps)
    noise = math.inf if na < 2 or nb < 2 else 2 * math.sqrt(a.stdev**2 / na + b.stdev**2 / nb)
    diff = b.mean - a.mean
    return Comparison(
        test=a.test,
        a_mean=a.mean,
        b_mean=b.mean,
        ratio=b.mean / a.mean if a.mean else math.inf,
        noise=noise,
        significant=abs(diff) > noise,
    )


def expand_sweep(
    threads: Iterable[int],
    gpu_layers: Iterable[int],
    ctx: Iterable[int],
    batch: int,
    kv_types: Iterable[str],
    flash_attn: Iterable[bool],
) -> list[BenchConfig]:
    """Every combination, in the order given (like llama-bench's comma lists)."""
    return [
        BenchConfig(t, g, c, batch, kv, fa)
        for t in threads
        for g in gpu_layers
        for c in ctx
        for kv in kv_types
        for fa in flash_attn
    ]


def memory_bandwidth(threads: int = 1, size_bytes: int = 512 << 20, repeats: int = 3) -> float:
    """Bytes/s of a streaming read over a buffer larger than the caches.

    Each of `threads` threads sums its own slice (numpy releases the GIL in the
    reduction); the best of `repeats` passes is taken, as STREAM does.
    """
    import numpy as np

    buf = np.ones(size_bytes // 8, dtype=np.float64)
    parts = np.array_split(buf, max(1, threads))
    best = 0.0
    for _ in range(repeats):
        barrier = threading.Barrier(len(parts) + 1)

        def read(part: Any, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            part.sum()

        workers = [threading.Thread(target=read, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        best = max(best, buf.nbytes / elapsed)
    return best


def weight_bytes(engine: Engine) -> int:
    """Bytes of the tensors read per generated token: about the weights' size."""
    from tui_infer.core.models.gguf import read_header

    h = read_header(engine.info.path)
    return sum(t.n_bytes or 0 for t in h.tensors)


def _random_tokens(n: int, n_vocab: int, rng: random.Random) -> list[int]:
    return [rng.randrange(n_vocab) for _ in range(n)]


def run_pp(engine: Engine, n: int, depth: int, rng: random.Random) -> float:
    engine.reset()
    if depth:
        engine.decode_raw(_random_tokens(depth, engine.n_vocab, rng))
    tokens = _random_tokens(n, engine.n_vocab, rng)
    t0 = time.perf_counter()
    engine.decode_raw(tokens)
    return n / (time.perf_counter() - t0)


def run_tg(engine: Engine, n: int, depth: int, rng: random.Random) -> float:
    engine.reset()
    if depth:
        engine.decode_raw(_random_tokens(depth, engine.n_vocab, rng))
    tokens = _random_tokens(n, engine.n_vocab, rng)

    def decode_one_by_one() -> float:
        t0 = time.perf_counter()
        for tok in tokens:
            engine.decode_raw([tok])
        return n / (time.perf_counter() - t0)

    # The whole loop on the llama.cpp thread: no hand-off between tokens is timed.
    return on_llama_thread(decode_one_by_one)


def run_batched(runner: Any, parallel: int, n_gen: int, n_prompt: int) -> float:
    """Aggregate generation tokens/s with `parallel` sequences decoded together.

    2 x parallel chat prompts of about n_prompt tokens each, greedy, up to n_gen new
    tokens each, through the continuous-batching runner; generated tokens over the
    wall time of the whole run (prompt evaluation included, as a batch job sees it).
    """
    from tui_infer.core.inference.batched import BatchItem
    from tui_infer.core.inference.types import Message, SamplingParams

    words = [
        "tell",
        "me",
        "a",
        "long",
        "story",
        "about",
        "a",
        "river",
        "a",
        "city",
        "and",
        "a",
        "dragon",
        "who",
        "learns",
        "to",
        "cook",
    ]
    items = []
    for i in range(2 * parallel):
        text = " ".join(words[(i + k) % len(words)] for k in range(max(1, n_prompt - 12)))
        items.append(BatchItem(str(i), (Message("user", f"{i}: {text}"),), n_gen))
    sampling = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=n_gen)
    t0 = time.perf_counter()
    generated = sum(r.generated_tokens for r in runner.run(items, sampling))
    return generated / (time.perf_counter() - t0)


@dataclass
class BenchPlan:
    model: Path
    configs: list[BenchConfig]
    pp: list[int] = field(default_factory=lambda: [512])
    tg: list[int] = field(default_factory=lambda: [128])
    depth: list[int] = field(default_factory=lambda: [0])
    repetitions: int = 5
    measure_ceiling: bool = True
    parallel: list[int] = field(default_factory=list)  # batched throughput tests


def run_plan(
    plan: BenchPlan,
    on_result: Callable[[BenchResult], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[BenchResult]:
    """Load the model once per configuration, run every test; results as they come."""
    rng = random.Random(1234)
    results: list[BenchResult] = []
    bandwidth: dict[int, float] = {}
    for cfg in plan.configs:
        engine = Engine.load(plan.model, cfg.load_options())
        try:
            ceiling = None
            if plan.measure_ceiling and plan.tg and engine.backend.name == "CPU":
                if cfg.threads not in bandwidth:
                    bandwidth[cfg.threads] = memory_bandwidth(cfg.threads)
                ceiling = bandwidth[cfg.threads] / max(1, weight_bytes(engine))
            tests: list[tuple[str, int, int]] = []
            for d in plan.depth:
                tests += [("pp", n, d) for n in plan.pp]
                tests += [("tg", n, d) for n in plan.tg]
            for kind, n, d in tests:
                if n <= 0:
                    continue
                if n + d > engine.n_ctx:
                    raise ValueError(
                        f"{kind}{n} at depth {d} needs {n + d} tokens of context; "
                        f"raise --ctx (now {engine.n_ctx})"
                    )
                fn = run_pp if kind == "pp" else run_tg
                fn(engine, n, d, rng)  # warm-up
                samples = []
                for _ in range(plan.repetitions):
                    if cancel is not None and cancel.is_set():
                        return results
                    samples.append(fn(engine, n, d, rng))
                name = f"{kind}{n}" + (f"@d{d}" if d else "")
                result = BenchResult(
                    name, kind, n, d, cfg, tuple(samples), ceiling if kind == "tg" else None
                )
                results.append(result)
                if on_result:
                    on_result(result)
        finally:
            engine.close()
        for par in plan.parallel:
            if cancel is not None and cancel.is_set():
                return results
            results.append(_batched_result(plan, cfg, par))
            if on_result:
                on_result(results[-1])
    return results


def _batched_result(plan: BenchPlan, cfg: BenchConfig, parallel: int) -> BenchResult:
    from tui_infer.core.inference.batched import BatchRunner

    n_gen = plan.tg[0] if plan.tg else 64
    n_prompt = 32
    opts = cfg.load_options()
    # each sequence needs room for its prompt and its reply
    need = parallel * (n_prompt + n_gen + 64)
    if opts.ctx < need:
        opts = LoadOptions(
            need, opts.threads, opts.gpu_layers, opts.batch, opts.flash_attn, opts.kv_type
        )
    runner = BatchRunner.load(plan.model, opts, parallel=parallel)
    try:
        run_batched(runner, parallel, n_gen, n_prompt)  # warm-up
        samples = tuple(
            run_batched(runner, parallel, n_gen, n_prompt) for _ in range(plan.repetitions)
        )
    finally:
        runner.close()
    return BenchResult(f"batch{parallel}x{n_gen}", "batch", n_gen, 0, cfg, samples)


def file_sha256(path: Path, data_dir: Path | None = None) -> str:
    """The model's sha256, for the run's record. With `data_dir`, from the one cache
    (core/models/digest.py): a bench after the first does not read the model again."""
    if data_dir is None:
        return sha256_file(path)
    with DigestCache.in_data_dir(data_dir) as digests:
        return digests.sha256(path)


def environment(engine_summary: str, device: str) -> dict[str, Any]:
    """What a result must carry to be compared later."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "tui_infer": __version__,
        "llama_cpp_python": md.version("llama-cpp-python"),
        "backend": engine_summary,
        "device": device,
        "cpu": cpu,
        "python": platform.python_version(),
    }
