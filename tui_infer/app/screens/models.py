"""The models screen (F3): the library with fit estimates, load, import, remove; the hub
(search, a repo's files, download with progress, cancel).

Every library and hub call blocks (SQLite, sha256 over a whole file, HTTP), so each runs
in a thread worker that posts the results as messages; the handlers, on the UI thread,
update the widgets. The app installs this screen once, so its workers (a download)
keep running while the user is back in the chat.
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
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import Worker, WorkerState

from tui_infer.app import messages as msg
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.units import human_size

PROGRESS_INTERVAL_S = 0.2  # download/import progress reaches the UI at most 5 times a second


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


@dataclass(frozen=True)
class LibraryRow:
    """One library entry as the screen shows it (computed in the worker)."""

    name: str
    path: Path
    quant: str
    size: int
    context: int
    source: str
    repo: str | None
    status: str
    fit: str  # the verdict, or "?" when it could not be estimated
    fit_summary: str
    sha256: str | None


@dataclass(frozen=True)
class HubRow:
    """One downloadable model of a repo (a file, or all the parts of a split one)."""

    key: str
    filename: str
    quant: str
    size: int
    parts: int


# ----- messages (past tense: what happened) ---------------------------------------------


class LibraryScanned(Message):
    def __init__(self, rows: list[LibraryRow], hashing: bool) -> None:
        super().__init__()
        self.rows = rows
        self.hashing = hashing  # sha256 still being computed for some entries


class LibraryChanged(Message):
    """An import, a removal or a download finished: say so and rescan."""

    def __init__(self, text: str, error: bool = False) -> None:
        super().__init__()
        self.text = text
        self.error = error


class ImportProgressed(Message):
    def __init__(self, done: int, total: int) -> None:
        super().__init__()
        self.done = done
        self.total = total

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ImportProgressed)


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
    def __init__(self, done: int, total: int, speed: float, eta_s: float | None, state: str,
                 note: str) -> None:  # fmt: skip
        super().__init__()
        self.done, self.total, self.speed, self.eta_s = done, total, speed, eta_s
        self.state, self.note = state, note

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DownloadProgressed)


class DownloadFinished(Message):
    def __init__(self, text: str, ok: bool, cancelled: bool = False) -> None:
        super().__init__()
        self.text = text
        self.ok = ok
        self.cancelled = cancelled


# ----- the screen -----------------------------------------------------------------------


class ModelsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("f3", "switch_tab", "Library/Hub"),
        Binding("ctrl+r", "refresh", "Rescan"),
        Binding("f8", "remove", "Remove"),
        Binding("ctrl+l", "load", "Load"),
    ]

    def __init__(self, settings_fn: Callable[[], Settings], data_dir: Path) -> None:
        """settings_fn gives the chat's current settings (ctx, KV type) for the fit column."""
        super().__init__()
        self._settings_fn = settings_fn
        self.data_dir = data_dir
        self.rows: dict[str, LibraryRow] = {}
        self.hub_models: dict[str, Any] = {}  # file-table key -> HubModel
        self.downloading = False
        self.importing = False
        self.offline = False
        self._cancel = threading.Event()
        self._scanned_for: tuple[Any, ...] = ()

    # ----- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="models-tabs"):
            with TabPane("Library", id="tab-library"):
                yield DataTable(id="lib-table", cursor_type="row", zebra_stripes=True)
                yield Static("", id="lib-detail", markup=False)
                with Horizontal(classes="models-row"):
                    yield Button("Load into chat", id="lib-load", variant="primary")
                    yield Button("Remove…", id="lib-remove", variant="error")
                    yield Button("Rescan", id="lib-refresh")
                with Horizontal(classes="models-row"):
                    yield Input(placeholder="path to a .gguf file", id="import-path")
                    yield Checkbox("copy into the data directory", id="import-copy")
                    yield Button("Import", id="import-go")
                yield Static("", id="lib-status", markup=False)
            with TabPane("Hub", id="tab-hub"):
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
        yield Footer()

    def on_mount(self) -> None:
        self.title = "tui-infer · models"
        lib = self.query_one("#lib-table", DataTable)
        for col in ("name", "quant", "size", "context", "source", "status", "fit"):
            lib.add_column(col, key=col)
        self.query_one("#hub-repos", DataTable).add_columns("repository", "downloads", "likes")
        self.query_one("#hub-files", DataTable).add_columns("file", "quant", "size", "parts")
        from tui_infer.core.models.hub import offline_by_env

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
        self.action_refresh()

    def on_screen_resume(self) -> None:
        # The chat's settings may have changed (ctx, KV type): the fit column follows.
        if self.rows and self._fit_key(self._settings_fn()) != self._scanned_for:
            self.action_refresh()

    @staticmethod
    def _fit_key(s: Settings) -> tuple[Any, ...]:
        return (s.ctx, s.kv_type, s.batch, s.flash_attn, s.gpu_layers)

    # ----- the library -------------------------------------------------------------------

    def action_refresh(self) -> None:
        self._status("scanning the library…")
        self._rescan()

    def _rescan(self) -> None:
        settings = self._settings_fn()
        self._scanned_for = self._fit_key(settings)
        self._scan(settings)

    @work(thread=True, exclusive=True, exit_on_error=False, group="library", name="scan library")
    def _scan(self, settings: Settings) -> None:
        from tui_infer.core.inference import fit
        from tui_infer.core.models.library import ModelLibrary

        with ModelLibrary(self.data_dir) as lib:
            entries = lib.entries()
            try:
                ram, vram = fit.current_memory()
            except Exception:  # noqa: BLE001 - a probe failure only costs the fit column
                ram, vram = 0, None
            rows = [self._row(e, settings, ram, vram) for e in entries]
            unhashed = [e for e in entries if e.status == "ok" and e.sha256 is None]
            self.post_message(LibraryScanned(rows, hashing=bool(unhashed)))
            if not unhashed:
                return
            for e in unhashed:
                try:
                    lib.ensure_hashes(e)
                except (TuiInferError, OSError):
                    continue  # shown as sha256 unknown; `models verify` says why
            rows = [self._row(e, settings, ram, vram) for e in entries]
            self.post_message(LibraryScanned(rows, hashing=False))

    @staticmethod
    def _row(e: Any, settings: Settings, ram: int, vram: int | None) -> LibraryRow:
        from tui_infer.core.inference import fit

        verdict, summary = "?", "fit: unknown (the file is not there)"
        if e.status == "ok" and ram:
            try:
                est = fit.estimate_fit(
                    fit.info_from_metadata(str(e.path), e.size, e.metadata),
                    n_vocab=int(e.metadata.get("n_vocab") or 0), ctx=settings.ctx,
                    kv_type=settings.kv_type, n_ubatch=settings.batch,
                    flash_attn=settings.flash_attn, ram_available=ram, gpu_free=vram,
                )  # fmt: skip
                verdict = est.verdict
                summary = f"fit at ctx {settings.ctx}, KV {settings.kv_type}: {est.summary()}"
            except ValueError as exc:
                summary = f"fit: unknown ({exc})"
        return LibraryRow(
            name=e.name, path=e.path, quant=e.quantization, size=e.size,
            context=e.n_ctx_train, source=e.source, repo=e.repo, status=e.status,
            fit=verdict, fit_summary=summary, sha256=e.sha256,
        )  # fmt: skip

    @on(LibraryScanned)
    def _scanned(self, event: LibraryScanned) -> None:
        table = self.query_one("#lib-table", DataTable)
        keep = self._selected_name()
        table.clear()
        self.rows = {r.name: r for r in event.rows}
        for r in event.rows:
            # the repo goes in the detail line: a long one would push the fit column out of view
            table.add_row(r.name, r.quant, human_size(r.size), str(r.context or "?"), r.source,
                          r.status, r.fit, key=r.name)  # fmt: skip
        if keep in self.rows:
            table.move_cursor(row=table.get_row_index(keep))
        if not event.rows:
            self._status("The library is empty: import a .gguf file below, or download one "
                         "from the Hub tab.")  # fmt: skip
        else:
            n = len(event.rows)
            self._status(f"{n} model{'s' if n != 1 else ''}"
                         + ("; computing sha256…" if event.hashing else ""))  # fmt: skip
        self._show_detail()

    def _selected_name(self) -> str | None:
        table = self.query_one("#lib-table", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - no cursor row yet
            return None
        return str(key.value) if key.value is not None else None

    def selected(self) -> LibraryRow | None:
        name = self._selected_name()
        return self.rows.get(name) if name else None

    @on(DataTable.RowHighlighted, "#lib-table")
    def _show_detail(self) -> None:
        r = self.selected()
        text = ""
        if r is not None:
            sha = r.sha256 or "(not computed yet)"
            origin = f"{r.source} from {r.repo}" if r.repo else r.source
            text = f"{r.path} ({origin})\nsha256 {sha}\n{r.fit_summary}"
        self.query_one("#lib-detail", Static).update(text)

    @on(DataTable.RowSelected, "#lib-table")
    @on(Button.Pressed, "#lib-load")
    def action_load(self) -> None:
        r = self.selected()
        if r is None:
            self._status("no model selected", error=True)
            return
        if r.status != "ok":
            self._status(f"{r.name}: the file is {r.status}; import it again or remove it",
                         error=True)  # fmt: skip
            return
        self.app.chat.load_model(r.path)  # type: ignore[attr-defined]
        self.app.pop_screen()

    @on(Button.Pressed, "#lib-refresh")
    def _refresh_pressed(self) -> None:
        self.action_refresh()

    @on(Button.Pressed, "#lib-remove")
    def action_remove(self) -> None:
        from tui_infer.app.screens.dialogs import ConfirmScreen
        from tui_infer.core.models.library import OWNED_SOURCES

        r = self.selected()
        if r is None:
            self._status("no model selected", error=True)
            return
        if r.source in ("bundled", "hf-cache"):
            where = "an installed Python package" if r.source == "bundled" else (
                "the Hugging Face cache")  # fmt: skip
            how = "uninstall the package" if r.source == "bundled" else (
                "delete it with 'hf cache delete'")  # fmt: skip
            self._status(f"{r.name} comes from {where} and would be found again; {how}",
                         error=True)  # fmt: skip
            return
        delete = r.source in OWNED_SOURCES and r.status != "missing"
        question = (
            f"Remove {r.name} and delete {r.path} ({human_size(r.size)})?"
            if delete
            else f"Remove {r.name} from the library? The file stays at {r.path}."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._remove(r.name, delete)

        self.app.push_screen(ConfirmScreen(question, yes="Remove"), answered)

    # Not in the "library" group: a rescan (exclusive there) must never cancel a removal.
    @work(thread=True, exclusive=False, exit_on_error=False, group="edit", name="remove model")
    def _remove(self, name: str, delete: bool) -> None:
        from tui_infer.core.models.library import ModelLibrary

        with ModelLibrary(self.data_dir) as lib:
            try:
                entry = lib.get(name, refresh=False)
                deleted = lib.remove(entry, delete_files=delete)
            except (TuiInferError, OSError) as exc:
                self.post_message(LibraryChanged(f"{name}: {exc}", error=True))
                return
        what = f"deleted {', '.join(str(p) for p in deleted)}" if deleted else "the file was left"
        self.post_message(LibraryChanged(f"{name}: removed; {what}"))

    @on(Input.Submitted, "#import-path")
    @on(Button.Pressed, "#import-go")
    def _import_pressed(self) -> None:
        text = self.query_one("#import-path", Input).value.strip()
        if not text:
            self._status("type the path of a .gguf file first", error=True)
            return
        if self.importing:
            self._status("an import is already running", error=True)
            return
        self.importing = True
        copy = self.query_one("#import-copy", Checkbox).value
        self._status(f"{'copying' if copy else 'hashing'} {text}…")
        self._import(text, copy)

    @work(thread=True, exclusive=False, exit_on_error=False, group="import", name="import model")
    def _import(self, text: str, copy: bool) -> None:
        from tui_infer.core.models.library import ModelLibrary

        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL_S or done >= total:
                last = now
                self.post_message(ImportProgressed(done, total))

        with ModelLibrary(self.data_dir) as lib:
            try:
                e = lib.import_file(Path(text).expanduser(), copy=copy, progress=progress)
            except TuiInferError as exc:
                self.post_message(LibraryChanged(str(exc), error=True))
                return
            except OSError as exc:
                self.post_message(
                    LibraryChanged(f"{text}: cannot import ({exc.strerror or exc})", error=True)
                )
                return
        how = {"copied": f"copied to {e.path.parent}", "imported": "registered in place"}.get(
            e.source, f"already in the library ({e.source})"
        )
        self.post_message(LibraryChanged(f"{e.name}: {how}; {e.quantization}, "
                                         f"{human_size(e.size)}"))  # fmt: skip

    @on(ImportProgressed)
    def _import_progressed(self, event: ImportProgressed) -> None:
        pct = 100 * event.done / event.total if event.total else 100
        self._status(f"importing: {human_size(event.done)} of {human_size(event.total)} "
                     f"({pct:.0f} %)")  # fmt: skip

    @on(LibraryChanged)
    def _library_changed(self, event: LibraryChanged) -> None:
        self.importing = False
        if event.error:
            self._status(event.text, error=True)
            return
        self.notify(event.text, title="Library")
        self.query_one("#import-path", Input).value = ""
        self._rescan()

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#lib-status", Static)
        status.update(text)
        status.set_class(error, "error")

    # ----- the hub -----------------------------------------------------------------------

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
        from tui_infer.core.models.hub import Hub, HubError, HubOfflineError

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
            table.add_row(r.repo + (" (gated)" if r.gated else ""), f"{r.downloads:,}",
                          str(r.likes), key=r.repo)  # fmt: skip
        self.query_one("#hub-files", DataTable).clear()
        if event.repos:
            self._hub_status(f"{len(event.repos)} repositories match '{event.query}': "
                             "Enter lists a repository's files")  # fmt: skip
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
        from tui_infer.core.models.hub import Hub, HubError, HubOfflineError

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
            table.add_row(m.filename, m.quant or "?", human_size(m.size), str(len(m.files)),
                          key=key)  # fmt: skip
        if event.models:
            self._hub_status(f"{event.repo}: {len(event.models)} GGUF models; Enter (or "
                             "Download) fetches the highlighted one")  # fmt: skip
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
            self._hub_status("a download is already running (Cancel download stops it)",
                             error=True)  # fmt: skip
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
        from tui_infer.core.models.hub import DownloadCancelled, Hub, HubError, Progress
        from tui_infer.core.models.library import ModelLibrary

        before = {i: sum(f.size for f in model.files[: i - 1]) for i in
                  range(1, len(model.files) + 1)}  # fmt: skip
        last = 0.0

        def on_progress(p: Progress) -> None:
            nonlocal last
            now = time.monotonic()
            urgent = p.state not in ("downloading",)
            if not urgent and now - last < PROGRESS_INTERVAL_S:
                return
            last = now
            done = before.get(p.file_index, 0) + p.done
            note = p.message or (f"resumed from {human_size(p.resumed_from)}"
                                 if p.resumed_from else "")  # fmt: skip
            self.post_message(DownloadProgressed(done, model.size, p.speed, p.eta_s, p.state, note))

        hub = Hub()
        # the fit estimate before any byte of the model is fetched (a ranged header read)
        from tui_infer.core.inference.fit import hub_file_fit

        fit_line = hub_file_fit(hub, model, self._settings_fn())
        self.app.call_from_thread(self._hub_status, f"{model.filename}: {fit_line}")
        try:
            result = hub.download(model, progress=on_progress, cancel=cancel)
        except DownloadCancelled:
            kept = sum(hub.part_path(model, f).stat().st_size for f in model.files
                       if hub.part_path(model, f).exists())  # fmt: skip
            self.post_message(DownloadFinished(
                f"cancelled: kept {human_size(kept)}; Download again resumes it", False, True
            ))  # fmt: skip
            return
        except (HubError, OSError) as exc:
            self.post_message(DownloadFinished(f"download failed: {exc}", False))
            return
        self.post_message(DownloadProgressed(model.size, model.size, 0.0, 0.0, "done", ""))
        with ModelLibrary(self.data_dir) as lib:
            try:
                entry = lib.register_download(result.paths[0], model.repo, result.hashes)
            except TuiInferError as exc:
                self.post_message(DownloadFinished(f"downloaded, but: {exc}", False))
                return
        self.post_message(DownloadFinished(
            f"{entry.name}: downloaded and verified ({human_size(entry.size)}); it is in the "
            "library", True,
        ))  # fmt: skip

    @on(DownloadProgressed)
    def _download_progressed(self, event: DownloadProgressed) -> None:
        self.query_one("#download-bar", ProgressBar).update(total=event.total, progress=event.done)
        pct = 100 * event.done / event.total if event.total else 100
        text = (
            f"{event.state}: {human_size(event.done)} of {human_size(event.total)} "
            f"({pct:.0f} %), {human_size(event.speed)}/s, ETA {human_eta(event.eta_s)}"
        )
        if event.note:
            text += f" · {event.note}"
        self.query_one("#download-label", Label).update(text)

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
            self._rescan()

    # ----- the rest ----------------------------------------------------------------------

    def action_switch_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "tab-hub" if tabs.active == "tab-library" else "tab-library"
        if tabs.active == "tab-hub" and not self.offline:
            self.query_one("#hub-search", Input).focus()
        elif tabs.active == "tab-library":
            self.query_one("#lib-table", DataTable).focus()

    def action_close(self) -> None:
        self.app.pop_screen()

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        group = event.worker.group
        if group == "download":
            self.post_message(DownloadFinished(f"download failed: {event.worker.error}", False))
        elif group == "import":
            self.importing = False
        self.app.post_message(msg.WorkerFailed(event.worker.name or group, event.worker.error))
