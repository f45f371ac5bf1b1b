"""The download offer: a hub reference (`tui-infer -m OWNER/REPO:QUANT`, or Ctrl+O with one)
names a model that is not on this machine. This modal names the repository and the file,
its size and the fit estimate (from the file's header, a ranged read: nothing large is
fetched), and offers Download or Cancel. Download runs the Hub tab's download
(models_hub.download_to_library: resumable, verified, into the library) with its
progress line, and the modal returns the library's file for the chat to load.

Every hub call runs in a thread worker; the hub client's timeouts are short, so an
unreachable hub is said at once ("offline"), and HF_HUB_OFFLINE=1 is said without a
network call. A quant that matches none or several of the repo's files shows the error
the core gives (it lists them) and the repo's files to pick from.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from tui_infer.app import messages as msg
from tui_infer.app.keys import key_label
from tui_infer.app.screens.models_hub import (
    DownloadFinished,
    DownloadProgressed,
    download_to_library,
    progress_text,
)
from tui_infer.core.config import Settings
from tui_infer.core.models.resolve import HubRef
from tui_infer.core.units import human_size

VERDICT_CLASS = {"fits": "-fits", "tight": "-tight", "won't fit": "-wont-fit"}


@dataclass(frozen=True)
class Lookup:
    """What the hub said about a reference: the model chosen and its fit, or why not."""

    model: Any = None  # HubModel
    fit: Any = None  # FitEstimate, None when the header could not be read
    fit_error: str = ""
    error: str = ""
    offline: bool = False
    offline_by_env: bool = False  # HF_HUB_OFFLINE: no network call was made
    models: tuple[Any, ...] = ()  # the repo's models (HubModel), as listed


class OfferLooked(Message):
    def __init__(self, lookup: Lookup) -> None:
        super().__init__()
        self.lookup = lookup


class DownloadOfferScreen(ModalScreen[Path | None]):
    """Download OWNER/REPO:QUANT? The file, its size, the fit; Download / Cancel."""

    DEFAULT_CSS = """
    DownloadOfferScreen { align: center middle; }
    DownloadOfferScreen #offer-status.-error { color: $text-error; }
    DownloadOfferScreen #offer-status.-offline { color: $text-warning; }
    DownloadOfferScreen #offer-fit.-fits { color: $text-success; }
    DownloadOfferScreen #offer-fit.-tight { color: $text-warning; }
    DownloadOfferScreen #offer-fit.-wont-fit { color: $text-error; }
    DownloadOfferScreen #offer-file, DownloadOfferScreen #offer-fit { margin: 0 0 1 0; }
    DownloadOfferScreen #offer-choices { height: auto; max-height: 10; margin: 1 0 0 0; }
    DownloadOfferScreen #offer-bar Bar { width: 1fr; }
    DownloadOfferScreen #offer-bar { width: 100%; }
    DownloadOfferScreen #offer-cancel, DownloadOfferScreen #offer-download { width: 20; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, ref: HubRef, settings: Settings, data_dir: Path) -> None:
        super().__init__()
        self.ref = ref
        self.settings = settings
        self.data_dir = data_dir
        self.model: Any = None  # the HubModel offered, once the hub has said
        self.lookup: Lookup | None = None
        self.downloading = False
        self._models: list[Any] | None = None  # the repo's listing, kept for a second pick
        self._cancel = threading.Event()
        self._close_when_stopped = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="offer-dialog"):
            yield Label(f"{self.ref} is not on this machine", classes="dialog-title")
            yield Static("", id="offer-file", markup=False)
            yield Static("", id="offer-fit", markup=False)
            yield Static("", id="offer-status", markup=False)
            yield OptionList(id="offer-choices")
            yield Label("", id="offer-progress")
            yield ProgressBar(id="offer-bar", show_eta=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Download", id="offer-download", variant="primary", disabled=True)
                yield Button("Cancel", id="offer-cancel")

    def on_mount(self) -> None:
        for wid in ("#offer-file", "#offer-fit", "#offer-choices", "#offer-progress", "#offer-bar"):
            self.query_one(wid).display = False
        self.query_one("#offer-cancel", Button).focus()
        from tui_infer.core.models.hub_types import offline_by_env

        if offline_by_env():  # said without touching the network
            self.post_message(OfferLooked(Lookup(offline=True, offline_by_env=True)))
            return
        self._ask_hub(self.ref.quant)

    def on_unmount(self) -> None:
        self._cancel.set()  # the app quits mid-download: the part is kept, the thread ends

    # ----- the hub's answer -------------------------------------------------------------

    def _ask_hub(self, wanted: str | None) -> None:
        from tui_infer.core.models.hub_types import endpoint

        self._status(f"asking {endpoint()} about {self.ref.repo}…")
        self.query_one("#offer-download", Button).disabled = True
        self._look_up(wanted, self._models)

    @work(thread=True, exclusive=True, exit_on_error=False, group="offer", name="hub lookup")
    def _look_up(self, wanted: str | None, models: list[Any] | None) -> None:
        from tui_infer.core.inference.fit import hub_fit_estimate
        from tui_infer.core.models.hub import Hub, pick_model
        from tui_infer.core.models.hub_types import HubError, HubOfflineError

        hub = Hub()
        try:
            if models is None:
                models = hub.models(self.ref.repo)
            model = pick_model(self.ref.repo, models, wanted)
        except HubOfflineError as exc:
            self.post_message(OfferLooked(Lookup(error=str(exc), offline=True)))
            return
        except HubError as exc:
            self.post_message(OfferLooked(Lookup(error=str(exc), models=tuple(models or ()))))
            return
        listed = tuple(models)
        try:
            est = hub_fit_estimate(hub, model, self.settings)
        except HubError as exc:
            self.post_message(OfferLooked(Lookup(model, fit_error=str(exc), models=listed)))
            return
        self.post_message(OfferLooked(Lookup(model, est, models=listed)))

    @on(OfferLooked)
    def _looked(self, event: OfferLooked) -> None:
        found = self.lookup = event.lookup
        if found.models:
            self._models = list(found.models)  # a second pick needs no second listing
        download = self.query_one("#offer-download", Button)
        choices = self.query_one("#offer-choices", OptionList)
        choices.display = False
        if found.offline:
            self._show_offline(found)
            return
        if found.model is None:
            self._status(found.error, "error")
            if found.models:  # the quant matched none or several: pick one of the files
                choices.clear_options()
                choices.add_options(
                    Option(f"{m.quant or '?':<8} {human_size(m.size):>9}  {m.filename}", id=str(i))
                    for i, m in enumerate(found.models)
                )
                choices.highlighted = 0
                choices.display = True
                choices.focus()
            return
        self.model = m = found.model
        parts = f", {len(m.files)} parts" if len(m.files) > 1 else ""
        file_line = self.query_one("#offer-file", Static)
        file_line.update(
            f"Repository  {m.repo}\nFile        {m.filename}\n"
            f"Quant       {m.quant or '?'}\nSize        {human_size(m.size)}{parts}"
        )
        file_line.display = True
        fit_line = self.query_one("#offer-fit", Static)
        if found.fit is not None:
            from tui_infer.core.inference.fit import fit_label

            fit_line.update(f"Fit at {fit_label(self.settings)}: {found.fit.summary()}")
            fit_line.set_classes(VERDICT_CLASS.get(found.fit.verdict, ""))
        else:
            fit_line.update(f"Fit: unknown ({found.fit_error})")
            fit_line.set_classes("")
        fit_line.display = True
        self._status("Download it into the library and load it? (Esc cancels)")
        download.label = "Download"
        download.disabled = False
        download.focus()

    def _show_offline(self, found: Lookup) -> None:
        models = key_label(self.app, "models")
        if found.offline_by_env:
            what = "Offline: HF_HUB_OFFLINE is set, so nothing is downloaded"
            retry = "unset HF_HUB_OFFLINE and start again"
        else:
            what = f"The hub cannot be reached ({found.error})"
            retry = "Retry when the network is back"
            button = self.query_one("#offer-download", Button)
            button.label = "Retry"
            button.disabled = False
        self._status(
            f"{what}. To get {self.ref}: {retry}, run '{self.ref.pull_command}' where there "
            f"is a network, or import a .gguf file on the models screen ({models}).",
            "offline",
        )

    def _status(self, text: str, kind: str = "") -> None:
        status = self.query_one("#offer-status", Static)
        status.update(text)
        status.set_classes(f"-{kind}" if kind else "")

    @on(OptionList.OptionSelected, "#offer-choices")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if self.lookup is None or not self.lookup.models:
            return
        chosen = self.lookup.models[int(event.option.id or 0)]
        self.query_one("#offer-choices", OptionList).display = False
        self._ask_hub(chosen.filename)

    # ----- download -----------------------------------------------------------------------

    @on(Button.Pressed, "#offer-download")
    def _download_pressed(self) -> None:
        if self.downloading:
            return
        if self.model is None:  # Retry: ask the hub again
            self._ask_hub(self.ref.quant)
            return
        self.downloading = True
        self._cancel = threading.Event()
        self.query_one("#offer-download", Button).disabled = True
        self.query_one("#offer-cancel", Button).label = "Cancel download"
        bar = self.query_one("#offer-bar", ProgressBar)
        bar.update(total=self.model.size, progress=0)
        bar.display = True
        label = self.query_one("#offer-progress", Label)
        label.update(f"{self.model.filename}: starting…")
        label.display = True
        self._status(f"downloading {self.model.repo}/{self.model.filename}")
        self._download(self.model, self._cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="download", name="download")
    def _download(self, model: Any, cancel: threading.Event) -> None:
        download_to_library(model, self.data_dir, cancel, self.post_message)

    @on(DownloadProgressed)
    def _progressed(self, event: DownloadProgressed) -> None:
        self.query_one("#offer-bar", ProgressBar).update(total=event.total, progress=event.done)
        self.query_one("#offer-progress", Label).update(progress_text(event))

    @on(DownloadFinished)
    def _finished(self, event: DownloadFinished) -> None:
        self.downloading = False
        self.query_one("#offer-progress", Label).update(event.text)
        if event.ok and event.path is not None:
            self.app.notify(event.text, title="Download")
            self.dismiss(event.path)
            return
        if event.cancelled or self._close_when_stopped:
            self.app.notify(event.text, title="Download")
            self.dismiss(None)
            return
        self._status(event.text, "error")
        self.query_one("#offer-cancel", Button).label = "Cancel"
        download = self.query_one("#offer-download", Button)
        download.label = "Download again"
        download.disabled = False

    @on(Button.Pressed, "#offer-cancel")
    def action_cancel(self) -> None:
        """Before a download: close. During one: stop it (the part is kept, a later
        download resumes it); the modal closes when the worker has stopped."""
        if self.downloading:
            self._close_when_stopped = True
            self._cancel.set()
            self.query_one("#offer-progress", Label).update("cancelling…")
            return
        self.dismiss(None)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        if event.worker.group == "download":
            self.post_message(DownloadFinished(f"download failed: {event.worker.error}", False))
        else:
            self._status(f"the hub lookup failed: {event.worker.error}", "error")
        self.app.post_message(msg.WorkerFailed(event.worker.name or "", event.worker.error))
