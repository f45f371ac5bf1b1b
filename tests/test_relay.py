"""The relay that carries a live reply's chunks to the event loop: every chunk that carries
text arrives once and in order, whichever thread produces them and however fast; the
iteration ends with the reply. Fed by the real scheduler in tests/test_serve*.py; here by a
plain iterator (the fallback that a thread reads) racing the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

from tui_infer.core.inference.types import GenerationStats, TokenChunk
from tui_infer.server.relay import Relay


class Produced:
    """A ReplyStreamLike: n chunks, some empty (held-back text), with short pauses."""

    def __init__(self, n: int, pause_every: int) -> None:
        self.n = n
        self.pause_every = pause_every
        self.stats: GenerationStats | None = None
        self.thread = ""

    def __iter__(self) -> Iterator[TokenChunk]:
        self.thread = threading.current_thread().name
        for i in range(self.n):
            if i % self.pause_every == 0:
                time.sleep(0.001)
            yield TokenChunk("" if i % 7 == 3 else f"<{i}>", i + 1, 0.0, 0.0, i)


async def collect(stream: Produced) -> tuple[list[str], int]:
    texts: list[str] = []
    batches = 0
    async for chunks in Relay(stream):
        assert chunks  # never an empty list
        batches += 1
        texts.extend(c.text for c in chunks)
        await asyncio.sleep(0)
    return texts, batches


def test_every_chunk_with_text_arrives_once_in_order() -> None:
    for n, pause_every in ((0, 1), (1, 1), (500, 50), (2000, 3)):
        stream = Produced(n, pause_every)
        texts, batches = asyncio.run(collect(stream))
        assert texts == [f"<{i}>" for i in range(n) if i % 7 != 3]
        assert batches <= max(1, len(texts))
        assert stream.thread != threading.main_thread().name  # read off the loop's thread


def test_two_replies_at_once_stay_apart() -> None:
    async def both() -> tuple[list[str], list[str]]:
        (a, _), (b, _) = await asyncio.gather(collect(Produced(300, 5)), collect(Produced(300, 9)))
        return a, b

    a, b = asyncio.run(both())
    assert a == b == [f"<{i}>" for i in range(300) if i % 7 != 3]
