"""`tui-infer serve` against llama.cpp's llama-server, side by side in one run.

Both run as real processes on free loopback ports: `python -m tui_infer serve` and the
llama-server that scripts/build_llama_tools.sh builds from the llama-cpp-python sdist the
project pins, with the CMake flags of our wheel (scripts/llama_cmake_args.py). Same model
(the bundled SmolLM2), threads, context per sequence, slots (llama-server
`-np N -c N*CTX --cont-batching -b 512 -ub 512 -fa on`; tui-infer `--parallel N --ctx CTX`,
whose batch is 512 with flash attention), greedy (temperature 0, no repeat penalty on
either), the same chat prompts (each request a new one, "Story N: ...", the same sequence
on both) and max_tokens. Neither is told to ignore the end of text
(tui-infer cannot), so both totals of generated tokens are printed: the ratios are fair
only when they match.

1. Throughput and TTFT: C concurrent streaming clients (asyncio, httpx2, SSE), for C in
   1, 4, 8, 16; each takes the next prompt from a shared list until max(8, 2C) requests
   are done. Aggregate generated tokens/s = completion tokens summed over the wall time
   from the first request to the last [DONE]; TTFT = from sending a request to its first
   non-empty content chunk (p50/p95 over every request of the level).
   Budgets: tui-infer >= 0.95 of llama-server's tokens/s at 1 client, >= 0.9 at 4 to 16.
2. A store hit over HTTP: a prediction published by `tui-infer batch --publish` into the
   scratch data dir, asked for again and again, non-streaming, over one keep-alive
   connection (p50/p95). Budget: p50 < 3 ms. For reference, llama-server answering the same
   request: its prompt cache holds the whole prompt, so that is one token evaluated and
   the reply's tokens generated (also with max_tokens 1: its floor for a generated answer).
3. Prefix caching (the next turn of a conversation): turn 1 (a long user message) is sent
   and answered; then turn 2 (turn 1, its answer, a short question) is timed to its first
   token (warm); then the same turn 2 with one character changed at the start of turn 1,
   which no slot holds (cold: only the template's system head is shared).
4. Each server's RSS (psutil) after all of the above.

Repetitions alternate which server goes first, so the machine's drift hits both; figures
are medians (TTFT percentiles pool every repetition). Scratch data dir (benchmarks/_scratch).

    scripts/build_llama_tools.sh          # once, ~10 minutes on 2 cores
    .venv/bin/python benchmarks/serve_vs_llama_server.py [--clients 1 4 8 16] [--reps 3]
        [--tokens 64] [--slots 16] [--ctx 1024] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (first: a scratch data dir, never the user's)

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _llama_tools import llama_tool  # noqa: E402

from tui_infer.core.models.bundled import find_bundled_models  # noqa: E402

TOPICS = [
    "rivers", "bread", "the moon", "chess", "volcanoes", "trains", "bees", "glass",
    "music", "winter", "maps", "copper", "owls", "tea", "bridges", "clocks",
]  # fmt: skip
SERIALS: dict[str, Iterator[int]] = {}  # per server: each sees the same prompts, once each


def prompt(url: str, i: int) -> str:
    """The next prompt for this server: one no earlier request sent, so both servers reuse
    only the template's head (an exact repeat would let llama-server restore the whole
    prompt from its RAM cache). Both servers get the same sequence of prompts."""
    n = next(SERIALS.setdefault(url, itertools.count(1)))
    return f"Story {n}: write a long story about {TOPICS[i % 16]}, with details."


STORE_PROMPT = "Say hello in one word."
PASSAGE = (
    "The harbour town wakes before the sun. Fishing boats leave one after another, their "
    "lamps swinging, and the gulls follow them out past the breakwater. In the market the "
    "bakers open their ovens, the smell of bread drifts down to the quay, and the first "
    "buyers argue about the price of oysters. By noon the boats come back, the nets are "
    "spread on the stones to dry, and children run between them looking for crabs. "
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_server_binary() -> Path:
    return llama_tool("llama-server")


class Proc:
    """A server process on a free port, its output in a log file; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as fh:
            self.popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise SystemExit(f"{name} exited with {self.popen.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{name} did not answer /health within 120 s; see {log}")

    def rss_mib(self) -> float:
        return float(psutil.Process(self.popen.pid).memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Level:
    """One repetition of one concurrency level on one server."""

    tokens: int = 0
    wall: float = 0.0
    foreign: float = 0.0  # cores other programs took meanwhile
    ttft: list[float] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall


def body_for(messages: list[dict[str, str]], max_tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "default",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[float, int]:
    """(TTFT seconds, completion tokens) of one streamed chat request."""
    t0 = time.perf_counter()
    ttft, chunks, usage = -1.0, 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"{url}: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft < 0:
                        ttft = time.perf_counter() - t0
    n = int(usage["completion_tokens"]) if usage else chunks
    return ttft, n


async def run_level(url: str, clients: int, n_requests: int, max_tokens: int) -> Level:
    out = Level()
    todo = list(range(n_requests))
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def worker() -> None:
            while todo:
                i = todo.pop(0)
                msgs = [{"role": "user", "content": prompt(url, i)}]
                ttft, n = await stream_one(client, url, body_for(msgs, max_tokens, True))
                out.ttft.append(ttft)
                out.tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        out.wall = time.perf_counter() - t0
    return out


def latencies(url: str, body: dict[str, Any], n: int, want_store: bool) -> list[float]:
    """Seconds per non-streamed request over one keep-alive connection (after 10 warm-ups)."""
    out = []
    with httpx.Client(timeout=None) as client:
        for i in range(n + 10):
            t0 = time.perf_counter()
            r = client.post(f"{url}/v1/chat/completions", json=body)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
            if want_store and r.json().get("x_tui_infer", {}).get("source") != "store":
                raise SystemExit("the published prediction was not served from the store")
            if i >= 10:
                out.append(dt)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def prefix_rep(url: str, tag: str, max_tokens: int) -> tuple[float, float, int]:
    """(warm TTFT, cold TTFT, turn-2 prompt tokens) of one two-turn conversation."""
    user1 = f"Conversation {tag}. Read this and remember it.\n" + PASSAGE * 4
    with httpx.Client(timeout=None) as client:
        r = client.post(
            f"{url}/v1/chat/completions",
            json=body_for([{"role": "user", "content": user1}], 32, False),
        )
        r.raise_for_status()
        reply = r.json()["choices"][0]["message"]["content"]
        prompt_tokens = int(r.json()["usage"]["prompt_tokens"])
    turn2 = [
        {"role": "user", "content": user1},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "What do the children look for?"},
    ]
    cold = [{**turn2[0], "content": "X" + user1[1:]}, *turn2[1:]]

    async def go() -> tuple[float, float]:
        async with httpx.AsyncClient(timeout=None) as client:
            warm, _ = await stream_one(client, url, body_for(turn2, max_tokens, True))
            cold_t, _ = await stream_one(client, url, body_for(cold, max_tokens, True))
        return warm, cold_t

    warm, cold_t = asyncio.run(go())
    return warm, cold_t, prompt_tokens


def publish(model: Path, max_tokens: int, scratch: Path) -> None:
    """A prediction for STORE_PROMPT in the scratch store, through `tui-infer batch`."""
    src = scratch / "store-in.txt"
    src.write_text(STORE_PROMPT + "\n")
    cmd = [
        sys.executable, "-m", "tui_infer", "batch", str(src), "-o", str(scratch / "o.jsonl"),
        "-m", str(model), "--max-tokens", str(max_tokens), "--temperature", "0",
        "--repeat-penalty", "1.0", "--publish",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def busy_seconds() -> float:
    """CPU seconds every process of the machine has used (all cores, from /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def own_seconds(pids: list[int]) -> float:
    """CPU seconds used by this process and the servers (and their threads)."""
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


class Foreign:
    """How many cores other programs took while the block ran (other helpers' tests)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cores = 0.0

    def __enter__(self) -> Foreign:
        self.t0, self.b0, self.o0 = time.perf_counter(), busy_seconds(), own_seconds(self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        other = (busy_seconds() - self.b0) - (own_seconds(self.pids) - self.o0)
        self.cores = max(0.0, other / wall)


def wait_quiet(pids: list[int], limit: float = 0.25, patience: float = 60.0) -> float:
    """Wait (up to `patience` s) for a second in which other programs take under `limit`
    cores; returns what they took in the last second sampled."""
    deadline = time.monotonic() + patience
    while True:
        with Foreign(pids) as f:
            time.sleep(1.0)
        if f.cores < limit or time.monotonic() > deadline:
            return f.cores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens of each streamed request")
    ap.add_argument("--slots", type=int, default=16, help="parallel slots of both servers")
    ap.add_argument("--ctx", type=int, default=1024, help="context of one slot")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store-requests", type=int, default=300)
    ap.add_argument("--prefix-reps", type=int, default=5)
    ap.add_argument("--llama-server", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers are stopped too
    binary = a.llama_server or llama_server_binary()
    if not binary.exists():
        print(
            f"error: no llama-server at {binary}; build it with scripts/build_llama_tools.sh "
            "(or pass --llama-server PATH)",
            file=sys.stderr,
        )
        return 2
    model = find_bundled_models()[0].path
    scratch = Path(os.environ["TUI_INFER_DATA_DIR"]).parent
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"model: {model.name}  threads: {a.threads}  slots: {a.slots} x ctx {a.ctx}  "
        f"max_tokens: {a.tokens}  reps: {a.reps}  commit: {commit}  load: {load_average()}"
    )
    publish(model, 8, scratch)

    port = free_port()
    ours = Proc(
        "tui-infer serve",
        [
            sys.executable, "-m", "tui_infer", "serve", "-m", str(model),
            "--port", str(port), "--threads", str(a.threads), "--ctx", str(a.ctx),
            "--parallel", str(a.slots), "--temperature", "0", "--repeat-penalty", "1.0",
        ],
        port,
        scratch / "tui-infer-serve.log",
    )  # fmt: skip
    port = free_port()
    theirs = Proc(
        "llama-server",
        [
            str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(a.threads), "-tb", str(a.threads), "-np", str(a.slots),
            "-c", str(a.slots * a.ctx), "--cont-batching", "-b", "512", "-ub", "512",
            "-fa", "on", "--no-kv-unified", "--temp", "0", "--repeat-penalty", "1.0",
            "--no-webui",
        ],
        port,
        scratch / "llama-server.log",
    )  # fmt: skip
    servers = [ours, theirs]
    pids = [os.getpid(), ours.popen.pid, theirs.popen.pid]
    results: dict[str, Any] = {"commit": commit, "load_start": load_average(), "levels": {}}
    try:
        for p in servers:  # warm-up: first decode, first SSE connection
            asyncio.run(run_level(p.url, 2, 2, 8))

        print(
            f"\n{'clients':>7} {'server':<16}{'tok/s':>8}{'tokens':>8}"
            f"{'TTFT p50':>10}{'p95':>8} (ms){'others':>8} (cores)"
        )
        for c in a.clients:
            n_req = max(8, 2 * c)
            reps: dict[str, list[Level]] = {p.name: [] for p in servers}
            for r in range(a.reps):
                for p in servers if r % 2 == 0 else servers[::-1]:
                    wait_quiet(pids)
                    with Foreign(pids) as f:
                        lv = asyncio.run(run_level(p.url, c, n_req, a.tokens))
                    lv.foreign = f.cores
                    reps[p.name].append(lv)
            row: dict[str, Any] = {}
            for p in servers:
                lvs = reps[p.name]
                ttft = [t for x in lvs for t in x.ttft]
                tps = statistics.median(x.tps for x in lvs)
                row[p.name] = {
                    "tps": tps,
                    "tps_reps": [x.tps for x in lvs],
                    "tokens": [x.tokens for x in lvs],
                    "ttft_p50_ms": 1000 * pct(ttft, 0.5),
                    "ttft_p95_ms": 1000 * pct(ttft, 0.95),
                    "others_cores": [x.foreign for x in lvs],
                }
                print(
                    f"{c:>7} {p.name:<16}{tps:>8.1f}{sum(x.tokens for x in lvs):>8}"
                    f"{row[p.name]['ttft_p50_ms']:>10.0f}{row[p.name]['ttft_p95_ms']:>8.0f}"
                    f"{statistics.median(x.foreign for x in lvs):>13.2f}"
                )
            ratio = row[ours.name]["tps"] / row[theirs.name]["tps"]
            budget = 0.95 if c == 1 else 0.9
            row["ratio"] = ratio
            print(
                f"{'':>7} ratio {ratio:.3f} (budget >= {budget}: "
                f"{'met' if ratio >= budget else 'MISSED'})"
            )
            results["levels"][c] = row

        wait_quiet(pids)
        store_body = body_for([{"role": "user", "content": STORE_PROMPT}], 8, False)
        hits = latencies(ours.url, store_body, a.store_requests, want_store=True)
        same = latencies(theirs.url, store_body, max(50, a.store_requests // 3), False)
        floor_body = body_for([{"role": "user", "content": STORE_PROMPT}], 1, False)
        floor = latencies(theirs.url, floor_body, max(50, a.store_requests // 3), False)
        print("\nthe same tiny request, non-streaming, one keep-alive connection (ms):")
        for name, xs in (
            ("tui-infer store hit", hits),
            ("llama-server, same request (8 tokens)", same),
            ("llama-server, max_tokens 1", floor),
        ):
            print(f"  {name:<40} p50 {1000 * pct(xs, 0.5):7.2f}  p95 {1000 * pct(xs, 0.95):7.2f}")
            results[name] = {"p50_ms": 1000 * pct(xs, 0.5), "p95_ms": 1000 * pct(xs, 0.95)}
        p50 = 1000 * pct(hits, 0.5)
        print(f"  store hit p50 budget < 3 ms: {'met' if p50 < 3 else 'MISSED'}")

        print("\nprefix caching: turn 2 of a conversation, TTFT (ms), median of reps")
        pre: dict[str, dict[str, list[float]]] = {p.name: {"warm": [], "cold": []} for p in servers}
        n_prompt = 0
        for r in range(a.prefix_reps):
            for p in servers if r % 2 == 0 else servers[::-1]:
                wait_quiet(pids)
                warm, cold, n_prompt = prefix_rep(p.url, f"{p.port}-{r}", 8)
                pre[p.name]["warm"].append(warm)
                pre[p.name]["cold"].append(cold)
        print(f"  (turn 1: {n_prompt} prompt tokens; turn 2 adds its answer and a question)")
        for p in servers:
            w = 1000 * statistics.median(pre[p.name]["warm"])
            c_ = 1000 * statistics.median(pre[p.name]["cold"])
            print(f"  {p.name:<16} warm {w:7.1f}  cold {c_:7.1f}  cold/warm {c_ / w:5.1f}x")
            results[f"prefix {p.name}"] = {"warm_ms": w, "cold_ms": c_}

        print("\nRSS after the runs (MiB):")
        for p in servers:
            rss = p.rss_mib()
            print(f"  {p.name:<16} {rss:7.1f}")
            results[f"rss {p.name}"] = rss
        results["load_end"] = load_average()
        print(f"\nload average at the end: {results['load_end']}")
    finally:
        for p in servers:
            p.stop()
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
