"""Enter acts on the models list and on the chats list as soon as they are shown, with no
Tab to move the focus there first (both used to need one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from tests.support.pilot import make_app, ready, synthetic_app, wait_for
from tui_infer.app.screens.models import ModelsScreen
from tui_infer.core.chat.history import History


@pytest.mark.anyio
async def test_enter_on_the_models_list_loads_the_highlighted_model(
    tmp_path: Path, model_path: Path
) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.chat.engine is None
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen))
        table = app.screen.query_one("#lib-table", DataTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        await pilot.pause(0.2)
        await pilot.press("enter")  # no Tab, no click
        await wait_for(pilot, lambda: app.screen is app.chat)
        await wait_for(pilot, lambda: app.chat.engine is not None, 60)
        assert app.chat.model_path == model_path


@pytest.mark.anyio
async def test_enter_on_the_chats_list_opens_the_highlighted_chat(tmp_path: Path) -> None:
    with History.in_data_dir(tmp_path / "data") as h:
        h.create("Older", model_name="synthetic", created_at=1.0)
        cid = h.create("Rivers", model_name="synthetic", created_at=5.0)
        h.add_message(cid, "user", "Which river?", created_at=6.0)
    app = synthetic_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.chat.conversation_id != cid
        await pilot.press("ctrl+l")  # the list, at 80 columns hidden until asked
        await app.workers.wait_for_complete()
        await pilot.pause(0.2)
        await pilot.press("enter")  # no Tab: the newest chat is highlighted
        await app.workers.wait_for_complete()
        await wait_for(pilot, lambda: app.chat.conversation_id == cid)
