"""Start-up: `tui-infer --help` (budget < 0.3 s) and the TUI's first frame with the
default model loaded (budget < 1.5 s), each from a fresh process.

    .venv/bin/python benchmarks/startup.py [--reps 10]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (first: a scratch data dir, never the user's)

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "tui-infer"

FIRST_FRAME = r"""
import time, sys, asyncio
start = float(sys.argv[1])  # the parent's clock just before it spawned this process
from tui_infer.core.config import Settings
from tui_infer.core.paths import default_paths
from tui_infer.core.models.resolve import resolve_model
from tui_infer.app.app import TuiInferApp

async def main():
    app = TuiInferApp(settings=Settings(), paths=default_paths(), model_path=resolve_model(None))
    async with app.run_test(size=(120, 40)) as pilot:
        while app.chat.engine is None:
            await asyncio.sleep(0.005)
        await pilot.pause()  # the frame that shows the loaded model
        print(time.time() - start)

asyncio.run(main())
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    timed([str(BIN), "--help"])  # warm the page cache
    helps = [timed([str(BIN), "--help"]) for _ in range(a.reps)]
    frames = []
    for _ in range(max(3, a.reps // 2)):
        out = subprocess.run(
            [sys.executable, "-c", FIRST_FRAME, repr(time.time())],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        frames.append(float(out.stdout.strip().splitlines()[-1]))
    print(f"{'measure':<34}{'mean s':>8}{'stdev':>8}{'budget':>8}")
    print(
        f"{'tui-infer --help':<34}{statistics.mean(helps):>8.3f}"
        f"{statistics.stdev(helps):>8.3f}{0.3:>8.1f}"
    )
    print(
        f"{'TUI first frame, model loaded':<34}{statistics.mean(frames):>8.3f}"
        f"{statistics.stdev(frames):>8.3f}{1.5:>8.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
