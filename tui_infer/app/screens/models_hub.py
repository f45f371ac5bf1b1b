"""The models screen's Hub tab: search the Hugging Face hub for GGUF repositories, list a
repository's models, download one with progress (resumable, cancellable) into the library.

Every hub call is HTTP: each runs in a thread worker that posts the results (the messages
below). The app installs the models screen once, so a download keeps running while the
user is back in the chat. ModelsScreen (models.py) composes this tab with the Library tab.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static

from tui_infer.app.screens.models_library import PROGRESS_INTERVAL_S
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.units import human_size


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


@dataclass(frozen=True)
class HubRow:
    """One downloadable model of a repo (a file, or all the parts of a split one)."""

    key: str
    filename: str
    quant: str
    size: int
    parts: int


# ----- messages (past tense: what happened) ---------------------------------------------


class HubSearched(Message):
    def __init__(self, query: str, repos: list[Any]) -> None:
        super().__init__()
        self.query = query
        self.repos = repos  # list[RepoSummary]


class HubFilesListed(Message):
    def __init__(self, repo: str, models: list[Any]) -> None:
        super().__init__()
        self.repo = repo
        self.models = models  # list[HubModel]


class HubFailed(Message):
    def __init__(self, error: str, offline: bool) -> None:
        super().__init__()
        self.error = error
        self.offline = offline


class DownloadProgressed(Message):
    def __init__(
        self, done: int, total: int, speed: float, eta_s: float | None, state: str, note: str
    ) -> None:
        super().__init__()
        self.done, self.total, self.speed, self.eta_s = done, total, speed, eta_s
        self.state, self.note = state, note

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DownloadProgressed)


class DownloadFinished(Message):
    def __init__(
        self, text: str, ok: bool, cancelled: bool = False, path: Path | None = None
    ) -> None:
        super().__init__()
        self.text = text
        self.ok = ok
        self.cancelled = cancelled
        self.path = path  # the library's file, when ok


def download_to_library(
    model: Any, data_dir: Path, cancel: threading.Event, post: Callable[[Message], Any]
) -> None:
    """Download a HubModel (resumable, verified) into the library, in a thread worker:
    progress is posted as DownloadProgressed (at most every PROGRESS_INTERVAL_S, state
    changes at once), the end as one DownloadFinished. The Hub tab's download and the
    download offer (download_offer.py) both run this."""
    from tui_infer.core.models.hub import Hub
    from tui_infer.core.models.hub_types import DownloadCancelled, HubError, Progress
    from tui_infer.core.models.library import ModelLibrary

    before = {i: sum(f.size for f in model.files[: i - 1]) for i in range(1, len(model.files) + 1)}
    last = 0.0

    def on_progress(p: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        urgent = p.state not in ("downloading",)
        if not urgent and now - last < PROGRESS_INTERVAL_S:
            return
        last = now
        done = before.get(p.file_index, 0) + p.done
        note = p.message or (f"resumed from {human_size(p.resumed_from)}" if p.resumed_from else "")
        post(DownloadProgressed(done, model.size, p.speed, p.eta_s, p.state, note))

    hub = Hub()
    try:
        result = hub.download(model, progress=on_progress, cancel=cancel)
    except DownloadCancelled:
        kept = sum(
            hub.part_path(model, f).stat().st_size
            for f in model.files
            if hub.part_path(model, f).exists()
        )
        post(
            DownloadFinished(
                f"cancelled: kept {human_size(kept)}; Download again resumes it", False, True
            )
        )
        return
    except (HubError, OSError) as exc:
        post(DownloadFinished(f"download failed: {exc}", False))
        return
    post(DownloadProgressed(model.size, model.size, 0.0, 0.0, "done", ""))
    with ModelLibrary(data_dir) as lib:
        try:
            entry = lib.register_download(result.paths[0], model.repo, result.hashes)
        except TuiInferError as exc:
            post(DownloadFinished(f"downloaded, but: {exc}", False))
            return
    post(
        DownloadFinished(
            f"{entry.name}: downloaded and verified ({human_size(entry.size)}); it is in the "
            "library",
            True,
            path=entry.path,
        )
    )


def progress_text(event: DownloadProgressed) -> str:
    """The download's line: state, bytes of total, percent, speed, ETA, and a note."""
    pct = 100 * event.done / event.total if event.total else 100
    text = (
        f"{event.state}: {human_size(event.done)} of {human_size(event.total)} "
        f"({pct:.0f} %), {human_size(event.speed)}/s, ETA {human_eta(event.eta_s)}"
    )
    return text + (f" · {event.note}" if event.note else "")


class HubTab(Screen[None]):
    """The Hub tab's widgets, workers and handlers; part of ModelsScreen."""

    # set by ModelsScreen.__init__
    _settings_fn: Callable[[], Settings]  # the chat's current settings (the fit line)
    data_dir: Path
    hub_models: dict[str, Any]  # file-table key -> HubModel
    downloading: bool
    offline: bool
    _cancel: threading.Event  # the running download's

    def compose_hub(self) -> ComposeResult:
        yield Static("", id="hub-status", markup=False)
        yield Input(placeholder="search GGUF repositories, Enter", id="hub-search")
        with Horizontal(id="hub-tables"):
            yield DataTable(id="hub-repos", cursor_type="row")
            yield DataTable(id="hub-files", cursor_type="row")
        with Vertical(id="download-box"):
            yield Label("", id="download-label")
            yield ProgressBar(id="download-bar", show_eta=False)
            with Horizontal(classes="models-row"):
                yield Button("Download", id="hub-download", variant="primary")
                yield Button("Cancel download", id="hub-cancel", disabled=True)

    def _mount_hub(self) -> None:
        self.query_one("#hub-repos", DataTable).add_columns("repository", "downloads", "likes")
        self.query_one("#hub-files", DataTable).add_columns("file", "quant", "size", "parts")
        from tui_infer.core.models.hub_types import offline_by_env

        if offline_by_env():
            self._set_offline(
                "Offline (HF_HUB_OFFLINE is set): hub search and downloads are off. "
                "The library works: import a .gguf file by path on the Library tab."
            )
        else:
            self.query_one("#hub-status", Static).update(
                "Search the Hugging Face hub for GGUF repositories; pick a repository, then a "
                "file, then Download."
            )
        self.query_one("#download-box").display = False

    def _downloaded(self) -> None:
        """A download joined the library: the screen that holds the Library tab rescans."""

    def _set_offline(self, text: str) -> None:
        self.offline = True
        status = self.query_one("#hub-status", Static)
        status.update(text)
        status.add_class("error")

    @on(Input.Submitted, "#hub-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            return
        self._hub_status(f"searching '{query}'…")
        self._search(query)

    @work(thread=True, exclusive=True, exit_on_error=False, group="hub", name="hub search")
    def _search(self, query: str) -> None:
        from tui_infer.core.models.hub import Hub
        from tui_infer.core.models.hub_types import HubError, HubOfflineError

        try:
            found = Hub().search(query)
        except HubError as exc:
            self.post_message(HubFailed(str(exc), isinstance(exc, HubOfflineError)))
            return
        self.post_message(HubSearched(query, found))

    @on(HubSearched)
    def _searched(self, event: HubSearched) -> None:
        self._hub_clear_offline()
        table = self.query_one("#hub-repos", DataTable)
        table.clear()
        for r in event.repos:
            table.add_row(
                r.repo + (" (gated)" if r.gated else ""),
                f"{r.downloads:,}",
                str(r.likes),
                key=r.repo,
            )
        self.query_one("#hub-files", DataTable).clear()
        if event.repos:
            self._hub_status(
                f"{len(event.repos)} repositories match '{event.query}': "
                "Enter lists a repository's files"
            )
            table.focus()
        else:
            self._hub_status(f"no GGUF repositories match '{event.query}'")

    @on(DataTable.RowSelected, "#hub-repos")
    def _repo_selected(self, event: DataTable.RowSelected) -> None:
        repo = str(event.row_key.value)
        self._hub_status(f"listing {repo}…")
        self._list_files(repo)

    @work(thread=True, exclusive=True, exit_on_error=False, group="hub", name="hub files")
    def _list_files(self, repo: str) -> None:
        from tui_infer.core.models.hub import Hub
        from tui_infer.core.models.hub_types import HubError, HubOfflineError

        try:
            models = Hub().models(repo)
        except HubError as exc:
            self.post_message(HubFailed(str(exc), isinstance(exc, HubOfflineError)))
            return
        self.post_message(HubFilesListed(repo, models))

    @on(HubFilesListed)
    def _files_listed(self, event: HubFilesListed) -> None:
        table = self.query_one("#hub-files", DataTable)
        table.clear()
        self.hub_models = {}
        for i, m in enumerate(event.models):
            key = f"{i}:{m.filename}"
            self.hub_models[key] = m
            table.add_row(
                m.filename, m.quant or "?", human_size(m.size), str(len(m.files)), key=key
            )
        if event.models:
            self._hub_status(
                f"{event.repo}: {len(event.models)} GGUF models; Enter (or "
                "Download) fetches the highlighted one"
            )
            table.focus()
            self.query_one("#download-box").display = True
        else:
            self._hub_status(f"{event.repo} has no GGUF files")

    @on(HubFailed)
    def _hub_failed(self, event: HubFailed) -> None:
        if event.offline:
            self._set_offline(f"Offline: {event.error}. The library still works.")
        else:
            self._hub_status(event.error, error=True)

    def _hub_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#hub-status", Static)
        status.update(text)
        status.set_class(error, "error")

    def _hub_clear_offline(self) -> None:
        self.offline = False

    @on(DataTable.RowSelected, "#hub-files")
    @on(Button.Pressed, "#hub-download")
    def start_download(self) -> None:
        table = self.query_one("#hub-files", DataTable)
        if self.downloading:
            self._hub_status("a download is already running (Cancel download stops it)", error=True)
            return
        if table.row_count == 0:
            self._hub_status("pick a repository and a file first", error=True)
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        model = self.hub_models.get(str(key))
        if model is None:
            return
        self.downloading = True
        self._cancel = threading.Event()
        self.query_one("#download-box").display = True
        bar = self.query_one("#download-bar", ProgressBar)
        bar.update(total=model.size, progress=0)
        self.query_one("#download-label", Label).update(f"{model.repo}/{model.filename}: starting…")
        self.query_one("#hub-cancel", Button).disabled = False
        self.query_one("#hub-download", Button).disabled = True
        self._download(model, self._cancel)

    @on(Button.Pressed, "#hub-cancel")
    def action_cancel_download(self) -> None:
        if self.downloading:
            self._cancel.set()
            self.query_one("#download-label", Label).update("cancelling…")

    @work(thread=True, exclusive=False, exit_on_error=False, group="download", name="download")
    def _download(self, model: Any, cancel: threading.Event) -> None:
        from tui_infer.core.inference.fit import hub_file_fit
        from tui_infer.core.models.hub import Hub

        # the fit estimate before any byte of the model is fetched (a ranged header read)
        fit_line = hub_file_fit(Hub(), model, self._settings_fn())
        self.app.call_from_thread(self._hub_status, f"{model.filename}: {fit_line}")
        download_to_library(model, self.data_dir, cancel, self.post_message)

    @on(DownloadProgressed)
    def _download_progressed(self, event: DownloadProgressed) -> None:
        self.query_one("#download-bar", ProgressBar).update(total=event.total, progress=event.done)
        self.query_one("#download-label", Label).update(progress_text(event))

    @on(DownloadFinished)
    def _download_finished(self, event: DownloadFinished) -> None:
        self.downloading = False
        self.query_one("#hub-cancel", Button).disabled = True
        self.query_one("#hub-download", Button).disabled = False
        self.query_one("#download-label", Label).update(event.text)
        if event.ok or event.cancelled:
            self.app.notify(event.text, title="Download")
        else:
            self.app.notify(event.text, title="Download", severity="error")
        if event.ok:
            self._downloaded()
