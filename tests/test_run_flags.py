"""`run`'s flags reach the engine (each changes what is generated), and Ctrl+C mid-reply
exits 130 without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui_infer.cli import main

PROMPT = "Write a long story about a lighthouse keeper."


def reply(capsys: pytest.CaptureFixture[str], model_path: Path, *flags: str) -> dict:
    argv = ["run", "-m", str(model_path), "--serve", "live", "--json", *flags, PROMPT]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_sampling_flags_change_what_is_generated(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greedy = reply(capsys, model_path, "--temperature", "0", "--max-tokens", "24")
    assert (
        greedy["stats"]["generated_tokens"] == 24 and greedy["stats"]["finish_reason"] == "length"
    )
    # --max-tokens
    assert (
        reply(capsys, model_path, "--temperature", "0", "--max-tokens", "5")["stats"][
            "generated_tokens"
        ]
        == 5
    )
    hot = ["--temperature", "1.5", "--top-p", "1", "--min-p", "0", "--max-tokens", "24"]
    # --seed: the same seed, the same text; another seed, another text
    a = reply(capsys, model_path, *hot, "--seed", "1")["reply"]
    assert reply(capsys, model_path, *hot, "--seed", "1")["reply"] == a
    assert reply(capsys, model_path, *hot, "--seed", "2")["reply"] != a
    # --top-k 1 leaves one candidate: greedy whatever the temperature
    assert (
        reply(capsys, model_path, *hot, "--seed", "3", "--top-k", "1")["reply"] == greedy["reply"]
    )
    # --system reaches the prompt (the model's template has a short default of its own)
    plain = greedy["stats"]["prompt_tokens"]
    pirate = "You are a pirate who answers in rhymes. " * 6
    sys_ = reply(capsys, model_path, "--temperature", "0", "--max-tokens", "2", "--system", pirate)
    assert sys_["stats"]["prompt_tokens"] > plain
    # --ctx reaches the context
    assert reply(capsys, model_path, "--max-tokens", "2", "--ctx", "1024")["stats"]["n_ctx"] == 1024


def test_stop_ends_the_reply_before_the_text(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = reply(capsys, model_path, "--temperature", "0", "--max-tokens", "24")["reply"]
    words = whole.split()
    assert len(words) > 3
    cut = words[2]
    stopped = reply(capsys, model_path, "--temperature", "0", "--max-tokens", "24", "--stop", cut)
    assert stopped["reply"] == whole[: whole.index(cut)]
    assert stopped["stats"]["finish_reason"] == "stop"
    # an empty or a fifth stop string is one line naming the flag
    assert main(["run", "-m", str(model_path), "--stop", "", PROMPT]) == 2
    five = [a for i in range(5) for a in ("--stop", f"s{i}")]
    assert main(["run", "-m", str(model_path), *five, PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.count("--stop takes") == 2


def test_ctrl_c_mid_reply_exits_130(model_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui_infer",
            "run",
            "-m",
            str(model_path),
            "--serve",
            "live",
            "--temperature",
            "0",
            "--max-tokens",
            "2000",
            PROMPT,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    got = b""
    deadline = time.monotonic() + 120
    while len(got) < 40 and time.monotonic() < deadline and proc.poll() is None:
        got += proc.stdout.read() or b""
        time.sleep(0.05)
    assert len(got) >= 40, "no reply streamed"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


def test_parallel_setting_gives_each_sequence_the_whole_context(
    model_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    one = reply(capsys, model_path, "--temperature", "0", "--max-tokens", "2", "--ctx", "1024")
    monkeypatch.setenv("TUI_INFER_PARALLEL", "3")
    three = reply(capsys, model_path, "--temperature", "0", "--max-tokens", "2", "--ctx", "1024")
    assert one["stats"]["n_ctx"] == three["stats"]["n_ctx"] == 1024  # the window of a reply
    assert three["stats"]["kv_bytes"] == 3 * one["stats"]["kv_bytes"]  # the cache: ctx x 3
    assert three["reply"] == one["reply"]
