"""`tui-infer chats ...`: the saved conversations (list, export, import).

Only the standard library is imported at the top: `tui-infer --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.commands.tables import output_flags, print_json, wants

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "chats",
        help="saved conversations: list, export, import",
        description="The conversations of the chat TUI, kept in the data directory.",
    )
    csub = p.add_subparsers(dest="chats_command", metavar="ACTION", required=True)
    ls = csub.add_parser("list", help="id, last change, messages, model, title (newest first)")
    ls.add_argument("--search", default="", help="only chats whose title or text contains this")
    output_flags(ls, quiet="the chat ids")
    ex = csub.add_parser("export", help="one conversation as Markdown or JSON")
    ex.add_argument("id", type=int, metavar="ID")
    ex.add_argument(
        "--format",
        choices=("md", "json"),
        default=None,
        help="default: json for an -o FILE ending in .json, else md",
    )
    ex.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    im = csub.add_parser("import", help="a conversation exported as JSON, as a new chat")
    im.add_argument("file", metavar="FILE", help="a JSON export ('-' reads stdin)")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.chat.history import History, HistoryError

    command = args.chats_command
    db = paths.data_dir / "history.sqlite3"
    if command in ("list", "export") and not db.exists():
        # listing must not create the file
        if command == "list":
            if wants(args, "json"):
                print_json([])
            elif not wants(args, "quiet"):
                print("no chats yet (they are saved as you chat in the TUI)")
            return 0
        raise HistoryError(f"no conversation with id {args.id}; there are no chats yet")
    # a bad import file is refused before the history file is even opened
    data = _read_json(args.file) if command == "import" else None
    with History(db) as history:
        if command == "list":
            chats = history.conversations(args.search)
            if wants(args, "json"):
                print_json([_chat_json(c) for c in chats])
                return 0
            if wants(args, "quiet"):
                for c in chats:
                    print(c.id)
                return 0
            if not chats:
                print("no chats match" if args.search else "no chats yet")
                return 0
            from tui_infer.commands.tables import Table

            t = Table("id", "updated", "messages", "model", "title", right=("id", "messages"))
            for c in chats:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at))
                t.add_row(c.id, when, c.messages, c.model_name or "-", c.title)
            t.print()
            return 0
        if command == "export":
            fmt = _export_format(args.format, args.output)
            text = (
                history.export_json(args.id) if fmt == "json" else history.export_markdown(args.id)
            )
            if args.output:
                from tui_infer.core.files import atomic_write

                try:
                    # a folder that is not there is a typo to report, not one to create
                    atomic_write(Path(args.output).expanduser(), text, parents=False)
                except OSError as exc:
                    from tui_infer.core.disk import explain

                    raise explain(exc) or HistoryError(
                        f"{args.output}: cannot write ({exc})"
                    ) from None
                print(f"exported chat {args.id} to {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return 0
        if command == "import":
            source = "stdin" if args.file == "-" else args.file
            cid = history.import_dict(data, source=source)
            print(f"imported as chat {cid}: {history.get(cid).title}")
            return 0
    raise AssertionError(command)  # pragma: no cover (argparse restricts the choices)


def _chat_json(c: Any) -> dict[str, Any]:
    """A chat as `chats list --json` prints it (fields in the README)."""
    return {
        "id": c.id,
        "title": c.title,
        "model": c.model_name,
        "messages": c.messages,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def _export_format(given: str | None, output: str | None) -> str:
    """--format, else by -o's extension; a .json file written as Markdown (or the other
    way round) is refused: `chats import` could not read it back."""
    from tui_infer.core.chat.history import HistoryError

    ext = Path(output).suffix.lower() if output else ""
    by_ext = {".json": "json", ".md": "md", ".markdown": "md"}.get(ext)
    if given is None:
        return by_ext or "md"
    if by_ext is not None and by_ext != given:
        raise HistoryError(
            f"-o {output} is a {by_ext} file name but --format is {given}; "
            f"name the file .{'json' if given == 'json' else 'md'} or drop --format"
        )
    return given


def _read_json(name: str) -> Any:
    from tui_infer.core.chat.history import HistoryError

    try:
        text = sys.stdin.read() if name == "-" else Path(name).expanduser().read_text("utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise HistoryError(f"{name}: is a directory, expected a JSON export") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{name}: cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HistoryError(
            f"{name}: not valid JSON ({exc}); export one with 'tui-infer chats export ID "
            "--format json'"
        ) from None
