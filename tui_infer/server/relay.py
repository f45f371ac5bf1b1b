"""A live reply's chunks carried from the llama.cpp thread to the event loop.

Measured (BENCHMARKS.md, "Serve vs llama-server"): a thread per request that read the
scheduler's queue and blocked on a round trip through the event loop for every token
(`anyio.from_thread.run(send.send, chunk)`) cost a quarter of the throughput at 4 and 8
clients on 2 cores. Here no thread waits: the scheduler's stream calls `wake` after each
chunk (on the llama.cpp thread), which schedules at most one callback on the event loop
until the handler has looked; the handler then takes every chunk that has arrived and
writes them in one piece. A stream without `listen` (a test's fake engine) is read by a
thread that feeds the same two calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from tui_infer.core.inference.types import ReplyStreamLike, TokenChunk

_END = None


class _Pumped:
    """listen/drain over any ReplyStreamLike: a thread iterates it."""

    def __init__(self, stream: ReplyStreamLike) -> None:
        self._stream = stream
        self._out: queue.SimpleQueue[TokenChunk | None] = queue.SimpleQueue()
        self._wake: Callable[[], None] = lambda: None
        self._ended = False

    def listen(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        threading.Thread(target=self._pump, name="reply pump", daemon=True).start()

    def _pump(self) -> None:
        try:
            for chunk in self._stream:
                self._out.put(chunk)
                self._wake()
        finally:
            self._out.put(_END)
            self._wake()

    def drain(self) -> tuple[list[TokenChunk], bool]:
        out: list[TokenChunk] = []
        while not self._out.empty():
            item = self._out.get_nowait()
            if item is _END:
                self._ended = True
                break
            out.append(item)
        return out, self._ended


class Relay:
    """`async for chunks in Relay(stream):` lists of the chunks that carry text or log
    probabilities, as they arrive; the iteration ends with the reply (its stats set)."""

    def __init__(self, stream: ReplyStreamLike) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._posted = False
        source: Any = stream if callable(getattr(stream, "listen", None)) else _Pumped(stream)
        self._source = source
        source.listen(self._wake)

    def _wake(self) -> None:
        """Any thread: at most one callback waits on the loop at a time."""
        if self._posted:
            return
        self._posted = True
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading
            self._loop.call_soon_threadsafe(self._signal)

    def _signal(self) -> None:
        self._posted = False  # before the event: a chunk put after this posts again
        self._event.set()

    async def __aiter__(self) -> AsyncIterator[list[TokenChunk]]:
        while True:
            await self._event.wait()
            self._event.clear()
            chunks, ended = self._source.drain()
            chunks = [c for c in chunks if c.text or c.logprobs]
            if chunks:
                yield chunks
            if ended:
                return
