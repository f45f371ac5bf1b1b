"""An error nothing in the app caught: the app ends as Textual ends it, but the terminal gets
one line and the traceback goes to the log in the state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pilot import ready, synthetic_app

pytestmark = pytest.mark.anyio


async def test_an_uncaught_error_is_one_line_and_logged(tmp_path: Path) -> None:
    app = synthetic_app(tmp_path)
    with pytest.raises(ZeroDivisionError):
        async with app.run_test() as pilot:
            await ready(pilot)

            def broken() -> None:
                print(1 / 0)

            app.call_later(broken)
            await pilot.pause(0.5)
    assert app.return_code == 1
    text = app.crash_line or ""
    assert text.startswith("tui-infer: error: internal error (ZeroDivisionError: division by zero)")
    log = tmp_path / "data" / "state" / "tui-infer.log"
    assert str(log) in text
    assert "Traceback (most recent call last)" in log.read_text()
