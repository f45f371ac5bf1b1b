"""The README's sample config loads as pasted: every setting, the preset, the template
override and [keys]; `run` answers with it. (It used to name a chatml.jinja that a user
does not have: `cannot read …/chatml.jinja`.)"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.config import (
    load_keys,
    load_presets,
    load_settings,
    template_override,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def sample_config() -> str:
    section = README.read_text(encoding="utf-8").split("## Configuration and files", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "the README's configuration section has no toml block"
    return match.group(1)


def test_the_sample_config_loads_as_pasted(
    capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    config = Path(os.environ["TUI_INFER_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(sample_config(), encoding="utf-8")
    settings = load_settings(config, environ={})
    assert settings.ctx == 4096 and settings.theme == "textual-dark"
    assert load_presets(config)["precise"] == {"temperature": 0.1, "system": "Be brief."}
    assert load_keys(config) == {"toggle_sidebar": "ctrl+l"}
    template = template_override(config, model_path)
    assert template is not None and "<|im_start|>" in template
    code = main(["run", "--temperature", "0", "--max-tokens", "3", "Hi"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip()
