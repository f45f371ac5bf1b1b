"""The TUI's key bindings, built from one table (core.config.DEFAULT_KEYS) with the
action's name as the binding's id, so that `[keys]` in the config (Textual's keymap)
rebinds any of them, and the footer, F1 and the palette show the key in force."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding

from tui_infer.core.config import DEFAULT_KEYS


def bound(action: str, description: str, **kw: Any) -> Binding:
    """The binding of `action` on its default key; its id is the action's name in [keys]."""
    return Binding(DEFAULT_KEYS[action], action, description, id=action, **kw)


def keys_of(app: Any) -> dict[str, str]:
    """Every action's key(s) in force in this app (the defaults where it has none)."""
    return getattr(app, "keys", None) or DEFAULT_KEYS


def key_label(app: Any, action: str) -> str:
    """The first key of an action as people write it: 'Ctrl+L', 'F5', 'Esc'."""
    return human_key(keys_of(app)[action].split(",")[0])


def human_key(key: str) -> str:
    *mods, base = key.split("+")
    named = {"escape": "Esc", "pageup": "PgUp", "pagedown": "PgDn", "delete": "Del"}
    shown = named.get(base) or (base.upper() if len(base) <= 3 else base.capitalize())
    return "+".join([*(m.capitalize() for m in mods), shown])


def in_force(app: Any, binding: Binding) -> Binding:
    """The binding as it stands after [keys]: the same action on the key(s) in force."""
    if binding.id is None or binding.id not in keys_of(app):
        return binding
    return Binding(
        keys_of(app)[binding.id],
        binding.action,
        binding.description,
        show=binding.show,
        priority=binding.priority,
        id=binding.id,
    )
