"""Conversations in the TUI, driven as a user would: history across restarts, the sidebar,
regenerate, edit and fork, copy, the overflow choice, settings, the template, help.

Most tests use the synthetic engine (the keys and the history are under test, not the
model); the restart and template tests use the real default model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox, Input, OptionList, Static

from tests.support.fakes import FakeTemplate
from tests.support.pilot import Recorder, make_app, ready, send, synthetic_app, wait_for
from tui_infer.app import messages as msg
from tui_infer.app.app import TuiInferApp
from tui_infer.app.screens.dialogs import (
    ConfirmScreen,
    HelpScreen,
    OverflowScreen,
    PickScreen,
    TemplateScreen,
    TextPromptScreen,
)
from tui_infer.app.screens.settings import SettingsScreen
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.app.widgets.conversation import Reply, UserTurn
from tui_infer.core.chat.history import History
from tui_infer.core.config import load_settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import Message

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


def footers(app: TuiInferApp) -> list[str]:
    return [str(r.query_one(".reply-footer", Static).render()) for r in app.chat.query(Reply)]


def shown(app: TuiInferApp) -> list[str]:
    return [w.text for w in app.chat.conversation.children if isinstance(w, (UserTurn, Reply))]


async def finish_reply(pilot: Any, rec: Recorder, n: int) -> None:
    await wait_for(pilot, lambda: len(rec.of(msg.GenerationFinished)) >= n)
    await wait_for(pilot, lambda: not pilot.app.chat.generating)
    await pilot.pause(0.1)


async def choose_chat(pilot: Any, title: str) -> None:
    """Arrow to the chat in the sidebar and press Enter."""
    chats = pilot.app.chat.query_one(ChatList)
    options = chats.query_one(OptionList)
    options.focus()
    index = next(i for i, t in enumerate(chats.titles) if title in t)
    options.highlighted = 0
    for _ in range(index):
        await pilot.press("down")
    await pilot.press("enter")
    await pilot.pause(0.2)


async def test_history_survives_restart_with_figures(tmp_path: Path, model_path: Path) -> None:
    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0, max_tokens=12)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, "What is the capital of France?", type_it=True)
        await finish_reply(pilot, rec, 1)
        reply_text = app.chat.history[-1].content
        figures_before = footers(app)
        assert "12 tokens" in figures_before[0] or "done" in figures_before[0]
        assert "What is the capital of France?" in app.chat.query_one(ChatList).titles[0]
        await pilot.press("ctrl+q")

    # a new app on the same data directory: the chat is listed, with its figures
    seen: list[list[Message]] = []

    class Spy:
        def __init__(self, engine: Engine) -> None:
            self._engine = engine

        def __getattr__(self, name: str) -> Any:
            return getattr(self._engine, name)

        def chat(self, messages: list[Message], *args: Any) -> Any:
            seen.append(list(messages))
            return self._engine.chat(messages, *args)

    rec2 = Recorder()
    app2 = make_app(
        tmp_path,
        model_path,
        engine_loader=lambda p, o: Spy(Engine.load(p, o)),
        temperature=0,
        max_tokens=6,
    )
    async with app2.run_test(size=SIZE, message_hook=rec2) as pilot:
        await ready(pilot)
        assert not app2.chat.conversation.query(Reply)  # starts on a new chat
        await choose_chat(pilot, "What is the capital")
        assert shown(app2) == ["What is the capital of France?", reply_text]
        assert footers(app2) == figures_before  # the figures, exactly as they were
        # continuing it sends the old turns as context
        await send(pilot, "And of Italy?")
        await finish_reply(pilot, rec2, 1)
        assert [m.content for m in seen[0]] == [
            "What is the capital of France?",
            reply_text,
            "And of Italy?",
        ]
        assert app2.chat.stats_panel.context_tokens > 0
    with History.in_data_dir(tmp_path / "data") as h:
        [conv] = h.conversations()
        assert conv.messages == 4


async def test_sidebar_new_switch_search_rename_delete(tmp_path: Path) -> None:
    rec = Recorder()
    app = synthetic_app(tmp_path, max_tokens=3)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        chats = app.chat.query_one(ChatList)
        assert chats.display  # 120 columns: shown
        assert chats.titles == ["(no chats yet)"]
        await send(pilot, "tell me about rivers")
        await finish_reply(pilot, rec, 1)
        await pilot.press("ctrl+n")
        await send(pilot, "a recipe for bread")
        await finish_reply(pilot, rec, 2)
        assert [t.strip("● ") for t in chats.titles] == [
            "a recipe for bread",
            "tell me about rivers",
        ]
        assert chats.titles[0].startswith("●")  # the open one

        # switch
        await choose_chat(pilot, "rivers")
        assert shown(app)[0] == "tell me about rivers"
        assert len(app.chat.history) == 2

        # search by text inside a message (the synthetic replies say word1 word2 ...)
        await pilot.press("ctrl+f")
        await pilot.press(*"bread")
        await pilot.pause(0.1)
        assert [t.strip("● ") for t in chats.titles] == ["a recipe for bread"]
        app.chat.query_one("#chat-search", Input).value = "nothing like this"
        await pilot.pause(0.1)
        assert chats.titles == ["(no match)"]
        app.chat.query_one("#chat-search", Input).value = ""
        await pilot.pause(0.1)

        # rename (F2)
        app.chat.prompt_input.focus()
        await pilot.press("f2")
        await pilot.pause(0.1)
        assert isinstance(app.screen, TextPromptScreen)
        app.screen.query_one(Input).value = "Rivers of Europe"
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert any("Rivers of Europe" in t for t in chats.titles)

        # delete (F8): asks first; Cancel keeps it
        await pilot.press("f8")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Rivers of Europe" in str(app.screen.query_one(".dialog-text", Static).render())
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert len(chats.titles) == 2
        await pilot.press("f8")
        await pilot.pause(0.1)
        await pilot.click("#yes")
        await pilot.pause(0.2)
        assert [t.strip("● ") for t in chats.titles] == ["a recipe for bread"]
        assert app.chat.history == [] and app.chat.conversation_id is None


async def test_regenerate_edit_fork_and_copy(tmp_path: Path) -> None:
    rec = Recorder()
    app = synthetic_app(tmp_path, max_tokens=3)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, "first question")
        await finish_reply(pilot, rec, 1)
        await send(pilot, "second question")
        await finish_reply(pilot, rec, 2)
        cid = app.chat.conversation_id
        assert cid is not None

        # regenerate (Ctrl+R): the last reply is replaced, nothing else changes
        app.chat.engine.tokens_per_s = 1000.0  # a new reply with other figures
        await pilot.press("ctrl+r")
        await finish_reply(pilot, rec, 3)
        assert len(app.chat.history) == 4
        assert [m.content for m in app.chat.history[:3]] == [
            "first question",
            "word1 word2 word3 ",
            "second question",
        ]
        assert len(app.chat.query(Reply)) == 2 and len(app.chat.query(UserTurn)) == 2

        # edit the first message (Ctrl+G): the chat forks there, the old branch is dropped
        await pilot.press("ctrl+g")
        await pilot.pause(0.1)
        assert isinstance(app.screen, PickScreen)
        await pilot.press("enter")  # message 1
        await pilot.pause(0.1)
        assert app.chat.prompt_input.text == "first question"
        assert "old branch is dropped" in str(app.chat.query_one("#notice", Static).render())
        app.chat.prompt_input.clear()
        app.chat.prompt_input.insert("first question, edited")
        await pilot.press("enter")
        await finish_reply(pilot, rec, 4)
        assert shown(app) == ["first question, edited", "word1 word2 word3 "]
        with History.in_data_dir(tmp_path / "data") as h:
            stored = h.get(cid)
        assert [m.content for m in stored.messages] == [
            "first question, edited",
            "word1 word2 word3 ",
        ]
        assert stored.messages[1].figures is not None

        # copy the last reply (F5): OSC 52, and a notification says so
        await pilot.press("f5")
        await pilot.pause(0.1)
        assert app.clipboard == "word1 word2 word3 "
        assert any("copied the last reply" in n.message for n in app._notifications)


async def test_regenerate_replaces_the_reply_with_a_new_one(
    tmp_path: Path, model_path: Path
) -> None:
    """The real model, sampled with a seed: regenerating with another seed gives another
    reply, which replaces the old one on screen, in the turns and in the history file."""
    from dataclasses import replace

    rec = Recorder()
    app = make_app(
        tmp_path, model_path, temperature=1.0, top_p=1.0, min_p=0.0, seed=1, max_tokens=16
    )
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, "Tell me a very short story about a cat.")
        await finish_reply(pilot, rec, 1)
        first = app.chat.history[-1].content
        app.chat.settings = replace(app.chat.settings, seed=2)
        await pilot.press("ctrl+r")
        await finish_reply(pilot, rec, 2)
        second = app.chat.history[-1].content
        assert second.strip() and second != first
        assert len(app.chat.history) == 2
        assert shown(app)[-1].strip() == second.strip()
        cid = app.chat.conversation_id
        assert cid is not None
        with History.in_data_dir(tmp_path / "data") as h:
            stored = h.get(cid)
        assert [m.content for m in stored.messages][-1] == second
        assert len(stored.messages) == 2


async def test_overflow_asks_then_drops_and_remembers(tmp_path: Path) -> None:
    rec = Recorder()
    app = synthetic_app(tmp_path, ctx=64, max_tokens=2)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        old = "an old remark about the weather " * 3
        app.chat.history = [Message("user", old), Message("assistant", old)] * 2

        # Cancel: nothing sent, the text stays
        await send(pilot, "Hi there")
        await wait_for(pilot, lambda: isinstance(app.screen, OverflowScreen))
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not rec.of(msg.PromptAccepted)
        assert app.chat.prompt_input.text == "Hi there"
        assert "not sent" in str(app.chat.query_one("#notice", Static).render())

        # Drop the oldest, and remember it
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, OverflowScreen))
        app.screen.query_one("#remember", Checkbox).value = True
        await pilot.click("#drop")
        await finish_reply(pilot, rec, 1)
        accepted = rec.of(msg.PromptAccepted)[0]
        assert accepted.dropped_turns >= 2 and accepted.prompt_tokens < 64
        notes = [str(n.render()) for n in app.chat.conversation.query("Notice")]
        assert any("dropped the" in n for n in notes)
        assert app.chat.settings.overflow == "drop-oldest"
    assert 'overflow = "drop-oldest"' in (tmp_path / "config.toml").read_text()
    assert load_settings(tmp_path / "config.toml", {}).overflow == "drop-oldest"


async def test_settings_validate_and_reload(tmp_path: Path, model_path: Path) -> None:
    """The real model: a reload really makes llama.cpp's context the new size."""
    rec = Recorder()
    app = make_app(tmp_path, model_path, max_tokens=3)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert isinstance(app.screen, SettingsScreen)
        dialog = app.screen
        dialog.query_one("#set-top_p", Input).value = "1.5"
        await pilot.pause(0.1)
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert app.screen is dialog  # not saved
        error = str(dialog.query_one("#settings-error", Static).render())
        assert "'top_p' must be in (0, 1]" in error
        dialog.query_one("#set-top_p", Input).value = "0.5"
        dialog.query_one("#set-ctx", Input).value = "2048"
        await pilot.pause(0.1)
        assert "reloads the model" in str(dialog.query_one("#settings-reload", Static).render())
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(rec.of(msg.ModelLoaded)) == 2)
        await ready(pilot)
        assert app.chat.settings.top_p == 0.5 and app.chat.engine.n_ctx == 2048


async def test_help_template_and_small_terminal(tmp_path: Path) -> None:
    app = synthetic_app(tmp_path, max_tokens=3)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        chats = app.chat.query_one(ChatList)
        assert not chats.display  # below 120 columns: hidden
        await pilot.press("ctrl+l")
        await pilot.pause(0.1)
        assert chats.display
        await pilot.press("ctrl+l")
        await pilot.press("f1")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        keys = str(app.screen.query_one("#help-keys", Static).render())
        for line in ("f1", "^r      generate the last reply again", "settings", "chats", "esc"):
            assert line.lower() in keys.lower()
        await pilot.press("escape")
        app.chat.engine.template = FakeTemplate(warning="this model has no chat template")
        app.chat.system_prompt = "Be terse."
        await pilot.press("ctrl+t")
        await pilot.pause(0.1)
        assert isinstance(app.screen, TemplateScreen)
        rendered = str(app.screen.query_one("#template-rendered", Static).render())
        assert rendered.startswith("<|system|>Be terse.")
        warning = str(app.screen.query_one("#template-warning", Static).render())
        assert "no chat template" in warning


async def test_template_of_the_real_model(tmp_path: Path, model_path: Path) -> None:
    rec = Recorder()
    app = make_app(tmp_path, model_path, max_tokens=2, temperature=0)
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, "Hello")
        await finish_reply(pilot, rec, 1)
        await pilot.press("ctrl+t")
        await pilot.pause(0.2)
        rendered = str(app.screen.query_one("#template-rendered", Static).render())
        # SmolLM2's own template: ChatML with its default system prompt, specials visible
        assert "<|im_start|>user\nHello<|im_end|>" in rendered
        assert rendered == app.chat.engine.render(app.chat._system_messages() + app.chat.history)
        assert not app.screen.query("#template-warning")


async def test_overflow_refuse_policy_does_not_ask(tmp_path: Path) -> None:
    rec = Recorder()
    app = synthetic_app(tmp_path, ctx=64, max_tokens=2, overflow="refuse")
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        old = "an old remark about the weather " * 3
        app.chat.history = [Message("user", old), Message("assistant", old)] * 2
        await send(pilot, "Hi there")
        await wait_for(pilot, lambda: bool(rec.of(msg.PromptRefused)))
        await pilot.pause(0.1)
        assert not isinstance(app.screen, OverflowScreen)
        assert not rec.of(msg.PromptAccepted)
        assert app.chat.prompt_input.text == "Hi there"


def test_remembering_the_overflow_choice_edits_only_that_key(tmp_path: Path) -> None:
    from tui_infer.core.config import write_config_key
    from tui_infer.core.errors import ConfigError

    cfg = tmp_path / "config.toml"
    cfg.write_text("# my settings\nctx = 2048\n\n[sampling]\ntemperature = 0.3\n")
    write_config_key(cfg, "overflow", "drop-oldest")
    text = cfg.read_text()
    assert text.startswith("# my settings\nctx = 2048\n")
    assert text.index('overflow = "drop-oldest"') < text.index("[sampling]")
    s = load_settings(cfg, {})
    assert (s.overflow, s.ctx, s.temperature) == ("drop-oldest", 2048, 0.3)
    # a key already there (even inside a table) is replaced where it is
    cfg.write_text('[chat]\noverflow = "refuse"  # old\n')
    write_config_key(cfg, "overflow", "drop-oldest")
    assert cfg.read_text() == '[chat]\noverflow = "drop-oldest"\n'
    # a broken file is refused and left as it was
    cfg.write_text("ctx = = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        write_config_key(cfg, "overflow", "drop-oldest")
    assert cfg.read_text() == "ctx = = 3\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temp file left
