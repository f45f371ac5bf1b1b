"""One way to build the app for a test, and the Pilot helpers every UI test uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.widgets import Static

from tests.support.fakes import SYNTHETIC_MODEL, FixedMemoryProbe, SyntheticEngine
from tui_infer.app.app import TuiInferApp
from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.paths import Paths


class Recorder:
    """message_hook target: every message any widget receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._seen: set[int] = set()

    def __call__(self, message: Message) -> None:
        # a bubbling message reaches several pumps: keep it once
        if id(message) not in self._seen:
            self._seen.add(id(message))
            self.messages.append(message)

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]


def make_app(
    tmp_path: Path,
    model: Path | None,
    engine_loader: Callable[..., Any] = Engine.load,
    memory_probe: Any = None,
    **settings: Any,
) -> TuiInferApp:
    """The app on `model` (the real engine unless told otherwise), in the test's own dirs."""
    kw: dict[str, Any] = {"memory_probe": memory_probe} if memory_probe is not None else {}
    return TuiInferApp(
        settings=Settings(**settings),
        paths=Paths(config_file=tmp_path / "config.toml", data_dir=tmp_path / "data"),
        model_path=model,
        engine_loader=engine_loader,
        **kw,
    )


def synthetic_app(
    tmp_path: Path, model: Path | None = SYNTHETIC_MODEL, **settings: Any
) -> TuiInferApp:
    """The app on the synthetic engine and fixed memory figures: for keys, plumbing and
    pictures, not the model."""
    settings.setdefault("engine_loader", SyntheticEngine)
    return make_app(tmp_path, model, memory_probe=FixedMemoryProbe(), **settings)


async def wait_for(pilot: Any, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


async def ready(pilot: Any) -> None:
    """The model has loaded (or failed to) and the screen has settled."""
    await wait_for(pilot, lambda: not pilot.app.chat.loading)
    await pilot.pause(0.1)


def banner(app: TuiInferApp) -> str:
    return str(app.chat.query_one("#banner", Static).render())


def notice(app: TuiInferApp) -> str:
    return str(app.chat.query_one("#notice", Static).render())


async def send(pilot: Any, text: str, type_it: bool = False) -> None:
    """Put `text` in the input box (typed key by key, or inserted) and press Enter."""
    box = pilot.app.chat.prompt_input
    box.clear()
    box.focus()
    if type_it:
        await pilot.press(*text)
    else:
        box.insert(text)
    assert box.text == text
    await pilot.press("enter")
