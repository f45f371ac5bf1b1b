"""The batch screen: the prediction store's runs, a run's predictions, and the review.

Runs are listed with their status and counts (done/total, rejected, tokens); the one
highlighted shows its predictions below, each with the flags verification gave it
(core/static/verify.py: cut off, empty, repetition, ...); f cycles the filter (every row,
the flagged ones, one check's). Space marks rows, x rejects the marked rows (or the
highlighted one), p publishes the run (through the same gate as `store publish`: with
flagged rows not rejected it asks before publishing anyway), u rolls back the latest
published run.
A batch started from the CLI shows its progress here: the screen re-reads the store
every second while a run is running. n starts a batch from a file path in the app: a
`tui-infer batch` process (its own model, its own memory) waited on by a thread worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, ProgressBar, Static
from textual.worker import Worker, WorkerState

from tui_infer.app.screens.dialogs import ConfirmScreen, TextPromptScreen
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.models.library import model_stem
from tui_infer.core.static import verify

POLL_S = 1.0
PROMPT_WIDTH = 40
OUTPUT_WIDTH = 60


def clip(text: str, width: int) -> str:
    """One line of at most width characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


class BatchProcessFinished(Message):
    """The batch process the app started has exited."""

    def __init__(self, returncode: int, output: Path, error: str) -> None:
        super().__init__()
        self.returncode = returncode
        self.output = output
        self.error = error


class BatchScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("space", "mark", "Mark row"),
        Binding("x", "reject", "Reject"),
        Binding("p", "publish", "Publish"),
        Binding("f", "filter", "Filter flags"),
        Binding("u", "rollback", "Rollback"),
        Binding("r", "refresh", "Refresh"),
        Binding("n", "new_batch", "New batch"),
    ]
    DEFAULT_CSS = """
    BatchScreen #runs { height: 10; }
    BatchScreen #predictions { height: 1fr; }
    BatchScreen #batch-status { height: auto; padding: 0 1; }
    BatchScreen #batch-progress-row { height: 1; padding: 0 1; }
    BatchScreen #batch-progress-label { width: auto; margin-right: 2; }
    BatchScreen #prediction-detail { height: 8; border-top: solid $primary; padding: 0 1; }
    BatchScreen .section { text-style: bold; padding: 0 1; }
    """

    def __init__(self, store: Any, settings: Settings, model_path: Path | None) -> None:
        """store: the app's PredictionStore (None when it could not be opened)."""
        super().__init__()
        self.store = store
        self.settings = settings
        self.model_path = model_path
        self.run_id: int | None = None  # the run whose predictions are shown
        self.marked: set[str] = set()  # item ids marked for rejection
        self.process: subprocess.Popen[bytes] | None = None  # a batch the app started
        self._runs: dict[int, Any] = {}
        self._predictions: dict[str, Any] = {}
        self._flags: dict[str, list[tuple[str, str]]] = {}  # item id -> [(check, detail)]
        self.flag_filter: str | None = None  # None: every row; "flagged"; or a check's name

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="batch-status", markup=False)
        yield Label("Runs", classes="section")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="batch-progress-row"):
            yield Label("no batch running", id="batch-progress-label")
            yield ProgressBar(total=1, show_eta=True, id="batch-progress")
        yield Label("Predictions", classes="section", id="predictions-title")
        yield DataTable(id="predictions", cursor_type="row", zebra_stripes=True)
        yield Static("", id="prediction-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "batch runs and the prediction store"
        runs = self.query_one("#runs", DataTable)
        runs.add_columns(
            "run", "status", "done", "rejected", "tokens", "model", "created", "published"
        )
        preds = self.query_one("#predictions", DataTable)
        preds.add_columns(" ", "id", "status", "prompt", "output", "tokens", "finish", "flags")
        if self.store is None:
            self._status("the prediction store could not be opened (see the notification)")
            return
        self.refresh_runs()
        self.set_interval(POLL_S, self._poll)
        runs.focus()

    # ----- reading the store -------------------------------------------------------------

    def _status(self, text: str) -> None:
        self.query_one("#batch-status", Static).update(text)

    def _call(self, what: str, fn: Any) -> Any:
        """A store call; an error is shown, never silent."""
        try:
            return fn()
        except TuiInferError as exc:
            self.notify(f"{what}: {exc}", title="Prediction store", severity="error", timeout=10)
        return None

    def refresh_runs(self) -> None:
        if self.store is None:
            return
        runs = self._call("listing runs", self.store.runs)
        if runs is None:
            return
        self._runs = {r.id: r for r in runs}
        table = self.query_one("#runs", DataTable)
        keep = self.run_id
        table.clear()
        for r in reversed(runs):  # newest first
            table.add_row(
                str(r.id),
                r.status,
                f"{r.n_done}/{r.n_items}",
                str(r.n_rejected),
                str(r.generated_tokens),
                model_stem(Path(r.model_path)),
                when(r.created_at),
                when(r.published_at),
                key=str(r.id),
            )
        if not runs:
            self._status("no runs yet: 'tui-infer batch INPUT -o OUTPUT' or n here starts one")
        else:
            published = sum(1 for r in runs if r.status == "published")
            self._status(f"{len(runs)} run(s), {published} published · {self.store.path}")
        target = keep if keep in self._runs else (runs[-1].id if runs else None)
        if target is not None:
            table.move_cursor(row=table.get_row_index(str(target)))
            self.show_run(target)
        self._show_progress()

    def show_run(self, run_id: int) -> None:
        if self.store is None:
            return
        preds = self._call("reading the run", lambda: self.store.predictions(run_id))
        if preds is None:
            return
        flags = self._call("verifying the run", lambda: verify.report_flags(self.store, run_id))
        if run_id != self.run_id:
            self.marked.clear()
            self.flag_filter = None
        self.run_id = run_id
        self._flags = flags or {}
        if self.flag_filter not in (None, "flagged", *self._checks()):
            self.flag_filter = None
        preds = [p for p in preds if self._passes(p.item_id)]
        self._predictions = {p.item_id: p for p in preds}
        self.marked &= set(self._predictions)
        table = self.query_one("#predictions", DataTable)
        row = table.cursor_row
        table.clear()
        for p in preds:
            table.add_row(
                "●" if p.item_id in self.marked else " ",
                p.item_id,
                p.status,
                clip(p.prompt, PROMPT_WIDTH),
                clip(p.output, OUTPUT_WIDTH),
                f"{p.prompt_tokens}+{p.generated_tokens}",
                p.finish_reason,
                ", ".join(check for check, _ in self._flags.get(p.item_id, [])),
                key=p.item_id,
            )
        if preds:
            table.move_cursor(row=min(row, len(preds) - 1))
        run = self._runs.get(run_id)
        title = f"Predictions of run {run_id}" + (f" ({run.status})" if run else "")
        n_flagged = len(self._flags)
        title += f" · {n_flagged} flagged" if n_flagged else " · nothing flagged"
        if self.flag_filter is not None:
            title += f" · showing {self.flag_filter} ({len(preds)}; f: next filter)"
        self.query_one("#predictions-title", Label).update(title)

    def _checks(self) -> list[str]:
        """The checks that flagged something in the shown run, in verify's order."""
        found = {check for flags in self._flags.values() for check, _ in flags}
        return [c for c in verify.CHECKS if c in found]

    def _passes(self, item_id: str) -> bool:
        if self.flag_filter is None:
            return True
        flags = self._flags.get(item_id, [])
        if self.flag_filter == "flagged":
            return bool(flags)
        return any(check == self.flag_filter for check, _ in flags)

    def action_filter(self) -> None:
        """Every row -> the flagged ones -> each check's -> every row."""
        if self.run_id is None:
            return
        cycle: list[str | None] = [None, "flagged", *self._checks()] if self._flags else [None]
        at = cycle.index(self.flag_filter) if self.flag_filter in cycle else 0
        self.flag_filter = cycle[(at + 1) % len(cycle)]
        if len(cycle) == 1:
            self.notify("nothing in this run is flagged", title="Review")
        self.show_run(self.run_id)

    def _show_progress(self) -> None:
        running = [r for r in self._runs.values() if r.status == "running"]
        label = self.query_one("#batch-progress-label", Label)
        bar = self.query_one("#batch-progress", ProgressBar)
        if running:
            r = running[-1]
            label.update(f"run {r.id}: {r.n_done}/{r.n_items} prompts")
            bar.update(total=max(1, r.n_items), progress=r.n_done)
        elif self.process is not None:
            label.update("starting the batch (loading the model)…")
            bar.update(total=None)
        else:
            label.update("no batch running")
            bar.update(total=1, progress=0)

    def _poll(self) -> None:
        """While a batch runs (here or from the CLI), follow its progress."""
        if self.store is None:
            return
        runs = self._call("listing runs", self.store.runs)
        if runs is None:
            return
        fresh = {r.id: (r.status, r.n_done, r.n_rejected) for r in runs}
        shown = {r.id: (r.status, r.n_done, r.n_rejected) for r in self._runs.values()}
        if fresh != shown:
            self.refresh_runs()
        elif self.process is not None:
            self._show_progress()

    @on(DataTable.RowHighlighted, "#runs")
    def _run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            run_id = int(event.row_key.value)
            if run_id != self.run_id:
                self.show_run(run_id)

    @on(DataTable.RowHighlighted, "#predictions")
    def _prediction_highlighted(self, event: DataTable.RowHighlighted) -> None:
        p = self._predictions.get(str(event.row_key.value))
        detail = self.query_one("#prediction-detail", Static)
        if p is None:
            detail.update("")
            return
        lp = (
            f" · logprob mean {p.mean_logprob:.2f}, min {p.min_logprob:.2f}"
            if p.mean_logprob is not None and p.min_logprob is not None
            else ""
        )
        flags = "".join(
            f"\n⚑ {check}: {detail}" for check, detail in self._flags.get(p.item_id, [])
        )
        detail.update(
            f"[{p.item_id}] {p.status} · {p.finish_reason} · {p.prompt_tokens} prompt + "
            f"{p.generated_tokens} generated tokens{lp}{flags}\n> {clip(p.prompt, 400)}\n"
            f"{p.output}"
        )

    # ----- review ------------------------------------------------------------------------

    def _highlighted_id(self) -> str | None:
        table = self.query_one("#predictions", DataTable)
        if not self._predictions or table.cursor_row < 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def action_mark(self) -> None:
        item = self._highlighted_id()
        if item is None:
            return
        self.marked.symmetric_difference_update({item})
        table = self.query_one("#predictions", DataTable)
        table.update_cell(item, table.ordered_columns[0].key, "●" if item in self.marked else " ")
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_reject(self) -> None:
        if self.store is None or self.run_id is None:
            self.notify("no run selected", severity="warning")
            return
        ids = sorted(self.marked) or [i for i in [self._highlighted_id()] if i is not None]
        if not ids:
            self.notify("this run has no predictions to reject", severity="warning")
            return
        run_id = self.run_id
        n = self._call("rejecting", lambda: self.store.reject(run_id, ids))
        if n is None:
            return
        self.marked.clear()
        self.notify(
            f"rejected {n} prediction(s) of run {run_id}: they will not be served", title="Review"
        )
        self.refresh_runs()

    def action_publish(self) -> None:
        if self.store is None or self.run_id is None:
            self.notify("no run selected", severity="warning")
            return
        run_id = self.run_id
        gate = self._call("verifying the run", lambda: verify.gate(self.store, run_id))
        if gate is None:
            return
        if gate.clear:
            self._publish(run_id, force=False)
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._publish(run_id, force=True)

        what = ", ".join(f"{check} {n}" for check, n in gate.counts().items())
        self.app.push_screen(
            ConfirmScreen(
                f"Run {run_id} has {len(gate.unreviewed)} flagged prediction(s) not rejected "
                f"({what}). f shows them, x rejects them. Publish anyway?",
                yes="Publish anyway",
            ),
            confirmed,
        )

    def _publish(self, run_id: int, force: bool) -> None:
        hint = "p here, then Publish anyway"
        n = self._call("publishing", lambda: verify.publish(self.store, run_id, force, hint))
        if n is None:
            return
        self.notify(
            f"published run {run_id}: {n} prediction(s) now answer their requests", title="Review"
        )
        self.refresh_runs()

    def action_rollback(self) -> None:
        if self.store is None:
            return
        published = [r for r in self._runs.values() if r.status == "published"]
        if not published:
            self.notify("no published run to roll back", severity="warning")
            return
        latest = max(published, key=lambda r: (r.published_at or 0, r.id))

        def confirmed(yes: bool | None) -> None:
            if not yes or self.store is None:
                return
            run_id = self._call("rolling back", self.store.rollback)
            if run_id is not None:
                self.notify(
                    f"rolled back run {run_id}: its predictions are staged again; "
                    "the previous published answers serve",
                    title="Review",
                )
                self.refresh_runs()

        self.app.push_screen(
            ConfirmScreen(
                f"Unpublish run {latest.id} (the latest published)? Its predictions "
                "stop being served.",
                yes="Roll back",
            ),
            confirmed,
        )

    def action_back(self) -> None:
        if self.process is None:
            self.app.pop_screen()
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.app.pop_screen()  # on_unmount interrupts the batch

        self.app.push_screen(
            ConfirmScreen(
                "Leaving stops the batch started here (what finished is kept; start "
                "it again on the same file to resume). Leave?",
                yes="Leave",
            ),
            confirmed,
        )

    def action_refresh(self) -> None:
        self.refresh_runs()

    # ----- starting a batch --------------------------------------------------------------

    def action_new_batch(self) -> None:
        if self.store is None:
            return
        if self.process is not None:
            self.notify("a batch started here is still running", severity="warning")
            return
        if self.model_path is None:
            self.notify(
                "load a model first (Ctrl+O in the chat): the batch runs it", severity="warning"
            )
            return

        def chosen(text: str | None) -> None:
            if not text:
                return
            path = Path(text).expanduser()
            if not path.is_file():
                self.notify(
                    f"{path}: no such file; give a JSONL, text or CSV file of prompts",
                    severity="error",
                )
                return
            self.start_batch(path)

        self.app.push_screen(
            TextPromptScreen(
                "Batch input (JSONL, text or CSV file path); greedy, "
                f"max_tokens={self.settings.max_tokens}"
            ),
            chosen,
        )

    def batch_command(self, input_path: Path, output: Path) -> list[str]:
        """The `tui-infer batch` the app runs: greedy, this model, these settings."""
        assert self.model_path is not None
        cmd = [
            sys.executable,
            "-m",
            "tui_infer",
            "batch",
            str(input_path),
            "-o",
            str(output),
            "-m",
            str(self.model_path),
            "--max-tokens",
            str(self.settings.max_tokens),
            "--ctx",
            str(self.settings.ctx),
        ]
        if self.settings.system:
            cmd += ["--system", self.settings.system]
        return cmd

    def start_batch(self, input_path: Path) -> None:
        assert self.store is not None
        out_dir = self.store.path.parent / "batches"
        output = out_dir / f"{input_path.stem}.out.jsonl"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.notify(f"{out_dir}: cannot create ({exc})", severity="error")
            return
        env = {**os.environ, "TUI_INFER_DATA_DIR": str(self.store.path.parent)}
        self.process = subprocess.Popen(
            self.batch_command(input_path, output),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.notify(f"batch started on {input_path.name}; output: {output}", title="Batch")
        self._show_progress()
        self._wait(self.process, output)

    @work(thread=True, exclusive=True, exit_on_error=False, group="batch", name="batch")
    def _wait(self, process: subprocess.Popen[bytes], output: Path) -> None:
        _, err = process.communicate()
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        self.post_message(
            BatchProcessFinished(process.returncode, output, lines[-1] if lines else "")
        )

    @on(BatchProcessFinished)
    def _batch_finished(self, event: BatchProcessFinished) -> None:
        self.process = None
        if event.returncode == 0:
            self.notify(
                f"batch done; output: {event.output}. Review it and publish (p)", title="Batch"
            )
        elif event.returncode == 5:  # finished, some input lines rejected
            self.notify(
                f"batch done, some lines rejected (listed in {event.output}"
                ".rejects.jsonl); output: {event.output}. Review it and publish (p)",
                title="Batch",
                severity="warning",
                timeout=15,
            )
        else:
            self.notify(
                event.error or f"the batch exited with {event.returncode}",
                title="Batch failed",
                severity="error",
                timeout=15,
            )
        self.refresh_runs()

    def on_unmount(self) -> None:
        # the batch keeps its progress in the store: interrupted, it resumes when rerun
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # the run is marked interrupted

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "batch" and event.state == WorkerState.ERROR:
            self.process = None
            self.notify(f"the batch worker failed: {event.worker.error}", severity="error")
