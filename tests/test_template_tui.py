"""A chat template that runs past its bound, in the TUI: the app stays responsive, nothing
is sent, the text stays, and ChatML is offered; taking it writes a [templates] override
and the next message is answered (Pilot, real model)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.pilot import Recorder, make_app, ready, send, wait_for
from tui_infer.app import messages as msg
from tui_infer.app.screens.dialogs import TemplateFallbackScreen
from tui_infer.core.config import template_override
from tui_infer.core.inference.template import CHATML_FALLBACK

pytestmark = pytest.mark.anyio

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


async def test_a_runaway_template_offers_chatml(tmp_path: Path, model_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"# my config\n[templates]\n{json.dumps(model_path.name)} = {json.dumps(LOOP)}\n"
    )
    rec = Recorder()
    app = make_app(tmp_path, model_path, temperature=0, max_tokens=8)
    async with app.run_test(size=(120, 40), message_hook=rec) as pilot:
        await ready(pilot)
        t0 = time.monotonic()
        await send(pilot, "Hello there")
        # responsive while the child renders: the screen keeps answering keys
        await pilot.press("ctrl+j")
        await wait_for(
            pilot,
            lambda: (
                isinstance(app.screen, TemplateFallbackScreen) and bool(app.screen.query("#chatml"))
            ),
            timeout=20,
        )
        await pilot.pause(0.1)
        assert time.monotonic() - t0 < 10
        [failed] = rec.of(msg.TemplateFailed)
        assert "longer than 2 s" in failed.error
        assert not rec.of(msg.PromptAccepted)  # nothing was sent
        await pilot.click("#chatml")
        await wait_for(pilot, lambda: not isinstance(app.screen, TemplateFallbackScreen))
        await wait_for(pilot, lambda: template_override(config, model_path) == CHATML_FALLBACK)
        assert config.read_text().startswith("# my config")  # the rest of the file kept
        await wait_for(pilot, lambda: app.chat.engine is not None and not app.chat.loading)
        # the text is still in the box, which has the focus: Enter sends it again
        assert app.chat.prompt_input.text.strip() == "Hello there"
        assert app.focused is app.chat.prompt_input
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(rec.of(msg.GenerationFinished)), timeout=60)
        assert app.chat.conversation.replies[-1].text.strip()
