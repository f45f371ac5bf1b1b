"""Screenshots of the real app for the README: `make screenshots`.

Starts tui-infer's Textual app on the default model (the first GGUF bundled in an
installed package) in a temporary config, data and state directory, drives it with
Textual's pilot as a user would (a prompt whose reply streams; the models, batch, bench
and server screens) and saves each screen as an SVG in assets/screenshots/. So that the
batch and bench screens show something, a small batch of assets/examples/prompts.jsonl is
run first (the CLI, as a user would) and the bench screen runs a short bench.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "assets" / "screenshots"
SIZE = (132, 40)


async def wait_for(pilot: Any, cond: Any, timeout: float = 400.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("screenshots: timed out waiting for the app")
        await pilot.pause(0.1)


def run_a_batch(tmp: Path) -> None:
    """A batch run in the temporary store, for the batch screen to list (staged)."""
    command = [
        sys.executable,
        "-m",
        "tui_infer",
        "batch",
        str(REPO / "assets" / "examples" / "prompts.jsonl"),
    ]
    command += ["-o", str(tmp / "answers.jsonl"), "--max-tokens", "48"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"screenshots: the batch failed: {done.stderr.strip()}")


async def shoot(tmp: Path) -> list[Path]:
    from tui_infer.app.app import TuiInferApp
    from tui_infer.core.config import load_settings
    from tui_infer.core.models.bundled import find_bundled_models
    from tui_infer.core.paths import Paths

    models = find_bundled_models()
    if not models:
        raise SystemExit("screenshots: no bundled model (run 'make run' first)")
    paths = Paths(config_file=tmp / "config.toml", data_dir=tmp / "data", state_dir=tmp / "state")
    # a reply long enough to be caught streaming (the prompt below: 237 tokens): the figures
    # reach the panel once a second, and on a quiet machine (~110 tok/s) a 178-token reply
    # ended before the first of them, which left the script waiting
    settings = load_settings(paths.config_file).with_overrides(temperature=0.0, max_tokens=256)
    app = TuiInferApp(settings=settings, paths=paths, model_path=models[0].path)
    saved: list[Path] = []

    def save(name: str) -> None:
        app.save_screenshot(f"{name}.svg", str(OUT))
        saved.append(OUT / f"{name}.svg")

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.chat.engine is not None and not app.chat.loading)
        await pilot.pause(0.5)
        await pilot.press(*"Why is the sky blue? Explain it to a child, step by step.", "enter")
        panel = app.chat.stats_panel
        await wait_for(
            pilot,
            lambda: (
                (panel.generating and panel.generated_tokens >= 40 and panel.generation_tps > 0)
                or (not panel.generating and panel.generated_tokens > 0)
            ),
        )
        if not panel.generating:
            raise SystemExit("screenshots: the reply ended before it was seen streaming")
        await pilot.pause(0.2)  # the panel repaints what it was just given
        save("chat-streaming")
        await wait_for(pilot, lambda: not panel.generating)
        await pilot.pause(1.5)
        save("chat")
        for key, name in (("f3", "models"), ("f9", "batch"), ("f7", "bench"), ("f4", "server")):
            await pilot.press(key)
            await pilot.pause(1.5)
            if name == "bench":
                await short_bench(pilot, app.screen)
            save(name)
            await pilot.press("escape")
            await pilot.pause(0.5)
    return saved


async def short_bench(pilot: Any, screen: Any) -> None:
    """pp 128 and tg 32, twice each: enough for the table, the chart and the history."""
    from textual.widgets import Input

    for widget_id, value in (("#bench-pp", "128"), ("#bench-tg", "32"), ("#bench-reps", "2")):
        screen.query_one(widget_id, Input).value = value
    await pilot.press("ctrl+r")
    await wait_for(pilot, lambda: screen.running)
    await wait_for(pilot, lambda: not screen.running)
    await pilot.pause(1.0)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tui-infer-shots-") as tmp:
        os.environ["TUI_INFER_CONFIG"] = str(Path(tmp) / "config.toml")
        os.environ["TUI_INFER_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["TUI_INFER_STATE_DIR"] = str(Path(tmp) / "state")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        run_a_batch(Path(tmp))
        for path in asyncio.run(shoot(Path(tmp))):
            print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
