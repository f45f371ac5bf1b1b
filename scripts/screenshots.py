"""Screenshots of the real app for the README: `make screenshots`.

Starts tui-infer's Textual app on the default model (the first GGUF bundled in an
installed package) in a temporary config, data and state directory, drives it with
Textual's pilot as a user would (a prompt whose reply streams; the models, batch, bench
and server screens) and saves each screen as an SVG in assets/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
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


async def shoot(tmp: Path) -> list[Path]:
    from tui_infer.app.app import TuiInferApp
    from tui_infer.core.config import load_settings
    from tui_infer.core.models.bundled import find_bundled_models
    from tui_infer.core.paths import Paths

    models = find_bundled_models()
    if not models:
        raise SystemExit("screenshots: no bundled model (run 'make run' first)")
    paths = Paths(config_file=tmp / "config.toml", data_dir=tmp / "data", state_dir=tmp / "state")
    settings = load_settings(paths.config_file).with_overrides(temperature=0.0, max_tokens=96)
    app = TuiInferApp(settings=settings, paths=paths, model_path=models[0].path)
    saved: list[Path] = []

    def save(name: str) -> None:
        app.save_screenshot(f"{name}.svg", str(OUT))
        saved.append(OUT / f"{name}.svg")

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.chat.engine is not None and not app.chat.loading)
        await pilot.pause(0.5)
        await pilot.press(*"Why is the sky blue? Explain it to a child.", "enter")
        panel = app.chat.stats_panel
        await wait_for(pilot, lambda: panel.generating and panel.generated_tokens >= 40)
        save("chat-streaming")
        await wait_for(pilot, lambda: not panel.generating)
        await pilot.pause(1.5)
        save("chat")
        for key, name in (("f3", "models"), ("f9", "batch"), ("f7", "bench"), ("f4", "server")):
            await pilot.press(key)
            await pilot.pause(1.5)
            save(name)
            await pilot.press("escape")
            await pilot.pause(0.5)
    return saved


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tui-infer-shots-") as tmp:
        os.environ["TUI_INFER_CONFIG"] = str(Path(tmp) / "config.toml")
        os.environ["TUI_INFER_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["TUI_INFER_STATE_DIR"] = str(Path(tmp) / "state")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for path in asyncio.run(shoot(Path(tmp))):
            print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
