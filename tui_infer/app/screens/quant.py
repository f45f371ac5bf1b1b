"""The Quant view: what each quant and KV cache type of a model costs, side by side.

A table of the figures `tui-infer bench quality` measures (agreement, KL divergence,
perplexity, pp/tg speed, memory) beside a plot of generation speed against mean KL
divergence: up and to the left is better. On opening it shows the last report (kept by
the command or by this view in the data directory's quality/last.json); `r` evaluates the
loaded model and every file of the same model in the library, the reference being the
best file at hand, and the KV cache types on it. The work runs in a thread worker
(core/bench/quality.py); rows appear as they finish; Esc stops it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import Worker, WorkerState
from textual_plotext import PlotextPlot

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.units import human_size

COLUMNS = ("model", "quant", "kv", "bits/w", "agree", "KL mean", "PPL/ref", "tg t/s", "memory")
KV_TYPES = ("f16", "q8_0", "q4_0")


def last_report_path(data_dir: Path) -> Path:
    return data_dir / "quality" / "last.json"


def row_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """A result of the JSON document (bench quality --json) as the table's cells."""
    ref = bool(r["reference"])
    return (
        r["label"] + (" (ref)" if ref else ""),
        str(r["quantization"]),
        str(r["kv_type"]),
        f"{r['bits_per_weight']:.2f}",
        "-" if ref else f"{r['agreement']:.3f}",
        "-" if ref else f"{r['kl_divergence']['mean']:.5f}",
        "-" if ref else f"{r['perplexity_ratio']:.4f}",
        f"{r['speed']['tg_tokens_per_s']:.1f}",
        human_size(int(r["memory"]["total_bytes"])),
    )


def point_label(r: dict[str, Any]) -> str:
    return str(r["quantization"]) + ("" if r["kv_type"] == "f16" else f" kv {r['kv_type']}")


class QualityProgressed(Message):
    """What the evaluation is doing (coalesced: only the latest matters)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, QualityProgressed)


class QualityRowMeasured(Message):
    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__()
        self.row = row


class QualityFinished(Message):
    def __init__(self, report: dict[str, Any] | None, error: str | None = None) -> None:
        super().__init__()
        self.report = report
        self.error = error


class QuantScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "run", "Evaluate the loaded model's quants"),
    ]
    DEFAULT_CSS = """
    QuantScreen #quant-summary { height: auto; padding: 0 1; }
    QuantScreen #quant-body { height: 1fr; }
    QuantScreen #quant-table { width: 3fr; height: 1fr; }
    QuantScreen #quant-plot { width: 2fr; height: 1fr; }
    QuantScreen #quant-notes { height: auto; max-height: 6; padding: 0 1; }
    """

    # the evaluation's size: every text token of the built-in sample, 3 speed repetitions
    max_tokens = 4096
    speed_reps = 3

    def __init__(self, settings: Settings, model_path: Path | None, data_dir: Path) -> None:
        super().__init__()
        self.settings = settings
        self.model_path = model_path
        self.data_dir = data_dir
        self.rows: list[dict[str, Any]] = []
        self.running = False
        self._cancel = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="quant-summary", markup=False)
        with Horizontal(id="quant-body"):
            yield DataTable(id="quant-table", cursor_type="row", zebra_stripes=True)
            yield PlotextPlot(id="quant-plot")
        yield Static("", id="quant-notes", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "quant: what each quant and KV cache type costs"
        table = self.query_one("#quant-table", DataTable)
        table.add_columns(*COLUMNS)
        self._load_last()
        table.focus()

    def _summary(self, text: str) -> None:
        self.query_one("#quant-summary", Static).update(text)

    # ----- the last report ---------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="quant-last")
    def _load_last(self) -> None:
        path = last_report_path(self.data_dir)
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            report = None
        except (OSError, ValueError) as exc:
            self.post_message(QualityFinished(None, f"{path} could not be read ({exc})"))
            return
        if report is None:
            model = self.model_path.name if self.model_path else "a model (load one first)"
            self.app.call_from_thread(
                self._summary,
                f"no report yet: r evaluates {model} and its other quants in the library "
                "(tui-infer models quantize makes them; tui-infer bench quality too)",
            )
            return
        self.post_message(QualityFinished(report))

    # ----- evaluating --------------------------------------------------------------------

    def action_run(self) -> None:
        if self.running:
            return
        if self.model_path is None:
            self._summary("No model: load one in the chat first (Ctrl+O).")
            return
        self.running = True
        self.rows = []
        self.query_one("#quant-table", DataTable).clear()
        self._plot()
        self.query_one("#quant-notes", Static).update("")
        self._summary(f"evaluating {self.model_path.name}… (Esc stops it)")
        self._cancel = threading.Event()
        self._evaluate(self.model_path, self._cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="quant")
    def _evaluate(self, model: Path, cancel: threading.Event) -> None:
        from tui_infer.core.bench.quality import evaluate, library_family
        from tui_infer.core.files import atomic_write

        s = self.settings
        family = library_family(model, self.data_dir)
        self.post_message(
            QualityProgressed(
                f"reference {family.reference.name} (the best file at hand); "
                f"{len(family.others)} other file(s), KV types {', '.join(KV_TYPES)}"
            )
        )
        try:
            report = evaluate(
                family.reference,
                list(family.others),
                KV_TYPES,
                threads=s.effective_threads,
                gpu_layers=s.gpu_layers,
                memory_ctx=s.ctx,
                max_tokens=self.max_tokens,
                speed_reps=self.speed_reps,
                made_from_ref=family.made_from_ref,
                on_row=lambda r: self._post(QualityRowMeasured(r.as_dict())),
                progress=lambda text: self._post(QualityProgressed(text)),
                cancel=cancel,
            )
        except TuiInferError as exc:
            self.post_message(QualityFinished(None, str(exc)))
            return
        doc = report.as_dict()
        atomic_write(last_report_path(self.data_dir), [json.dumps(doc, indent=2)])
        self.post_message(QualityFinished(doc))

    def _post(self, message: Message) -> None:
        self.post_message(message)

    @on(QualityProgressed)
    def _progressed(self, event: QualityProgressed) -> None:
        if self.running:
            self._summary(f"{event.text}… (Esc stops it)")

    @on(QualityRowMeasured)
    def _row_measured(self, event: QualityRowMeasured) -> None:
        self._add_row(event.row)
        self._plot()

    def _add_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.query_one("#quant-table", DataTable).add_row(*row_cells(row))

    @on(QualityFinished)
    def _finished(self, event: QualityFinished) -> None:
        self.running = False
        if event.error is not None:
            self._summary(f"stopped: {event.error}")
            return
        report = event.report
        assert report is not None
        table = self.query_one("#quant-table", DataTable)
        table.clear()
        self.rows = []
        for row in report["results"]:
            self._add_row(row)
        self._plot()
        text = report["text"]
        self._summary(
            f"reference {report['reference']} · {text['source']}: {text['tokens']} tokens · "
            f"{len(report['results'])} rows · speed against KL divergence on the right "
            "(r evaluates again)"
        )
        self.query_one("#quant-notes", Static).update(
            "\n".join(f"note: {n}" for n in report["notes"])
        )

    def _plot(self) -> None:
        plot = self.query_one("#quant-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        if not self.rows:
            plt.title("tg t/s vs mean KL: nothing yet")
            plot.refresh()
            return
        plt.title("tg t/s vs mean KL")  # up: faster; left: closer to the reference
        for r in self.rows:
            x = float(r["kl_divergence"]["mean"])
            y = float(r["speed"]["tg_tokens_per_s"])
            plt.scatter([x], [y], label=point_label(r), marker="dot")
        plt.xlabel("KL (nats)")
        plt.ylabel("tg t/s")
        plot.refresh()

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failure nothing caught is an error shown, never a stuck 'evaluating'."""
        if event.worker.group in ("quant", "quant-last") and event.state == WorkerState.ERROR:
            err = event.worker.error
            said = str(err) if isinstance(err, TuiInferError) else f"{type(err).__name__}: {err}"
            self.post_message(QualityFinished(None, said))
            self.notify(said, title="Quant", severity="error", timeout=10)

    def action_back(self) -> None:
        self._cancel.set()
        self.app.pop_screen()
