"""The bench screen: run `tui-infer bench` on the current model in a worker, see the
results as a table and a bar chart, and the kept history."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Static
from textual.worker import Worker, WorkerState

from tui_infer.core.bench.measure import BenchConfig, BenchResult
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.models.library import model_stem

BAR_WIDTH = 40


class BenchResultReady(Message):
    def __init__(self, result: BenchResult) -> None:
        super().__init__()
        self.result = result


class BenchFinished(Message):
    def __init__(self, run_id: int | None, error: str | None) -> None:
        super().__init__()
        self.run_id = run_id
        self.error = error


def bar_chart(results: list[BenchResult], width: int = BAR_WIDTH) -> str:
    """One bar per result, scaled to the fastest of its kind (pp and tg differ ~3x)."""
    lines = []
    for kind in ("pp", "tg", "batch"):
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        top = max(r.mean for r in rows) or 1.0
        for r in rows:
            n = max(1, round(width * r.mean / top))
            label = f"{r.test} t={r.config.threads} {r.config.kv_type}"
            lines.append(f"{label:<24} {'█' * n:<{width}} {r.mean:8.1f} tok/s")
    return "\n".join(lines)


class BenchScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("ctrl+r", "run", "Run"),
    ]

    def __init__(self, settings: Settings, model_path: Path | None, data_dir: Path) -> None:
        super().__init__()
        self.settings = settings
        self.model_path = model_path
        self.data_dir = data_dir
        self.results: list[BenchResult] = []
        self.running = False
        self._cancel = threading.Event()

    def _model_name(self) -> str:
        """The library's name (file stem or hub repo and quant), as the chat shows it."""
        if self.model_path is None:
            return "none loaded"
        from tui_infer.core.models.names import library_name

        return library_name(self.model_path, self.data_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="bench-body"):
            yield Label(f"Model: {self._model_name()}", id="bench-model")
            with Horizontal(id="bench-form"):
                yield Label("pp")
                yield Input("512", id="bench-pp", restrict=r"[0-9,]*")
                yield Label("tg")
                yield Input("128", id="bench-tg", restrict=r"[0-9,]*")
                yield Label("reps")
                yield Input("5", id="bench-reps", restrict=r"[0-9]*")
                yield Button("Run", id="bench-run", variant="primary")
            yield Static("", id="bench-status", markup=False)
            yield DataTable(id="bench-results", cursor_type="row")
            yield Static("", id="bench-chart", markup=False)
            yield Label("History", classes="section")
            yield DataTable(id="bench-history", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#bench-results", DataTable)
        table.add_columns("test", "threads", "ctx", "kv", "t/s", "± sd", "of ceiling")
        hist = self.query_one("#bench-history", DataTable)
        hist.add_columns("run", "when", "model", "results")
        self._load_history()

    @work(thread=True, exclusive=True, group="bench-history", exit_on_error=False)
    def _load_history(self) -> None:
        from tui_infer.core.bench.history import BenchHistory

        try:
            history = BenchHistory(self.data_dir / "bench.sqlite3")
        except TuiInferError:
            return
        try:
            runs = history.runs()
        finally:
            history.close()
        rows = [
            (
                str(run.id),
                datetime.fromtimestamp(run.created).strftime("%Y-%m-%d %H:%M"),
                f"{model_stem(Path(run.model_path))} {run.quantization}",
                ", ".join(f"{r.test} {r.mean:.1f}" for r in run.results),
            )
            for run in reversed(runs)
        ]
        self.app.call_from_thread(self._show_history, rows)

    def _show_history(self, rows: list[tuple[str, ...]]) -> None:
        hist = self.query_one("#bench-history", DataTable)
        hist.clear()
        for row in rows:
            hist.add_row(*row)

    def _sizes(self, widget_id: str) -> list[int]:
        text = self.query_one(widget_id, Input).value
        return [int(x) for x in text.split(",") if x.strip() and int(x) > 0]

    @on(Button.Pressed, "#bench-run")
    def _run_pressed(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        status = self.query_one("#bench-status", Static)
        if self.running:
            return
        if self.model_path is None:
            status.update("No model: load one in the chat first (Ctrl+O).")
            return
        try:
            pp, tg = self._sizes("#bench-pp"), self._sizes("#bench-tg")
            reps = int(self.query_one("#bench-reps", Input).value or "0")
        except ValueError:
            status.update("pp and tg take sizes separated by commas, reps a whole number.")
            return
        if reps < 1 or not (pp or tg):
            status.update("Give at least one pp or tg size and reps of 1 or more.")
            return
        self.running = True
        self.results = []
        self.query_one("#bench-results", DataTable).clear()
        self.query_one("#bench-chart", Static).update("")
        status.update("running… (Esc stops it and goes back; finished tests are kept)")
        self._cancel = threading.Event()
        self._run(self.model_path, pp, tg, reps, self._cancel)

    @work(thread=True, exclusive=True, group="bench", exit_on_error=False)
    def _run(
        self, model: Path, pp: list[int], tg: list[int], reps: int, cancel: threading.Event
    ) -> None:
        from tui_infer.core.bench.history import BenchHistory
        from tui_infer.core.bench.measure import BenchPlan, environment, file_sha256, run_plan
        from tui_infer.core.inference.engine import Engine
        from tui_infer.core.models.gguf import read_header

        s = self.settings
        need = max(pp + tg) + 16
        cfg = BenchConfig(
            s.effective_threads, s.gpu_layers, max(need, 256), s.batch, s.kv_type, s.flash_attn
        )
        try:
            header = read_header(model)
            probe = Engine.load(model, cfg.load_options())
            env = environment(probe.backend.summary, probe.backend.device)
            probe.close()
            history = BenchHistory(self.data_dir / "bench.sqlite3")
            try:
                run_id = history.start_run(
                    model, file_sha256(model, self.data_dir), header.quantization, env
                )

                def on_result(r: BenchResult) -> None:
                    history.add_result(run_id, r)
                    self.post_message(BenchResultReady(r))

                run_plan(BenchPlan(model, [cfg], pp, tg, [0], reps), on_result, cancel)
            finally:
                history.close()
        except (TuiInferError, ValueError) as exc:
            self.post_message(BenchFinished(None, str(exc)))
            return
        self.post_message(BenchFinished(run_id, None))

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        """A failure nothing in the run caught is an error state, never a stuck 'running'."""
        if event.worker.group == "bench" and event.state == WorkerState.ERROR:
            error = event.worker.error
            self.post_message(BenchFinished(None, f"{type(error).__name__}: {error}"))

    @on(BenchResultReady)
    def _result_ready(self, event: BenchResultReady) -> None:
        r = event.result
        self.results.append(r)
        frac = r.ceiling_fraction
        self.query_one("#bench-results", DataTable).add_row(
            r.test,
            str(r.config.threads),
            str(r.config.ctx),
            r.config.kv_type,
            f"{r.mean:.2f}",
            f"{r.stdev:.2f}",
            f"{frac:.0%}" if frac is not None else "",
        )
        self.query_one("#bench-chart", Static).update(bar_chart(self.results))

    @on(BenchFinished)
    def _finished(self, event: BenchFinished) -> None:
        self.running = False
        status = self.query_one("#bench-status", Static)
        if event.error:
            status.update(f"error: {event.error}")
        elif self._cancel.is_set():
            status.update(f"stopped; run {event.run_id} kept what finished")
        else:
            status.update(f"done: run {event.run_id} (tui-infer bench compare {event.run_id} N)")
        self._load_history()

    def action_close(self) -> None:
        self._cancel.set()
        self.app.pop_screen()
