"""What the chat does while a reply streams: the paced pump and the quiet collector.

The reply is decoded on the llama.cpp thread (core.inference.llama_thread), and the
screen hears of it at the pace chosen for this machine (core.inference.pacing): when
llama.cpp takes every core, each redraw costs generation about as long as it takes.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from textual.message import Message as UIMessage

from tui_infer.app import messages as msg
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.pacing import Pacing, stream_pacing
from tui_infer.core.inference.types import TokenChunk


def pacing_for(backend: Any, redraws: float) -> Pacing:
    """The pace for a model just loaded: it depends on the cores llama.cpp takes and on
    whether the whole model is on a GPU (`backend` is the engine's BackendInfo)."""
    return stream_pacing(
        backend.threads,
        os.cpu_count(),
        backend.offloaded_layers,
        backend.total_layers,
        redraws,
    )


def stream_paced(
    stream: Iterable[TokenChunk],
    every_s: float,
    post: Callable[[UIMessage], object],
    cancel: threading.Event,
) -> str:
    """Decode `stream` on the llama.cpp thread, posting a TokensStreamed with the text
    decoded since the last one every `every_s` seconds (and one for the rest at the end);
    return the whole reply. Raises what decoding raises (TuiInferError)."""
    reply: list[str] = []

    def pump() -> None:
        # Runs on the llama.cpp thread, which decodes: no thread is woken per token,
        # only the screen, with a message per `every_s` seconds.
        pending: list[str] = []
        last = None
        flushed = time.monotonic()
        for chunk in stream:
            pending.append(chunk.text)
            last = chunk
            now = time.monotonic()
            if now - flushed >= every_s:
                piece = "".join(pending)
                reply.append(piece)
                pending.clear()
                flushed = now
                post(msg.TokensStreamed(piece, chunk))
        if last is not None and pending:
            piece = "".join(pending)
            reply.append(piece)
            post(msg.TokensStreamed(piece, last))

    on_llama_thread(pump, cancel.set)
    return "".join(reply)


class QuietCollector:
    """The garbage collector kept out of the way while a reply streams.

    Its full passes (40-50 ms each, over every object the app holds) are kept to what the
    reply allocates, and its young passes run a tenth as often (Textual allocates much
    per frame).
    """

    def __init__(self) -> None:
        self._threshold = gc.get_threshold()
        self._quiet = False

    def quiet(self, on: bool) -> None:
        if on == self._quiet:
            return
        self._quiet = on
        if on:
            gc.freeze()
            self._threshold = gc.get_threshold()
            gc.set_threshold(self._threshold[0] * 10, *self._threshold[1:])
        else:
            gc.set_threshold(*self._threshold)
            gc.unfreeze()
