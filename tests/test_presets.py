"""Named presets ([presets.NAME]) and per-model chat template overrides ([templates]) in the
config file: parsing and each bad case, saving a preset in place, the override on the real
model, and choosing / saving a preset in the settings modal as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, Input, Select, Static, TextArea

from tests.support.pilot import Recorder, make_app, ready, synthetic_app
from tui_infer.app.screens.dialogs import TemplateScreen
from tui_infer.app.screens.settings import SettingsScreen
from tui_infer.core.config import (
    load_presets,
    load_settings,
    template_override,
    write_preset,
)
from tui_infer.core.errors import ConfigError
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.template import TemplateError
from tui_infer.core.inference.types import LoadOptions, Message

GOOD = """\
# my config
temperature = 0.3   # keep this comment

[sampling]
top_k = 20

[presets.precise]
temperature = 0.1
top-p = 0.5
seed = 42
system = "Be brief."

[presets.wild]
temperature = 1.5

# the templates
[templates]
"model.gguf" = "{{ messages[0]['content'] }}"
other = "tmpl.jinja"
"""

SIZE = (120, 40)


def write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text, encoding="utf-8")
    return cfg


def test_good_presets_and_templates_parse(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD)
    s = load_settings(cfg, {})  # the tables are not flattened into settings
    assert s.temperature == 0.3 and s.top_k == 20 and s.seed == -1 and s.system == ""
    presets = load_presets(cfg)
    assert list(presets) == ["precise", "wild"]
    assert presets["precise"] == {
        "temperature": 0.1,
        "top_p": 0.5,
        "seed": 42,
        "system": "Be brief.",
    }
    assert template_override(cfg, Path("/m/model.gguf")) == "{{ messages[0]['content'] }}"
    assert template_override(cfg, Path("/m/unlisted.gguf")) is None
    assert template_override(None, Path("/m/model.gguf")) is None
    (tmp_path / "tmpl.jinja").write_text("FROM FILE {{ bos_token }}", encoding="utf-8")
    assert template_override(cfg, Path("/x/other.gguf")) == "FROM FILE {{ bos_token }}"  # stem


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[presets.p]\ntemperature = -1\n", "preset 'p': 'temperature' must be 0 or more"),
        ("[presets.p]\ntop_p = 2.0\n", "preset 'p': 'top_p' must be in (0, 1]"),
        ("[presets.p]\nctx = 512\n", "preset 'p': unknown key 'ctx'"),
        ('[presets.p]\nseed = "x"\n', "preset 'p': 'seed' must be an integer"),
        ("[presets.p]\nsub = { a = 1 }\n", "preset 'p': unknown key 'sub'"),
        ("[presets.p]\ntop_k = [1]\n", "preset 'p': 'top_k' must be a single value"),
        ("[presets]\np = 3\n", "preset 'p' must be a table"),
        ("presets = 3\n", "'presets' must be tables"),
        ("templates = 3\n", "[templates] must be a table"),
        ("[templates]\nm = 3\n", "[templates] 'm' must be a template"),
        ('[templates]\nm = "  "\n', "[templates] 'm' must be a template"),
    ],
)
def test_bad_presets_and_templates_are_one_line_errors(
    tmp_path: Path, table: str, expected: str
) -> None:
    cfg = write(tmp_path, table)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, {})
    message = str(err.value)
    assert expected in message and str(cfg) in message and "\n" not in message


def test_missing_template_file_is_an_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[templates]\nmodel = "gone.jinja"\n')
    with pytest.raises(ConfigError, match=r"cannot read .*gone\.jinja"):
        template_override(cfg, Path("/m/model.gguf"))


def test_write_preset_changes_only_that_table(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD)
    write_preset(cfg, "precise", {"temperature": 0.9, "system": 'say "hi"\nthen \\ stop'})
    new = cfg.read_text(encoding="utf-8")
    old_lines, new_lines = GOOD.splitlines(keepends=True), new.splitlines(keepends=True)
    start = old_lines.index("[presets.precise]\n")
    end = old_lines.index("[presets.wild]\n")
    assert new_lines[:start] == old_lines[:start]  # byte for byte before the table
    tail = len(old_lines) - end
    assert new_lines[-tail:] == old_lines[end:]  # and after it, the blank line included
    assert load_presets(cfg)["precise"] == {"temperature": 0.9, "system": 'say "hi"\nthen \\ stop'}
    assert load_presets(cfg)["wild"] == {"temperature": 1.5}
    # a new preset is added at the end; everything before stays
    write_preset(cfg, "fresh", {"top_k": 5})
    assert cfg.read_text(encoding="utf-8").startswith(new)
    assert load_presets(cfg)["fresh"] == {"top_k": 5}
    assert load_settings(cfg, {}).temperature == 0.3
    # a file that did not exist is created
    other = tmp_path / "sub" / "new.toml"
    write_preset(other, "a", {"seed": 1})
    assert load_presets(other) == {"a": {"seed": 1}}


def test_write_preset_refuses_broken_files_and_bad_input(tmp_path: Path) -> None:
    broken = "temperature = = 1\n[presets.x\n"
    cfg = write(tmp_path, broken)
    with pytest.raises(ConfigError, match="invalid TOML"):
        write_preset(cfg, "p", {"temperature": 0.5})
    assert cfg.read_text(encoding="utf-8") == broken  # not overwritten
    cfg = write(tmp_path, "[presets]\np = { temperature = 0.2 }\n")  # inline: not ours to edit
    with pytest.raises(ConfigError, match="cannot update"):
        write_preset(cfg, "p", {"temperature": 0.5})
    assert cfg.read_text(encoding="utf-8") == "[presets]\np = { temperature = 0.2 }\n"
    with pytest.raises(ConfigError, match="preset name"):
        write_preset(cfg, "a b", {"temperature": 0.5})
    with pytest.raises(ConfigError, match="'top_p' must be in"):
        write_preset(cfg, "q", {"top_p": 3.0})
    assert list(tmp_path.glob(".*.tmp")) == []


def test_override_changes_the_rendered_prompt(tmp_path: Path, model_path: Path) -> None:
    messages = [Message("system", "S"), Message("user", "hello")]
    cfg = write(tmp_path, f'[templates]\n"{model_path.name}" = "my.jinja"\n')
    (tmp_path / "my.jinja").write_text(
        "{% for m in messages %}<<{{ m['role'] }}|{{ m['content'] }}>>{% endfor %}"
        "{% if add_generation_prompt %}<<assistant|{% endif %}",
        encoding="utf-8",
    )
    override = template_override(cfg, model_path)
    plain = Engine.load(model_path, LoadOptions(ctx=256, threads=2))
    try:
        default = plain.render(messages)
        assert not plain.template_overridden
    finally:
        plain.close()
    eng = Engine.load(model_path, LoadOptions(ctx=256, threads=2, template_override=override))
    try:
        assert eng.template_overridden
        rendered = eng.render(messages)
        assert rendered == "<<system|S>><<user|hello>><<assistant|"
        assert rendered != default
    finally:
        eng.close()
    # the override renders in the sandbox too
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    eng = Engine.load(model_path, LoadOptions(ctx=256, threads=2, template_override=evil))
    try:
        with pytest.raises(TemplateError, match="unsafe"):
            eng.render(messages)
    finally:
        eng.close()
    with pytest.raises(TemplateError, match="override in config does not parse"):
        Engine.load(model_path, LoadOptions(ctx=256, threads=2, template_override="{% for %}"))


@pytest.mark.anyio
async def test_choose_and_save_preset_in_settings(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    app = synthetic_app(tmp_path, temperature=0.7, top_k=40)
    async with app.run_test(size=SIZE, message_hook=Recorder()) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        dialog = app.screen
        assert isinstance(dialog, SettingsScreen)
        assert dialog.query_one("#set-temperature", Input).value == "0.7"
        select = dialog.query_one("#set-preset", Select)
        select.focus()
        await pilot.press("enter")  # open the list
        await pilot.pause(0.1)
        await pilot.press("down", "enter")  # the first preset: precise
        await pilot.pause(0.1)
        assert select.value == "precise"
        assert dialog.query_one("#set-temperature", Input).value == "0.1"
        assert dialog.query_one("#set-top_p", Input).value == "0.5"
        assert dialog.query_one("#set-seed", Input).value == "42"
        assert dialog.query_one("#set-system", TextArea).text == "Be brief."
        assert dialog.query_one("#set-top_k", Input).value == "40"  # not in the preset
        # change a field and save it as a new preset
        dialog.query_one("#set-top_k", Input).value = "7"
        dialog.query_one("#preset-name", Input).value = "mine"
        await pilot.pause(0.1)
        await pilot.click("#save-preset")
        await pilot.pause(0.1)
        assert str(dialog.query_one("#settings-error", Static).render()) == ""
        saved = load_presets(tmp_path / "config.toml")["mine"]
        assert saved["top_k"] == 7 and saved["temperature"] == 0.1
        assert saved["system"] == "Be brief."
        # a bad name is refused on screen
        dialog.query_one("#preset-name", Input).value = "no good"
        await pilot.pause(0.1)
        dialog.query_one("#save-preset", Button).press()
        await pilot.pause(0.1)
        assert "preset name" in str(dialog.query_one("#settings-error", Static).render())
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert app.chat.settings.top_k == 7 and app.chat.settings.temperature == 0.1


@pytest.mark.anyio
async def test_template_modal_shows_the_override(tmp_path: Path, model_path: Path) -> None:
    write(tmp_path, f'[templates]\n"{model_path.stem}" = "OVR{{{{ messages[0][\'content\'] }}}}"\n')
    app = make_app(tmp_path, model_path, ctx=256)
    async with app.run_test(size=SIZE, message_hook=Recorder()) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause(0.1)
        assert isinstance(app.screen, TemplateScreen)
        note = str(app.screen.query_one("#template-override", Static).render())
        assert "override" in note and "config.toml" in note
        assert str(app.screen.query_one("#template-source", Static).render()).startswith("OVR")
        rendered = str(app.screen.query_one("#template-rendered", Static).render())
        assert rendered.startswith("OVR")
