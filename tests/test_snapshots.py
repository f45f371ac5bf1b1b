"""SVG snapshots of the chat screen in states whose figures never vary.

A synthetic engine (fixed name, backend and KV figures) and a fixed memory probe
stand in for the real ones, so that nothing on screen depends on the machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from tui_infer.core.config import Settings
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
from tui_infer.core.paths import Paths

SIZE = (100, 30)
MiB = 1024 * 1024


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


class SyntheticEngine:
    """The Engine interface, yielding fixed tokens at a fixed rate (no llama.cpp)."""

    def __init__(self, path: Path, options: LoadOptions, tokens_per_s: float = 2000.0) -> None:
        self.n_ctx = options.ctx
        self.options = options
        self.tokens_per_s = tokens_per_s
        self.info = ModelInfo(
            path=path, name="Synthetic-1M", architecture="llama", quantization="Q4_1",
            file_size=1, parameter_count=1, n_layer=2, n_ctx_train=4096, n_embd=64,
            n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=16, chat_template=None,
        )  # fmt: skip
        self.backend = FakeBackend()
        self.template = FakeTemplate()
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
        self, messages: list[Message], sampling: SamplingParams, cancel: threading.Event
    ) -> ReplyStream:
        prompt = self.count_tokens(messages)
        stream = ReplyStream(iter(()))
        stream._gen = self._gen(prompt, sampling, cancel, stream)
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
                yield TokenChunk(f"word{n} ", n, now - t0, 0.001, self._kv)
        finally:
            end = time.perf_counter()
            stream.stats = GenerationStats(
                prompt_tokens=prompt, prompt_tokens_evaluated=prompt, prompt_s=0.001,
                generated_tokens=n, generation_s=end - t0, ttft_s=0.001, total_s=end - t0,
                finish_reason=finish, kv=self.kv_usage(),
            )  # fmt: skip


class FixedMemoryProbe:
    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(
            rss_bytes=300 * MiB,
            system_available_bytes=4096 * MiB,
            system_total_bytes=8192 * MiB,
            gpus=(),
            gpu_note="no GPU (NVML not installed)",
        )


def make_app(tmp_path: Path, model: bool = True, **settings: object):  # type: ignore[no-untyped-def]
    from tui_infer.app.app import TuiInferApp

    return TuiInferApp(
        settings=Settings(**settings),  # type: ignore[arg-type]
        paths=Paths(config_file=tmp_path / "config.toml", data_dir=tmp_path / "data"),
        model_path=Path("/models/synthetic.gguf") if model else None,
        engine_loader=SyntheticEngine,
        memory_probe=FixedMemoryProbe(),
    )


async def _settle(pilot) -> None:  # type: ignore[no-untyped-def]
    await pilot.app.workers.wait_for_complete()
    # a blinking cursor would make the picture depend on the moment it is taken
    for area in pilot.app.screen.query("TextArea, Input"):
        area.cursor_blink = False
    await pilot.pause(0.3)


def test_no_model_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(make_app(tmp_path, model=False), terminal_size=SIZE, run_before=_settle)


def test_chat_before_any_message(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=_settle)


def test_load_model_dialog(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def open_dialog(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=open_dialog)


def _seed_history(tmp_path: Path) -> None:
    """Two saved chats with fixed figures, so that the screens never vary."""
    from tui_infer.core.chat.history import History, ReplyFigures

    fig = ReplyFigures(0.045, 38, 512.0, 24, 96.4, 0.29, "stop")
    with History.in_data_dir(tmp_path / "data") as h:
        old = h.create("Rivers of Europe", model_name="Synthetic-1M",
                       model_path="/models/synthetic.gguf", created_at=1.0)  # fmt: skip
        h.add_message(old, "user", "Which river flows through Vienna?", created_at=2.0)
        h.add_message(old, "assistant", "The **Danube**.", fig, created_at=3.0)
        cid = h.create("A recipe for rye bread", model_name="Synthetic-1M",
                       model_path="/models/synthetic.gguf", created_at=10.0)  # fmt: skip
        h.add_message(cid, "user", "A recipe for rye bread, please.", created_at=11.0)
        h.add_message(
            cid, "assistant",
            "You need:\n\n- 500 g rye flour\n- 10 g salt\n- sourdough starter\n\n"
            "Mix, rest overnight, bake at 230 °C for 45 minutes.",
            fig, created_at=12.0,
        )  # fmt: skip
        h.add_message(cid, "user", "How long should it cool?", created_at=13.0)
        h.add_message(cid, "assistant", "At least *two hours*.",
                      replace(fig, finish_reason="cancelled", generated_tokens=5),
                      created_at=14.0)  # fmt: skip


async def _open_newest_chat(pilot) -> None:  # type: ignore[no-untyped-def]
    await _settle(pilot)
    await pilot.press("ctrl+f")  # shows the sidebar where it is hidden, focuses the search
    await pilot.press("enter")  # to the list
    await pilot.press("enter")  # the newest chat
    await _settle(pilot)


def test_main_screen_80x24(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed_history(tmp_path)

    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await _open_newest_chat(pilot)
        await pilot.press("ctrl+b")  # hide the sidebar again: the chat gets the width
        pilot.app.chat.prompt_input.focus()  # where the focus lands otherwise is timing
        await _settle(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=(80, 24), run_before=run)


def test_main_screen_160x48(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed_history(tmp_path)
    assert snap_compare(make_app(tmp_path), terminal_size=(160, 48), run_before=_open_newest_chat)


def test_overflow_dialog(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        pilot.app.chat.history = [Message("user", "old " * 40), Message("assistant", "x " * 40)]
        pilot.app.chat.prompt_input.insert("Hi")
        await pilot.press("enter")
        await _settle(pilot)

    assert snap_compare(make_app(tmp_path, ctx=64), terminal_size=(80, 24), run_before=run)


def test_help_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def run(pilot) -> None:  # type: ignore[no-untyped-def]
        await _settle(pilot)
        await pilot.press("f1")
        await _settle(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=(80, 24), run_before=run)
