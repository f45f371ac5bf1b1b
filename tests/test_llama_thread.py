"""Every llama.cpp graph computation runs on one thread, whichever thread asks for it.

libgomp keeps a team of OpenMP threads per thread that starts a parallel region; with more
teams than cores it stops spinning and sleeps at barriers, and generation on 2 cores fell
from ~90 to ~33 tokens/s when the TUI's workers decoded replies from several threads."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.types import Message, SamplingParams


class Lane:
    """A long-lived thread that runs what it is given, as an executor's thread does."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]]
        self.jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            job, box = self.jobs.get()
            try:
                box.put((True, job()))
            except BaseException as exc:
                box.put((False, exc))

    def call(self, job: Callable[[], Any]) -> Any:
        box: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.jobs.put((job, box))
        ok, value = box.get()
        if not ok:
            raise value
        return value


def test_jobs_from_any_thread_run_on_one_thread() -> None:
    lanes = [Lane() for _ in range(3)]
    seen = {lane.call(lambda: on_llama_thread(threading.get_ident)) for lane in lanes}
    assert len(seen) == 1 and seen != {lane.thread.ident for lane in lanes}
    assert on_llama_thread(lambda: threading.current_thread().name) == "llama.cpp"
    # a job that asks again from the llama thread runs inline (no deadlock)
    assert on_llama_thread(lambda: on_llama_thread(lambda: 42)) == 42


def test_a_job_error_reaches_the_caller() -> None:
    def fail() -> None:
        raise ValueError("from the llama thread")

    with pytest.raises(ValueError, match="from the llama thread"):
        on_llama_thread(fail)
    assert on_llama_thread(lambda: 7) == 7  # and the thread still serves


def native_threads_not_python() -> set[int]:
    """This process's OS threads that Python did not start (llama.cpp's OpenMP team)."""
    ours = {t.native_id for t in threading.enumerate()}
    return {int(t) for t in os.listdir("/proc/self/task")} - ours


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_replies_decoded_from_three_threads_share_one_openmp_team(engine: Engine) -> None:
    before = native_threads_not_python()
    lanes = [Lane() for _ in range(3)]  # kept alive, like the TUI's worker threads

    def reply(text: str) -> int:
        stream = engine.chat(
            [Message("user", text)], SamplingParams(temperature=0, max_tokens=8), threading.Event()
        )
        stream.text()
        assert stream.stats is not None
        return stream.stats.generated_tokens

    assert [lane.call(lambda: reply("Say hi.")) for lane in lanes] == [8, 8, 8]
    # one OpenMP team, for the one llama thread: at most threads - 1 new OS threads
    # (each decoding thread would otherwise bring a team of its own: 3 here)
    new = native_threads_not_python() - before
    assert len(new) <= engine.options.threads - 1
