"""The Drift view (Pilot, the real model, a real store file, a real `tui-infer batch`).

A published batch answers one prompt in the chat, two other prompts miss; F6 shows the hit
rate and the misses, each with its nearest stored prompt as a suggestion; `b` writes the
top misses as a batch input and starts the next batch on them; once it is published the
misses are answered and the view says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from tests.support.pilot import Recorder, make_app, ready, send, synthetic_app, wait_for
from tui_infer.app import messages as msg
from tui_infer.app.screens.batch import BatchScreen
from tui_infer.app.screens.chat import ServedFromStore
from tui_infer.app.screens.drift import DriftComputed, DriftScreen

pytestmark = pytest.mark.anyio

SIZE = (140, 40)
STORED = "What is the capital of France?"
MISSED = ["What is the capital of Spain?", "Write a haiku about the sea."]
MAX_TOKENS = 48


def publish_batch(tmp_path: Path, model_path: Path, prompts: list[str]) -> None:
    """`tui-infer batch --publish` on the prompts, greedy (a reply that ends by itself: one
    cut at max_tokens is flagged, and publishing waits for its review)."""
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    env = {**os.environ, "TUI_INFER_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tui_infer",
            "batch",
            str(src),
            "-o",
            str(tmp_path / "out.jsonl"),
            "-m",
            str(model_path),
            "--max-tokens",
            str(MAX_TOKENS),
            "--ctx",
            "512",
            "--publish",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def text_of(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def rows_of(screen: Any) -> list[list[str]]:
    table = screen.query_one("#drift-misses", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_drift_view_shows_the_misses_and_batches_them(
    tmp_path: Path, model_path: Path
) -> None:
    publish_batch(tmp_path, model_path, [STORED])
    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0.0, max_tokens=MAX_TOKENS, ctx=512)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        chat = app.chat
        await send(pilot, STORED)  # a hit
        await wait_for(pilot, lambda: bool(rec.of(ServedFromStore)) and not chat.generating)
        for i, prompt in enumerate(MISSED, 1):  # two misses, answered live
            await chat.action_new_chat()
            await send(pilot, prompt)
            await wait_for(pilot, lambda i=i: len(rec.of(msg.GenerationFinished)) == i, 60)
        # the last reply has become Markdown before another screen hides the chat (a hidden
        # screen does not refresh: its pending callback would run at exit, on a torn-down
        # reply: NoMatches '.reply-body', seen once in five runs)
        await wait_for(pilot, lambda: not chat.conversation.query(".reply-tail"))

        await pilot.press("f6")
        await wait_for(pilot, lambda: bool(rec.of(DriftComputed)))
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, DriftScreen)
        said = text_of(screen, "#drift-summary")
        assert "1 hits, 2 misses, hit rate 33%" in said, said
        assert model_path.name in said and "2 requests still missed" in said
        assert "unlike anything stored: 50% of the asks" in said
        rows = rows_of(screen)
        assert sorted(r[2] for r in rows) == sorted(MISSED)
        kinds = {r[2]: r[3] for r in rows}
        assert kinds[MISSED[1]] == "unlike" and kinds[MISSED[0]].endswith("%")
        # the highlighted miss's suggestion, never served
        screen.query_one("#drift-misses", DataTable).move_cursor(
            row=[r[2] for r in rows].index(MISSED[0])
        )
        await pilot.pause(0.1)
        near = text_of(screen, "#drift-near")
        assert "a suggestion, never served" in near and STORED in near and "run 1" in near
        plot = str(screen.query_one("#drift-plot", PlotextPlot).render())
        assert "hit rate % (left) and misses (right)" in plot

        # d: per day, the same figures
        await pilot.press("d")
        await wait_for(pilot, lambda: len(rec.of(DriftComputed)) == 2)
        await pilot.pause(0.1)
        assert "per day, the last 30 days" in text_of(screen, "#drift-summary")
        assert "1 hits, 2 misses" in text_of(screen, "#drift-summary")

        # b: the top misses become the next batch's input, started on the batch screen
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, BatchScreen))
        batch = app.screen
        assert isinstance(batch, BatchScreen)
        [written] = list((tmp_path / "data" / "batches").glob("drift-*.jsonl"))
        lines = [json.loads(line) for line in written.read_text().splitlines()]
        assert sorted(line["messages"][-1]["content"] for line in lines) == sorted(MISSED)
        assert all(line["max_tokens"] == MAX_TOKENS for line in lines)
        assert all(line["model_sha256"] == app.store.model_sha256(model_path) for line in lines)
        await wait_for(pilot, lambda: batch.process is None, timeout=120)
        run = app.store.runs()[-1]
        assert run.id == 2 and run.status == "done" and run.n_done == 2
        assert sorted(p.prompt for p in app.store.predictions(2)) == sorted(MISSED)

        # published, the misses are answered: the view says so
        app.store.publish(2)
        await pilot.press("escape")  # back to the Drift view (the batch has finished)
        await wait_for(pilot, lambda: isinstance(app.screen, DriftScreen))
        await pilot.press("r")
        await wait_for(pilot, lambda: len(rec.of(DriftComputed)) == 3)
        await pilot.pause(0.1)
        assert "no missed request left unanswered" in text_of(screen, "#drift-summary")
        assert rows_of(screen) == []


async def test_palette_opens_drift_and_an_empty_store_has_nothing_to_batch(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    app = synthetic_app(tmp_path)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        assert "Drift" in {c.title for c in app.get_system_commands(app.screen)}
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Drift")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(rec.of(DriftComputed)))
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, DriftScreen)
        said = text_of(screen, "#drift-summary")
        assert "0 hits, 0 misses, hit rate -" in said and "no missed request" in said
        assert "no lookups counted" in str(screen.query_one("#drift-plot", PlotextPlot).render())
        await pilot.press("b")
        await pilot.pause(0.2)
        assert isinstance(app.screen, DriftScreen)  # nothing started
        assert not (tmp_path / "data" / "batches").exists()
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, DriftScreen)
