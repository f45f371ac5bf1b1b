"""The models screen (F3), driven as a user would: the real library (SQLite), the real
default model, real files copied and imported, and the stand-in hub on 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Checkbox, DataTable, Input, Label, ProgressBar, Static, TabbedContent

from tests.support.hub_server import HubServer, Repo, ServedFile
from tests.support.pilot import make_app, wait_for
from tui_infer.app.screens.dialogs import ConfirmScreen
from tui_infer.app.screens.models import ModelsScreen
from tui_infer.core.inference.fit import FITS, TIGHT, WONT_FIT

pytestmark = pytest.mark.anyio

SIZE = (120, 40)
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


async def open_models(pilot: object) -> ModelsScreen:
    app = pilot.app  # type: ignore[attr-defined]
    await pilot.press("f3")  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen))
    screen = app.screen
    assert isinstance(screen, ModelsScreen)
    await wait_for(pilot, lambda: screen.query_one("#lib-table", DataTable).row_count > 0)
    return screen


def cells(screen: ModelsScreen, name: str) -> list[str]:
    table = screen.query_one("#lib-table", DataTable)
    return [str(c) for c in table.get_row(name)]


async def test_library_lists_bundled_model_with_fit_and_sha(
    tmp_path: Path, model_path: Path
) -> None:
    app = make_app(tmp_path, None, ctx=2048, kv_type="q8_0")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        (row,) = [r for r in screen.rows.values() if r.path == model_path]
        name, quant, _size, context, source, status, fit = cells(screen, row.name)
        assert quant == "Q4_1" and context == "8192"
        assert source == "bundled" and status == "ok"
        assert fit in (FITS, TIGHT, WONT_FIT)
        # the fit follows the chat's settings (ctx and KV type)
        assert "ctx 2048, KV q8_0" in row.fit_summary
        # sha256 is computed in the worker and then shown
        await wait_for(pilot, lambda: screen.rows[name].sha256 is not None, 60)
        import hashlib

        assert screen.rows[name].sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
        detail = str(screen.query_one("#lib-detail", Static).render())
        assert screen.rows[name].sha256 in detail.replace("\n", "")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ModelsScreen))


async def test_import_copy_then_remove(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "incoming" / "my-model.gguf"
    src.parent.mkdir()
    shutil.copyfile(model_path, src)
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        screen.query_one("#import-path", Input).value = str(src)
        screen.query_one("#import-copy", Checkbox).value = True
        await pilot.click("#import-go")
        await wait_for(pilot, lambda: "my-model" in screen.rows, 60)
        row = screen.rows["my-model"]
        assert row.source == "copied"
        copied = tmp_path / "data" / "models" / "my-model.gguf"
        assert row.path == copied and copied.read_bytes() == src.read_bytes()
        assert cells(screen, "my-model")[4] == "copied"

        # a bad path: one line saying what is wrong, nothing added
        screen.query_one("#import-path", Input).value = str(tmp_path / "nope.gguf")
        await pilot.click("#import-go")
        status = screen.query_one("#lib-status", Static)
        await wait_for(pilot, lambda: status.has_class("error"), 30)
        assert "nope.gguf" in str(status.render())

        # remove: asks first; Cancel keeps it, Remove deletes the copy (ours), not the source
        table = screen.query_one("#lib-table", DataTable)
        table.move_cursor(row=table.get_row_index("my-model"))
        table.focus()
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        assert copied.exists() and "my-model" in screen.rows
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#yes")
        await wait_for(pilot, lambda: "my-model" not in screen.rows, 30)
        assert not copied.exists() and src.exists()


async def test_load_model_into_chat(tmp_path: Path, model_path: Path) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        assert app.chat.engine is None
        screen = await open_models(pilot)
        (row,) = [r for r in screen.rows.values() if r.path == model_path]
        table = screen.query_one("#lib-table", DataTable)
        table.move_cursor(row=table.get_row_index(row.name))
        table.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is app.chat)
        await wait_for(pilot, lambda: app.chat.engine is not None, 60)
        assert app.chat.model_path == model_path
        assert app.chat.engine.info.quantization == "Q4_1"


async def test_offline_hub_says_so_and_library_works(tmp_path: Path, model_path: Path) -> None:
    # conftest sets HF_HUB_OFFLINE=1
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        hub_status = str(screen.query_one("#hub-status", Static).render())
        assert hub_status.startswith("Offline") and "import" in hub_status
        assert screen.offline
        # searching anyway gives the plain message, not a traceback
        screen.query_one("#hub-search", Input).value = "smol"
        screen._search("smol")
        await wait_for(
            pilot, lambda: "HF_HUB_OFFLINE" in str(screen.query_one("#hub-status", Static).render())
        )
        assert any(r.path == model_path for r in screen.rows.values())


@pytest.fixture
def hub(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    repos = {REPO: Repo({FILE: ServedFile(model_path.read_bytes())}, downloads=5000)}
    with HubServer(repos) as srv:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


async def test_search_download_and_find_in_library(
    tmp_path: Path, model_path: Path, hub: HubServer
) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        assert not screen.offline
        await pilot.press("f3")  # F3 again: the Hub tab, the cursor in the search box
        assert screen.query_one(TabbedContent).active == "tab-hub"
        assert screen.query_one("#hub-search", Input).has_focus
        await pilot.press(*"SmolLM2", "enter")
        repos = screen.query_one("#hub-repos", DataTable)
        await wait_for(pilot, lambda: repos.row_count == 1, 30)
        await pilot.press("enter")  # the repos table has the focus: list its files
        files = screen.query_one("#hub-files", DataTable)
        await wait_for(pilot, lambda: files.row_count == 1, 30)
        assert [str(c) for c in files.get_row_at(0)][:2] == [FILE, "Q4_1"]
        await pilot.press("enter")  # the files table has the focus: download
        await wait_for(pilot, lambda: screen.downloading or "verified" in label(screen), 10)
        await wait_for(pilot, lambda: not screen.downloading, 60)
        bar = screen.query_one("#download-bar", ProgressBar)
        assert bar.total == model_path.stat().st_size and bar.percentage == 1.0
        assert "downloaded and verified" in label(screen)
        # the fit estimate was shown before the download, from the header alone
        hub_status = str(screen.query_one("#hub-status", Static).render())
        assert f"{FILE}: fit at ctx" in hub_status and "fits" in hub_status
        await wait_for(
            pilot, lambda: any(r.source == "downloaded" for r in screen.rows.values()), 30
        )
        (row,) = [r for r in screen.rows.values() if r.source == "downloaded"]
        assert row.repo == REPO and row.path.read_bytes() == model_path.read_bytes()
        assert hub.state.bytes_sent(FILE) >= model_path.stat().st_size


def label(screen: ModelsScreen) -> str:
    return str(screen.query_one("#download-label", Label).render())


@pytest.fixture
def slow_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A ~1 MiB crafted GGUF served slowly, so that a download is still running later."""
    from tests.support.gguf_craft import write_gguf

    meta = {
        "general.architecture": "llama",
        "general.name": "Tiny",
        "general.file_type": 7,
        "llama.block_count": 2,
        "llama.context_length": 256,
        "llama.embedding_length": 8,
        "llama.attention.head_count": 2,
    }
    floats = 1 << 18
    data = write_gguf(
        tmp_path / "tiny.gguf", meta, [("w", (floats,), 0)], data=bytes(range(256)) * (floats // 64)
    ).read_bytes()
    repos = {
        "acme/Slow-GGUF": Repo({"tiny.Q8_0.gguf": ServedFile(data, rate=len(data) // 2)}),
        "acme/Crawl-GGUF": Repo({"crawl.Q8_0.gguf": ServedFile(data, rate=len(data) // 20)}),
    }
    with HubServer(repos) as srv:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


async def start_download(pilot: object, screen: ModelsScreen, query: str) -> None:
    screen.query_one(TabbedContent).active = "tab-hub"
    screen.query_one("#hub-search", Input).focus()
    await pilot.press(*query, "enter")  # type: ignore[attr-defined]
    repos = screen.query_one("#hub-repos", DataTable)
    await wait_for(pilot, lambda: repos.row_count == 1, 30)
    await pilot.press("enter")  # type: ignore[attr-defined]
    files = screen.query_one("#hub-files", DataTable)
    await wait_for(pilot, lambda: files.row_count == 1, 30)
    await pilot.press("enter")  # type: ignore[attr-defined]
    assert screen.downloading


async def test_download_keeps_running_after_leaving_the_screen(
    tmp_path: Path, slow_hub: HubServer
) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        await start_download(pilot, screen, "Slow")
        await pilot.press("escape")  # back to the chat while it downloads
        await wait_for(pilot, lambda: app.screen is app.chat)
        assert screen.downloading
        await wait_for(pilot, lambda: not screen.downloading, 60)
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.screen is screen)  # the same screen, installed
        assert "downloaded and verified" in label(screen)
        await wait_for(
            pilot, lambda: any(r.repo == "acme/Slow-GGUF" for r in screen.rows.values()), 30
        )
        assert screen.query_one("#download-bar", ProgressBar).percentage == 1.0


async def test_cancel_download_keeps_the_part(tmp_path: Path, slow_hub: HubServer) -> None:
    app = make_app(tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        await start_download(pilot, screen, "Crawl")
        bar = screen.query_one("#download-bar", ProgressBar)
        await wait_for(pilot, lambda: (bar.progress or 0) > 0, 30)
        await pilot.click("#hub-cancel")
        await wait_for(pilot, lambda: not screen.downloading, 30)
        assert label(screen).startswith("cancelled: kept")
        parts = list((tmp_path / "hf" / "hub").glob("models--acme--Crawl-GGUF/blobs/*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size > 0
        await pilot.press("ctrl+r")
        status = screen.query_one("#lib-status", Static)
        await wait_for(pilot, lambda: str(status.render()).endswith("model"), 30)
        assert not any(r.repo == "acme/Crawl-GGUF" for r in screen.rows.values())
