"""The server's figures: what /metrics exposes (Prometheus text format) and the TUI's Server
screen shows live (`snapshot`), with the last requests.

The routes call the hooks (`http`, `store`, `live`, `record`); queue depth, active
sequences and KV cache use are read from the scheduler when asked (`figures`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tui_infer.core.inference.types import GenerationStats


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as the Server screen lists it."""

    at: float  # time.time() when it ended
    route: str  # "/v1/chat/completions", "/v1/completions"
    prompt_head: str  # the last user message (or the prompt), first 80 characters
    source: str  # "store", "live", or "error"
    status: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    ttft_s: float | None = None


@dataclass(frozen=True)
class SchedulerFigures:
    queued: int
    active: int
    parallel: int
    kv_tokens: int  # cells in use over every sequence
    kv_cells: int  # n_ctx x parallel


@dataclass(frozen=True)
class MetricsSnapshot:
    """Totals since start; the Server screen turns two snapshots into rates."""

    requests: int
    store_hits: int
    store_misses: int
    generated_tokens: int
    ttft_p50_s: float | None  # over the last 100 live requests
    tps_p50: float | None  # generation tokens/s, over the last 100 live requests
    figures: SchedulerFigures | None
    recent: tuple[RequestRecord, ...]  # newest first


class ServerMetrics:
    """Thread-safe counters; see the module docstring. (Implementation may change; the
    hook names and MetricsSnapshot are the interface.)"""

    def __init__(self, figures: Callable[[], SchedulerFigures | None] | None = None) -> None:
        self._figures = figures
        self._lock = threading.Lock()
        self._requests = 0
        self._hits = 0
        self._misses = 0
        self._tokens = 0
        self._ttft: collections.deque[float] = collections.deque(maxlen=100)
        self._tps: collections.deque[float] = collections.deque(maxlen=100)
        self._recent: collections.deque[RequestRecord] = collections.deque(maxlen=50)
        self.started = time.time()

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests += 1

    def store(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def live(self, stats: GenerationStats) -> None:
        with self._lock:
            self._tokens += stats.generated_tokens
            if stats.generated_tokens:
                self._ttft.append(stats.ttft_s)
            if stats.generation_tps:
                self._tps.append(stats.generation_tps)

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._recent.appendleft(rec)

    def snapshot(self) -> MetricsSnapshot:
        figures = self._figures() if self._figures else None
        with self._lock:
            return MetricsSnapshot(
                self._requests,
                self._hits,
                self._misses,
                self._tokens,
                _median(self._ttft),
                _median(self._tps),
                figures,
                tuple(self._recent),
            )

    def prometheus(self) -> bytes:
        raise NotImplementedError


def _median(values: collections.deque[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
