"""The chat's settings: the JSON toggle and schema field constrain the replies (they parse and
validate), a schema that cannot be compiled is refused on screen; raw mode sends the
message as written; a model without a template gets a notice naming the built-in used."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from textual.widgets import Checkbox, Static, TextArea

from tests.support.pilot import Recorder, banner, make_app, ready, send, wait_for
from tui_infer.app import messages as msg
from tui_infer.app.screens.settings import SettingsScreen

SIZE = (120, 40)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}

pytestmark = pytest.mark.anyio


async def open_settings(pilot: object, app: object) -> SettingsScreen:
    app.chat.action_settings()  # type: ignore[attr-defined]
    await pilot.pause(0.2)  # type: ignore[attr-defined]
    dialog = app.screen  # type: ignore[attr-defined]
    assert isinstance(dialog, SettingsScreen)
    return dialog


async def test_the_json_toggle_constrains_replies(tmp_path: Path, model_path: Path) -> None:
    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0, max_tokens=80, serve="live")
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        dialog = await open_settings(pilot, app)
        dialog.query_one("#set-json_mode", Checkbox).value = True
        # a schema that cannot be compiled is refused on screen, the dialog stays
        dialog.query_one("#set-json_schema", TextArea).text = '{"type": "nonsense"}'
        await pilot.pause(0.1)
        error = str(dialog.query_one("#settings-error", Static).render())
        assert "cannot be compiled" in error
        dialog.action_save()
        await pilot.pause(0.1)
        assert app.screen is dialog
        dialog.query_one("#set-json_schema", TextArea).text = json.dumps(SCHEMA)
        await pilot.pause(0.1)
        assert str(dialog.query_one("#settings-error", Static).render()) == ""
        dialog.action_save()
        await pilot.pause(0.2)
        assert app.chat.settings.json_mode and json.loads(app.chat.settings.json_schema) == SCHEMA
        for i, q in enumerate(["Tell me about Paris."]):
            await send(pilot, q)
            await wait_for(pilot, lambda n=i + 1: len(rec.of(msg.GenerationFinished)) == n, 120)
            done = rec.of(msg.GenerationFinished)[-1]
            assert done.stats.finish_reason == "stop", done.text
            jsonschema.validate(json.loads(done.text), SCHEMA)


async def test_raw_mode_and_the_builtin_template_notice(tmp_path: Path, gemma_path: Path) -> None:
    rec = Recorder()
    app = make_app(tmp_path, gemma_path, temperature=0, max_tokens=8, ctx=512, serve="live")
    async with app.run_test(size=SIZE, message_hook=rec) as pilot:
        await ready(pilot)
        assert app.chat.engine is not None
        warning = app.chat.engine.template.warning or ""
        assert "built-in 'gemma'" in warning and "base model" in warning
        assert "built-in 'gemma'" in banner(app)  # shown on screen
        dialog = await open_settings(pilot, app)
        dialog.query_one("#set-raw_mode", Checkbox).value = True
        await pilot.pause(0.1)
        dialog.action_save()
        await pilot.pause(0.2)
        assert app.chat.settings.raw_mode
        await send(pilot, "The capital of France is")
        await wait_for(pilot, lambda: len(rec.of(msg.GenerationFinished)) == 1, 120)
        done = rec.of(msg.GenerationFinished)[0]
        # the prompt went as written: 6 tokens and BOS, not a rendered chat turn
        assert done.stats.prompt_tokens <= 8 and done.stats.generated_tokens >= 1
