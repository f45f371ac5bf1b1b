"""The models screen's Library tab: the models on this machine, with fit estimates; load,
import (in place or copied), remove.

The library is SQLite plus a sha256 over whole files: each call runs in a thread worker
that posts the results (the messages below); the handlers, on the UI thread, update the
widgets. ModelsScreen (models.py) composes this tab with the Hub tab.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Input, Static

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.units import human_size

PROGRESS_INTERVAL_S = 0.2  # download/import progress reaches the UI at most 5 times a second


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


class LibraryTab(Screen[None]):
    """The Library tab's widgets, workers and handlers; part of ModelsScreen."""

    # set by ModelsScreen.__init__
    _settings_fn: Callable[[], Settings]  # the chat's current settings (the fit column)
    data_dir: Path
    rows: dict[str, LibraryRow]
    importing: bool
    _scanned_for: tuple[Any, ...]  # the settings the fit column was computed for

    def compose_library(self) -> ComposeResult:
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

    def _mount_library(self) -> None:
        lib = self.query_one("#lib-table", DataTable)
        for col in ("name", "quant", "size", "context", "source", "status", "fit"):
            lib.add_column(col, key=col)

    def on_screen_resume(self) -> None:
        # The chat's settings may have changed (ctx, KV type): the fit column follows.
        if self.rows and self._fit_key(self._settings_fn()) != self._scanned_for:
            self.action_refresh()

    @staticmethod
    def _fit_key(s: Settings) -> tuple[Any, ...]:
        return (s.ctx, s.kv_type, s.batch, s.flash_attn, s.gpu_layers)

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
                machine: Any = fit.current_machine()  # RAM, and the GPUs llama.cpp sees
            except Exception:  # noqa: BLE001 - a probe failure only costs the fit column
                machine = None
            rows = [self._row(e, settings, machine) for e in entries]
            unhashed = [e for e in entries if e.status == "ok" and e.sha256 is None]
            self.post_message(LibraryScanned(rows, hashing=bool(unhashed)))
            if not unhashed:
                return
            for e in unhashed:
                try:
                    lib.ensure_hashes(e)
                except (TuiInferError, OSError):
                    continue  # shown as sha256 unknown; `models verify` says why
            rows = [self._row(e, settings, machine) for e in entries]
            self.post_message(LibraryScanned(rows, hashing=False))

    @staticmethod
    def _row(e: Any, settings: Settings, machine: Any) -> LibraryRow:
        from tui_infer.core.inference import fit

        verdict, summary = "?", "fit: unknown (the file is not there)"
        if e.status == "ok" and machine is not None and machine.ram_available:
            try:
                info = fit.info_from_metadata(str(e.path), e.size, e.metadata)
                n_vocab = int(e.metadata.get("n_vocab") or 0)
                est = fit.fit_for_machine(info, n_vocab, settings, machine)
                verdict = est.verdict
                summary = f"fit at {fit.fit_label(settings)}: {est.summary()}"
            except ValueError as exc:
                summary = f"fit: unknown ({exc})"
        return LibraryRow(
            name=e.name,
            path=e.path,
            quant=e.quantization,
            size=e.size,
            context=e.n_ctx_train,
            source=e.source,
            repo=e.repo,
            status=e.status,
            fit=verdict,
            fit_summary=summary,
            sha256=e.sha256,
        )

    @on(LibraryScanned)
    def _scanned(self, event: LibraryScanned) -> None:
        table = self.query_one("#lib-table", DataTable)
        keep = self._selected_name()
        table.clear()
        self.rows = {r.name: r for r in event.rows}
        for r in event.rows:
            # the repo goes in the detail line: a long one would push the fit column out of view
            table.add_row(
                r.name,
                r.quant,
                human_size(r.size),
                str(r.context or "?"),
                r.source,
                r.status,
                r.fit,
                key=r.name,
            )
        if keep in self.rows:
            table.move_cursor(row=table.get_row_index(keep))
        if not event.rows:
            self._status(
                "The library is empty: import a .gguf file below, or download one from the Hub tab."
            )
        else:
            n = len(event.rows)
            self._status(
                f"{n} model{'s' if n != 1 else ''}"
                + ("; computing sha256…" if event.hashing else "")
            )
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
            self._status(
                f"{r.name}: the file is {r.status}; import it again or remove it", error=True
            )
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
            where = (
                "an installed Python package"
                if r.source == "bundled"
                else ("the Hugging Face cache")
            )
            how = (
                "uninstall the package"
                if r.source == "bundled"
                else ("delete it with 'hf cache delete'")
            )
            self._status(f"{r.name} comes from {where} and would be found again; {how}", error=True)
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
        self.post_message(
            LibraryChanged(f"{e.name}: {how}; {e.quantization}, {human_size(e.size)}")
        )

    @on(ImportProgressed)
    def _import_progressed(self, event: ImportProgressed) -> None:
        pct = 100 * event.done / event.total if event.total else 100
        self._status(
            f"importing: {human_size(event.done)} of {human_size(event.total)} ({pct:.0f} %)"
        )

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
