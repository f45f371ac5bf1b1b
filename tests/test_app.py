"""The chat TUI driven as a user would (Textual Pilot), on the real default model.

Each test types, presses keys, waits for the workers and asserts on what the
screen shows and on the messages the app passed (recorded with message_hook).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Markdown, Static

from tests.support.pilot import (
    Recorder,
    banner,
    make_app,
    notice,
    ready,
    send,
    synthetic_app,
    wait_for,
)
from tui_infer.app import messages as msg
from tui_infer.app.app import TuiInferApp
from tui_infer.app.widgets.conversation import Reply, UserTurn
from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.models.resolve import NO_MODEL_HELP
from tui_infer.core.paths import Paths

SIZE = (120, 40)

# async tests run on anyio's pytest plugin (asyncio backend)
pytestmark = pytest.mark.anyio


async def test_reply_streams_and_figures_update(tmp_path: Path, model_path: Path) -> None:
    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0, max_tokens=40)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        chat = app.chat
        assert chat.engine is not None
        panel = chat.stats_panel
        assert panel.kv is not None and panel.kv.n_ctx == chat.engine.n_ctx
        assert "Q4_1" in str(panel.query_one("#model-line", Static).render())
        await send(pilot, "What is the capital of France?", type_it=True)
        await wait_for(pilot, lambda: not chat.generating)
        await pilot.pause(0.1)

        finished = rec.of(msg.GenerationFinished)
        assert len(finished) == 1
        stats = finished[0].stats
        assert stats.finish_reason in ("stop", "length") and stats.generated_tokens > 0
        text = finished[0].text
        assert text.strip()
        # the whole reply, as streamed, is in the conversation's Markdown
        reply = chat.conversation.query_one(Reply)
        assert reply.text == text
        assert reply.query_one(Markdown).source == text
        assert "What is the capital of France?" in chat.conversation.query_one(UserTurn).source
        footer = str(reply.query_one(".reply-footer", Static).render())
        assert f"{stats.generated_tokens} tokens" in footer and "tok/s" in footer
        assert panel.generation_tps > 0 and panel.kv_tokens > 0 and panel.ttft_s
        assert panel.kv_tokens == stats.kv.tokens
        assert "tok/s" in str(panel.query_one("#speed-line", Static).render())
        # a short reply still leaves a point on the sparkline (its own speed, at the end)
        from textual.widgets import Sparkline

        assert panel.query_one("#tps-sparkline", Sparkline).data
        assert panel.memory is not None and panel.memory.rss_bytes > 0
        assert chat.prompt_input.text == ""  # sent, so cleared
        assert [m.role for m in chat.history] == ["user", "assistant"]

        # A second turn reuses the cached prefix: fewer prompt tokens evaluated.
        await send(pilot, "And of Italy?")
        await wait_for(pilot, lambda: len(rec.of(msg.GenerationFinished)) == 2)
        second = rec.of(msg.GenerationFinished)[1].stats
        assert second.prompt_tokens > stats.prompt_tokens
        assert second.prompt_tokens_evaluated < second.prompt_tokens


async def test_escape_stops_generation(tmp_path: Path, model_path: Path) -> None:
    rec = Recorder()
    # Greedy: this prompt runs to the 400-token limit, so the reply cannot end
    # on its own before Esc (a sampled story sometimes stopped after ~10 tokens).
    app = make_app(tmp_path, model_path, temperature=0.0, max_tokens=400)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        chat = app.chat
        await send(pilot, "Write a long story")
        panel = chat.stats_panel
        await wait_for(pilot, lambda: panel.generated_tokens >= 5)
        # the figures move while the reply streams
        assert chat.generating and panel.generating
        assert panel.kv_tokens > panel.prompt_tokens > 0
        await wait_for(pilot, lambda: panel.generation_tps > 0)
        await pilot.press("escape")
        pressed = time.monotonic()
        await wait_for(pilot, lambda: not chat.generating, timeout=5)
        assert time.monotonic() - pressed < 2.0
        stats = rec.of(msg.GenerationFinished)[0].stats
        assert stats.finish_reason == "cancelled"
        assert 5 <= stats.generated_tokens < 400
        reply = chat.conversation.query_one(Reply)
        assert reply.text.strip()  # what was generated stays
        assert "[stopped]" in str(reply.query_one(".reply-footer", Static).render())
        assert chat.stats_panel.finish_reason == "cancelled"


async def test_bad_model_file_shows_error_and_keeps_running(
    tmp_path: Path, model_path: Path
) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("these are my notes, not a model\n")
    rec = Recorder()
    app = make_app(tmp_path, bad)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        failed = rec.of(msg.ModelLoadFailed)
        assert len(failed) == 1 and "not a GGUF file" in failed[0].error
        assert "not a GGUF file" in banner(app) and str(bad) in banner(app)
        assert app.is_running and app.chat.engine is None
        await send(pilot, "hello")
        await pilot.pause(0.1)
        assert "no model loaded" in notice(app)
        assert app.chat.prompt_input.text == "hello"  # kept
        assert not rec.of(msg.PromptAccepted)

        # Load the real model from the "Load model…" dialog (Ctrl+O), in a worker.
        await pilot.press("ctrl+o")
        await pilot.pause(0.1)
        from textual.widgets import Input

        box = app.screen.query_one("#model-path", Input)
        box.value = str(model_path)
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(rec.of(msg.ModelLoaded)))
        await pilot.pause(0.1)
        assert app.chat.engine is not None
        assert not app.chat.query_one("#banner").display


async def test_no_model_shows_help(tmp_path: Path) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert NO_MODEL_HELP in banner(app)
        await send(pilot, "hello")
        await pilot.pause(0.1)
        assert "there is no model loaded" in notice(app)
        assert app.is_running


async def test_startup_error_is_shown(tmp_path: Path) -> None:
    app = TuiInferApp(
        settings=Settings(),
        paths=Paths(tmp_path / "c.toml", tmp_path / "d"),
        model_path=None,
        startup_error="no model named 'llama9' (known: x)",
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert "no model named 'llama9'" in banner(app)


async def test_overflow_is_refused_and_input_kept(tmp_path: Path, model_path: Path) -> None:
    rec = Recorder()
    app = make_app(tmp_path, model_path, ctx=256)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        long_text = "tell me about " + "the river and the mountain " * 60
        await send(pilot, long_text)
        await wait_for(pilot, lambda: bool(rec.of(msg.PromptRefused)))
        await pilot.pause(0.1)
        assert "not sent" in notice(app) and "context window holds 256" in notice(app)
        assert app.chat.prompt_input.text == long_text
        assert not rec.of(msg.PromptAccepted) and not rec.of(msg.TokensStreamed)
        assert not app.chat.conversation.query(UserTurn)
        assert app.chat.history == []


async def test_overflow_warning_before_reply(tmp_path: Path, model_path: Path) -> None:
    """Prompt fits but prompt + max_tokens does not: warned, then sent."""
    rec = Recorder()
    app = make_app(tmp_path, model_path, ctx=256, max_tokens=300, temperature=0.8)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, "Hi")
        await wait_for(pilot, lambda: bool(rec.of(msg.PromptAccepted)))
        await pilot.pause(0.05)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.chat.generating)
        assert rec.of(msg.PromptAccepted)[0].warning
        assert "warning" in notice(app) and "at most" in notice(app)


async def test_drop_oldest_turns(tmp_path: Path, model_path: Path) -> None:
    from tui_infer.core.inference.types import Message as Turn

    rec = Recorder()
    app = make_app(tmp_path, model_path, ctx=256, overflow="drop-oldest", max_tokens=8)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        old = "an old remark about the weather " * 10
        app.chat.history = [Turn("user", old), Turn("assistant", old)] * 2
        await send(pilot, "Hi")
        await wait_for(pilot, lambda: bool(rec.of(msg.GenerationFinished)))
        accepted = rec.of(msg.PromptAccepted)[0]
        assert accepted.dropped_turns >= 2 and accepted.prompt_tokens < 256
        assert accepted.turns[0].role == "user" and accepted.turns[-1].content == "Hi"
        notes = [str(n.render()) for n in app.chat.conversation.query("Notice")]
        assert any("dropped the" in n for n in notes)


async def test_system_prompt_is_sent_first(tmp_path: Path, model_path: Path) -> None:
    seen: list[list[Any]] = []

    class Spy:
        def __init__(self, engine: Engine) -> None:
            self._engine = engine

        def __getattr__(self, name: str) -> Any:
            return getattr(self._engine, name)

        def chat(self, messages: list[Any], *args: Any) -> Any:
            seen.append(list(messages))
            return self._engine.chat(messages, *args)

    app = make_app(
        tmp_path,
        model_path,
        system="You are terse.",
        max_tokens=4,
        engine_loader=lambda p, o: Spy(Engine.load(p, o)),
    )
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Hi")
        await wait_for(pilot, lambda: bool(seen) and not app.chat.generating)
        assert [(m.role, m.content) for m in seen[0]] == [
            ("system", "You are terse."),
            ("user", "Hi"),
        ]


async def test_ctrl_j_newline_new_chat_and_palette(tmp_path: Path) -> None:
    """Synthetic engine: the keys, not the model, are under test here."""
    rec = Recorder()
    app = synthetic_app(tmp_path, max_tokens=20)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await pilot.press("a", "ctrl+j", "b")
        assert app.chat.prompt_input.text == "a\nb"
        assert not rec.of(msg.PromptAccepted)
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(rec.of(msg.GenerationFinished)))
        await pilot.pause(0.1)
        assert app.chat.conversation.query(Reply)
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert not app.chat.conversation.query(Reply) and app.chat.history == []
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {
            "New chat",
            "Stop generation",
            "Focus input",
            "Load model…",
            "Reload model",
        } <= titles


async def test_tokens_are_coalesced(tmp_path: Path) -> None:
    """2,000 tokens/s reach the UI as one message per pacing interval, not one per token."""
    import math

    rec = Recorder()
    app = synthetic_app(tmp_path, max_tokens=2000)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, "go")
        await wait_for(pilot, lambda: bool(rec.of(msg.GenerationFinished)))
        await pilot.pause(0.2)
        streamed = rec.of(msg.TokensStreamed)
        [done] = rec.of(msg.GenerationFinished)
        # one flush per `text_s` while tokens come, plus the last piece
        every = app.chat.pacing.text_s
        assert 1 <= len(streamed) <= math.ceil(done.stats.total_s / every) + 1
        reply = app.chat.conversation.query_one(Reply)
        assert reply.text.count("word") == 2000
        assert reply.query_one(Markdown).source == reply.text
