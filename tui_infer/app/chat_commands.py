"""The chat's entries in the command palette and its key-help table.

Kept apart from the screen so that every way into an action (a key, Ctrl+P, F1) is listed
in one place, with the words the user sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
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
    "copy_reply": "copy the last reply to the clipboard (OSC 52 and the system clipboard)",
    "settings": "settings: sampling, system prompt, context, GPU layers, threads, KV type",
    "show_template": "the chat template and the exact prompt it renders",
    "rename_chat": "rename this chat",
    "delete_chat": "delete this chat (asks first)",
    "search_chats": "search chats by title and text",
    "load_model": "load a .gguf file, or a hub model (OWNER/REPO:QUANT)",
    "models": "the models: the library, import, remove, the hub, downloads",
    "server": "serve the loaded model over an OpenAI-compatible HTTP API",
    "drift": "the store's hit rate and misses over time",
    "bench": "measure pp/tg tokens/s of this model",
    "batch": "the prediction store's batch runs: review, publish, roll back",
    "quant": "what each quant and KV cache type of this model costs",
    "quit": "quit",
}


def help_keys(
    bindings: Iterable[BindingType],
    key_display: Callable[[Binding], str],
    in_force: Callable[[Binding], Binding] = lambda b: b,
) -> list[tuple[str, str]]:
    """(key, what it does) for the help screen, from the bindings themselves (the chat's
    and the app's) as [keys] left them, so the help cannot drift from the keys."""
    keys = [("Enter", "send"), ("Ctrl+J", "new line in the message")]
    for b in bindings:
        assert isinstance(b, Binding)
        if b.action != "noop":
            now = in_force(b)
            shown = " / ".join(key_display(replace(now, key=k.strip())) for k in now.key.split(","))
            keys.append((shown, KEY_HELP.get(b.action, b.description)))
    keys += [("Ctrl+P", "command palette (every action, themes)")]
    return keys


def chat_commands(chat: ChatScreen) -> Iterator[SystemCommand]:
    """The chat screen's actions as palette commands, in the order the palette lists them,
    each with its key in force."""
    from tui_infer.app.keys import key_label

    def k(action: str) -> str:
        return f" ({key_label(chat.app, action)})"

    yield SystemCommand("New chat", "Clear the conversation" + k("new_chat"), chat.action_new_chat)
    yield SystemCommand("Stop generation", "Stop the reply now" + k("stop"), chat.action_stop)
    yield SystemCommand(
        "Focus input", "Move the cursor to the message box", chat.action_focus_input
    )
    yield SystemCommand(
        "Load model…",
        "Load a .gguf file or a hub model, OWNER/REPO:QUANT" + k("load_model"),
        chat.action_load_model,
    )
    yield SystemCommand("Reload model", "Load the current model again", chat.action_reload_model)
    commands = [
        ("Show or hide chats", "The saved chats" + k("toggle_sidebar"), chat.action_toggle_sidebar),
        ("Search chats", "By title and text" + k("search_chats"), chat.action_search_chats),
        ("Rename chat", "Give this chat another title" + k("rename_chat"), chat.action_rename_chat),
        (
            "Delete chat",
            "Delete this chat, after asking" + k("delete_chat"),
            chat.action_delete_chat,
        ),
        (
            "Regenerate reply",
            "Generate the last reply again" + k("regenerate"),
            chat.action_regenerate,
        ),
        (
            "Edit a message",
            "Edit one of your messages and resend: the chat forks" + k("edit_message"),
            chat.action_edit_message,
        ),
        (
            "Copy last reply",
            "To the clipboard: OSC 52 and the system's" + k("copy_reply"),
            chat.action_copy_reply,
        ),
        ("Copy last code block", "The last code block of the last reply", chat.action_copy_code),
        (
            "Settings…",
            "Sampling, system prompt, context, GPU layers" + k("settings"),
            chat.action_settings,
        ),
        (
            "Chat template",
            "The template and the prompt it renders" + k("show_template"),
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
        ("Help: keys", "Every key of the chat screen" + k("help"), chat.action_help),
    ]
    for title, help_text, action in commands:
        yield SystemCommand(title, help_text, action)
