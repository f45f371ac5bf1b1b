"""Serving from the prediction store in the chat, and the batch screen (Pilot, real model).

A real `tui-infer batch --publish` process fills a real store file in the test's data
directory; the app then answers one of its prompts from the store and a new prompt live,
and the batch screen's rollback, reject and publish change the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from tests.support.pilot import Recorder, make_app, notice, ready, send, wait_for
from tui_infer.app import messages as msg
from tui_infer.app.screens.batch import BatchScreen
from tui_infer.app.screens.chat import NotPrecomputed, ServedFromStore
from tui_infer.core.chat.history import History
from tui_infer.core.config import load_settings
from tui_infer.core.errors import ConfigError
from tui_infer.core.static.store import PredictionStore

pytestmark = pytest.mark.anyio

SIZE = (120, 40)
PROMPTS = ["What is the capital of France?", "Name a colour."]


def publish_batch(tmp_path: Path, model_path: Path) -> None:
    """`tui-infer batch` on two prompts, greedy, 8 tokens, published: run 1."""
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
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
            "8",
            "--parallel",
            "2",
            "--ctx",
            "512",
            "--publish",
            "--force",  # 8 tokens: an answer cut off is flagged; this test serves them
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def text_of(widget: Any) -> str:
    return str(widget.render())


async def test_chat_serves_from_the_store_and_the_batch_screen_reviews(
    tmp_path: Path, model_path: Path
) -> None:
    publish_batch(tmp_path, model_path)
    with PredictionStore(tmp_path / "data" / "store.sqlite3") as store:
        [stored] = [p for p in store.predictions(1) if p.prompt == PROMPTS[0]]
    assert stored.status == "published"

    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0.0, max_tokens=8, ctx=512)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        chat = app.chat
        # 1. the batch's prompt, same model, template and parameters: from the store
        await send(pilot, PROMPTS[0])
        await wait_for(pilot, lambda: bool(rec.of(ServedFromStore)) and not chat.generating)
        await pilot.pause(0.1)
        assert not rec.of(msg.GenerationFinished)  # the model did not answer it
        reply = chat.conversation.replies[-1]
        assert reply.text == stored.output
        footer = text_of(reply.query_one(".reply-footer", Static))
        assert "from store" in footer and "run 1" in footer
        assert "from store" in text_of(chat.stats_panel.query_one("#speed-line", Static))
        assert chat.history[-1].content == stored.output
        # history keeps where the reply came from
        assert chat.conversation_id is not None
        with History.in_data_dir(tmp_path / "data") as h:
            saved = h.get(chat.conversation_id).messages[-1]
        assert saved.figures is not None and saved.figures.source == "store"

        # 2. a new prompt (a new conversation, so only the prompt differs): live, recorded
        await chat.action_new_chat()
        await send(pilot, "Say hello.")
        await wait_for(pilot, lambda: bool(rec.of(msg.GenerationFinished)), timeout=60)
        await pilot.pause(0.1)
        assert len(rec.of(ServedFromStore)) == 1
        assert app.store.session_hits == 1 and app.store.session_misses == 1
        missed = [m["messages"] for m in app.store.misses()]
        assert [{"role": "user", "content": "Say hello."}] in missed
        figures = text_of(chat.stats_panel.query_one("#store-figures", Static))
        assert "50 %" in figures and "1 hits · 1 misses" in figures
        assert "tok/s" in text_of(chat.stats_panel.query_one("#speed-line", Static))

        # 3. serve = "store": a miss is refused, nothing generated, the text kept
        chat.settings = replace(chat.settings, serve="store")
        await chat.action_new_chat()
        await send(pilot, "Something never precomputed.")
        await wait_for(pilot, lambda: bool(rec.of(NotPrecomputed)))
        await pilot.pause(0.1)
        assert "not precomputed" in notice(app)
        assert len(rec.of(msg.GenerationFinished)) == 1
        assert chat.prompt_input.text == "Something never precomputed."

        # 3b. the batch's prompt at another temperature: refused, and the notice says why
        chat.settings = replace(chat.settings, temperature=0.7)
        await chat.action_new_chat()
        await send(pilot, PROMPTS[0])
        await wait_for(pilot, lambda: len(rec.of(NotPrecomputed)) == 2)
        await pilot.pause(0.1)
        said = notice(app)
        assert "precomputed with" in said and "this request asks" in said
        assert "temperature 0.7" in said
        assert len(rec.of(ServedFromStore)) == 1  # never served under other parameters
        chat.settings = replace(chat.settings, temperature=0.0)

        # 4. the batch screen: the run, its predictions; rollback, reject, publish
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, BatchScreen))
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, BatchScreen)
        runs = screen.query_one("#runs", DataTable)
        assert runs.row_count == 1
        assert runs.get_row("1")[1] == "published" and runs.get_row("1")[2] == "2/2"
        preds = screen.query_one("#predictions", DataTable)
        assert preds.row_count == 2
        assert {str(preds.get_row_at(i)[3]) for i in range(2)} == set(PROMPTS)

        await pilot.press("u")  # rollback asks first
        await pilot.pause(0.1)
        await pilot.click("#yes")
        await pilot.pause(0.2)
        assert app.store.run(1).status == "rolled-back"
        assert runs.get_row("1")[1] == "rolled-back"

        preds.focus()
        preds.move_cursor(row=0)
        first = str(preds.get_row_at(0)[1])
        await pilot.press("space")  # mark the first row
        await pilot.press("x")  # reject the marked rows
        await pilot.pause(0.2)
        by_id = {p.item_id: p for p in app.store.predictions(1)}
        assert by_id[first].status == "rejected"
        assert [p.status for i, p in by_id.items() if i != first] == ["staged"]

        await pilot.press("p")
        await pilot.pause(0.2)
        if app.screen is not screen:  # the other row is flagged (cut off): publish anyway
            await pilot.click("#yes")
            await pilot.pause(0.2)
        by_id = {p.item_id: p for p in app.store.predictions(1)}
        assert by_id[first].status == "rejected"
        assert [p.status for i, p in by_id.items() if i != first] == ["published"]
        assert runs.get_row("1")[1] == "published" and runs.get_row("1")[3] == "1"

        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, BatchScreen))

    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["run"] for row in out] == [1, 1]


async def test_batch_screen_with_an_empty_store_and_a_bad_path(tmp_path: Path) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, BatchScreen))
        await pilot.pause(0.1)
        screen = app.screen
        assert "no runs yet" in text_of(screen.query_one("#batch-status", Static))
        await pilot.press("p")  # nothing to publish: a warning, no crash
        await pilot.press("u")
        await pilot.press("n")  # no model loaded: cannot start a batch
        await pilot.pause(0.1)
        assert screen.process is None
        assert isinstance(app.screen, BatchScreen)


def test_serve_setting_is_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('serve = "store"\n')
    assert load_settings(cfg, environ={}).serve == "store"
    cfg.write_text('serve = "cache"\n')
    with pytest.raises(ConfigError, match="'serve' must be one of store-then-live, live, store"):
        load_settings(cfg, environ={})
    assert load_settings(tmp_path / "none.toml", environ={}).serve == "store-then-live"
