"""The headless core never imports Textual; --help imports neither Textual nor llama_cpp."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "tui_infer.core.config", "tui_infer.core.paths", "tui_infer.core.gguf",
    "tui_infer.core.resolve", "tui_infer.core.engine", "tui_infer.core.memory",
    "tui_infer.core.backend", "tui_infer.core.template", "tui_infer.commands.run",
    "tui_infer.commands.doctor", "tui_infer.core.db", "tui_infer.core.bench",
    "tui_infer.core.bench_history", "tui_infer.commands.bench", "tui_infer.core.units",
    "tui_infer.core.history", "tui_infer.commands.chats",
    "tui_infer.core.batch", "tui_infer.core.store", "tui_infer.core.batch_input",
    "tui_infer.commands.batch", "tui_infer.commands.store",
    "tui_infer.core.library", "tui_infer.core.fit", "tui_infer.core.hub",
    "tui_infer.commands.models",
]  # fmt: skip


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
    assert "tui_infer.core.engine" in mods
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
