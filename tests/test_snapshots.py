"""SVG snapshots of the chat screen in states whose figures never vary.

A synthetic engine (fixed name, backend and KV figures) and a fixed memory probe
stand in for the real ones, so that nothing on screen depends on the machine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.support.pilot import synthetic_app
from tui_infer.core.inference.types import (
    Message,
)

SIZE = (100, 30)


async def _settle(pilot) -> None:  # type: ignore[no-untyped-def]
    await pilot.app.workers.wait_for_complete()
    # the stats panel's context and KV figures arrive with the model's first refresh: on a
    # loaded machine that can come after the workers are done (with no model they stay "-")
    for _ in range(60):
        shown = [str(w.render()) for w in pilot.app.screen.query("#ctx-figures, #kv-figures")]
        if shown and "-" not in shown:
            break
        await pilot.pause(0.05)
    # a blinking cursor would make the picture depend on the moment it is taken
    for area in pilot.app.screen.query("TextArea, Input"):
        area.cursor_blink = False
    await pilot.pause(0.3)


def test_no_model_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(synthetic_app(tmp_path, model=None), terminal_size=SIZE, run_before=_settle)


def test_chat_before_any_message(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(synthetic_app(tmp_path), terminal_size=SIZE, run_before=_settle)


def test_load_model_dialog(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def open_dialog(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)

    assert snap_compare(synthetic_app(tmp_path), terminal_size=SIZE, run_before=open_dialog)


def _seed_history(tmp_path: Path) -> None:
    """Two saved chats with fixed figures, so that the screens never vary."""
    from tui_infer.core.chat.history import History, ReplyFigures

    fig = ReplyFigures(0.045, 38, 512.0, 24, 96.4, 0.29, "stop")
    with History.in_data_dir(tmp_path / "data") as h:
        old = h.create(
            "Rivers of Europe",
            model_name="Synthetic-1M",
            model_path="/models/synthetic.gguf",
            created_at=1.0,
        )
        h.add_message(old, "user", "Which river flows through Vienna?", created_at=2.0)
        h.add_message(old, "assistant", "The **Danube**.", fig, created_at=3.0)
        cid = h.create(
            "A recipe for rye bread",
            model_name="Synthetic-1M",
            model_path="/models/synthetic.gguf",
            created_at=10.0,
        )
        h.add_message(cid, "user", "A recipe for rye bread, please.", created_at=11.0)
        h.add_message(
            cid,
            "assistant",
            "You need:\n\n- 500 g rye flour\n- 10 g salt\n- sourdough starter\n\n"
            "Mix, rest overnight, bake at 230 °C for 45 minutes.",
            fig,
            created_at=12.0,
        )
        h.add_message(cid, "user", "How long should it cool?", created_at=13.0)
        h.add_message(
            cid,
            "assistant",
            "At least *two hours*.",
            replace(fig, finish_reason="cancelled", generated_tokens=5),
            created_at=14.0,
        )


async def _open_newest_chat(pilot) -> None:  # type: ignore[no-untyped-def]
    await _settle(pilot)
    await pilot.press("ctrl+f")  # shows the sidebar where it is hidden, focuses the search
    await pilot.press("enter")  # to the list
    await pilot.press("enter")  # the newest chat
    await _settle(pilot)


def test_main_screen_80x24(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed_history(tmp_path)

    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await _open_newest_chat(pilot)
        await pilot.press("ctrl+l")  # hide the sidebar again: the chat gets the width
        pilot.app.chat.prompt_input.focus()  # where the focus lands otherwise is timing
        await _settle(pilot)

    assert snap_compare(synthetic_app(tmp_path), terminal_size=(80, 24), run_before=run)


def test_main_screen_160x48(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed_history(tmp_path)
    app = synthetic_app(tmp_path)
    assert snap_compare(app, terminal_size=(160, 48), run_before=_open_newest_chat)


def test_overflow_dialog(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        pilot.app.chat.history = [Message("user", "old " * 40), Message("assistant", "x " * 40)]
        pilot.app.chat.prompt_input.insert("Hi")
        await pilot.press("enter")
        await _settle(pilot)

    assert snap_compare(synthetic_app(tmp_path, ctx=64), terminal_size=(80, 24), run_before=run)


def test_help_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        await pilot.press("f1")
        await _settle(pilot)

    assert snap_compare(synthetic_app(tmp_path), terminal_size=(80, 24), run_before=run)
