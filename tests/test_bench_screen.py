"""The bench screen, driven as a user would, on the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Label, Static

from tests.support.pilot import make_app, wait_for
from tui_infer.app.screens.bench import BenchScreen, bar_chart
from tui_infer.core.bench.history import BenchHistory
from tui_infer.core.bench.measure import BenchConfig, BenchResult

pytestmark = pytest.mark.anyio


def test_bar_chart_scales_each_kind_to_its_fastest() -> None:
    cfg = BenchConfig(2, -1, 256, 512, "f16", True)
    rs = [
        BenchResult("pp64", "pp", 64, 0, cfg, (300.0,)),
        BenchResult("tg16", "tg", 16, 0, cfg, (100.0,)),
        BenchResult("tg32", "tg", 32, 0, cfg, (50.0,)),
    ]
    lines = bar_chart(rs, width=10).splitlines()
    assert [line.count("█") for line in lines] == [10, 10, 5]
    assert "300.0 tok/s" in lines[0]


async def test_bench_screen_runs_and_keeps_history(tmp_path: Path, model_path: Path) -> None:
    app = make_app(tmp_path, model_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.chat.engine is not None)
        await pilot.press("f7")
        await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen))
        screen = app.screen
        assert isinstance(screen, BenchScreen)
        # the library's name for the model (as the chat's title), not its path
        shown = str(screen.query_one("#bench-model", Label).render())
        assert shown == f"Model: {model_path.stem}", shown
        for widget_id, value in (("#bench-pp", "16"), ("#bench-tg", "8"), ("#bench-reps", "2")):
            screen.query_one(widget_id, Input).value = value
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running and len(screen.results) == 2, 120)
        table = screen.query_one("#bench-results", DataTable)
        assert table.row_count == 2
        assert [r.test for r in screen.results] == ["pp16", "tg8"]
        assert all(r.mean > 0 and len(r.samples_tps) == 2 for r in screen.results)
        chart = str(screen.query_one("#bench-chart", Static).render())
        assert "pp16" in chart and "█" in chart
        status = str(screen.query_one("#bench-status", Static).render())
        assert status.startswith("done: run 1")
        await wait_for(pilot, lambda: screen.query_one("#bench-history", DataTable).row_count == 1)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, BenchScreen))
    history = BenchHistory(tmp_path / "data" / "bench.sqlite3")
    try:
        (run,) = history.runs()
        assert [r.test for r in run.results] == ["pp16", "tg8"]
    finally:
        history.close()


async def test_bench_screen_bad_input(tmp_path: Path, model_path: Path) -> None:
    app = make_app(tmp_path, model_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f7")
        await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen))
        screen = app.screen
        assert isinstance(screen, BenchScreen)
        screen.query_one("#bench-reps", Input).value = "0"
        await pilot.press("ctrl+r")
        await pilot.pause()
        status = str(screen.query_one("#bench-status", Static).render())
        assert "reps of 1 or more" in status and not screen.running


async def test_bench_screen_shows_an_unexpected_failure(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure the run did not expect ends in an error state, never a stuck 'running'."""
    from tui_infer.core.bench import measure

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the bench broke")

    monkeypatch.setattr(measure, "run_plan", broken)
    app = make_app(tmp_path, model_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.chat.engine is not None)
        await pilot.press("f7")
        await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen))
        screen = app.screen
        assert isinstance(screen, BenchScreen)
        screen.query_one("#bench-pp", Input).value = "16"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running, 60)
        status = str(screen.query_one("#bench-status", Static).render())
        assert status == "error: RuntimeError: the bench broke"
