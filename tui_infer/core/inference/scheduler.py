"""The scheduler: every live request of a loaded model is one sequence of one batched decoder.

A `Scheduler` owns a llama.cpp context created with n_seq_max = `parallel` and
kv_unified=False, of n_ctx = ctx x parallel cells, so that each of its `parallel` slots (a
llama.cpp sequence id) keeps the whole context window it would have alone. A chat reply,
`tui-infer run` and the HTTP server's requests all submit to it (`Engine.chat` does), so they
share one copy of the weights and one context.

How a step goes (continuous batching, as in batched.py, whose batch filling and slot state
this module provides to both): requests wait in a bounded FIFO queue; a free slot takes the
head of the queue; one llama_batch is filled with the next token of every generating slot,
then pending prompt tokens while n_batch has room (`fill_batch`); one llama_decode; each
slot whose logits were asked for is sampled with its own sampler chain (`make_sampler`),
its text decoded incrementally and handed to its stream. A slot whose request ends is free
at once for the next one.

Prefix reuse per slot: a slot remembers the tokens its sequence holds when its request ends
(prompt and decoded reply). A new request goes to the free slot where it costs least: the
prompt tokens not already there, plus the cached tokens it would overwrite (so the next
turn of a chat finds its own slot, whose tokens share the longest prefix with its prompt,
and a new conversation takes an empty or stale slot instead of another conversation's).
The rest of the slot is cut with llama_memory_seq_rm and only the new suffix is
evaluated: the next turn of a chat re-evaluates nothing it already has. A new conversation
that shares a head with any slot (the template's system prompt; a common instruction) gets
that head copied into its slot (llama_memory_seq_cp, then cut) instead of evaluating it
again, when the copy costs less than the tokens it saves: llama-server reuses the head by
overwriting the slot that holds it, we keep that conversation too. `prompt_tokens_evaluated`
counts what really ran. Server/streams read chunks either by iterating or, without a
thread, with `listen` and `drain` (server/relay.py).

Which thread decodes: every decode runs on the llama.cpp thread (llama_thread.py: one
OpenMP team for the process). Two ways to drive the loop, both on that thread:

- inline: a stream iterated *on* the llama.cpp thread (run.py and the TUI wrap their
  consumer in `on_llama_thread`) runs the steps itself, between the chunks it hands its
  consumer: no other thread is woken per token, as with the engine's own loop before.
- background: otherwise a driver job runs the steps on the llama.cpp thread and each chunk
  is put on the stream's queue for its consumer's thread. The driver gives the thread up
  whenever another job waits for it (an inline consumer, a model load) and queues itself
  again behind it, so neither waits for the other's requests to finish.

An inline consumer holds the llama.cpp thread until its own request ends (it steps every
slot meanwhile, so requests read from other threads keep flowing); a second inline
consumer queued behind it gets its chunks only then, in a burst. So one consumer at most
should iterate inline (the chat, or `run`); the server's requests read from their threads.

At one request the step is what the engine's loop was: one token, one llama_decode, one
sample. benchmarks/scheduler.py, 2 threads, 16 alternated repetitions on a busy 2-core
machine (medians, tg128): the old one-sequence engine 107.5 tok/s, the scheduler consumed
inline 106.8, consumed from another thread 101.3, a bare loop 105.8; aggregate with 8
requests at once 180 tok/s against 94 for the old engine answering them in turn.

Stop strings and log probabilities (SamplingParams.stop, .logprobs) are watched only for
the requests that ask: their tokens take `_emit_watched` (a StopScanner holds back text that
may begin a stop string; a stop string found ends the request at once, its slot free; the
log-softmax of the sampled row of logits with numpy), while every other request's token
costs what it did before, one test of `req.watch`.

Cancellation: each request's threading.Event is checked at every step (before its slot is
filled and again before it is sampled, so a consumer that cancels after token n gets n); a
batch holding prompt tokens also carries llama.cpp's abort callback, which stops a long
prompt mid-way if a request whose prompt is in the batch is cancelled. After a failed or
aborted decode each slot's bookkeeping is set back to what llama.cpp's memory really holds
(llama_memory_seq_pos_max) and the lost tokens are evaluated again.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tui_infer.core.errors import ContextOverflowError, TuiInferError
from tui_infer.core.inference import llama_thread
from tui_infer.core.inference.decoding import (
    SeqSlot,
    ask_draft_logits,
    draft_into,
    drop_drafts,
    fill_batch,
    make_sampler,
    token_piece,
    verify_draft,
)
from tui_infer.core.inference.draft import DraftModel, ModelDrafter
from tui_infer.core.inference.llama_thread import is_llama_thread
from tui_infer.core.inference.speculative import (
    NgramDrafter,
    SpecController,
    SpecMemory,
    SpeculativeStats,
)
from tui_infer.core.inference.stops import StopScanner
from tui_infer.core.inference.types import (
    GenerationStats,
    KvCacheUsage,
    SamplingParams,
    TokenChunk,
    TokenLogprob,
)


class GenerationError(TuiInferError):
    pass


class SchedulerBusyError(GenerationError):
    """The queue of waiting requests is full: try again later."""


# ----- requests and their streams -----------------------------------------------------------

_END = None  # the end of a stream's chunks


class SchedulerStream:
    """A request's reply: iterate for TokenChunks; `stats` is set once the request ends
    (stop, length, cancelled or error), before iteration stops."""

    def __init__(self, scheduler: Scheduler, cancel: threading.Event) -> None:
        self.stats: GenerationStats | None = None
        self.cancel = cancel
        self._sched = scheduler
        self._out: queue.SimpleQueue[TokenChunk | None] = queue.SimpleQueue()
        self._ended = False
        self._listener: Callable[[], None] | None = None

    def _put(self, item: TokenChunk | None) -> None:
        """The scheduler's side (the llama.cpp thread): a chunk, or _END."""
        self._out.put(item)
        if (listener := self._listener) is not None:
            listener()

    def listen(self, wake: Callable[[], None]) -> None:
        """Consume without a thread: `wake` is called (on the llama.cpp thread; it must
        only signal) after each chunk and at the end; then read with drain(). Call it
        before the first drain(); iterating and listening do not mix."""
        self._listener = wake
        wake()  # whatever arrived before

    def drain(self) -> tuple[list[TokenChunk], bool]:
        """The chunks that have arrived (never blocks) and whether the reply has ended
        (then `stats` is set)."""
        out: list[TokenChunk] = []
        q = self._out
        while not q.empty():
            item = q.get_nowait()
            if item is _END:
                self._ended = True
                break
            out.append(item)
        return out, self._ended

    def __iter__(self) -> Iterator[TokenChunk]:
        if self._ended:
            return iter(())
        if is_llama_thread():
            return self._inline()
        return self._wait()

    def text(self) -> str:
        return "".join(c.text for c in self)

    def _inline(self) -> Iterator[TokenChunk]:
        """On the llama.cpp thread: run the scheduler's steps between our chunks."""
        out = self._out
        sched = self._sched
        try:
            while True:
                while not out.empty():
                    item = out.get_nowait()
                    if item is _END:
                        self._ended = True
                        return
                    yield item
                if not sched._step() and out.empty():
                    # nothing could run: only once the scheduler is closed
                    sched._drain_closed()
                    if out.empty():
                        self._ended = True
                        return
        finally:
            if not self._ended:
                self.cancel.set()
                sched._step(decode=False)  # ends this request now, stats set
                self._ended = True
            sched._kick()  # whoever else is waiting gets a background driver

    def _wait(self) -> Iterator[TokenChunk]:
        """Another thread: read what the driver on the llama.cpp thread decodes."""
        out = self._out
        try:
            while True:
                item = out.get()
                if item is _END:
                    self._ended = True
                    return
                yield item
        finally:
            if not self._ended:
                self.cancel.set()


@dataclass
class _Request:
    prompt: list[int]
    sampling: SamplingParams
    seed: int | None
    cancel: threading.Event
    stream: SchedulerStream
    t_submit: float
    t_admit: float = 0.0
    t_prompt: float = 0.0  # when its prompt was evaluated (0: not yet)
    t_first: float = 0.0
    t_last: float = 0.0
    ttft: float = 0.0
    evaluated: int = 0  # prompt tokens decoded for it
    n_gen: int = 0
    decoder: Any = None
    # only for requests with stop strings or log probabilities (`watch`):
    watch: bool = False
    stops: StopScanner | None = None
    n_chars: int = 0  # characters of reply text decoded
    n_released: int = 0  # of those, handed out (the rest may be a stop string's start)
    # logprobs of tokens whose text is not all handed out yet, with where that text ends
    held: collections.deque[tuple[int, TokenLogprob]] | None = None
    # speculative decoding (None: this request does not draft; `spec_note` says why)
    spec: SpecController | None = None
    drafter: NgramDrafter | ModelDrafter | None = None
    spec_note: SpeculativeStats | None = None
    t_step: float = 0.0  # when its last token was emitted (drafting's timing)
    kv_end: int = -1  # while a draft's tokens are handed out: the cells the reply holds


@dataclass
class _Slot(SeqSlot):
    req: _Request | None = None
    sampler: Any = None
    last_used: float = 0.0
    forget: bool = False  # reset() while it was busy: drop its cache when the request ends


class Scheduler:
    """Continuous batching of live requests over one context. See the module docstring.

    `lib`, `model` and `ctx` are llama.cpp's; the context must have been created with
    n_seq_max = parallel. The scheduler does not free them (its owner does, after close()).
    """

    def __init__(
        self,
        lib: Any,
        model: Any,
        ctx: Any,
        parallel: int,
        bytes_per_token: float,
        cache_type: str,
        reported_bytes: int | None = None,
        max_queued: int = 256,
        speculative: str = "off",
        draft: DraftModel | None = None,
    ) -> None:
        if parallel < 1:
            raise GenerationError(f"parallel must be at least 1, got {parallel}")
        self._lib = lib
        self._ctx = ctx
        self._vocab = lib.llama_model_get_vocab(model)
        self._mem = lib.llama_get_memory(ctx)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.parallel = parallel
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx))  # the window of one request
        self.n_batch = int(lib.llama_n_batch(ctx))
        self.max_queued = max_queued
        self._bytes_per_token = bytes_per_token
        self._cache_type = cache_type
        self._reported_bytes = reported_bytes
        self._slots = [_Slot(seq=s) for s in range(parallel)]
        # A shared head is copied rather than evaluated when it saves at least this many
        # tokens. Measured here (SmolLM2-135M, 2 cores): a prompt token costs 3.2 ms, a
        # whole sequence's copy 5 ms at 1,024 cells and 16 ms at 4,096 (94 MB), about 5
        # tokens for a copy as large as the model file; evaluation grows with the model's
        # size and the copy with the window's, hence the ratio.
        model_bytes = max(1, int(lib.llama_model_size(model)))
        copy_bytes = self.n_ctx_seq * bytes_per_token
        self._copy_min = 4 + math.ceil(5 * copy_bytes / model_bytes)
        self.copies = 0  # heads copied between slots (tests and figures)
        self._cap = max(self.n_batch, parallel)
        self._batch = lib.llama_batch_init(self._cap, 0, 1)
        self._buf = ctypes.create_string_buffer(64)
        # _lock: the context (a step, a reset, a close); _qlock: the queue and the driver
        # flag, held only briefly. Order: _lock, then _qlock.
        self._lock = threading.RLock()
        self._qlock = threading.Lock()
        self._queue: collections.deque[_Request] = collections.deque()
        self._n_active = 0
        self._driver_posted = False
        self._closed = False
        self._last_seq = 0
        self._abort_events: list[threading.Event] = []
        self._abort_cb = lib.ggml_abort_callback(lambda _data: self._should_abort())
        self._no_abort = lib.ggml_abort_callback()
        # speculative decoding for the requests admitted from now on: auto, ngram, draft
        # or off (speculative.py); the draft model, if one was loaded (draft.py): auto
        # then drafts with it
        self.speculative = speculative
        self.draft = draft
        self._n_spec = 0  # running requests that may draft
        # what auto learnt from earlier requests, per draft kind (speculative.SpecMemory)
        self._spec_memory = {"ngram": SpecMemory(), "draft": SpecMemory()}

    # ----- submitting --------------------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        seed: int | None = None,
        cancel: threading.Event | None = None,
    ) -> SchedulerStream:
        """Queue a request (from any thread) and return its stream.

        `seed` None: the sampling's own (a negative one lets llama.cpp pick). Raises
        ContextOverflowError before anything runs when the prompt does not fit one
        sequence's window, SchedulerBusyError when max_queued requests already wait.
        """
        if not prompt:
            raise GenerationError("the prompt is empty")
        if len(prompt) >= self.n_ctx_seq:
            raise ContextOverflowError(
                f"the prompt takes {len(prompt)} tokens, the context window holds {self.n_ctx_seq}",
                prompt_tokens=len(prompt),
                n_ctx=self.n_ctx_seq,
            )
        if seed is None and sampling.seed >= 0:
            seed = sampling.seed
        cancel = cancel or threading.Event()
        stream = SchedulerStream(self, cancel)
        req = _Request(list(prompt), sampling, seed, cancel, stream, time.perf_counter())
        if sampling.stop or sampling.logprobs is not None:
            req.watch = True
            req.stops = StopScanner(sampling.stop) if sampling.stop else None
            if sampling.logprobs is not None:
                req.held = collections.deque()
        with self._qlock:
            if self._closed:
                raise GenerationError("the model was unloaded")
            if len(self._queue) >= self.max_queued:
                raise SchedulerBusyError(
                    f"{len(self._queue)} requests are already waiting for the model; "
                    "try again later"
                )
            self._queue.append(req)
            self._kick_locked()
        return stream

    @property
    def busy(self) -> bool:
        """Whether a request is running or waiting."""
        return bool(self._n_active or self._queue)

    # ----- the driver --------------------------------------------------------------------

    def _kick(self) -> None:
        with self._qlock:
            if self._queue or self._n_active:
                self._kick_locked()

    def _kick_locked(self) -> None:
        if not self._driver_posted and not self._closed:
            self._driver_posted = True
            llama_thread.post(self._drive)

    def _drive(self) -> None:
        """The background driver: steps while there is work and nobody else waits for
        the llama.cpp thread; then it queues itself again behind whoever waits."""
        while True:
            with self._qlock:
                if self._closed or not (self._queue or self._n_active):
                    self._driver_posted = False
                    return
            if llama_thread.others_waiting():
                with self._qlock:
                    self._driver_posted = False
                    self._kick_locked()
                return
            self._step()

    def _step(self, decode: bool = True) -> bool:
        """One step on the llama.cpp thread; False when nothing ran. A failure inside it
        ends every request with finish_reason 'error' instead of escaping."""
        with self._lock:
            try:
                return self._step_locked(decode)
            except Exception as exc:  # a bug or a llama.cpp failure: nobody may hang
                self._fail_all(f"{type(exc).__name__}: {exc}")
                return False

    def _step_locked(self, decode: bool) -> bool:
        if self._closed:
            return False
        lib = self._lib
        slots = self._slots
        for slot in slots:
            if slot.req is not None and slot.req.cancel.is_set():
                self._finish(slot, "cancelled")
        if self._queue:
            self._admit_waiting()
        if not decode:
            return False
        active = [s for s in slots if s.req is not None]
        if not active:
            return False
        prompt_cancels = [s.req.cancel for s in active if s.req and not s.req.t_prompt]
        drafting = self._plan_drafts(active) if self._n_spec else None
        n = fill_batch(self._batch, active, self._cap)
        n_plain = n
        if drafting:
            n_plain = n - ask_draft_logits(self._batch, drafting)
        abortable = n_plain > len(active)  # prompt tokens in it: worth the per-node callback
        if abortable:
            self._abort_events = prompt_cancels
            lib.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        try:
            rc = int(lib.llama_decode(self._ctx, self._batch))
        finally:
            if abortable:
                lib.llama_set_abort_callback(self._ctx, self._no_abort, None)
                self._abort_events = []
        if rc != 0:
            if drafting:
                drop_drafts(lib, self._mem, drafting)
            self._rollback(active)
            if rc != 2:  # 2: aborted for a cancel, reaped at the next step
                for slot in active:
                    if slot.req is not None:
                        self._finish(slot, "error", f"llama_decode returned {rc}")
            return True
        now = time.perf_counter()
        vocab = self._vocab
        for slot in active:
            at = slot.logits_at
            req = slot.req
            if at < 0 or req is None:
                continue
            if not req.t_prompt:
                req.t_prompt = now
            if req.cancel.is_set():
                self._finish(slot, "cancelled")
                continue
            if req.spec is not None:
                self._spec_step(slot, req, at, now)
                continue
            tok = int(lib.llama_sampler_sample(slot.sampler, self._ctx, at))
            if lib.llama_vocab_is_eog(vocab, tok):
                self._finish(slot, "stop")
                continue
            req.n_gen += 1
            if req.n_gen == 1:
                req.t_first = now
                req.ttft = now - req.t_submit
            req.t_last = now
            if req.watch:
                if self._emit_watched(slot, req, tok, at, now):
                    continue
            else:
                text = req.decoder.decode(token_piece(lib, vocab, tok, self._buf))
                req.stream._put(
                    TokenChunk(
                        text,
                        req.n_gen,
                        now - req.t_submit,
                        req.ttft,
                        slot.pos + 1,
                        req.t_prompt - req.t_admit,
                        req.evaluated,
                    )
                )
            if req.n_gen >= req.sampling.max_tokens or slot.pos + 1 >= self.n_ctx_seq:
                self._finish(slot, "length")
            else:
                slot.pending = [tok]
        return True

    # ----- speculative decoding (speculative.py) ------------------------------------------

    def _plan_drafts(self, active: list[_Slot]) -> list[_Slot]:
        """Before a step: each drafting request's draft goes after its last token in
        `pending`, as long as the batch has room for every generating slot's whole draft
        (fill_batch puts them first, whole); the slots that drafted."""
        room = self._cap - len(active)
        out: list[_Slot] = []
        limit = self.n_ctx_seq - 2
        for slot in active:
            req = slot.req
            if req is None or req.spec is None or len(slot.pending) != 1 or not req.n_gen:
                continue
            # never past max_tokens (a step emits up to k + 1) nor the window
            cap = min(room, req.sampling.max_tokens - req.n_gen - 1, limit - slot.pos)
            d = draft_into(slot, req.spec, req.drafter, cap)
            if d:
                room -= d
                out.append(slot)
        return out

    def _spec_step(self, slot: _Slot, req: _Request, at: int, now: float) -> None:
        """The sampling of a request that may draft. With a draft in this step, the row
        before each drafted token is sampled with the request's own sampler chain, left to
        right, while the draw equals the draft; the first draw that differs (or the one
        after the whole draft) is the target's own token. For a deterministic draft that
        is the speculative sampling rule (speculative.py): greedy replies are the same
        tokens as without drafting, sampled ones the same law (and the same draws). The
        rejected positions leave the KV cache; each emitted token takes the normal path
        (EOG, stop strings, logprobs, max_tokens, the window)."""
        lib = self._lib
        spec = req.spec
        drafter = req.drafter
        assert spec is not None and drafter is not None
        dt = now - req.t_step if req.t_step else 0.0
        req.t_step = now
        d = slot.n_draft
        if not d:
            tok = int(lib.llama_sampler_sample(slot.sampler, self._ctx, at))
            if dt:
                spec.record_plain(dt)
            if not self._emit_one(slot, req, tok, at, slot.pos, now):
                slot.pending = [tok]
                drafter.extend((tok,))
                req.kv_end = -1
            return
        out, accepted, first = verify_draft(lib, self._ctx, self._mem, slot.sampler, slot)
        if dt:
            spec.record_draft(d, accepted, dt)
        base = slot.pos - accepted
        for i, tok in enumerate(out):
            if self._emit_one(slot, req, tok, first + i, base + i, now):
                return
        slot.pending = [out[-1]]
        drafter.extend(out)
        req.kv_end = -1

    def _emit_one(
        self, slot: _Slot, req: _Request, tok: int, at: int, pos: int, now: float
    ) -> bool:
        """One sampled token of a drafting request, as the step's own path hands it out
        (`pos`: where it goes in the sequence); True when it ended the request."""
        lib = self._lib
        req.kv_end = pos  # should it end here, the drafted cells after it go (_finish)
        if lib.llama_vocab_is_eog(self._vocab, tok):
            self._finish(slot, "stop")
            return True
        req.n_gen += 1
        if req.n_gen == 1:
            req.t_first = now
            req.ttft = now - req.t_submit
        req.t_last = now
        if req.watch:
            if self._emit_watched(slot, req, tok, at, now, pos + 1):
                return True
        else:
            text = req.decoder.decode(token_piece(lib, self._vocab, tok, self._buf))
            req.stream._put(
                TokenChunk(
                    text,
                    req.n_gen,
                    now - req.t_submit,
                    req.ttft,
                    pos + 1,
                    req.t_prompt - req.t_admit,
                    req.evaluated,
                )
            )
        if req.n_gen >= req.sampling.max_tokens or pos + 1 >= self.n_ctx_seq:
            self._finish(slot, "length")
            return True
        return False

    def _emit_watched(
        self, slot: _Slot, req: _Request, tok: int, at: int, now: float, kv: int = -1
    ) -> bool:
        """A token of a request with stop strings or log probabilities; True when a stop
        string ended it (the text before the stop string handed out, the slot free). `kv`:
        the cells in use once it is decoded (-1: the slot's position + 1)."""
        piece = token_piece(self._lib, self._vocab, tok, self._buf)
        text = req.decoder.decode(piece)
        start = req.n_chars
        req.n_chars += len(text)
        if req.held is not None:
            entry = self._logprob(tok, piece, at, start, req.sampling.logprobs or 0)
            req.held.append((req.n_chars, entry))
        hit = False
        if req.stops is not None:
            text, hit = req.stops.feed(text)
        req.n_released += len(text)
        req.stream._put(
            TokenChunk(
                text,
                req.n_gen,
                now - req.t_submit,
                req.ttft,
                kv if kv >= 0 else slot.pos + 1,
                req.t_prompt - req.t_admit,
                req.evaluated,
                self._released(req, hit),
            )
        )
        if hit:
            self._finish(slot, "stop")
        return hit

    @staticmethod
    def _released(req: _Request, ended: bool) -> tuple[TokenLogprob, ...]:
        """The held logprobs whose token's text is all handed out now; once the reply has
        ended, those whose text begins before its end (a token cut by a stop string)."""
        held = req.held
        if not held:
            return ()
        out = []
        limit = req.n_released
        while held and (held[0][0] <= limit or (ended and held[0][1].offset < limit)):
            out.append(held.popleft()[1])
        if ended:
            held.clear()
        return tuple(out)

    def _logprob(self, tok: int, piece: bytes, at: int, offset: int, n: int) -> TokenLogprob:
        """The sampled token's log probability and the top-n (SamplingParams.logprobs) under
        the model's raw distribution: a log-softmax of the row of logits it was drawn from."""
        lib = self._lib
        row = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, at), shape=(self._n_vocab,))
        logits = row.astype(np.float64)
        top_logit = logits.max()
        lse = top_logit + np.log(np.exp(logits - top_logit).sum())
        top: tuple[TokenLogprob, ...] = ()
        if n > 0:
            idx = np.argpartition(-logits, n - 1)[:n]
            idx = idx[np.argsort(-logits[idx], kind="stable")]
            top = tuple(self._entry(int(i), float(logits[i] - lse)) for i in idx)
        text = piece.decode("utf-8", errors="replace")
        return TokenLogprob(text, float(logits[tok] - lse), piece, offset, top)

    def _entry(self, tok: int, logprob: float) -> TokenLogprob:
        piece = token_piece(self._lib, self._vocab, tok, ctypes.create_string_buffer(64))
        return TokenLogprob(piece.decode("utf-8", errors="replace"), logprob, piece)

    def _should_abort(self) -> bool:
        return self._closed or any(e.is_set() for e in self._abort_events)

    def _rollback(self, active: list[_Slot]) -> None:
        """After a failed decode: what each sequence really holds, the rest to do again."""
        lib = self._lib
        for slot in active:
            real = max(0, int(lib.llama_memory_seq_pos_max(self._mem, slot.seq)) + 1)
            if real < slot.pos:
                lib.llama_memory_seq_rm(self._mem, slot.seq, real, -1)
                lost = slot.cached[real:]
                del slot.cached[real:]
                slot.pending = lost + slot.pending
                slot.pos = real
                if slot.req is not None and not slot.req.t_prompt:
                    slot.req.evaluated += len(lost)  # evaluated again

    # ----- slots -------------------------------------------------------------------------

    def _admit_waiting(self) -> None:
        while True:
            free = [s for s in self._slots if s.req is None]
            with self._qlock:
                # requests cancelled while they waited end without a slot
                for req in [r for r in self._queue if r.cancel.is_set()]:
                    self._queue.remove(req)
                    self._end_unslotted(req, "cancelled")
                if not free or not self._queue:
                    return
                req = self._queue.popleft()
                self._n_active += 1
            slot, donor = self._pick(req.prompt, free)
            self._admit(slot, req, donor)

    @staticmethod
    def _common(a: list[int], b: list[int]) -> int:
        n = min(len(a), len(b))
        if a[:n] == b[:n]:
            return n
        lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if a[:mid] == b[:mid]:
                lo = mid
            else:
                hi = mid
        return lo

    def _pick(self, prompt: list[int], free: list[_Slot]) -> tuple[_Slot, _Slot | None]:
        """The free slot for a request, and the slot to copy its head from (or None).

        First, the running sequences' ids stay consecutive: llama.cpp decodes each run of
        consecutive ids as its own pass over the weights (see fill_batch), which costs a
        whole decode step for every step the request runs. Then the cost: the prompt tokens
        it must evaluate there plus the cached tokens it would throw away (another
        conversation's next turn would need them), so a chat's next turn goes back to its
        own slot and a new conversation takes an empty slot rather than one holding a
        conversation. What the prompt shares with any slot (its own conversation when the
        ids send it elsewhere, the template's system head, a common instruction) is copied
        into the chosen slot instead of evaluated again when that pays (see _copy_min).
        Ties: least recently used."""
        donor, shared = None, 0
        for s in self._slots:
            n = self._common(s.cached, prompt) if not s.forget else 0
            if n > shared:
                donor, shared = s, n
        busy = {s.seq for s in self._slots if s.req is not None}

        def runs(seq: int) -> int:
            ids = sorted(busy | {seq})
            return 1 + sum(1 for a, b in zip(ids, ids[1:], strict=False) if b != a + 1)

        def cost(s: _Slot) -> tuple[int, int, float, _Slot | None]:
            own = self._common(s.cached, prompt)
            kept = (len(prompt) - own) + (len(s.cached) - own)
            if donor is not None and donor is not s and shared - own >= self._copy_min:
                # the copy replaces the whole sequence, but its first `own` tokens are the
                # donor's too (both are the prompt's head): it loses what `kept` loses
                copied = (len(prompt) - shared) + (len(s.cached) - own)
                if copied < kept:
                    return runs(s.seq), copied, s.last_used, donor
            return runs(s.seq), kept, s.last_used, None

        best = min(free, key=lambda s: cost(s)[:3])
        return best, cost(best)[3]

    def _admit(self, slot: _Slot, req: _Request, donor: _Slot | None = None) -> None:
        lib = self._lib
        if donor is not None:
            # the whole sequence is copied (across llama.cpp's per-sequence streams only a
            # whole copy is supported; the data moves at the next decode), then cut to the
            # shared head
            shared = min(self._common(donor.cached, req.prompt), len(req.prompt) - 1)
            lib.llama_memory_seq_cp(self._mem, donor.seq, slot.seq, -1, -1)
            lib.llama_memory_seq_rm(self._mem, slot.seq, shared, -1)
            slot.cached = donor.cached[:shared]
            slot.pos = shared
            self.copies += 1
        # keep at least one token to evaluate, so that there are logits to sample from
        keep = min(self._common(slot.cached, req.prompt), len(req.prompt) - 1)
        if keep < len(slot.cached) or slot.pos != len(slot.cached):
            lib.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
            del slot.cached[keep:]
        slot.pos = keep
        slot.pending = req.prompt[keep:]
        slot.forget = False
        if slot.sampler is not None:
            lib.llama_sampler_free(slot.sampler)
        slot.sampler = make_sampler(lib, self._n_vocab, req.sampling, req.seed, self._vocab)
        slot.n_draft = 0
        self._spec_admit(req, slot.seq)
        req.t_admit = time.perf_counter()
        req.evaluated = len(slot.pending)
        req.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.req = req
        self._last_seq = slot.seq

    def _spec_admit(self, req: _Request, seq: int) -> None:
        mode = self.speculative
        draft = self.draft
        if mode == "off":
            req.spec_note = SpeculativeStats("off", reason="setting")
        elif req.sampling.grammar is not None:
            # a grammar's sampler state cannot be stepped back over a rejected draft
            req.spec_note = SpeculativeStats("off", reason="grammar")
        elif mode == "draft" and draft is None:
            req.spec_note = SpeculativeStats("off", reason="no draft model")
        elif draft is not None and mode in ("auto", "draft"):
            req.spec = SpecController("draft", mode == "auto", self._spec_memory["draft"])
            req.drafter = draft.drafter(seq, req.prompt, req.sampling, self._slots[seq].pos)
            self._n_spec += 1
        else:
            req.spec = SpecController("ngram", mode == "auto", self._spec_memory["ngram"])
            req.drafter = NgramDrafter(req.prompt)
            self._n_spec += 1

    def _finish(self, slot: _Slot, reason: str, error: str | None = None) -> None:
        req = slot.req
        assert req is not None
        now = time.perf_counter()
        if reason == "stop" and req.cancel.is_set():
            reason = "cancelled"
        tail = req.decoder.decode(b"", final=True) if req.decoder is not None else ""
        prompt_s = (req.t_prompt or now) - req.t_admit
        logprobs: tuple[TokenLogprob, ...] = ()
        if req.watch:
            tail, reason = self._watched_tail(req, tail, reason)
            logprobs = self._released(req, ended=True)
        if tail or logprobs:
            req.stream._put(
                TokenChunk(
                    tail,
                    req.n_gen,
                    now - req.t_submit,
                    req.ttft,
                    slot.pos,
                    prompt_s,
                    req.evaluated,
                    logprobs,
                )
            )
        if 0 <= req.kv_end < slot.pos:
            # it ended inside an accepted draft: the cells after its last token go, as
            # without drafting
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, req.kv_end, -1)
            del slot.cached[req.kv_end :]
            slot.pos = req.kv_end
        if slot.sampler is not None:
            self._lib.llama_sampler_free(slot.sampler)
            slot.sampler = None
        slot.req = None
        slot.pending = []
        slot.logits_at = -1
        slot.n_draft = 0
        if req.spec is not None:
            self._n_spec -= 1
        slot.last_used = now
        self._last_seq = slot.seq
        if slot.forget:
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, 0, -1)
            slot.cached = []
            slot.pos = 0
            slot.forget = False
        with self._qlock:
            self._n_active -= 1
        req.stream.stats = GenerationStats(
            prompt_tokens=len(req.prompt),
            prompt_tokens_evaluated=req.evaluated,
            prompt_s=prompt_s,
            generated_tokens=req.n_gen,
            generation_s=max(0.0, req.t_last - req.t_first),
            ttft_s=req.ttft,
            total_s=now - req.t_submit,
            finish_reason=reason,
            kv=self._usage(len(slot.cached)),
            error=error,
            speculative=req.spec.stats() if req.spec is not None else req.spec_note,
        )
        req.stream._put(_END)

    @staticmethod
    def _watched_tail(req: _Request, tail: str, reason: str) -> tuple[str, str]:
        """The end of a watched reply: the decoder's last characters through the stop
        scanner, then what it held back (no stop string came); the finish reason."""
        stops = req.stops
        req.n_chars += len(tail)
        if stops is not None and stops.hit:
            tail = ""  # after the stop string
        elif stops is not None:
            tail, hit = stops.feed(tail)
            if hit:
                reason = "stop" if reason == "length" else reason
            else:
                tail += stops.flush()
        req.n_released += len(tail)
        return tail, reason

    def _end_unslotted(self, req: _Request, reason: str, error: str | None = None) -> None:
        """End a request that never had a slot (cancelled while waiting, or closed)."""
        total = time.perf_counter() - req.t_submit
        req.stream.stats = GenerationStats(
            prompt_tokens=len(req.prompt),
            prompt_tokens_evaluated=0,
            prompt_s=0.0,
            generated_tokens=0,
            generation_s=0.0,
            ttft_s=0.0,
            total_s=total,
            finish_reason=reason,
            kv=self._usage(0),
            error=error,
        )
        req.stream._put(_END)

    def _fail_all(self, error: str) -> None:
        for slot in self._slots:
            if slot.req is not None:
                try:
                    self._finish(slot, "error", error)
                except Exception:
                    slot.req = None
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, 0, -1)
            slot.cached, slot.pos, slot.pending = [], 0, []
            slot.n_draft = 0
        self._n_spec = 0
        with self._qlock:
            self._n_active = 0
            waiting = list(self._queue)
            self._queue.clear()
        for req in waiting:
            self._end_unslotted(req, "error", error)

    def _drain_closed(self) -> None:
        """An inline consumer found nothing to run: end what is left (closed scheduler)."""
        with self._lock:
            with self._qlock:
                waiting = list(self._queue)
                self._queue.clear()
            for req in waiting:
                self._end_unslotted(req, "error", "the model was unloaded")

    # ----- figures and housekeeping --------------------------------------------------------

    def _usage(self, tokens: int) -> KvCacheUsage:
        total = sum(len(s.cached) for s in self._slots)
        return KvCacheUsage(
            tokens=tokens,
            n_ctx=self.n_ctx_seq,
            cache_type=self._cache_type,
            bytes_per_token=self._bytes_per_token,
            allocated_bytes=int(self._bytes_per_token * self.n_ctx_seq * self.parallel),
            reported_bytes=self._reported_bytes,
            n_seq=self.parallel,
            total_tokens=total,
        )

    def figures(self) -> tuple[int, int, int]:
        """(waiting requests, running requests, KV cells in use over every sequence), read
        without waiting for a step (for /metrics and the Server screen)."""
        with self._qlock:
            queued, active = len(self._queue), self._n_active
        return queued, active, sum(len(s.cached) for s in self._slots)

    def kv_usage(self) -> KvCacheUsage:
        """The cache: `tokens` of the sequence used last (a chat's conversation), and in
        `total_tokens` the cells every sequence holds."""
        with self._lock:
            tokens = 0
            if not self._closed:
                tokens = int(self._lib.llama_memory_seq_pos_max(self._mem, self._last_seq)) + 1
            return self._usage(max(0, tokens))

    def seq_tokens(self) -> list[int]:
        """Cells each sequence holds, as llama.cpp counts them."""
        with self._lock:
            if self._closed:
                return [0] * self.parallel
            return [
                max(0, int(self._lib.llama_memory_seq_pos_max(self._mem, s.seq)) + 1)
                for s in self._slots
            ]

    def reset(self) -> None:
        """Forget every cached prefix (a busy slot forgets its own when its request ends)."""
        with self._lock:
            if self._closed:
                return
            for slot in self._slots:
                if slot.req is None:
                    self._lib.llama_memory_seq_rm(self._mem, slot.seq, 0, -1)
                    slot.cached, slot.pos = [], 0
                else:
                    slot.forget = True

    def decode_raw(self, tokens: list[int]) -> None:
        """Evaluate tokens after what sequence 0 holds, in n_batch chunks, no sampling (the
        bench's pp and tg). Sequence 0 must be free."""
        # All of it on the llama.cpp thread: holding the lock elsewhere while waiting for
        # that thread would deadlock with a step waiting there for the lock.
        llama_thread.on_llama_thread(lambda: self._decode_raw(tokens))

    def _decode_raw(self, tokens: list[int]) -> None:
        with self._lock:
            slot = self._slots[0]
            if self._closed:
                raise GenerationError("the model was unloaded")
            if slot.req is not None:
                raise GenerationError("sequence 0 is busy with a request")
            lib = self._lib
            step = max(1, self.n_batch)
            for i in range(0, len(tokens), step):
                chunk = tokens[i : i + step]
                arr = (lib.llama_token * len(chunk))(*chunk)
                rc = int(lib.llama_decode(self._ctx, lib.llama_batch_get_one(arr, len(chunk))))
                if rc != 0:
                    lib.llama_memory_seq_rm(self._mem, 0, len(slot.cached), -1)
                    raise GenerationError(f"llama_decode returned {rc}")
                slot.cached.extend(chunk)
                slot.pos = len(slot.cached)
            self._last_seq = 0

    def close(self) -> None:
        """End every request (finish_reason 'error': the model was unloaded) and free the
        scheduler's own llama.cpp objects; the owner frees the context after this."""
        with self._lock:
            with self._qlock:
                if self._closed:
                    return
                self._closed = True  # from here on submit() refuses
            self._fail_all("the model was unloaded")
            self._lib.llama_batch_free(self._batch)
