"""`tui-infer completion bash|zsh|fish`: a shell completion script (shtab), with model
names completed from the library (`tui-infer models list --quiet`, run as you press Tab).

Only the standard library is imported at the top: `tui-infer --help` stays instant;
shtab is imported only when a script is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths

SHELLS = ("bash", "zsh", "fish")
MODEL_NAMES = "tui-infer models list --quiet 2>/dev/null"
INSTALL = {
    "bash": "tui-infer completion bash > ~/.local/share/bash-completion/completions/tui-infer",
    "zsh": "tui-infer completion zsh > ~/.zfunc/_tui-infer  (with fpath+=~/.zfunc before "
    "compinit in ~/.zshrc)",
    "fish": "tui-infer completion fish > ~/.config/fish/completions/tui-infer.fish",
}


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print the completion script for SHELL; model names are completed "
        "from the library. Install it once:\n  "
        + "\n  ".join(INSTALL.values())
        + "\nthen open a new shell.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every action of the parser and of its subcommands, at any depth."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _actions(sub)


def _names_a_model(action: argparse.Action) -> bool:
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    return action.dest == "model" or metavar.startswith("NAME|PATH")


def script(shell: str) -> str:
    import importlib

    import shtab

    # the parser of the CLI that is running (looked up, not imported by name: the
    # commands do not depend on the CLI module, which also opens the app)
    parser = importlib.import_module("tui_infer.cli").build_parser()
    models = shtab.cmd(MODEL_NAMES)
    for action in _actions(parser):
        if _names_a_model(action):
            action.complete = models  # type: ignore[attr-defined]
        elif action.dest in ("path", "input", "output", "file") or action.metavar in (
            "FILE",
            "PATH",
            "INPUT",
        ):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell, root_prefix="tui_infer"))


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    print(script(args.shell))
    return 0
