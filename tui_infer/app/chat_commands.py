"""The chat's entries in the command palette and its key-help table.

Kept apart from the screen so that every way into an action (a key, Ctrl+P, F1) is listed
in one place, with the words the user sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.binding import Binding, BindingType

if TYPE_CHECKING:
    from tui_infer.app.screens.chat import ChatScreen

# The help text of each chat binding, by action (the footer's short description otherwise).
KEY_HELP: dict[str, str] = {
    "stop": "stop the reply now (what was generated stays)",
    "help": "this help",
    "new_chat": "start a new chat (the current one stays saved)",
    "toggle_sidebar": "show or hide the list of saved chats",
    "regenerate": "generate the last reply again (it replaces the old one)",
    "edit_message": "edit one of your messages and resend (the chat forks there; "
    "the old branch is dropped)",
    "copy_reply": "copy the last reply to the clipboard (OSC 52)",
    "settings": "settings: sampling, system prompt, context, GPU layers, threads, KV type",
    "show_template": "the chat template and the exact prompt it renders",
    "rename_chat": "rename this chat",
    "delete_chat": "delete this chat (asks first)",
    "search_chats": "search chats by title and text",
    "load_model": "load a .gguf file by path",
}


def help_keys(
    bindings: Iterable[BindingType], key_display: Callable[[Binding], str]
) -> list[tuple[str, str]]:
    """(key, what it does) for the help screen, from the screen's own bindings, so the
    help cannot drift from the keys."""
    keys = [("Enter", "send"), ("Ctrl+J", "new line in the message")]
    for b in bindings:
        assert isinstance(b, Binding)
        if b.action != "noop":
            keys.append((key_display(b), KEY_HELP.get(b.action, b.description)))
    keys += [("Ctrl+P", "command palette (every action)"), ("Ctrl+Q", "quit")]
    return keys


def chat_commands(chat: ChatScreen) -> Iterator[SystemCommand]:
    """The chat screen's actions as palette commands, in the order the palette lists them."""
    yield SystemCommand("New chat", "Clear the conversation (Ctrl+N)", chat.action_new_chat)
    yield SystemCommand("Stop generation", "Stop the reply now (Esc)", chat.action_stop)
    yield SystemCommand(
        "Focus input", "Move the cursor to the message box", chat.action_focus_input
    )
    yield SystemCommand("Load model…", "Load a .gguf file by path (Ctrl+O)", chat.action_load_model)
    yield SystemCommand("Reload model", "Load the current model again", chat.action_reload_model)
    commands = [
        ("Show or hide chats", "The saved chats (Ctrl+B)", chat.action_toggle_sidebar),
        ("Search chats", "By title and text (Ctrl+F)", chat.action_search_chats),
        ("Rename chat", "Give this chat another title (F2)", chat.action_rename_chat),
        ("Delete chat", "Delete this chat, after asking (F8)", chat.action_delete_chat),
        ("Regenerate reply", "Generate the last reply again (Ctrl+R)", chat.action_regenerate),
        (
            "Edit a message",
            "Edit one of your messages and resend: the chat forks (Ctrl+G)",
            chat.action_edit_message,
        ),
        ("Copy last reply", "To the clipboard, OSC 52 (F5)", chat.action_copy_reply),
        ("Copy last code block", "The last code block of the last reply", chat.action_copy_code),
        (
            "Settings…",
            "Sampling, system prompt, context, GPU layers (Ctrl+S)",
            chat.action_settings,
        ),
        (
            "Chat template",
            "The template and the prompt it renders (Ctrl+T)",
            chat.action_show_template,
        ),
        (
            "Export chat as Markdown",
            "Into the data directory's exports/",
            lambda: chat.export_chat("md"),
        ),
        (
            "Export chat as JSON",
            "Into the data directory's exports/ (importable)",
            lambda: chat.export_chat("json"),
        ),
        ("Help: keys", "Every key of the chat screen (F1)", chat.action_help),
    ]
    for title, help_text, action in commands:
        yield SystemCommand(title, help_text, action)
