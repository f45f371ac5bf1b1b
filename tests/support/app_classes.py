"""The app's own classes that declare key bindings (tests of the keys and the README)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil


def app_classes_with_keys() -> set[type]:
    """Every class defined in tui_infer.app's modules (not Textual's, imported there) that
    declares BINDINGS of its own."""
    import tui_infer.app
    import tui_infer.app.screens
    import tui_infer.app.widgets

    found = set()
    for pkg in (tui_infer.app, tui_infer.app.screens, tui_infer.app.widgets):
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and "BINDINGS" in cls.__dict__:
                    found.add(cls)
    return found
