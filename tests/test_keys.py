"""Keys that live with tmux and screen: no default on a multiplexer's prefix (Ctrl+B,
Ctrl+A); every key rebound by [keys] in the config, checked at start with a one-line
error; the footer and F1 show the keys in force. And the theme: saved, and read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.binding import Binding
from textual.widgets import Static
from textual.widgets._footer import FooterKey

from tests.support.app_classes import app_classes_with_keys
from tests.support.pilot import ready, synthetic_app
from tui_infer.app.app import TuiInferApp
from tui_infer.app.screens.chat import ChatScreen
from tui_infer.app.screens.dialogs import HelpScreen
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.cli import main
from tui_infer.core.config import DEFAULT_KEYS, MULTIPLEXER_PREFIXES, load_keys, load_settings
from tui_infer.core.errors import ConfigError

pytestmark = pytest.mark.anyio


def _bindings() -> list[Binding]:
    out = []
    for b in [*TuiInferApp.BINDINGS, *ChatScreen.BINDINGS]:
        assert isinstance(b, Binding)
        out.append(b)
    return out


def _every_screens_bindings() -> list[Binding]:
    """The bindings of every screen, dialog and widget of the app (its modules' classes;
    Textual's own left out: a TextArea's Ctrl+A is line start, not ours)."""
    out = _bindings()
    for cls in app_classes_with_keys():
        for b in cls.__dict__["BINDINGS"]:
            out.append(b if isinstance(b, Binding) else Binding(b[0], b[1]))
    return out


def test_no_default_key_is_a_multiplexer_prefix() -> None:
    keys = {k.strip() for b in _every_screens_bindings() for k in b.key.split(",")}
    assert len(keys) > 30  # every screen's keys were found
    assert not keys & set(MULTIPLEXER_PREFIXES), "tmux (Ctrl+B) or screen (Ctrl+A) eats it"
    assert not {k for v in DEFAULT_KEYS.values() for k in v.split(",")} & {"ctrl+b", "ctrl+a"}


def test_every_binding_is_in_the_key_table_and_back() -> None:
    """[keys] can rebind each binding the app and the chat have (but the Ctrl+J hint)."""
    ids = {b.id: b for b in _bindings() if b.action != "noop"}
    assert set(ids) == set(DEFAULT_KEYS)
    for action, b in ids.items():
        assert b.action == action and b.key == DEFAULT_KEYS[action]


def _footer_keys(app: TuiInferApp) -> dict[str, str]:
    return {k.action: k.key_display for k in app.screen.query(FooterKey)}


async def test_default_keys_open_the_chats_and_the_help(tmp_path: Path) -> None:
    app = synthetic_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        chats = app.chat.query_one(ChatList)
        assert not chats.display  # hidden below 120 columns
        await pilot.press("ctrl+l")
        await pilot.pause(0.1)
        assert chats.display
        await pilot.press("ctrl+b")  # tmux's prefix: nothing of ours
        await pilot.pause(0.1)
        assert chats.display
        assert _footer_keys(app)["toggle_sidebar"] == "^l"
        await pilot.press("f1")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-keys", Static).render())
        # the app's keys too, which F1 used to leave out
        for key, what in (("f3", "the models"), ("f7", "measure pp/tg"), ("f9", "batch runs")):
            assert any(line.startswith(key) and what in line for line in text.splitlines()), (
                key,
                text,
            )
        assert "^l" in text and "^b" not in text


async def test_a_key_rebound_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[keys]\ntoggle_sidebar = "f12"\nhelp = "f1,question_mark"\n'
    )
    app = synthetic_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        chats = app.chat.query_one(ChatList)
        await pilot.press("ctrl+l")  # no longer bound
        await pilot.pause(0.1)
        assert not chats.display
        await pilot.press("f12")
        await pilot.pause(0.1)
        assert chats.display
        assert _footer_keys(app)["toggle_sidebar"] == "f12"
        app.chat.query_one("#chat-options").focus()  # out of the message box: ? is typed there
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        lines = str(app.screen.query_one("#help-keys", Static).render()).splitlines()
        assert any(line.startswith("f12") and "saved chats" in line for line in lines)
        assert any(line.startswith("f1 / ?") for line in lines)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ('fly = "f2"', "unknown action 'fly'"),
        ('toggle_sidebar = "ctrl+"', "'ctrl+' is not a key"),
        ('toggle_sidebar = "hyper+ctrl+ctrl+x"', "is not a key"),
        ('toggle_sidebar = "f5"', "'f5' is bound to both 'toggle_sidebar' and 'copy_reply'"),
        ("toggle_sidebar = 3", "must be a key such as 'ctrl+l'"),
    ],
)
def test_a_bad_keys_table_stops_the_start_with_one_line(
    isolated_env: Path, capsys: pytest.CaptureFixture[str], keys: str, problem: str
) -> None:
    config = isolated_env / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"temperature = 0.5\n\n[keys]\n{keys}\n")
    assert main([]) == 2  # before the TUI would open (and before the terminal check)
    err = capsys.readouterr().err
    assert problem in err and str(config) in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError):
        load_keys(config)
    assert config.read_text().startswith("temperature = 0.5")  # nothing of the user's lost


def test_keys_table_is_not_a_setting(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('theme = "nord"\n[keys]\nnew_chat = "ctrl+e"\n')
    assert load_settings(config, environ={}).theme == "nord"
    assert load_keys(config) == {"new_chat": "ctrl+e"}


async def test_the_theme_chosen_is_saved_and_read_back(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("# my settings\ntemperature = 0.5\n")
    app = synthetic_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        app.theme = "dracula"  # what the palette's "Change theme" does
        await pilot.pause(0.2)
    assert load_settings(config, environ={}).theme == "dracula"
    assert config.read_text().startswith("# my settings\ntemperature = 0.5\n")
    again = synthetic_app(tmp_path, theme="dracula")
    async with again.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert again.theme == "dracula"


async def test_an_unknown_theme_is_said_and_the_default_kept(tmp_path: Path) -> None:
    app = synthetic_app(tmp_path, theme="no-such-theme")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.theme != "no-such-theme"
        assert any("no theme named 'no-such-theme'" in n.message for n in app._notifications)


async def test_enter_on_the_chats_list_opens_a_chat_without_tab(tmp_path: Path) -> None:
    """Ctrl+L shows the list with the focus in it: Enter opens the highlighted chat (it used
    to send the message box instead, until Tab moved there); Ctrl+L again gives the focus
    back to the message box."""
    from tui_infer.core.chat.history import History

    with History.in_data_dir(tmp_path / "data") as h:
        cid = h.create("Rivers", model_name="synthetic", created_at=1.0)
        h.add_message(cid, "user", "Which river?", created_at=2.0)
    app = synthetic_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+l")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        assert app.chat.conversation_id == cid
        await pilot.press("ctrl+l")
        await pilot.pause(0.1)
        assert app.focused is app.chat.prompt_input
