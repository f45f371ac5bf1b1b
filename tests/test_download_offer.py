"""The download offer: `tui-infer -m OWNER/REPO:QUANT` (and Ctrl+O with a hub reference)
naming a model that is not here opens the app with a dialog that gives the file, its size
and the fit; Download fetches it (the real SmolLM2 file, from the stand-in hub on
127.0.0.1 of tests/test_hub.py) and the chat loads it; Cancel keeps the app usable;
offline (HF_HUB_OFFLINE, or a hub that cannot be reached) is said at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, Input, OptionList, ProgressBar, Static

from tests.support.hub_server import HubServer, Repo
from tests.support.pilot import banner, wait_for
from tests.test_hub import REAL, REAL_FILE, served, server  # noqa: F401  (fixtures)
from tui_infer.app.screens.download_offer import DownloadOfferScreen
from tui_infer.app.screens.models import ModelsScreen
from tui_infer.cli import tui_app
from tui_infer.core.config import Settings
from tui_infer.core.models.library import ModelLibrary
from tui_infer.core.models.resolve import resolve_model
from tui_infer.core.paths import default_paths
from tui_infer.core.units import human_size

pytestmark = pytest.mark.anyio

SIZE = (130, 42)


def app_for(model: str | None) -> object:
    """The app as `tui-infer -m MODEL` builds it (the CLI's own resolution), with the
    test's directories and a small context."""
    return tui_app(Settings(model=model, ctx=1024, threads=2), default_paths())


def text(screen: DownloadOfferScreen, wid: str) -> str:
    return str(screen.query_one(wid, Static).render())


async def the_offer(pilot: object) -> DownloadOfferScreen:
    app = pilot.app  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: isinstance(app.screen, DownloadOfferScreen))
    screen = app.screen
    assert isinstance(screen, DownloadOfferScreen)
    return screen


async def click_download(pilot: object, offer: DownloadOfferScreen) -> None:
    """Click Download as a person would once the offer is drawn: the hub's answer shows the
    file and fit lines and enables the button in one handler, and a click aimed before the
    dialog is laid out again lands where the button was (seen under load)."""
    button = offer.query_one("#offer-download", Button)
    await wait_for(pilot, lambda: not button.disabled, 60)
    await pilot.pause(0.1)  # type: ignore[attr-defined]
    await pilot.click("#offer-download")  # type: ignore[attr-defined]
    app = pilot.app  # type: ignore[attr-defined]
    try:
        await wait_for(pilot, lambda: offer.downloading or app.screen is not offer, 10)
    except AssertionError:
        status = text(offer, "#offer-status")
        raise AssertionError(f"the click did not start the download: {status}") from None


async def test_the_offer_gives_size_and_fit_and_download_loads_the_model(
    server: HubServer,  # noqa: F811
    model_path: Path,
) -> None:
    app = app_for(f"{REAL}:q4_1")
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        offer = await the_offer(pilot)
        assert f"{REAL}:q4_1 is not on this machine" in str(
            offer.query_one(".dialog-title").render()
        )
        await wait_for(pilot, lambda: offer.model is not None, 60)
        size = model_path.stat().st_size
        shown = text(offer, "#offer-file")
        assert REAL in shown and REAL_FILE in shown and "Q4_1" in shown
        assert human_size(size) in shown
        fit = text(offer, "#offer-fit")
        assert fit.startswith("Fit at ctx 1024, KV f16: ")
        assert "needs ~" in fit and "RAM available" in fit and "(weights " in fit
        assert offer.lookup is not None and offer.lookup.fit is not None
        assert offer.lookup.fit.verdict in fit
        # only the header was read so far: ranged GETs, never the whole file
        assert all(h.range for h in server.state.gets(REAL_FILE))
        assert server.state.bytes_sent(REAL_FILE) < size

        await click_download(pilot, offer)
        await wait_for(pilot, lambda: app.screen is app.chat, 120)  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: app.chat.engine is not None, 120)  # type: ignore[attr-defined]
        loaded = app.chat.model_path  # type: ignore[attr-defined]
        assert loaded.name == REAL_FILE and loaded.read_bytes() == model_path.read_bytes()
        assert app.chat.engine.info.quantization == "Q4_1"  # type: ignore[attr-defined]
        assert banner(app) == ""  # type: ignore[arg-type]
        # what is typed next goes to the message box
        await wait_for(pilot, lambda: app.focused is app.chat.prompt_input)  # type: ignore[attr-defined]
    # it is in the library now: the same reference resolves, and a new start loads it
    with ModelLibrary(default_paths().data_dir) as lib:
        assert [e.path.name for e in lib.entries() if e.repo == REAL] == [REAL_FILE]
    assert resolve_model(f"hf.co/{REAL}:Q4_1") == loaded


async def test_cancel_keeps_the_app_usable(server: HubServer) -> None:  # noqa: F811
    app = app_for(f"{REAL}:Q4_1")
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        offer = await the_offer(pilot)
        await wait_for(pilot, lambda: offer.model is not None, 60)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)  # type: ignore[attr-defined]
        shown = banner(app)  # type: ignore[arg-type]
        assert f"{REAL}:Q4_1 is not downloaded" in shown
        assert f"tui-infer models pull {REAL} Q4_1" in shown and "Ctrl+O" in shown
        assert app.chat.engine is None  # type: ignore[attr-defined]
        # nothing was downloaded, and the app works: the models screen opens
        assert all(h.range for h in server.state.gets(REAL_FILE))
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen))  # type: ignore[attr-defined]


async def test_cancel_during_the_download_keeps_the_part_and_the_next_resumes(
    server: HubServer,  # noqa: F811
    served: dict[str, Repo],  # noqa: F811
    model_path: Path,
) -> None:
    served[REAL].files[REAL_FILE].rate = 4_000_000  # bytes/s: ~25 s for the whole file
    app = app_for(f"{REAL}:Q4_1")
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        offer = await the_offer(pilot)
        await wait_for(pilot, lambda: offer.model is not None, 60)
        await click_download(pilot, offer)
        # well into the file (the server counts a request's bytes only when it ends, and
        # the offer's header reads are requests of their own: watch the progress bar)
        bar = offer.query_one("#offer-bar", ProgressBar)
        await wait_for(pilot, lambda: (bar.progress or 0) > 2_000_000, 30)
        shown = f"{text(offer, '#offer-status')} / {offer.query_one('#offer-progress').render()}"
        assert str(offer.query_one("#offer-cancel", Button).label) == "Cancel download", shown
        await pilot.press("escape")  # stops the download; the dialog closes once it has
        await wait_for(pilot, lambda: app.screen is app.chat, 30)  # type: ignore[attr-defined]
        assert not offer.downloading and app.chat.engine is None  # type: ignore[attr-defined]
        assert "is not downloaded" in banner(app)  # type: ignore[arg-type]

        # again, at full speed (Ctrl+O with the reference): it resumes from the part
        served[REAL].files[REAL_FILE].rate = None
        await pilot.press("ctrl+o")
        app.screen.query_one("#model-path", Input).value = f"{REAL}:Q4_1"  # type: ignore[attr-defined]
        await pilot.press("enter")
        offer = await the_offer(pilot)
        await wait_for(pilot, lambda: offer.model is not None, 60)
        await click_download(pilot, offer)
        await wait_for(pilot, lambda: app.chat.engine is not None, 120)  # type: ignore[attr-defined]
        assert app.chat.model_path.read_bytes() == model_path.read_bytes()  # type: ignore[attr-defined]
    last = server.state.gets(REAL_FILE)[-1]
    assert last.range is not None and not last.range.startswith("bytes=0-")


async def test_offline_says_so_without_the_network(tmp_path: Path) -> None:
    # the tests run with HF_HUB_OFFLINE=1, and the network off
    app = app_for(f"hf.co/{REAL}:Q4_1")
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        offer = await the_offer(pilot)
        status = offer.query_one("#offer-status", Static)
        await wait_for(pilot, lambda: "HF_HUB_OFFLINE" in str(status.render()))
        shown = str(status.render())
        assert shown.startswith("Offline: HF_HUB_OFFLINE is set")
        assert f"'tui-infer models pull {REAL} Q4_1'" in shown and "(F3)" in shown
        assert offer.query_one("#offer-download", Button).disabled
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)  # type: ignore[attr-defined]


async def test_a_hub_that_cannot_be_reached_is_offline_with_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    app = app_for(f"{REAL}:Q4_1")
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        offer = await the_offer(pilot)
        status = offer.query_one("#offer-status", Static)
        await wait_for(pilot, lambda: status.has_class("-offline"), 30)
        shown = str(status.render())
        assert shown.startswith("The hub cannot be reached") and f"127.0.0.1:{port}" in shown
        retry = offer.query_one("#offer-download", Button)
        assert str(retry.label) == "Retry" and not retry.disabled
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)  # type: ignore[attr-defined]


async def test_a_quant_the_repo_lacks_lists_its_files_to_pick(
    server: HubServer,  # noqa: F811
    model_path: Path,
) -> None:
    app = app_for(f"{REAL}:Q5_K_M")
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        offer = await the_offer(pilot)
        status = offer.query_one("#offer-status", Static)
        await wait_for(pilot, lambda: status.has_class("-error"), 60)
        assert f"no file or quant 'Q5_K_M' (there are: Q4_1 ({REAL_FILE}))" in str(status.render())
        assert offer.query_one("#offer-download", Button).disabled
        choices = offer.query_one("#offer-choices", OptionList)
        assert choices.display and choices.option_count == 1
        assert REAL_FILE in str(choices.get_option_at_index(0).prompt)
        await pilot.press("enter")  # the highlighted file
        await wait_for(pilot, lambda: offer.model is not None, 60)
        assert human_size(model_path.stat().st_size) in text(offer, "#offer-file")
        assert not offer.query_one("#offer-download", Button).disabled


async def test_ctrl_o_takes_a_hub_reference(server: HubServer) -> None:  # noqa: F811
    app = app_for(None)  # the default model
    async with app.run_test(size=SIZE) as pilot:  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: app.chat.engine is not None, 60)  # type: ignore[attr-defined]
        await pilot.press("ctrl+o")
        box = app.screen.query_one("#model-path", Input)  # type: ignore[attr-defined]
        box.value = f"hf.co/{REAL}:q4_1"
        await pilot.press("enter")
        offer = await the_offer(pilot)
        await wait_for(pilot, lambda: offer.model is not None, 60)
        assert REAL_FILE in text(offer, "#offer-file")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)  # type: ignore[attr-defined]
        # a model was loaded: Cancel leaves it loaded, and no error banner
        assert app.chat.engine is not None and banner(app) == ""  # type: ignore[attr-defined,arg-type]
