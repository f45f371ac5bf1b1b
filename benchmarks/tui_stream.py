"""The TUI's cost: a synthetic 20,000-token stream at 2,000 tokens/s, and the real model
in the TUI vs headless.

1. Synthetic stream (budget: screen < 100 ms behind at the end; per-token cost flat).
   A fake engine yields tokens at a fixed rate into the real app (Textual's headless
   driver, 120x40). We time every Markdown append the screen makes and report the cost per
   token over the first and the last 2,000 tokens, and how long after the last token was
   produced the reply widget held all of it and a frame was drawn.
2. Real model (budget: TUI tokens/s >= 0.95 of headless). The same greedy prompt through
   the app and through the engine alone, alternating, in this process.

    .venv/bin/python benchmarks/tui_stream.py [--tokens 20000] [--rate 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual.widgets import Markdown  # noqa: E402

from tui_infer.app.app import TuiInferApp  # noqa: E402
from tui_infer.app.widgets.conversation import Reply  # noqa: E402
from tui_infer.core.backend import BackendInfo  # noqa: E402
from tui_infer.core.config import Settings  # noqa: E402
from tui_infer.core.engine import (  # noqa: E402
    Engine,
    GenerationStats,
    KvCacheUsage,
    LoadOptions,
    ModelInfo,
    ReplyStream,
    SamplingParams,
    TokenChunk,
)
from tui_infer.core.paths import default_paths  # noqa: E402
from tui_infer.core.resolve import find_bundled_models  # noqa: E402
from tui_infer.core.template import Message  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog and then writes some **markdown** `code` "
WORDS = WORDS.split(" ")


@dataclass
class _Template:
    warning: str | None = None


class SyntheticEngine:
    """Yields `n` tokens at `rate` tokens/s; the same interface the chat screen uses."""

    def __init__(self, n: int, rate: float) -> None:
        self.n, self.rate = n, rate
        self.n_ctx = 1 << 20
        self.template = _Template()
        self.info = ModelInfo(Path("synthetic.gguf"), "synthetic", "none", "F32", 0, 0, 1, 0, 1,
                              1, 1, 1, 1, None)
        self.backend = BackendInfo("CPU", "synthetic", False, 0, 2, 1, (), "")
        self.t_last_token = 0.0

    def count_tokens(self, messages: list[Message]) -> int:
        return 10

    def kv_usage(self) -> KvCacheUsage:
        return KvCacheUsage(0, self.n_ctx, "f16", 1.0, self.n_ctx, None)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def chat(self, messages: list[Message], sampling: Any, cancel: threading.Event) -> ReplyStream:
        stream = ReplyStream(iter(()))

        def gen() -> Any:
            t0 = time.perf_counter()
            for i in range(self.n):
                due = t0 + i / self.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if cancel.is_set():
                    break
                word = WORDS[i % len(WORDS)]
                text = ("\n\n" if i % 200 == 199 else " ") + word
                yield TokenChunk(text, i + 1, time.perf_counter() - t0, 0.001, i + 1)
            self.t_last_token = time.perf_counter()
            total = self.t_last_token - t0
            stream.stats = GenerationStats(10, 10, 0.001, self.n, total, 0.001, total, "length",
                                           self.kv_usage())

        stream._gen = gen()
        return stream


class _Fixed:
    """A memory probe with fixed figures (psutil's cost is not what is measured here)."""

    def snapshot(self) -> Any:
        from tui_infer.core.memory import MemorySnapshot

        return MemorySnapshot(100 << 20, 8 << 30, 16 << 30, (), "no GPU")


async def synthetic(n: int, rate: float) -> dict[str, float]:
    engine = SyntheticEngine(n, rate)
    costs: list[tuple[int, float]] = []  # (characters appended, seconds)
    real_append = Markdown.append

    def timed_append(self: Markdown, markdown: str) -> Any:
        t0 = time.perf_counter()
        result = real_append(self, markdown)
        costs.append((len(markdown), time.perf_counter() - t0))
        return result

    Markdown.append = timed_append  # type: ignore[method-assign]
    app = TuiInferApp(settings=Settings(max_tokens=n), paths=default_paths(),
                      model_path=Path("synthetic.gguf"),
                      engine_loader=lambda p, o: engine, memory_probe=_Fixed())
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            while app.chat.engine is None:
                await asyncio.sleep(0.01)
            await pilot.press(*"go")
            await pilot.press("enter")
            expected_words = n
            while True:
                await asyncio.sleep(0.005)
                replies = app.chat.conversation.query(Reply)
                if engine.t_last_token and replies:
                    md = replies.last().query_one(Markdown)
                    if len(md.source.split()) >= expected_words:
                        await pilot.pause()
                        lag = time.perf_counter() - engine.t_last_token
                        break
    finally:
        Markdown.append = real_append  # type: ignore[method-assign]
    # per-token cost: the append time spread over the tokens each append carried
    chars_per_token = sum(len(w) + 1 for w in WORDS) / len(WORDS)
    per_token: list[float] = []
    for chars, secs in costs:
        k = max(1, round(chars / chars_per_token))
        per_token.extend([secs / k] * k)
    window = min(2000, len(per_token) // 4)
    first = statistics.mean(per_token[:window])
    last = statistics.mean(per_token[-window:])
    return {"lag_s": lag, "first_us": first * 1e6, "last_us": last * 1e6,
            "appends": len(costs), "tokens": len(per_token)}


async def real(path: Path, reps: int, max_tokens: int) -> dict[str, list[float]]:
    settings = Settings(temperature=0, max_tokens=max_tokens, repeat_penalty=1.0, ctx=2048,
                        threads=2)
    opts = LoadOptions.from_settings(settings)
    prompt = "Write a long story about a dragon who learns to cook."
    headless = Engine.load(path, opts)
    out: dict[str, list[float]] = {"tui": [], "headless": [], "tokens": []}
    finished: list[GenerationStats] = []
    app = TuiInferApp(settings=settings, paths=default_paths(), model_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.chat.engine is None:
            await asyncio.sleep(0.01)
        real_finish = Reply.finish

        async def record(self: Reply, stats: Any, error: str | None = None) -> None:
            if stats is not None:
                finished.append(stats)
            await real_finish(self, stats, error)

        Reply.finish = record  # type: ignore[method-assign]
        for _ in range(reps):
            await app.chat.action_new_chat()
            await pilot.pause()
            app.chat.prompt_input.text = prompt
            await pilot.press("enter")
            n_before = len(finished)
            while len(finished) == n_before:
                await asyncio.sleep(0.02)
            out["tui"].append(finished[-1].generation_tps)
            out["tokens"].append(finished[-1].generated_tokens)
            headless.reset()
            s = headless.chat([Message("user", prompt)],
                              SamplingParams.from_settings(settings))
            s.text()
            assert s.stats is not None
            out["headless"].append(s.stats.generation_tps)
        Reply.finish = real_finish  # type: ignore[method-assign]
    headless.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    a = ap.parse_args()

    s = asyncio.run(synthetic(a.tokens, a.rate))
    print(f"synthetic stream: {a.tokens} tokens at {a.rate:.0f} tok/s, {s['appends']} appends")
    print(f"  screen behind at the end: {s['lag_s'] * 1000:.0f} ms (budget < 100 ms)")
    print(f"  cost per token: first 2000 {s['first_us']:.1f} us, last 2000 "
          f"{s['last_us']:.1f} us (ratio {s['last_us'] / s['first_us']:.2f}, flat ~1)")

    path = find_bundled_models()[0].path
    r = asyncio.run(real(path, a.reps, a.max_tokens))
    tui, head = statistics.mean(r["tui"]), statistics.mean(r["headless"])
    print(f"real model ({path.name}, greedy, {r['tokens'][0]} tokens, {a.reps} reps):")
    print(f"  TUI {tui:.1f} tok/s, headless {head:.1f} tok/s, ratio {tui / head:.3f} "
          "(budget >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
