"""--preset NAME on run and batch: the preset's values over the config's, flags given beside
it win; an unknown preset is one line naming the presets there are (exit 2)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.config import Settings
from tui_infer.core.inference.types import SamplingParams
from tui_infer.core.static.keys import normalize_params, params_hash

STORY = "Write a long story about a lighthouse keeper."
CONFIG = """
max_tokens = 64

[presets.short]
temperature = 0.0
max_tokens = 5

[presets.warm]
temperature = 0.8
seed = 3
max_tokens = 6
"""


@pytest.fixture
def config() -> Path:
    path = Path(os.environ["TUI_INFER_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG)
    return path


def run_json(capsys: pytest.CaptureFixture[str], model_path: Path, *flags: str) -> dict:
    argv = ["run", "-m", str(model_path), "--serve", "live", "--json", *flags, STORY]
    assert main(argv) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_run_takes_the_preset_and_flags_beside_it_win(
    config: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = run_json(capsys, model_path, "--preset", "short")
    assert short["stats"]["generated_tokens"] == 5
    # the same as the preset's values given as flags (greedy: the same text)
    flags = run_json(capsys, model_path, "--temperature", "0", "--max-tokens", "5")
    assert flags["reply"] == short["reply"]
    assert (
        run_json(capsys, model_path, "--preset", "short", "--max-tokens", "3")["stats"][
            "generated_tokens"
        ]
        == 3
    )
    # without --preset: the config's max_tokens (64), not the preset's
    assert run_json(capsys, model_path, "--temperature", "0")["stats"]["generated_tokens"] > 5


def test_an_unknown_preset_is_one_line_exit_2(
    config: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "-m", str(model_path), "--preset", "nope", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset nope" in err[0] and "short, warm" in err[0]
    src = config.parent / "in.txt"
    src.write_text("hi\n")
    out = config.parent / "out.jsonl"
    assert main(["batch", str(src), "-o", str(out), "-m", str(model_path), "--preset", "x"]) == 2
    assert "--preset x" in capsys.readouterr().err and not out.exists()


def test_batch_takes_the_preset(config: Path, model_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(f"{STORY}\nTell me about the sea.\n")
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(src), "-o", str(out), "-m", str(model_path), "--preset", "warm"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # the preset's temperature replaces batch's greedy default; its seed and max_tokens hold
    want = replace(
        SamplingParams.from_settings(Settings(max_tokens=64)),
        temperature=0.8,
        seed=3,
        max_tokens=6,
    )
    assert {r["params_hash"] for r in rows} == {params_hash(normalize_params(want))}
    assert all(r["generated_tokens"] <= 6 for r in rows)
