"""The README's key tables and command table are what the app does: each key row is a
binding of the app (the right key, the right action, the footer's label), each binding of
the app is a row; each command row is a command of the parser with exactly the flags it
takes, and each command of the parser is a row. Add a binding, a screen, a command or a
flag without its row (or leave a row behind) and a test here fails, naming it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding

from tests.support.app_classes import app_classes_with_keys
from tui_infer.app.app import TuiInferApp
from tui_infer.app.screens.batch import BatchScreen
from tui_infer.app.screens.bench import BenchScreen
from tui_infer.app.screens.chat import ChatScreen
from tui_infer.app.screens.dialogs import (
    ConfirmScreen,
    HelpScreen,
    OverflowScreen,
    PickScreen,
    TemplateFallbackScreen,
    TemplateScreen,
    TextPromptScreen,
)
from tui_infer.app.screens.download_offer import DownloadOfferScreen
from tui_infer.app.screens.drift import DriftScreen
from tui_infer.app.screens.load_model import LoadModelScreen
from tui_infer.app.screens.models import ModelsScreen
from tui_infer.app.screens.quant import QuantScreen
from tui_infer.app.screens.server import ServerScreen
from tui_infer.app.screens.settings import SettingsScreen
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.app.widgets.prompt_input import PromptInput
from tui_infer.cli import _model_flags, build_parser
from tui_infer.core.config import DEFAULT_KEYS

README = Path(__file__).resolve().parent.parent / "README.md"

KEYS_HEADER = ["key", "action (`[keys]`)", "what it does"]
SCREENS_HEADER = ["screen", "key", "footer", "what it does"]
COMMANDS_HEADER = ["command", "what it does", "flags"]

# The second key table's screen names -> the classes whose keys they are. A class of the
# app with BINDINGS of its own that is in neither this map nor the first table (the app's
# and the chat's keys) fails test_every_screen_with_keys_has_its_rows.
SCREENS: dict[str, list[type]] = {
    "Chats list": [ChatList],
    "Models": [ModelsScreen],
    "Server": [ServerScreen],
    "Drift": [DriftScreen],
    "Bench": [BenchScreen],
    "Batch": [BatchScreen],
    "Quant": [QuantScreen],
    "Settings": [SettingsScreen],
    "Help": [HelpScreen],
    "Template": [TemplateScreen],
    "Dialogs": [
        ConfirmScreen,
        TextPromptScreen,
        PickScreen,
        OverflowScreen,
        TemplateFallbackScreen,
        LoadModelScreen,
        DownloadOfferScreen,
    ],
}
# Keys the chat handles outside BINDINGS: the input box's own (on_key), Textual's palette.
UNBOUND_CHAT_KEYS = {"enter", "ctrl+j", App.COMMAND_PALETTE_BINDING}


# --- the README's tables ----------------------------------------------------------------


def _cells(line: str) -> list[str]:
    """A table row's cells; `\\|` is a bar inside a cell."""
    parts = re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def readme_table(header: list[str], text: str | None = None) -> list[list[str]]:
    """The rows of the README's table whose header row is `header`."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and _cells(line) == header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = _cells(row)
                assert len(cells) == len(header), f"README table row with the wrong cells: {row}"
                rows.append(cells)
            return rows
    raise AssertionError(f"the README has no table headed {' | '.join(header)}")


def textual_key(shown: str) -> str:
    """A key as the README writes it ('Ctrl+R', 'Esc', 'F3', 'x') -> Textual's name."""
    key = shown.strip().strip("`*").lower()
    return {"esc": "escape"}.get(key, key)


def keys_of_cell(cell: str) -> set[str]:
    return {textual_key(k) for k in cell.split(",")}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


# --- the app's bindings -----------------------------------------------------------------


def _own_bindings(cls: type) -> list[Binding]:
    out = []
    for b in cls.__dict__.get("BINDINGS", []):
        out.append(b if isinstance(b, Binding) else Binding(b[0], b[1], b[2] if len(b) > 2 else ""))
    return out


def _bindings_of(cls: type) -> list[Binding]:
    """The bindings a class has, its bases' included (ModelsScreen's tabs, the chat's parts),
    Textual's own left out."""
    return [
        b for c in cls.__mro__ if c.__module__.startswith("tui_infer.") for b in _own_bindings(c)
    ]


def _chat_bindings() -> list[Binding]:
    return [*_bindings_of(TuiInferApp), *_bindings_of(ChatScreen)]


def _handles_selection(cls: type) -> bool:
    """Enter on a list: the class handles a DataTable's or an OptionList's selection."""
    for c in cls.__mro__:
        for member in c.__dict__.values():
            for message, _ in getattr(member, "_textual_on", []):
                if message.__name__ in ("RowSelected", "OptionSelected"):
                    return True
    return False


# --- keys -------------------------------------------------------------------------------


def test_the_key_table_is_the_chats_bindings() -> None:
    rows = readme_table(KEYS_HEADER)
    by_action = {r[1].strip("`"): keys_of_cell(r[0]) for r in rows if r[1]}
    assert set(by_action) == set(DEFAULT_KEYS), (
        f"README rows for no action: {sorted(set(by_action) - set(DEFAULT_KEYS))}; "
        f"actions without a row: {sorted(set(DEFAULT_KEYS) - set(by_action))}"
    )
    for action, keys in by_action.items():
        assert keys == set(DEFAULT_KEYS[action].split(",")), f"{action}: README says {keys}"
    bound = {b.id: b for b in _chat_bindings() if b.id}
    assert set(bound) == set(DEFAULT_KEYS)
    meaning = {r[1].strip("`"): r[2] for r in rows if r[1]}
    for action, b in bound.items():
        assert words(b.description) <= words(meaning[action]), (
            f"{action}: the README's '{meaning[action]}' does not say '{b.description}'"
        )
    unbound = {textual_key(r[0]) for r in rows if not r[1]}
    assert unbound == UNBOUND_CHAT_KEYS, f"keys without an action: {unbound}"
    # every chat binding without an id ([keys] cannot rebind it) is a row too (Ctrl+J's hint)
    for b in _chat_bindings():
        if not b.id:
            assert set(b.key.split(",")) <= unbound, f"{b.key} ({b.description}) has no row"


def test_the_keys_said_to_work_everywhere_are_the_apps() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"\(([^()]*?) work from the other screens too", text)
    assert match, "the README no longer says which keys work from every screen"
    said = {textual_key(k) for k in re.split(r",|\s+and\s+", match.group(1)) if k.strip()}
    app = {k for b in _own_bindings(TuiInferApp) for k in b.key.split(",")}
    assert said == app, f"the README says {sorted(said)}, the app binds {sorted(app)}"


@pytest.mark.anyio
async def test_enter_sends_and_ctrl_j_adds_a_line() -> None:
    """The two rows the input box handles itself (on_key), pressed."""
    sent: list[str] = []

    class Box(App[None]):
        def compose(self) -> ComposeResult:
            yield PromptInput(id="box")

        def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
            sent.append(event.text)

    app = Box()
    async with app.run_test() as pilot:
        box = app.query_one(PromptInput)
        box.focus()
        await pilot.press("a", "ctrl+j", "b")
        assert box.text == "a\nb"
        await pilot.press("enter")
        await pilot.pause()
        assert sent == ["a\nb"]


def test_the_screens_tables_rows_are_their_bindings() -> None:
    rows = readme_table(SCREENS_HEADER)
    listed: dict[type, set[tuple[str, str]]] = {}
    for screen, key, footer, what in rows:
        assert what, f"README key table: '{screen} {key}' says nothing of what it does"
        names = [n.strip() for n in re.sub(r"\([^)]*\)", "", screen).split(",")]
        for name in names:
            assert name in SCREENS, f"README key table: no screen '{name}' (SCREENS names them)"
            for cls in SCREENS[name]:
                if not footer:  # a list's Enter: no binding, the widget's selection
                    assert keys_of_cell(key) == {"enter"}, f"{name} {key}: no footer label"
                    assert _handles_selection(cls), f"{name}: Enter selects nothing"
                    continue
                for k in keys_of_cell(key):
                    listed.setdefault(cls, set()).add((k, footer))
    for cls in {c for classes in SCREENS.values() for c in classes}:
        actual = {(k, b.description) for b in _bindings_of(cls) for k in b.key.split(",")}
        assert listed.get(cls, set()) == actual, (
            f"{cls.__name__}: only in the README {sorted(listed.get(cls, set()) - actual)}, "
            f"only in the app {sorted(actual - listed.get(cls, set()))}"
        )


def test_every_screen_with_keys_has_its_rows() -> None:
    mapped = {c for classes in SCREENS.values() for c in classes}
    missing = app_classes_with_keys() - mapped - {TuiInferApp, ChatScreen}
    assert not missing, (
        f"screens with keys the README's tables leave out: {sorted(c.__name__ for c in missing)}"
    )


def test_every_bold_key_in_the_readme_exists() -> None:
    """**Ctrl+O**, **F7**, ... in the README's prose: each is a key of the app."""
    text = README.read_text(encoding="utf-8")
    named = re.findall(r"\*\*((?:Ctrl|Alt|Shift)\+\w+|F\d+|Esc|Enter)\*\*", text)
    assert len(named) > 20
    bound = {
        k
        for cls in app_classes_with_keys() | {TuiInferApp, ChatScreen}
        for b in _bindings_of(cls)
        for k in b.key.split(",")
    } | UNBOUND_CHAT_KEYS
    unknown = {textual_key(k) for k in named} - bound
    assert not unknown, f"keys the README names that the app does not bind: {sorted(unknown)}"


# --- commands ---------------------------------------------------------------------------


def _options(p: argparse.ArgumentParser) -> list[list[str]]:
    """Each option of a parser as its option strings, --help left out."""
    return [
        a.option_strings
        for a in p._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


def _positionals(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in p._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def parser_commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command the parser runs: a parser with no subcommands, or whose subcommand is
    optional (the TUI with none; `bench` and its history, compare, quality)."""
    out = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not subs[0].required:
            out[path] = p
        for s in subs:
            for name, child in s.choices.items():
                walk(child, (*path, name))

    walk(build_parser(), ())
    return out


def shared_flags() -> set[str]:
    p = argparse.ArgumentParser()
    _model_flags(p, top=True)
    return {s for opts in _options(p) for s in opts}


def readme_shared_flags() -> set[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"The shared flags: (.*?) \(", text, re.S)
    assert match, "the README no longer lists the shared flags"
    return {s for flag in re.findall(r"`([^`]+)`", match.group(1)) for s in flag.split("/")}


def readme_commands() -> dict[tuple[str, ...], tuple[list[str], str]]:
    """README command row -> (its arguments, its flags cell)."""
    out = {}
    for command, _what, flags in readme_table(COMMANDS_HEADER):
        tokens = [] if command == "(no command)" else command.strip("`").split()
        path = []
        while tokens and re.fullmatch(r"[a-z][a-z-]*", tokens[0]):
            path.append(tokens.pop(0))
        assert tuple(path) not in out, f"two README rows for '{' '.join(path)}'"
        out[tuple(path)] = (tokens, flags)
    return out


def test_the_shared_flags_are_the_parsers() -> None:
    readme, parser = readme_shared_flags(), shared_flags()
    assert readme == parser, (
        f"only in the README: {readme - parser}; only in cli.py: {parser - readme}"
    )


def test_the_command_table_has_every_command() -> None:
    readme, parser = set(readme_commands()), set(parser_commands())
    assert readme == parser, (
        f"commands without a README row: {sorted(' '.join(c) for c in parser - readme)}; "
        f"README rows for no command: {sorted(' '.join(c) for c in readme - parser)}"
    )


@pytest.mark.parametrize("command", sorted(parser_commands()), ids=lambda c: " ".join(c) or "tui")
def test_each_commands_row_names_its_flags_and_arguments(command: tuple[str, ...]) -> None:
    p = parser_commands()[command]
    row = readme_commands().get(command)
    assert row is not None, f"no README row for '{' '.join(command)}'"
    args, cell = row
    name = " ".join(command) or "(no command)"
    assert len(args) == len(_positionals(p)), (
        f"{name}: the README shows {args}, the parser takes "
        f"{[a.metavar or a.dest for a in _positionals(p)]}"
    )
    named = {s for flag in re.findall(r"`(-[^`]+)`", cell) for s in flag.split("/")}
    options = {s for opts in _options(p) for s in opts}
    assert not named - options, f"{name}: the README names flags it lacks: {named - options}"
    if "the shared flags" in cell:
        assert shared_flags() <= options, f"{name}: the README says it takes the shared flags"
        named |= shared_flags()
    unnamed = [opts for opts in _options(p) if not set(opts) & named]
    assert not unnamed, f"{name}: flags missing from its README row: {unnamed}"
