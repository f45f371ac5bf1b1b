"""The Drift view: is the store still answering what is asked?

A plot of the hit rate and the misses per hour (or day, `d`) beside the most frequent
requests the store still misses, each with the nearest stored prediction as a suggestion
(never served). `b` writes the top misses as a batch input in the data directory's
`batches/` and starts the next batch on them with the loaded model, on the batch screen.
The figures are the loaded model's (every model's when none is loaded); they are computed
by core/static/drift.py in a thread worker and re-read with `r`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static
from textual.worker import Worker, WorkerState
from textual_plotext import PlotextPlot

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.static.drift import DriftReport, batch_lines, drift

PROMPT_WIDTH = 44
TICKS = 6  # time labels under the plot


def clip(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def summary(report: DriftReport, model: str) -> str:
    """The line above the plot: the window, the totals, the share unlike anything stored."""
    unit = report.by
    head = (
        f"per {unit}, the last {len(report.buckets)} {unit}s · {model} · {report.hits} hits, "
        f"{report.misses} misses, hit rate {pct(report.hit_rate)}"
    )
    if not report.open_misses:
        return head + " · no missed request left unanswered"
    return (
        f"{head} · {report.open_misses} requests still missed, asked {report.missed_requests} "
        f"times; unlike anything stored: {pct(report.unlike_share)} of the asks"
    )


def near_text(row: Any) -> str:
    near = row.near
    if near is None:
        return "nothing alike stored: a new kind of request"
    if near.run_id is None:
        return near.why
    return f"{near.why}: {clip(near.prompt, PROMPT_WIDTH)}"


class DriftComputed(Message):
    def __init__(self, report: DriftReport, model: str) -> None:
        super().__init__()
        self.report = report
        self.model = model  # what the figures cover, in words


class DriftScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("b", "batch_misses", "Batch the top misses"),
        Binding("d", "toggle_by", "Hour/Day"),
        Binding("r", "refresh", "Refresh"),
    ]
    DEFAULT_CSS = """
    DriftScreen #drift-summary { height: auto; padding: 0 1; }
    DriftScreen #drift-body { height: 1fr; }
    DriftScreen #drift-plot { width: 1fr; height: 1fr; }
    DriftScreen #drift-side { width: 1fr; height: 1fr; }
    DriftScreen #drift-misses { height: 1fr; }
    DriftScreen #drift-near { height: 4; border-top: solid $primary; padding: 0 1; }
    DriftScreen .section { text-style: bold; padding: 0 1; }
    """

    def __init__(self, store: Any, settings: Settings, model_path: Path | None) -> None:
        """store: the app's PredictionStore (None when it could not be opened);
        model_path: the loaded model (its figures; the batch runs it)."""
        super().__init__()
        self.store = store
        self.settings = settings
        self.model_path = model_path
        self.by = "hour"
        self.report: DriftReport | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading the store…", id="drift-summary", markup=False)
        with Horizontal(id="drift-body"):
            yield PlotextPlot(id="drift-plot")
            with Vertical(id="drift-side"):
                yield Label("Top misses (b batches them)", classes="section")
                yield DataTable(id="drift-misses", cursor_type="row", zebra_stripes=True)
                yield Static("", id="drift-near", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "drift: the store's hit rate and misses over time"
        table = self.query_one("#drift-misses", DataTable)
        table.add_columns("asked", "last", "prompt", "near")
        if self.store is None:
            self._summary("the prediction store could not be opened (see the notification)")
            return
        self.compute()
        table.focus()

    def _summary(self, text: str) -> None:
        self.query_one("#drift-summary", Static).update(text)

    # ----- computing ---------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="drift", name="drift")
    def compute(self) -> None:
        sha, model = None, "every model"
        if self.model_path is not None:
            try:
                sha = self.store.model_sha256(self.model_path)  # cached by path, size, mtime
                model = self.model_path.name
            except OSError:
                model = f"every model ({self.model_path.name} could not be read)"
        self.post_message(DriftComputed(drift(self.store, sha, by=self.by), model))

    @on(DriftComputed)
    def _computed(self, event: DriftComputed) -> None:
        report = self.report = event.report
        self._summary(summary(report, event.model))
        self._plot(report)
        table = self.query_one("#drift-misses", DataTable)
        table.clear()
        for i, m in enumerate(report.top):
            kind = "unlike" if m.near is None else f"{m.near.similarity:.0%}"
            table.add_row(
                str(m.count),
                time.strftime("%m-%d %H:%M", time.localtime(m.last_at)),
                clip(m.prompt, PROMPT_WIDTH),
                kind,
                key=str(i),
            )
        self._show_near(0)

    def _plot(self, report: DriftReport) -> None:
        plot = self.query_one("#drift-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        xs = list(range(len(report.buckets)))
        fmt = "%H:00" if report.by == "hour" else "%m-%d"
        seen = [(x, b) for x, b in zip(xs, report.buckets, strict=True) if b.lookups]
        if not seen:
            plt.title("no lookups counted in this window")
        else:
            plt.title("hit rate % (left) and misses (right)")
            plt.plot(
                [x for x, _ in seen],
                [100 * (b.hit_rate or 0.0) for _, b in seen],
                marker="braille",
                label="hit rate %",
            )
            plt.bar(
                xs, [b.misses for b in report.buckets], yside="right", label="misses", width=0.5
            )
            plt.ylim(0, 100)  # the left side: the hit rate
        step = max(1, len(xs) // TICKS)
        ticks = xs[::step]
        plt.xticks(
            [float(x) for x in ticks],
            [time.strftime(fmt, time.localtime(report.buckets[x].start)) for x in ticks],
        )
        plot.refresh()

    @on(DataTable.RowHighlighted, "#drift-misses")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self._show_near(int(event.row_key.value))

    def _show_near(self, i: int) -> None:
        text = ""
        if self.report is not None and i < len(self.report.top):
            row = self.report.top[i]
            text = f"{clip(row.prompt, 2 * PROMPT_WIDTH)}\nnearest stored (a suggestion, never "
            text += f"served): {near_text(row)}"
        self.query_one("#drift-near", Static).update(text)

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "drift" and event.state == WorkerState.ERROR:
            err = event.worker.error
            said = str(err) if isinstance(err, TuiInferError) else f"{type(err).__name__}: {err}"
            self._summary(f"drift could not be computed: {said}")
            self.notify(said, title="Drift", severity="error", timeout=10)

    # ----- actions -----------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_refresh(self) -> None:
        if self.store is not None:
            self.compute()

    def action_toggle_by(self) -> None:
        self.by = "day" if self.by == "hour" else "hour"
        self.action_refresh()

    def write_batch_input(self, report: DriftReport) -> Path:
        """The top misses as a batch input (the shape `store misses -o` writes)."""
        from tui_infer.core.files import atomic_write

        assert self.store is not None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.store.path.parent / "batches" / f"drift-{stamp}.jsonl"
        atomic_write(path, [json.dumps(r, ensure_ascii=False) for r in batch_lines(report)])
        return path

    async def action_batch_misses(self) -> None:
        """Write the top misses as a batch input, open the batch screen and start it there."""
        from tui_infer.app.screens.batch import BatchScreen

        report = self.report
        if self.store is None or report is None:
            return
        if not report.top:
            self.notify("no missed request to batch in this window", severity="warning")
            return
        if self.model_path is None:
            self.notify(
                "load a model first (Ctrl+O in the chat): the batch runs it", severity="warning"
            )
            return
        try:
            path = self.write_batch_input(report)
        except (OSError, TuiInferError) as exc:
            self.notify(f"the batch input could not be written: {exc}", severity="error")
            return
        screen = BatchScreen(self.store, self.settings, self.model_path)
        await self.app.push_screen(screen)
        screen.start_batch(path)
