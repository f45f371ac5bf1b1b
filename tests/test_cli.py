"""The headless commands, run as a user runs them: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gguf_craft import write_gguf


def tui_infer(
    *args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui_infer", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_is_plain() -> None:
    r = tui_infer("--help")
    assert r.returncode == 0
    assert "run" in r.stdout and "doctor" in r.stdout


def test_run_streams_a_reply() -> None:
    r = tui_infer(
        "run", "--temperature", "0", "--max-tokens", "30", "What is the capital of France?"
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert r.stderr == ""  # llama.cpp's log does not leak


def test_run_into_a_reader_that_stops_early() -> None:
    """`tui-infer run ... | head -c 20`: the reply stops quietly when the pipe closes."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui_infer",
            "run",
            "--temperature",
            "0",
            "--max-tokens",
            "400",
            "Write a long story about a dragon.",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(20)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert len(first) == 20 and "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_tui_quits_when_its_terminal_goes_away(tmp_path: Path) -> None:
    """A terminal closed under the app, with no SIGHUP reaching it (as when `make run`
    started it), must not leave it running (Textual's input thread would spin)."""
    import pty
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui_infer"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    os.close(slave)
    try:
        deadline = time.monotonic() + 60
        seen = b""
        while b"Message" not in seen and time.monotonic() < deadline:  # the screen is up
            seen += os.read(master, 65536)
        assert b"Message" in seen and proc.poll() is None
    finally:
        os.close(master)  # the terminal goes away
    assert proc.wait(timeout=15) == 129


def test_run_json_and_stdin() -> None:
    r = tui_infer(
        "run",
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
        stdin="What is the capital of France?",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["reply"]
    st = out["stats"]
    assert st["generated_tokens"] > 0 and st["generation_tokens_per_s"] > 0
    assert st["prompt_tokens"] > 5 and st["ttft_s"] > 0
    assert st["finish_reason"] in ("stop", "length")
    assert out["quantization"] == "Q4_1" and out["backend"].startswith("CPU")


def test_run_is_deterministic_with_temperature_zero() -> None:
    a = tui_infer("run", "--temperature", "0", "--max-tokens", "20", "Name three colors.")
    b = tui_infer("run", "--temperature", "0", "--max-tokens", "20", "Name three colors.")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


def test_flags_reach_the_engine() -> None:
    r = tui_infer(
        "run",
        "--json",
        "--ctx",
        "512",
        "--threads",
        "1",
        "--max-tokens",
        "3",
        "--system",
        "Answer in French.",
        "Hello",
    )
    out = json.loads(r.stdout)
    assert out["stats"]["n_ctx"] == 512
    assert out["stats"]["generated_tokens"] <= 3
    assert "1 threads" in out["backend"]


def test_env_and_config_reach_the_engine(tmp_path: Path) -> None:
    cfg = Path(os.environ["TUI_INFER_CONFIG"])
    cfg.parent.mkdir(parents=True)
    cfg.write_text("ctx = 768\nmax_tokens = 4\n")
    r = tui_infer("run", "--json", "Hello")
    assert json.loads(r.stdout)["stats"]["n_ctx"] == 768
    r = tui_infer("run", "--json", "Hello", env={"TUI_INFER_CTX": "1280"})
    out = json.loads(r.stdout)
    assert out["stats"]["n_ctx"] == 1280 and out["stats"]["generated_tokens"] <= 4


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp / "empty.gguf"
    empty.write_bytes(b"")
    text = tmp / "readme.gguf"
    text.write_text("just some text\n")
    absurd = write_gguf(
        tmp / "absurd.gguf", {"general.architecture": "llama", "llama.context_length": 2**40}
    )
    return {
        "missing": (tmp / "nope.gguf", "no such file"),
        "directory": (tmp, "is a directory"),
        "empty": (empty, "empty"),
        "text": (text, "not a GGUF file"),
        "absurd": (absurd, "absurd metadata"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "absurd", "truncated"])
def test_run_bad_model_files(case: str, tmp_path: Path, model_path: Path) -> None:
    if case == "truncated":
        p = tmp_path / "cut.gguf"
        p.write_bytes(model_path.read_bytes()[:50_000_000])
        path, message = p, "truncated"
    else:
        path, message = _bad_files(tmp_path)[case]
    r = tui_infer("run", "-m", str(path), "hi")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tui-infer: error: ") and message in lines[0]
    assert str(path) in lines[0]


def test_run_unknown_model_name() -> None:
    r = tui_infer("run", "-m", "no-such-model", "hi")
    assert r.returncode == 4 and "no model named 'no-such-model'" in r.stderr


def test_run_empty_prompt() -> None:
    r = tui_infer("run", stdin="   \n")
    assert r.returncode == 2 and "prompt is empty" in r.stderr


def test_run_prompt_too_long_for_context() -> None:
    r = tui_infer("run", "--ctx", "256", "word " * 400)
    assert r.returncode == 2
    assert "context window holds 256" in r.stderr


def test_bad_config_is_one_line() -> None:
    cfg = Path(os.environ["TUI_INFER_CONFIG"])
    cfg.parent.mkdir(parents=True)
    cfg.write_text("temperature = 'hot'\n")
    r = tui_infer("run", "hi")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "'temperature' must be a number" in r.stderr


def test_tui_without_a_terminal_says_so() -> None:
    r = tui_infer()
    assert r.returncode == 2 and "needs a terminal" in r.stderr


def test_doctor(model_path: Path) -> None:
    r = tui_infer("doctor")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "llama-cpp-python" in out and "CPU" in out
    assert str(model_path.name) in out
    assert "offline (HF_HUB_OFFLINE is set)" in out
    assert os.environ["TUI_INFER_DATA_DIR"] in out
    from tui_infer.core.inference.pacing import SHARED, SPARE

    flat = " ".join(out.split())
    assert "TUI redraws while a reply streams" in flat
    # llama.cpp's threads on every logical CPU: the shared pace; one core left: the spare one
    cores = os.cpu_count() or 1
    every = tui_infer("doctor", "--no-network", "--threads", str(cores))
    assert SHARED.describe() in " ".join(every.stdout.split())
    if cores > 1:
        fewer = tui_infer("doctor", "--no-network", "--threads", str(cores - 1))
        assert SPARE.describe() in " ".join(fewer.stdout.split())


def test_flags_before_the_command_are_kept() -> None:
    r = tui_infer("-m", "no-such-model", "run", "hi")
    assert r.returncode == 4 and "no model named 'no-such-model'" in r.stderr
    r = tui_infer("--ctx", "512", "run", "--json", "--max-tokens", "2", "hi")
    assert json.loads(r.stdout)["stats"]["n_ctx"] == 512


def test_run_uses_the_config_template_override(model_path: Path) -> None:
    fixed = "What is the capital of France?"
    plain = tui_infer("run", "--json", "--temperature", "0", "--max-tokens", "12", fixed)
    cfg = Path(os.environ["TUI_INFER_CONFIG"])
    cfg.parent.mkdir(parents=True)
    # an override that ignores the conversation and always asks the same question (a Jinja
    # expression: Jinja drops a template's own trailing newline, as transformers does)
    nl = "\\n"  # Jinja's escape, kept literal by TOML's ''' strings
    text = (
        f"<|im_start|>system{nl}You are a helpful AI assistant named SmolLM, trained by "
        f"Hugging Face<|im_end|>{nl}<|im_start|>user{nl}{fixed}<|im_end|>{nl}"
        f"<|im_start|>assistant{nl}"
    )
    cfg.write_text(f"[templates]\n'{model_path.name}' = '''{{{{ \"{text}\" }}}}'''\n")
    over = tui_infer(
        "run", "--json", "--temperature", "0", "--max-tokens", "12", "Something else entirely"
    )
    assert over.returncode == 0, over.stderr
    assert json.loads(over.stdout)["reply"] == json.loads(plain.stdout)["reply"]
    cfg.write_text(f'[templates]\n"{model_path.name}" = "{{% for m in messages %}}"\n')
    broken = tui_infer("run", "hi")
    assert broken.returncode == 2 and "override" in broken.stderr
