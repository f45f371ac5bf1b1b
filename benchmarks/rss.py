"""Resident memory: the TUI with the default model after one reply, vs a bare llama.cpp
loop on the same model and context (budget: the TUI at most 80 MB more). Each in its own
process, alternating.

    .venv/bin/python benchmarks/rss.py [--reps 3]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (first: a scratch data dir, never the user's)

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = r"""
import sys, psutil
sys.path.insert(0, "benchmarks")
from engine_vs_bare import BareLoop
from tui_infer.core.inference.types import LoadOptions
from tui_infer.core.models.bundled import find_bundled_models
import llama_cpp
bare = BareLoop(find_bundled_models()[0].path, LoadOptions(ctx=4096, threads=2))
toks = [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]
bare.generate(toks, 64)
print(psutil.Process().memory_info().rss)
"""

TUI = r"""
import asyncio, psutil
from tui_infer.core.config import Settings
from tui_infer.core.paths import default_paths
from tui_infer.core.models.resolve import resolve_model
from tui_infer.app.app import TuiInferApp
from tui_infer.app.widgets.conversation import Reply

async def main():
    app = TuiInferApp(settings=Settings(ctx=4096, threads=2, max_tokens=64, temperature=0),
                      paths=default_paths(), model_path=resolve_model(None))
    async with app.run_test(size=(120, 40)) as pilot:
        while app.chat.engine is None:
            await asyncio.sleep(0.01)
        app.chat.prompt_input.text = "Tell me about bicycles."
        await pilot.press("enter")
        while not any(r.stats for r in app.query(Reply)):
            await asyncio.sleep(0.05)
        await pilot.pause()
        print(psutil.Process().memory_info().rss)

asyncio.run(main())
"""


def rss(code: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    bare, tui = [], []
    for _ in range(a.reps):
        bare.append(rss(BARE))
        tui.append(rss(TUI))
    mb = 1 / 2**20
    b, t = statistics.mean(bare) * mb, statistics.mean(tui) * mb
    print(
        f"bare loop RSS {b:.1f} MiB, TUI RSS {t:.1f} MiB: TUI adds {t - b:.1f} MiB "
        "(budget <= 80 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
