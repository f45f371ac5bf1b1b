"""The headless core never imports Textual; --help imports neither Textual nor llama_cpp."""

from __future__ import annotations

import pkgutil
import subprocess
import sys


def _headless_modules() -> list[str]:
    """Every module of the core and the headless commands (new ones are covered too)."""
    import tui_infer.commands
    import tui_infer.core

    out = []
    for pkg in (tui_infer.core, tui_infer.commands):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            out.append(mod.name)
    return out


CORE = _headless_modules()


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_core_does_not_import_textual() -> None:
    mods = _modules_after("\n".join(f"import {m}" for m in CORE))
    assert "tui_infer.core.inference.engine" in mods
    assert not any(m == "textual" or m.startswith("textual.") for m in mods)


def test_help_imports_neither_textual_nor_llama_cpp() -> None:
    code = (
        "import contextlib, io\nfrom tui_infer.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])"
    )
    mods = _modules_after(code)
    assert "tui_infer.cli" in mods
    assert "textual" not in mods and "llama_cpp" not in mods
