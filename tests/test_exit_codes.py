"""Every failure is one line and a documented exit code; tracebacks go to the log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.commands import run as run_cmd
from tui_infer.core.errors import ExitCode


def test_an_internal_error_is_one_line_and_logged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken(*_: object) -> int:
        return {}["a bug of ours"]  # type: ignore[no-any-return]

    monkeypatch.setattr(run_cmd, "run_command", broken)
    assert main(["run", "hi"]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    log = tmp_path / "state" / "tui-infer.log"
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "internal error (KeyError: 'a bug of ours')" in err and str(log) in err
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "a bug of ours" in text
    # --debug: the traceback itself, for whoever debugs it
    with pytest.raises(KeyError):
        main(["--debug", "run", "hi"])


def test_a_log_that_cannot_be_written_still_gives_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "blocked").write_text("a file where the state directory should be")
    monkeypatch.setenv("TUI_INFER_STATE_DIR", str(tmp_path / "blocked" / "state"))
    monkeypatch.setattr(run_cmd, "run_command", lambda *_: 1 / 0)
    assert main(["run", "hi"]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be saved" in err and "ZeroDivisionError" in err


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`tui-infer doctor | head -0`: no BrokenPipeError traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui_infer", "doctor", "--no-network"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything was written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("where", ["config", "environment"])
def test_serve_store_from_config_or_environment_is_honoured_by_run(
    where: str,
    model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if where == "config":
        config = Path(os.environ["TUI_INFER_CONFIG"])
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text('serve = "store"\n')
    else:
        monkeypatch.setenv("TUI_INFER_SERVE", "store")
    assert main(["run", "-m", str(model_path), "Never precomputed."]) == ExitCode.NOT_PRECOMPUTED
    assert "not precomputed" in capsys.readouterr().err
    # the flag still wins over both
    assert main(["run", "-m", str(model_path), "--serve", "live", "--max-tokens", "2", "x"]) == 0


def test_not_found_is_4(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-m", "no-such-model", "hi"]) == ExitCode.NOT_FOUND
    assert "no model named 'no-such-model'" in capsys.readouterr().err


def test_what_llama_cpp_changes_is_said(
    model_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["run", "-m", str(model_path), "--serve", "live", "--max-tokens", "2"]
    assert main([*base, "--ctx", "128", "hi"]) == 0
    assert "llama.cpp made the context 256 tokens (asked: 128)" in capsys.readouterr().err
    monkeypatch.setenv("TUI_INFER_FLASH_ATTN", "false")
    assert main([*base, "--kv-type", "q8_0", "hi"]) == 0
    assert "q8_0 KV cache needs flash attention" in capsys.readouterr().err


def test_reading_commands_create_no_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["store", "runs"]) == 0
    assert main(["store", "stats"]) == 0
    assert "none yet" in capsys.readouterr().out
    assert main(["store", "show", "3"]) == ExitCode.NOT_FOUND
    assert main(["bench", "history"]) == 0
    assert main(["bench", "compare", "1", "2"]) == ExitCode.NOT_FOUND
    assert main(["chats", "list"]) == 0
    assert not data.exists() or not any(data.iterdir())


def test_doctor_reports_a_broken_model_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model at all" * 10)
    assert main(["doctor", "--no-network", "-m", str(broken)]) == ExitCode.USAGE
    out, err = capsys.readouterr()
    assert "problem:" in out and "not a GGUF file" in err
    assert str(tmp_path / "state" / "tui-infer.log") in out  # where tracebacks go


def test_every_output_path_follows_one_rule_for_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    """A folder that is not there is a typo to report, before any work, never created."""
    from tui_infer.core.chat.history import History

    missing = tmp_path / "no" / "such"
    src = tmp_path / "in.txt"
    src.write_text("Say yes.\n")
    ok = ["batch", str(src), "-o", str(tmp_path / "out.jsonl"), "-m", str(model_path)]
    assert main([*ok, "--max-tokens", "2"]) == 0  # run 1, to export
    with History.in_data_dir(tmp_path / "data") as h:
        cid = h.create("a chat", model_name="m", model_path=str(model_path))
    capsys.readouterr()
    commands = [
        ["batch", str(src), "-o", str(missing / "out.jsonl"), "-m", str(model_path)],
        ["store", "misses", "-o", str(missing / "m.jsonl")],
        ["store", "export", "1", "-o", str(missing / "e.jsonl")],
        ["chats", "export", str(cid), "-o", str(missing / "c.md")],
    ]
    for argv in commands:
        assert main(argv) == ExitCode.USAGE, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{missing}: no such folder" in err, err
    assert not (tmp_path / "no").exists()
