"""`tui-infer completion bash|zsh|fish`: a script the shell accepts, with the commands and
their options, and model names completed from the library."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tui_infer.cli import main


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_names_commands_and_completes_models(
    shell: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("models", "store", "chats", "presets", "--json", "--quiet", "--pull"):
        assert (word if shell != "fish" else word.lstrip("-")) in script, word
    assert "tui-infer models list --quiet" in script  # the library's names, as you type
    exe = shutil.which(shell)
    if exe is None:
        return  # (the shell is not installed here: the script is still checked above)
    path = tmp_path / f"tui-infer.{shell}"
    path.write_text(script)
    check = [exe, "-n", str(path)] if shell != "fish" else [exe, "--no-execute", str(path)]
    done = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_bash_completes_a_model_name_from_the_library(tmp_path: Path, model_path: Path) -> None:
    """In a real bash, the function the script binds to `-m` lists the library's names."""
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    script = subprocess.run(
        [sys.executable, "-m", "tui_infer", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "c.bash").write_text(script)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "tui-infer").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tui_infer "$@"\n')
    (bin_ / "tui-infer").chmod(0o755)
    probe = (
        f'export PATH="{bin_}:$PATH"; source "{tmp_path}/c.bash"; '
        'COMP_WORDS=(tui-infer run -m ""); COMP_CWORD=3; COMP_LINE="tui-infer run -m "; '
        'COMP_POINT=${#COMP_LINE}; _shtab_tui_infer tui-infer "" -m; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert model_path.stem in done.stdout.split(), (done.stdout, done.stderr)


def test_help_stays_light() -> None:
    """`tui-infer --help` imports neither shtab nor the model library's heavy parts."""
    code = (
        "import sys; from tui_infer.cli import build_parser; build_parser(); "
        "heavy = ('shtab', 'llama_cpp', 'textual', 'sqlite3'); "
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "tcsh"])
    assert exc.value.code == 2 and "invalid choice: 'tcsh'" in capsys.readouterr().err
