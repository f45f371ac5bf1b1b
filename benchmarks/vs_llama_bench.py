"""The engine against llama.cpp's own benchmark tools, side by side in one run.

llama-bench and llama-batched-bench are built once (cached) from the llama-cpp-python sdist
the project pins, with the CMake flags of our wheel (scripts/build_llama_tools.sh, through
benchmarks/_llama_tools.py), so both sides run the same ggml kernels. Same model (the
bundled SmolLM2 unless --model), threads (-t and -tb), batch = ubatch (512), flash
attention on (ours: on, which llama.cpp's auto mode resolves to enabled on the CPU), KV
cache type (f16), one KV stream per sequence (--no-kv-unified: our default).

1. pp512 and tg128: `llama-bench -p 512 -n 128 -r R -o json` against `tui-infer bench -p 512
   -n 128 -r R --json` (a subprocess, the command a user types). They measure the same
   thing: pp = 512 random tokens decoded in n_batch chunks into an empty context, logits
   of the last token only, tokens/s = 512 / time; tg = 128 random tokens decoded one at a
   time from an empty context, no sampling; each test warmed up once, then R repetitions.
   (Our context is one of 640 cells for both tests, llama-bench's 512 and 128 per test:
   llama.cpp pads a context to 256 cells and attends over the cells used, padded to 256,
   so the computation is the same.) Budget: ours >= 0.97 of llama-bench on each.
2. Batched generation at 1, 2, 4, 8, 16, 32 sequences: `llama-batched-bench -npp 128
   -ntg 128 -npl 1,...,32` (its S_TG: pl x 128 tokens over the time of the 128 decodes
   that add one token to each sequence, after all prompts are in) against our BatchRunner
   (tui-infer batch's engine) with --parallel N and N prompts of exactly 128 tokens. Ours
   is timed the same way: from the first decode that holds one token of each of the N
   sequences and nothing else (all prompts in) to the 129th such decode, which is 128
   whole steps: pl x 128 / that time. Unlike llama-batched-bench, which decodes random
   tokens and never samples, ours draws each token (greedy with no penalty: the row's
   argmax, found in the pass over the row that takes the token's log-probability, store
   verify's confidence) and reads its text, as `tui-infer batch` does: that cost is
   counted. The prompts are counting sequences, so that greedy
   decoding never meets the end of text. Continuous batching starts a sequence's
   generation as soon as its prompt is in, so at 8 sequences and more (more prompt tokens
   than one 512-token batch) the first sequences are a few tokens deeper (at most
   N x 128 / 512 - 1) than llama-batched-bench's in the timed steps. Budget: >= 0.9.

Rounds alternate which side goes first, so the machine's drift hits both. Each side's
figure is the mean ± sample standard deviation over every repetition of every round
(llama-batched-bench measures each count once per run: one repetition per round); the
ratio is ours / llama.cpp's means, with the standard deviation of a single repetition's
ratio (from both deviations). A missed budget is "within noise" when the ratio plus
twice its standard error reaches it. "others" is how many cores other programs took
while a block ran (/proc/stat less this process and its children): figures taken beside
other work are noisy.

    .venv/bin/python benchmarks/vs_llama_bench.py [--rounds 3] [--reps 5] [--threads 2]
        [--npl 1 2 4 8 16 32] [--only pp-tg|batched] [--json FILE]

About 5 minutes on 2 quiet cores with the defaults (the first run builds the tools: about
10 minutes more, once).
"""

from __future__ import annotations

import _scratch  # noqa: F401  (first: a scratch data dir, never the user's)

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _llama_tools import cmake_flags, ensure_llama_tools  # noqa: E402

from tui_infer.core.models.bundled import find_bundled_models  # noqa: E402

PP_TG_BUDGET = 0.97
BATCHED_BUDGET = 0.9


# ----- other programs' load ---------------------------------------------------------------


def busy_seconds() -> float:
    """CPU seconds every process of the machine has used (all cores, from /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Others:
    """How many cores other programs took while the block ran (its children waited for)."""

    cores = 0.0

    def __enter__(self) -> Others:
        self.t0, self.b0, self.o0 = time.perf_counter(), busy_seconds(), own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        other = (busy_seconds() - self.b0) - (own_seconds() - self.o0)
        self.cores = max(0.0, other / wall)


# ----- figures ----------------------------------------------------------------------------


@dataclass
class Figures:
    """One test on one side: every repetition's tokens/s, and the others' load per block."""

    samples: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0


@dataclass
class Ratio:
    test: str
    ours: Figures
    theirs: Figures
    budget: float

    @property
    def value(self) -> float:
        return self.ours.mean / self.theirs.mean

    def _rel(self, per_mean: bool) -> float:
        def part(f: Figures) -> float:
            n = len(f.samples) if per_mean else 1
            return (f.sd / f.mean) ** 2 / n

        return self.value * math.sqrt(part(self.ours) + part(self.theirs))

    @property
    def sd(self) -> float:
        """Standard deviation of one repetition's ratio."""
        return self._rel(per_mean=False)

    @property
    def se(self) -> float:
        """Standard error of the ratio of the means."""
        return self._rel(per_mean=True)

    @property
    def verdict(self) -> str:
        if self.value >= self.budget:
            return "ok"
        if self.value + 2 * self.se >= self.budget:
            return "missed (within noise)"
        return "MISSED"

    def as_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "ours_tps": self.ours.samples,
            "llama_tps": self.theirs.samples,
            "ours_mean": self.ours.mean,
            "ours_sd": self.ours.sd,
            "llama_mean": self.theirs.mean,
            "llama_sd": self.theirs.sd,
            "ratio": self.value,
            "ratio_sd": self.sd,
            "ratio_se": self.se,
            "budget": self.budget,
            "verdict": self.verdict,
            "others_cores_ours": self.ours.others,
            "others_cores_llama": self.theirs.others,
        }


# ----- pp and tg ----------------------------------------------------------------------------


def run_llama_bench(bin_dir: Path, model: Path, a: argparse.Namespace) -> dict[str, list[float]]:
    cmd = [
        str(bin_dir / "llama-bench"), "-m", str(model), "-p", str(a.pp), "-n", str(a.tg),
        "-r", str(a.reps), "-t", str(a.threads), "-b", str(a.batch), "-ub", str(a.batch),
        "-fa", "on", "-ctk", a.kv_type, "-ctv", a.kv_type, "-o", "json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, list[float]] = {}
    for r in json.loads(proc.stdout):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        out[test] = [float(x) for x in r["samples_ts"]]
    return out


def run_our_bench(model: Path, a: argparse.Namespace) -> dict[str, list[float]]:
    cmd = [
        sys.executable, "-m", "tui_infer", "bench", "-m", str(model), "-p", str(a.pp),
        "-n", str(a.tg), "-r", str(a.reps), "-t", str(a.threads), "-b", str(a.batch),
        "--kv-type", a.kv_type, "--flash-attn", "1", "--no-ceiling", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"tui-infer bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {
        r["test"]: [float(x) for x in r["samples_tps"]] for r in json.loads(proc.stdout)["results"]
    }


def pp_tg(bin_dir: Path, model: Path, a: argparse.Namespace) -> list[Ratio]:
    tests = [f"pp{a.pp}", f"tg{a.tg}"]
    ours = {t: Figures() for t in tests}
    theirs = {t: Figures() for t in tests}
    for rnd in range(a.rounds):
        sides = [("llama-bench", theirs), ("tui-infer bench", ours)]
        for name, figs in sides if rnd % 2 == 0 else sides[::-1]:
            with Others() as o:
                got = (
                    run_llama_bench(bin_dir, model, a)
                    if name == "llama-bench"
                    else run_our_bench(model, a)
                )
            for t in tests:
                figs[t].samples += got[t]
                figs[t].others.append(o.cores)
            summary = "  ".join(f"{t} {statistics.fmean(got[t]):8.1f}" for t in tests)
            print(f"  round {rnd + 1} {name:<16}{summary}  others {o.cores:.2f}", flush=True)
    return [Ratio(t, ours[t], theirs[t], PP_TG_BUDGET) for t in tests]


# ----- batched generation -------------------------------------------------------------------


def run_batched_bench(bin_dir: Path, model: Path, a: argparse.Namespace) -> dict[int, float]:
    n_max = max(a.npl)
    cmd = [
        str(bin_dir / "llama-batched-bench"), "-m", str(model),
        "-c", str(n_max * (a.npp + a.ntg)), "-b", str(a.batch), "-ub", str(a.batch),
        "-npp", str(a.npp), "-ntg", str(a.ntg), "-npl", ",".join(map(str, a.npl)),
        "-t", str(a.threads), "-tb", str(a.threads), "-fa", "on",
        "-ctk", a.kv_type, "-ctv", a.kv_type, "-no-kvu", "--output-format", "jsonl",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llama-batched-bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[int, float] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[int(r["pl"])] = float(r["speed_tg"])
    missing = [n for n in a.npl if n not in out]
    if missing:
        raise SystemExit(f"llama-batched-bench gave no figure for -npl {missing}")
    return out


class DecodeTrace:
    """A stand-in for the llama_cpp module inside a BatchRunner: every name is the module's
    own (copied, so looking one up costs what it costs on the module), except llama_decode,
    which notes when each whole generation step starts: a decode of one token of each of
    the n sequences and nothing else. After `steps` + 1 of them it sets `cancel`."""

    def __init__(self, lib: Any, n: int, steps: int, cancel: threading.Event) -> None:
        self.ns = SimpleNamespace(
            **{k: getattr(lib, k) for k in dir(lib) if not k.startswith("__")}
        )
        self.ns.llama_decode = self._decode
        self._real = lib.llama_decode
        self.n, self.steps, self.cancel = n, steps, cancel
        self.starts: list[float] = []
        self.broken = ""

    def _decode(self, ctx: Any, batch: Any) -> int:
        t = time.perf_counter()
        starts = self.starts
        if len(starts) <= self.steps:
            k = batch.n_tokens
            if starts:
                if k != self.n:  # a sequence ended (the end of text) or took a new prompt
                    self.broken = f"a step of {k} tokens among the timed ones"
                starts.append(t)
            elif k == self.n and len({batch.seq_id[i][0] for i in range(k)}) == k:
                starts.append(t)
            if len(starts) == self.steps + 1:
                self.cancel.set()
        return int(self._real(ctx, batch))


def counting_prompt(runner: Any, n_tokens: int, start: int) -> str:
    """A raw prompt of exactly n_tokens tokens: numbers counted up from `start` (greedy
    decoding goes on counting and does not end)."""
    lib, vocab = runner._lib, runner._vocab
    text = ", ".join(str(k) for k in range(start, start + n_tokens))
    bos = 1 if lib.llama_vocab_get_add_bos(vocab) else 0
    toks = runner.tokenize(text)[: n_tokens - bos]
    buf = ctypes.create_string_buffer(64)
    cut = b"".join(runner._piece(t, buf) for t in toks).decode("utf-8")
    if len(runner.tokenize(cut)) + bos != n_tokens:
        raise SystemExit(f"could not make a prompt of exactly {n_tokens} tokens")
    return cut


def our_batched_once(model: Path, n: int, a: argparse.Namespace) -> float:
    """S_TG of our BatchRunner with n sequences (see the module's docstring)."""
    from tui_infer.core.inference.batched import BatchItem, BatchRunner
    from tui_infer.core.inference.types import LoadOptions, SamplingParams

    # room per sequence for its prompt, the tokens generated while other prompts go in, and
    # the timed steps (the KV cache attends over the cells used, not over its size)
    per_seq = 256 * math.ceil((a.npp + a.ntg + a.npp * n // a.batch + 8) / 256)
    opts = LoadOptions(
        ctx=n * per_seq, threads=a.threads, batch=a.batch, flash_attn=True, kv_type=a.kv_type
    )
    runner = BatchRunner.load(model, opts, parallel=n)
    try:
        sampling = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=per_seq)
        # warm-up (llama-batched-bench decodes 16 tokens first)
        warm = BatchItem("w", (), max_tokens=2, raw_prompt=counting_prompt(runner, 16, 1))
        list(runner.run([warm], sampling))
        items = [
            BatchItem(str(i), (), raw_prompt=counting_prompt(runner, a.npp, 100 + 37 * i))
            for i in range(n)
        ]
        cancel = threading.Event()
        trace = DecodeTrace(runner._lib, n, a.ntg, cancel)
        real_lib, runner._lib = runner._lib, trace.ns
        try:
            for r in runner.run(items, sampling, cancel=cancel):
                if r.finish_reason != "length" or not cancel.is_set():
                    trace.broken = trace.broken or f"item {r.id} ended early ({r.finish_reason})"
        finally:
            runner._lib = real_lib
    finally:
        runner.close()
    if trace.broken or len(trace.starts) != a.ntg + 1:
        raise SystemExit(f"batched x{n}: no clean {a.ntg} timed steps: {trace.broken or 'short'}")
    return n * a.ntg / (trace.starts[-1] - trace.starts[0])


def batched(bin_dir: Path, model: Path, a: argparse.Namespace) -> list[Ratio]:
    ours = {n: Figures() for n in a.npl}
    theirs = {n: Figures() for n in a.npl}
    for rnd in range(a.rounds):
        sides = ["llama-batched-bench", "BatchRunner"]
        for name in sides if rnd % 2 == 0 else sides[::-1]:
            if name == "BatchRunner":
                got: dict[int, float] = {}
                loads: dict[int, float] = {}
                for n in a.npl:
                    with Others() as o:
                        got[n] = our_batched_once(model, n, a)
                    loads[n] = o.cores
                figs = ours
            else:
                with Others() as o:
                    got = run_batched_bench(bin_dir, model, a)
                loads = dict.fromkeys(a.npl, o.cores)
                figs = theirs
            for n in a.npl:
                figs[n].samples.append(got[n])
                figs[n].others.append(loads[n])
            summary = " ".join(f"{n}:{got[n]:.0f}" for n in a.npl)
            print(
                f"  round {rnd + 1} {name:<20} S_TG {summary}  others {max(loads.values()):.2f}",
                flush=True,
            )
    return [Ratio(f"batched x{n}", ours[n], theirs[n], BATCHED_BUDGET) for n in a.npl]


# ----- the table ----------------------------------------------------------------------------


def print_table(ratios: list[Ratio]) -> None:
    print(
        f"\n{'test':<12}{'llama.cpp t/s':>20}{'tui-infer t/s':>20}{'ratio':>16}"
        f"{'budget':>9}  verdict  (others, cores)"
    )
    for r in ratios:
        others = max(r.ours.others + r.theirs.others, default=0.0)
        print(
            f"{r.test:<12}{r.theirs.mean:>11.1f} ± {r.theirs.sd:<6.1f}"
            f"{r.ours.mean:>11.1f} ± {r.ours.sd:<6.1f}"
            f"{r.value:>8.3f} ± {r.sd:.3f}{'>= ' + str(r.budget):>9}  {r.verdict}"
            f"  ({others:.2f})"
        )


def git_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a .gguf (default: the bundled one)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    ap.add_argument("--reps", type=int, default=5, help="pp/tg repetitions per round (-r)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512, help="n_batch = n_ubatch")
    ap.add_argument("--kv-type", default="f16")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--npl", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--npp", type=int, default=128, help="prompt tokens per sequence (batched)")
    ap.add_argument("--ntg", type=int, default=128, help="timed steps (batched)")
    ap.add_argument("--only", choices=["pp-tg", "batched"], default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    if a.rounds < 1 or a.reps < 1 or a.threads < 1 or min(a.npl) < 1:
        ap.error("--rounds, --reps, --threads and --npl must be at least 1")
    bin_dir = ensure_llama_tools()
    model = a.model or find_bundled_models()[0].path
    t0 = time.perf_counter()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"model: {model.name}  threads: {a.threads}  batch/ubatch: {a.batch}  kv: {a.kv_type}  "
        f"fa: on  rounds: {a.rounds}  reps: {a.reps}  commit: {git_commit()}  load: {load}\n"
        f"llama.cpp tools: {bin_dir}  flags: {cmake_flags()}",
        flush=True,
    )
    ratios: list[Ratio] = []
    if a.only in (None, "pp-tg"):
        print(f"\npp{a.pp} / tg{a.tg} (tokens/s, mean of {a.reps} repetitions)", flush=True)
        ratios += pp_tg(bin_dir, model, a)
    if a.only in (None, "batched"):
        print(f"\nbatched: {a.npp} prompt tokens, {a.ntg} steps (S_TG tokens/s)", flush=True)
        ratios += batched(bin_dir, model, a)
    print_table(ratios)
    wall = time.perf_counter() - t0
    print(f"\n{wall:.0f} s; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.json:
        doc = {
            "commit": git_commit(),
            "model": str(model),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "cmake_flags": cmake_flags(),
            "wall_s": wall,
            "tests": [r.as_dict() for r in ratios],
        }
        a.json.write_text(json.dumps(doc, indent=2))
    return 0 if all(r.verdict == "ok" for r in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
