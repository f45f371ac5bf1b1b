"""Saving a preset in the settings modal (Ctrl+S) does not store one-off command-line
flags: a value the app was started with by a flag is left out of the preset while its field
still shows it; a field the user changed, or a value from the config, is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Static

from tests.support.fakes import SYNTHETIC_MODEL, FixedMemoryProbe, SyntheticEngine
from tests.support.pilot import Recorder, ready
from tui_infer.app.app import TuiInferApp
from tui_infer.app.screens.settings import SettingsScreen
from tui_infer.core.config import load_presets, load_settings
from tui_infer.core.paths import Paths


@pytest.mark.anyio
async def test_a_saved_preset_leaves_out_the_command_lines_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("temperature = 0.3\n\n[sampling]\ntop_k = 20\n", encoding="utf-8")
    # as `tui-infer --max-tokens 77 --seed 5` starts it (cli.py: the config, then the flags)
    launch = load_settings(config, environ={}).with_overrides(max_tokens=77, seed=5)
    app = TuiInferApp(
        settings=launch,
        paths=Paths(config_file=config, data_dir=tmp_path / "data"),
        model_path=SYNTHETIC_MODEL,
        engine_loader=SyntheticEngine,
        memory_probe=FixedMemoryProbe(),
    )
    async with app.run_test(size=(120, 40), message_hook=Recorder()) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        dialog = app.screen
        assert isinstance(dialog, SettingsScreen)
        assert dialog.query_one("#set-max_tokens", Input).value == "77"
        dialog.query_one("#set-top_k", Input).value = "9"  # changed here
        dialog.query_one("#set-seed", Input).value = "11"  # a flag's field, changed here
        dialog.query_one("#preset-name", Input).value = "mine"
        await pilot.pause(0.1)
        await pilot.click("#save-preset")
        await pilot.pause(0.1)
        assert str(dialog.query_one("#settings-error", Static).render()) == ""
    saved = load_presets(config)["mine"]
    assert "max_tokens" not in saved  # --max-tokens 77 was for this session only
    assert saved["seed"] == 11 and saved["top_k"] == 9 and saved["temperature"] == 0.3
