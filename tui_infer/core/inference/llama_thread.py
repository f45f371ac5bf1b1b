"""One thread for every llama.cpp graph computation in the process.

ggml's CPU backend parallelises with OpenMP, and libgomp keeps a team of threads for each
thread that starts a parallel region. Once a process holds more such threads than there
are cores, libgomp stops spinning at its barriers and sleeps instead: on this 2-core
machine generation fell from ~90 to ~33 tokens/s when replies were decoded from a second
and a third long-lived thread, as the TUI's workers (an executor's threads) decode them
(measured; reproduced without the TUI). So every decode, and the model load, run here:
whole decoding loops where they are loops (a reply, a bench run), single calls otherwise.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_jobs: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start_lock = threading.Lock()


def _serve() -> None:
    while True:
        job, box, done = _jobs.get()
        try:
            box.append((True, job()))
        except BaseException as exc:  # handed back to the caller
            box.append((False, exc))
        finally:
            done.set()


def _ensure_started() -> None:
    global _thread
    with _start_lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="llama.cpp", daemon=True)
            _thread.start()


def is_llama_thread() -> bool:
    return threading.current_thread() is _thread


def iterate_on_llama_thread(items: Iterator[T], stop: Callable[[], None]) -> Iterator[T]:
    """Run the iterator `items` on the llama.cpp thread and yield what it yields, here.

    The decoding loop never waits for this consumer (a hand-off to and from the llama
    thread for every token would cost about 3 % of generation on 2 busy cores). If the
    consumer stops early (break, an exception, Ctrl+C), `stop` is called so that the loop
    ends at its next check.
    """
    if is_llama_thread():
        yield from items
        return
    _ensure_started()
    out: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def pump() -> None:
        try:
            for item in items:
                out.put((True, item))
        except BaseException as exc:  # handed to the consumer
            out.put((False, exc))
        else:
            out.put((True, _END))

    _jobs.put((pump, [], threading.Event()))
    finished = False
    try:
        while True:
            ok, item = out.get()
            if not ok:
                finished = True
                raise item
            if item is _END:
                finished = True
                return
            yield item
    finally:
        if not finished:
            stop()


_END = object()


def on_llama_thread(job: Callable[[], T], on_interrupt: Callable[[], None] | None = None) -> T:
    """Run `job` on the llama.cpp thread and return its result (or raise its exception).

    If the caller is interrupted while it waits (Ctrl+C), `on_interrupt` is called (to ask
    llama.cpp to stop), the job is given a moment to end, and the interruption goes on.
    """
    if is_llama_thread():
        return job()
    _ensure_started()
    box: list[tuple[bool, Any]] = []
    done = threading.Event()
    _jobs.put((job, box, done))
    try:
        done.wait()
    except BaseException:
        if on_interrupt is not None:
            on_interrupt()
        done.wait(5.0)
        raise
    ok, value = box[0]
    if ok:
        return value
    raise value


def post(job: Callable[[], Any]) -> None:
    """Queue a job for the llama.cpp thread without waiting for it (the scheduler's driver)."""
    _ensure_started()
    _jobs.put((job, [], threading.Event()))


def others_waiting() -> bool:
    """Whether a job waits for the thread: a long-running job gives it up then."""
    return not _jobs.empty()
