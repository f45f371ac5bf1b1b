"""The live figures beside the chat: speed, latency, KV cache, memory, backend.

Tokens arrive ~20 times a second; the panel only records them and redraws on its
own timer (4 Hz), so its cost does not grow with the token rate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, ProgressBar, Sparkline, Static

from tui_infer.core.chat.history import prompt_figures
from tui_infer.core.units import human_size

if TYPE_CHECKING:
    from tui_infer.core.chat.history import ReplyFigures
    from tui_infer.core.inference.memory import MemorySnapshot
    from tui_infer.core.inference.types import GenerationStats, KvCacheUsage, TokenChunk

REFRESH_S = 0.25  # the figures' timer; while a reply streams, at most every figures_s
SPARK_POINTS = 60


class StatsPanel(VerticalScroll):
    """Figures are kept as attributes (tests and other widgets read them) and drawn on a timer."""

    can_focus = False

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # the current (or last) reply
        self.generating = False
        self.prompt_tokens = 0
        self.prompt_tokens_evaluated: int | None = None  # the rest came from the KV cache
        self.prompt_tps = 0.0
        self.ttft_s: float | None = None
        self.generated_tokens = 0
        self.generation_tps = 0.0  # live: over the last refresh window; final: the reply's
        self.total_s: float | None = None
        self.finish_reason: str | None = None
        self.speculative = ""  # drafted/accepted/speed-up of the last reply ("": no drafts)
        self.source = "live"  # live, or store: the last reply came from the prediction store
        self.store_run: int | None = None
        self.store_hits = 0  # this session's lookups in the prediction store
        self.store_misses = 0
        self.kv: KvCacheUsage | None = None
        self.kv_tokens = 0
        self.context_tokens = 0
        self.context_n_ctx = 0
        self.memory: MemorySnapshot | None = None
        self._tps_series: list[float] = []
        self._last_chunk: TokenChunk | None = None
        self._window_start: tuple[int, float] | None = None  # (n_generated, elapsed_s)
        self._dirty = True
        self._shown: dict[str, str] = {}
        self._ticked = 0.0  # monotonic time of the last tick
        self.figures_s = REFRESH_S  # while a reply streams (the chat screen sets its pacing)

    def _set(self, widget_id: str, text: str) -> None:
        """Update a line only when it changed: each update costs a layout pass."""
        old = self._shown.get(widget_id)
        if old == text:
            return
        self._shown[widget_id] = text
        widget = self.query_one(f"#{widget_id}", Static)
        # A full layout pass costs the whole screen a reflow; while streaming, most
        # updates keep the line count and fit the width, so a repaint is enough.
        width = widget.content_size.width
        same_shape = (
            old is not None
            and old.count("\n") == text.count("\n")
            and width > 0
            and max(len(line) for line in text.split("\n")) <= width
        )
        widget.update(text, layout=not same_shape)

    def compose(self) -> ComposeResult:
        yield Label("Model", classes="section")
        yield Static("no model", id="model-line", markup=False)
        yield Static("", id="backend-line", markup=False)
        yield Label("Reply", classes="section")
        yield Static("", id="speed-line", markup=False)
        yield Sparkline([], id="tps-sparkline")
        yield Static("", id="reply-figures", markup=False)
        yield Label("Context", classes="section")
        yield ProgressBar(total=1, show_eta=False, id="ctx-gauge")
        yield Static("-", id="ctx-figures", markup=False)
        yield Label("KV cache", classes="section")
        yield ProgressBar(total=1, show_eta=False, id="kv-gauge")
        yield Static("", id="kv-figures", markup=False)
        # shown from the first lookup on (or when serve = "store"): until then it says nothing
        yield Label("Prediction store", classes="section", id="store-title")
        yield Static("-", id="store-figures", markup=False)
        yield Label("Memory", classes="section")
        yield Static("", id="memory-figures", markup=False)

    def on_mount(self) -> None:
        self.query_one("#store-title").display = False
        self.query_one("#store-figures").display = False
        self._redraw()
        self.set_interval(REFRESH_S, self._timer_tick)

    # ----- inputs ---------------------------------------------------------------------------

    def show_model(self, name: str, quantization: str, backend: str, kv: KvCacheUsage) -> None:
        self._set("model-line", f"{name} · {quantization}")
        self._set("backend-line", backend)
        self.show_kv(kv)

    def show_no_model(self, text: str = "no model") -> None:
        self._set("model-line", text)
        self._set("backend-line", "")
        self.kv = None
        self.kv_tokens = 0
        self.context_n_ctx = 0
        self._dirty = True

    def show_kv(self, kv: KvCacheUsage) -> None:
        self.kv = kv
        self.kv_tokens = kv.tokens
        self._dirty = True

    def show_context(self, tokens: int, n_ctx: int) -> None:
        """The conversation's tokens (counted before sending) against the window."""
        self.context_tokens = tokens
        self.context_n_ctx = n_ctx
        self._dirty = True

    def show_memory(self, snapshot: MemorySnapshot) -> None:
        self.memory = snapshot
        self._dirty = True

    def reply_started(self, prompt_tokens: int) -> None:
        self.generating = True
        self.prompt_tokens = prompt_tokens
        self.prompt_tokens_evaluated = None
        self.prompt_tps = 0.0
        self.ttft_s = None
        self.generated_tokens = 0
        self.generation_tps = 0.0
        self.total_s = None
        self.finish_reason = None
        self.speculative = ""
        self.source = "live"
        self.store_run = None
        self._tps_series = []
        self._last_chunk = None
        self._window_start = None
        self._dirty = True

    def tokens_streamed(self, chunk: TokenChunk) -> None:
        self._last_chunk = chunk
        self.ttft_s = chunk.ttft_s
        self.generated_tokens = chunk.n_generated
        self.kv_tokens = chunk.kv_tokens
        self.prompt_tps = chunk.prompt_tps
        if chunk.prompt_tokens_evaluated:
            self.prompt_tokens_evaluated = chunk.prompt_tokens_evaluated
        if self._window_start is None:
            # speed is counted from the first token: its wait is the TTFT's
            self._window_start = (chunk.n_generated, chunk.elapsed_s)
        self._dirty = True
        # Drawn with the streamed text, in the same frame: a frame of its own would cost
        # the CPU the reply is generated with as much again.
        if time.monotonic() - self._ticked >= self.figures_s:
            self._tick()

    def reply_finished(self, stats: GenerationStats) -> None:
        # (the last partial window is left out of the sparkline: too short to mean much,
        # unless the reply was over before a first window closed)
        if not self._tps_series and stats.generation_tps > 0:
            self._tps_series.append(stats.generation_tps)
        self.generating = False
        self.prompt_tokens = stats.prompt_tokens
        self.prompt_tokens_evaluated = stats.prompt_tokens_evaluated
        self.prompt_tps = stats.prompt_tps
        self.ttft_s = stats.ttft_s if stats.generated_tokens else None
        self.generated_tokens = stats.generated_tokens
        self.generation_tps = stats.generation_tps
        self.total_s = stats.total_s
        self.finish_reason = stats.finish_reason
        spec = stats.speculative
        self.speculative = ""
        if spec is not None and spec.drafted:
            up = f" · x{spec.speedup:.2f}" if spec.speedup is not None else ""
            self.speculative = f"{spec.accepted}/{spec.drafted} accepted{up}"
        self.show_kv(stats.kv)
        self._redraw()

    def reply_served(self, figures: ReplyFigures, run_id: int) -> None:
        """The reply came from the prediction store: no speed to show, its run instead."""
        self.generating = False
        self.source = "store"
        self.store_run = run_id
        self.prompt_tokens = figures.prompt_tokens
        self.prompt_tokens_evaluated = None
        self.prompt_tps = 0.0
        self.ttft_s = figures.ttft_s
        self.generated_tokens = figures.generated_tokens
        self.generation_tps = 0.0
        self.total_s = figures.total_s
        self.finish_reason = figures.finish_reason
        self._tps_series = []
        self._redraw()

    def show_store(self, hits: int, misses: int, mode: str) -> None:
        """This session's hit rate (serve mode: store-then-live, live, store)."""
        self.store_hits, self.store_misses = hits, misses
        total = hits + misses
        shown = mode == "store" or (bool(total) and mode != "unavailable")
        self.query_one("#store-title").display = shown
        self.query_one("#store-figures").display = shown
        if shown:
            rate = f"{100 * hits / total:.0f} %" if total else "-"
            self._set(
                "store-figures",
                f"hit rate   {rate}\n{hits} hits · {misses} misses\nserve      {mode}",
            )

    def reply_failed(self) -> None:
        self.generating = False
        self.finish_reason = "error"
        self._dirty = True

    # ----- drawing --------------------------------------------------------------------------

    def _timer_tick(self) -> None:
        # While tokens stream they drive the ticks; the timer covers the rest.
        if not self.generating or time.monotonic() - self._ticked >= 2 * self.figures_s:
            self._tick()

    def _tick(self) -> None:
        self._ticked = time.monotonic()
        chunk, start = self._last_chunk, self._window_start
        if self.generating and chunk is not None and start is not None:
            n0, t0 = start
            dt = chunk.elapsed_s - t0
            if chunk.n_generated > n0 and dt > 0:
                self.generation_tps = (chunk.n_generated - n0) / dt
                self._tps_series.append(self.generation_tps)
                del self._tps_series[:-SPARK_POINTS]
                self._window_start = (chunk.n_generated, chunk.elapsed_s)
                self._dirty = True
        if self._dirty:
            self._redraw()

    def _redraw(self) -> None:
        self._dirty = False
        speed = (
            f"{self.generation_tps:6.1f} tok/s"
            if self.generation_tps
            else ("   … tok/s" if self.generating else "   - tok/s")
        )
        state = "generating" if self.generating else (self.finish_reason or "idle")
        if self.source == "store" and not self.generating:
            self._set("speed-line", f"from store  (run {self.store_run}, {state})")
        else:
            self._set("speed-line", f"{speed}  ({state})")
        self.query_one("#tps-sparkline", Sparkline).data = list(self._tps_series)
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        prompt = prompt_figures(self.prompt_tokens, self.prompt_tokens_evaluated, self.prompt_tps)
        total = f"{self.total_s:.2f} s" if self.total_s is not None else "-"
        self._set(
            "reply-figures",
            f"TTFT       {ttft}\n"
            f"prompt     {prompt.removeprefix('prompt ')}\n"
            f"generated  {self.generated_tokens} tok\n"
            f"total      {total}"
            + (f"\ndrafts     {self.speculative}" if self.speculative else ""),
        )
        ctx_gauge = self.query_one("#ctx-gauge", ProgressBar)
        if self.context_n_ctx:
            n = self.context_tokens
            ctx_gauge.update(total=self.context_n_ctx, progress=min(n, self.context_n_ctx))
            left = self.context_n_ctx - n
            self._set(
                "ctx-figures",
                f"{n} / {self.context_n_ctx} tokens" + (" · FULL" if left <= 0 else ""),
            )
        else:
            ctx_gauge.update(total=1, progress=0)
            self._set("ctx-figures", "-")
        gauge = self.query_one("#kv-gauge", ProgressBar)
        kv = self.kv
        if kv is None:
            gauge.update(total=1, progress=0)
            self._set("kv-figures", "-")
        else:
            gauge.update(total=max(1, kv.n_ctx), progress=min(self.kv_tokens, kv.n_ctx))
            used = self.kv_tokens * kv.bytes_per_token
            self._set(
                "kv-figures",
                f"{self.kv_tokens} / {kv.n_ctx} tokens"
                + (f" · ctx {kv.n_ctx} x {kv.n_seq}" if kv.n_seq > 1 else "")
                + f"\n{human_size(used)} / {human_size(kv.allocated_bytes)} · {kv.cache_type}",
            )
        mem = self.memory
        if mem is None:
            text = "-"
        else:
            lines = [
                f"process    {human_size(mem.rss_bytes)}",
                f"available  {human_size(mem.system_available_bytes)}"
                f" / {human_size(mem.system_total_bytes)}",
            ]
            if mem.gpus:
                # each line says whose figure it is (core/inference/memory.py)
                lines += [line for g in mem.gpus for line in g.describe()]
                if mem.gpu_note:
                    lines.append(mem.gpu_note)
            else:
                lines.append(mem.gpu_note or "no GPU")
            text = "\n".join(lines)
        self._set("memory-figures", text)
