"""The TUI's cost: a synthetic 20,000-token stream at 2,000 tokens/s, and the real model
in the TUI vs headless.

1. Synthetic stream (budget: screen < 100 ms behind at the end; per-token cost flat).
   A fake engine yields tokens at a fixed rate into the real app (Textual's headless
   driver, 120x40). We time every Markdown append the screen makes and report the cost per
   token over the first and the last 2,000 tokens, and how long after the last token was
   produced the reply widget held all of it and a frame was drawn.
2. Real model (budget: TUI tokens/s >= 0.95 of headless). The same greedy prompt through
   the app in a real terminal (tmux), through `tui-infer run` streaming into the same kind
   of terminal, and through `run` piped, alternating, each in its own process.

    .venv/bin/python benchmarks/tui_stream.py [--tokens 20000] [--rate 2000] [--reps 3]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (first: a scratch data dir, never the user's)

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from tui_infer.app.app import TuiInferApp  # noqa: E402
from tui_infer.app.widgets.conversation import Reply  # noqa: E402
from tui_infer.core.config import Settings  # noqa: E402
from tui_infer.core.inference.types import LoadOptions  # noqa: E402
from tests.support.fakes import FakeBackend, FixedMemoryProbe, SyntheticEngine  # noqa: E402
from tui_infer.core.paths import default_paths  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog and then writes some **markdown** `code` "
WORDS = WORDS.split()


def paragraph_words(i: int) -> str:
    """Token i of the synthetic reply: words, with a paragraph break every 200."""
    word = WORDS[(i - 1) % len(WORDS)]
    return ("\n\n" if i % 200 == 0 else " ") + word


def reply_holds_all(app: TuiInferApp, produced: str) -> bool:
    """The last reply shows every token produced (in its Markdown or its streaming tail)."""
    replies = app.chat.conversation.query(Reply)
    if not replies:
        return False
    shown = replies.last().shown_text.strip()
    expected = produced.strip()
    return shown.endswith(expected[-40:]) and len(shown) >= len(expected)


async def synthetic(n: int, rate: float) -> dict[str, float]:
    """Main-thread CPU per token early and late in the message, and the final lag."""
    # one llama.cpp thread of two cores: the pace the TUI gets when llama.cpp leaves a core
    engine = SyntheticEngine(
        Path("synthetic.gguf"),
        LoadOptions(ctx=1 << 20),
        rate,
        paragraph_words,
        FakeBackend(threads=1, total_layers=2),
    )
    app = TuiInferApp(
        settings=Settings(max_tokens=n),
        paths=default_paths(),
        model_path=Path("synthetic.gguf"),
        engine_loader=lambda p, o: engine,
        memory_probe=FixedMemoryProbe(),
    )
    samples: list[tuple[int, float]] = []  # (tokens produced, main-thread CPU seconds)
    shown_at: list[float] = []  # when the first frame with every token was written
    display = app._display

    def timed_display(*args: Any, **kwargs: Any) -> Any:
        if engine.t_last_token and not shown_at and reply_holds_all(app, "".join(engine.produced)):
            shown_at.append(time.perf_counter())
        return display(*args, **kwargs)

    app._display = timed_display  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        while app.chat.engine is None:
            await asyncio.sleep(0.01)
        await pilot.press(*"go")
        # not awaited: Pilot's press may wait for the screen to settle, which is after the
        # reply; the samples must start with it
        pressed = asyncio.create_task(pilot.press("enter"))
        while True:
            await asyncio.sleep(0.005)
            if not engine.t_last_token:
                samples.append((len(engine.produced), time.thread_time()))
                continue  # (cheap until the end: this loop runs on the thread it measures)
            if shown_at:
                lag = shown_at[0] - engine.t_last_token
                break
        await pressed

    def slope(lo: int, hi: int) -> float:
        """CPU seconds per token between the samples that bracket [lo, hi] tokens."""
        inside = [(p, c) for p, c in samples if lo <= p <= hi]
        (p0, c0), (p1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (p1 - p0)

    window = max(n // 4, 2000)
    first = slope(1, window)
    last = slope(n - window, n)
    return {"lag_s": lag, "first_us": first * 1e6, "last_us": last * 1e6}


PROMPT = "Write a very long story about a dragon who learns to cook, with many chapters."
FLAGS = "--temperature 0 --max-tokens {n} --repeat-penalty 1.0"


# A tmux server of our own: one already running would start the app with its own
# environment, not the scratch data directory this script set.
_SOCKET = f"tui-infer-bench-{os.getpid()}"


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", _SOCKET, *args], capture_output=True, text=True).stdout


def tui_in_tmux(max_tokens: int) -> float:
    """The real app in a real terminal (tmux, 120x40): type, wait for the reply's line."""
    exe = Path(sys.executable).parent / "tui-infer"
    _tmux("kill-session", "-t", "bench")
    _tmux(
        "new", "-d", "-s", "bench", "-x", "120", "-y", "40", f"{exe} {FLAGS.format(n=max_tokens)}"
    )
    try:
        time.sleep(3)
        _tmux("send-keys", "-t", "bench", PROMPT, "Enter")
        for _ in range(240):
            time.sleep(0.5)
            screen = _tmux("capture-pane", "-p", "-t", "bench")
            m = re.search(r"(?:done|length limit\]) · (\d+) tokens · ([\d.]+) tok/s", screen)
            if m:
                return float(m.group(2))
        raise RuntimeError("the TUI did not finish the reply")
    finally:
        _tmux("send-keys", "-t", "bench", "C-q")
        time.sleep(0.5)
        _tmux("kill-session", "-t", "bench")


def headless_in_tmux(max_tokens: int) -> float:
    """`tui-infer run` streaming into the same kind of terminal."""
    exe = Path(sys.executable).parent / "tui-infer"
    out = Path(tempfile.mkdtemp()) / "run.json"
    _tmux("kill-session", "-t", "bench")
    cmd = f"{exe} run --stats {FLAGS.format(n=max_tokens)} '{PROMPT}' 2> {out}; echo done >> {out}"
    _tmux("new", "-d", "-s", "bench", "-x", "120", "-y", "40", f'bash -c "{cmd}; sleep 2"')
    for _ in range(240):
        time.sleep(0.5)
        if out.exists() and "done" in out.read_text():
            break
    _tmux("kill-session", "-t", "bench")
    m = re.search(r"tok at ([\d.]+) tok/s", out.read_text())
    if not m:
        raise RuntimeError(f"no figures from run: {out.read_text()!r}")
    return float(m.group(1))


def headless_piped(max_tokens: int) -> float:
    exe = Path(sys.executable).parent / "tui-infer"
    r = subprocess.run(
        [str(exe), "run", "--json", *FLAGS.format(n=max_tokens).split(), PROMPT],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(r.stdout)["stats"]["generation_tokens_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=400)
    a = ap.parse_args()

    s = asyncio.run(synthetic(a.tokens, a.rate))
    print(f"synthetic stream: {a.tokens} tokens at {a.rate:.0f} tok/s into the app (120x40)")
    print(f"  screen behind at the end: {s['lag_s'] * 1000:.0f} ms (budget < 100 ms)")
    print(
        f"  main-thread CPU per token: first {max(a.tokens // 4, 2000)} tokens "
        f"{s['first_us']:.1f} us, last {s['last_us']:.1f} us "
        f"(ratio {s['last_us'] / s['first_us']:.2f}; flat is ~1)"
    )

    if shutil.which("tmux") is None:
        print("real model: skipped (needs tmux for a real terminal)")
        return 0
    r: dict[str, list[float]] = {"tui": [], "run_tmux": [], "run_piped": []}
    for _ in range(a.reps):
        r["tui"].append(tui_in_tmux(a.max_tokens))
        r["run_tmux"].append(headless_in_tmux(a.max_tokens))
        r["run_piped"].append(headless_piped(a.max_tokens))
    _tmux("kill-server")
    m = {k: statistics.mean(v) for k, v in r.items()}
    sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in r.items()}
    print(f"real model, greedy, {a.max_tokens} tokens, {a.reps} reps alternating (tok/s):")
    print(f"  TUI in tmux              {m['tui']:6.1f} ± {sd['tui']:.1f}")
    print(f"  run, streaming to tmux   {m['run_tmux']:6.1f} ± {sd['run_tmux']:.1f}")
    print(f"  run, piped               {m['run_piped']:6.1f} ± {sd['run_piped']:.1f}")
    print(
        f"  TUI / run in the same terminal: {m['tui'] / m['run_tmux']:.3f}; "
        f"TUI / piped: {m['tui'] / m['run_piped']:.3f} (budget >= 0.95)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
