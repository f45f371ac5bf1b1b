"""The models screen (F3): the library with fit estimates, load, import, remove; the hub
(search, a repo's files, download with progress, cancel).

One tab a module: models_library.py and models_hub.py hold each tab's widgets, workers,
messages and handlers, as parts of this screen (Textual finds the handlers of a Screen's
base classes); this module composes them and keeps what is the screen's own: the keys,
switching tabs, and worker failures. The app installs this screen once, so its workers
(a download) keep running while the user is back in the chat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Input, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from tui_infer.app import messages as msg
from tui_infer.app.screens.models_hub import DownloadFinished, HubTab
from tui_infer.app.screens.models_library import LibraryRow, LibraryTab
from tui_infer.core.config import Settings


class ModelsScreen(LibraryTab, HubTab):
    """Both tabs (base classes), the keys that reach them, and their workers' failures."""

    # the library table has the focus when the screen opens: Enter loads the highlighted
    # model at once (Textual's default focused the first focusable widget, the tabs)
    AUTO_FOCUS = "#lib-table"

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

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="models-tabs"):
            with TabPane("Library", id="tab-library"):
                yield from self.compose_library()
            with TabPane("Hub", id="tab-hub"):
                yield from self.compose_hub()
        yield Footer()

    def on_mount(self) -> None:
        self.title = "tui-infer · models"
        self._mount_library()
        self._mount_hub()
        self.action_refresh()

    def _downloaded(self) -> None:
        self._rescan()

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
