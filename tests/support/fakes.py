"""Stand-ins for the engine and the memory probe, for UI tests, snapshots and the TUI's
throughput benchmark: nothing they show depends on the machine or on llama.cpp."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tui_infer.core.inference.engine import ReplyStream
from tui_infer.core.inference.memory import MemorySnapshot
from tui_infer.core.inference.types import (
    GenerationStats,
    KvCacheUsage,
    LoadOptions,
    Message,
    ModelInfo,
    SamplingParams,
    TokenChunk,
)

MiB = 1024 * 1024
SYNTHETIC_MODEL = Path("/models/synthetic.gguf")


@dataclass(frozen=True)
class FakeBackend:
    summary: str = "CPU AVX2 FMA · 2 threads"
    threads: int = 2
    offloaded_layers: int = 0
    total_layers: int = 30


@dataclass(frozen=True)
class FakeTemplate:
    warning: str | None = None
    source: str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


def numbered_words(n: int) -> str:
    return f"word{n} "


class SyntheticEngine:
    """The Engine interface, yielding `text(n)` for token n at a fixed rate (no llama.cpp).

    `produced` keeps every piece and `t_last_token` when the last one was yielded, so a
    benchmark can tell how far behind the screen is.
    """

    def __init__(
        self,
        path: Path,
        options: LoadOptions,
        tokens_per_s: float = 2000.0,
        text: Callable[[int], str] = numbered_words,
        backend: FakeBackend | None = None,
    ) -> None:
        self.n_ctx = options.ctx
        self.options = options
        self.tokens_per_s = tokens_per_s
        self.text = text
        self.info = ModelInfo(
            path=path,
            name="Synthetic-1M",
            architecture="llama",
            quantization="Q4_1",
            file_size=1,
            parameter_count=1,
            n_layer=2,
            n_ctx_train=4096,
            n_embd=64,
            n_head=4,
            n_head_kv=2,
            head_dim_k=16,
            head_dim_v=16,
            chat_template=None,
        )
        self.backend = backend or FakeBackend()
        self.template = FakeTemplate()
        self.template_overridden = False
        self.produced: list[str] = []
        self.t_last_token = 0.0
        self._kv = 0

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)

    def render(self, messages: list[Message]) -> str:
        return "".join(f"<|{m.role}|>{m.content}\n" for m in messages) + "<|assistant|>"

    def kv_usage(self) -> KvCacheUsage:
        per = 256.0
        return KvCacheUsage(self._kv, self.n_ctx, "f16", per, int(per * self.n_ctx), None)

    def reset(self) -> None:
        self._kv = 0

    def close(self) -> None:
        pass

    def chat(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> ReplyStream:
        prompt = self.count_tokens(messages)
        stream = ReplyStream(iter(()))
        stream._gen = self._gen(prompt, sampling, cancel or threading.Event(), stream)
        return stream

    def _gen(
        self, prompt: int, sampling: SamplingParams, cancel: threading.Event, stream: ReplyStream
    ) -> Iterator[TokenChunk]:
        t0 = time.perf_counter()
        n, finish = 0, "length"
        try:
            while n < sampling.max_tokens:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                n += 1
                target = t0 + n / self.tokens_per_s
                while (now := time.perf_counter()) < target:
                    time.sleep(min(0.001, target - now))
                self._kv = prompt + n
                piece = self.text(n)
                self.produced.append(piece)
                yield TokenChunk(piece, n, now - t0, 0.001, self._kv)
        finally:
            end = time.perf_counter()
            self.t_last_token = end
            stream.stats = GenerationStats(
                prompt_tokens=prompt,
                prompt_tokens_evaluated=prompt,
                prompt_s=0.001,
                generated_tokens=n,
                generation_s=end - t0,
                ttft_s=0.001,
                total_s=end - t0,
                finish_reason=finish,
                kv=self.kv_usage(),
            )


class FixedMemoryProbe:
    """Fixed figures: psutil's readings would make pictures and timings vary."""

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(
            rss_bytes=300 * MiB,
            system_available_bytes=4096 * MiB,
            system_total_bytes=8192 * MiB,
            gpus=(),
            gpu_note="no GPU (NVML not installed)",
        )
