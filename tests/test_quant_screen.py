"""The Quant view (Pilot, the real model, a Q4_0 made from it in the test's library).

It opens (F10, Ctrl+P → Quant) with nothing measured; `r` evaluates the loaded model's
files in a worker (the screen keeps answering keys meanwhile), rows appear with the
reference first, the plot of speed against KL divergence is drawn, the report is kept and
shown again on reopening.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from tests.support.pilot import Recorder, make_app, ready, wait_for
from tui_infer.app.screens.quant import QualityFinished, QualityRowMeasured, QuantScreen
from tui_infer.core.models.quantize import quantize_into_library

pytestmark = pytest.mark.anyio

SIZE = (160, 40)


def text_of(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def rows_of(screen: Any) -> list[list[str]]:
    table = screen.query_one("#quant-table", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_quant_view_evaluates_and_keeps_the_report(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a smaller evaluation than a user's (the figures' size, not their method)
    monkeypatch.setattr(QuantScreen, "max_tokens", 160)
    monkeypatch.setattr(QuantScreen, "speed_reps", 1)
    q4 = quantize_into_library(model_path, "Q4_0", tmp_path / "data", threads=2).path
    rec = Recorder()
    app = make_app(tmp_path, model_path, ctx=512)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        app.action_quant()  # F10 or Ctrl+P → Quant
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, QuantScreen)
        await wait_for(pilot, lambda: "no report yet" in text_of(screen, "#quant-summary"))
        assert rows_of(screen) == []

        await pilot.press("r")
        await wait_for(pilot, lambda: bool(rec.of(QualityRowMeasured)), 120)
        # the reference row is in while the others are still being measured: not frozen
        assert screen.running and "(Esc stops it)" in text_of(screen, "#quant-summary")
        await wait_for(pilot, lambda: bool(rec.of(QualityFinished)), 400)
        await pilot.pause(0.1)
        rows = rows_of(screen)
        assert [r[0] for r in rows] == [
            f"{model_path.name} (ref)",
            q4.name,
            f"{model_path.name} kv=q8_0",
            f"{model_path.name} kv=q4_0",
        ]
        assert [r[1] for r in rows] == ["Q4_1", "Q4_0", "Q4_1", "Q4_1"]
        ref, quant = rows[0], rows[1]
        assert ref[4] == "-" and 0.5 < float(quant[4]) < 1.0 and float(quant[5]) > 0
        summary = text_of(screen, "#quant-summary")
        assert f"reference {model_path.name}" in summary and "built-in sample" in summary
        assert "best file at hand" in text_of(screen, "#quant-notes")
        plot = str(screen.query_one("#quant-plot", PlotextPlot).render())
        assert "tg t/s vs mean KL" in plot and "Q4_0" in plot
        kept = json.loads((tmp_path / "data" / "quality" / "last.json").read_text())
        assert [r["quantization"] for r in kept["results"]] == ["Q4_1", "Q4_0", "Q4_1", "Q4_1"]

        # back, and again: the kept report is shown without measuring anything
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, QuantScreen)
        app.action_quant()  # F10 or Ctrl+P → Quant
        await wait_for(pilot, lambda: len(rec.of(QualityFinished)) == 2)
        await pilot.pause(0.1)
        assert [r[0] for r in rows_of(app.screen)] == [r[0] for r in rows]
        assert len(rec.of(QualityRowMeasured)) == 4


async def test_quant_view_without_a_model(tmp_path: Path) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        app.action_quant()
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, QuantScreen)
        await wait_for(pilot, lambda: "load one first" in text_of(screen, "#quant-summary"))
        await pilot.press("r")
        await pilot.pause(0.1)
        assert "No model: load one in the chat first" in text_of(screen, "#quant-summary")
        assert not screen.running
