"""The scheduler on the real model: concurrent requests, prefix reuse per slot, cancel,
queueing, refusals; its replies against the one-sequence engine's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tui_infer.core.errors import ContextOverflowError
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.scheduler import GenerationError, SchedulerBusyError
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24)
PROMPTS = [
    "What is the capital of France?",
    "Hi",
    "Write a haiku about rain.",
    "Summarise: " + "The river flows through the old town and past the mill. " * 12,
    "List three colors.",
    "Count from 1 to 20.",
]


@pytest.fixture(scope="module")
def par(model_path: Path) -> Iterator[Engine]:
    """An engine whose scheduler decodes 4 sequences of 1024 cells each."""
    eng = Engine.load(model_path, LoadOptions(ctx=1024, threads=2, parallel=4))
    yield eng
    eng.close()


def alone(engine: Engine, messages: list[Message], p: SamplingParams = GREEDY) -> str:
    engine.reset()
    return engine.chat(messages, p).text()


def together(engine: Engine, convs: list[list[Message]], p: SamplingParams) -> list[str]:
    """Each conversation submitted and read from its own thread, all started at once."""
    out: list[str] = [""] * len(convs)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(convs))

    def one(i: int) -> None:
        try:
            gate.wait()
            out[i] = engine.chat(convs[i], p).text()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def test_context_is_ctx_times_parallel(par: Engine) -> None:
    kv = par.kv_usage()
    assert par.n_ctx == kv.n_ctx == 1024 and kv.n_seq == 4
    assert kv.allocated_bytes == kv.reported_bytes == 4 * 1024 * kv.bytes_per_token


def test_concurrent_greedy_equals_each_alone(par: Engine, engine: Engine) -> None:
    convs = [[Message("user", p)] for p in PROMPTS]
    want = [alone(engine, c) for c in convs]  # the one-sequence engine, one at a time
    par.reset()
    got = together(par, convs, GREEDY)  # 6 requests through 4 slots: 2 of them wait
    assert got == want
    assert all(got)


def test_more_requests_than_slots_queue_and_all_finish(par: Engine) -> None:
    par.reset()
    streams = [par.chat([Message("user", p)], GREEDY) for p in PROMPTS * 2]  # 12 for 4 slots
    texts = [s.text() for s in streams]
    assert all(s.stats and s.stats.finish_reason in ("stop", "length") for s in streams)
    assert all(texts) and not par.scheduler.busy
    # (Texts are not compared between the two rounds: the second round reuses template
    # heads cached by other conversations, computed in other batch shapes; llama.cpp's
    # sums then differ in the last bits and a near tie may tip, as with the engine's own
    # prefix reuse. test_concurrent_greedy_equals_each_alone compares from empty caches.)


def test_second_turn_evaluates_only_its_new_suffix(par: Engine) -> None:
    par.reset()
    q = [Message("user", "What is the capital of France?")]
    s1 = par.chat(q, GREEDY)
    reply = s1.text()
    # another conversation in between takes another slot and leaves this one's cache
    par.chat([Message("user", "Write a haiku about rain.")], GREEDY).text()
    follow = [*q, Message("assistant", reply), Message("user", "And of Italy?")]
    s2 = par.chat(follow, GREEDY)
    assert s2.text()
    assert s1.stats and s2.stats
    assert s1.stats.prompt_tokens_evaluated == s1.stats.prompt_tokens
    new = s2.stats.prompt_tokens - s1.stats.prompt_tokens - s1.stats.generated_tokens
    # only what the cache does not hold: the end of the reply's turn and the new question
    assert 0 < s2.stats.prompt_tokens_evaluated <= new + 2
    assert s2.stats.prompt_tokens_evaluated < 20
    # (not compared with a fresh evaluation: the reply's cells were decoded one token at a
    # time, which llama.cpp computes in another order than a prompt batch, as the engine's
    # own reuse always did; greedy text may then part after some tokens)


def test_cancel_stops_one_request_the_others_finish(par: Engine, engine: Engine) -> None:
    par.reset()
    long = SamplingParams(temperature=0, max_tokens=40)
    convs = [[Message("user", p)] for p in ("Count from 1 to 100.", "List three colors.")]
    want = [alone(engine, c, long) for c in convs]
    cancel = threading.Event()
    victim = par.chat([Message("user", "Write a long story about a dragon.")], long, cancel)
    others = [par.chat(c, long) for c in convs]
    seen = 0
    for chunk in victim:
        seen = chunk.n_generated
        if seen == 3:
            cancel.set()
    assert victim.stats and victim.stats.finish_reason == "cancelled"
    assert victim.stats.generated_tokens == seen <= 4
    assert [s.text() for s in others] == want
    assert all(s.stats and s.stats.finish_reason in ("stop", "length") for s in others)


def test_cancel_while_waiting_in_the_queue(par: Engine) -> None:
    par.reset()
    hold = threading.Event()
    busy = [
        par.chat([Message("user", "Write a long story.")], SamplingParams(temperature=0), hold)
        for _ in range(4)
    ]
    cancel = threading.Event()
    waiting = par.chat([Message("user", "Hi")], GREEDY, cancel)
    cancel.set()
    assert waiting.text() == ""
    assert waiting.stats and waiting.stats.finish_reason == "cancelled"
    assert waiting.stats.generated_tokens == 0
    hold.set()
    for s in busy:
        s.text()
        assert s.stats and s.stats.finish_reason == "cancelled"


def test_max_tokens_gives_length(par: Engine) -> None:
    s = par.chat(
        [Message("user", "Count from 1 to 100.")], SamplingParams(temperature=0, max_tokens=5)
    )
    s.text()
    assert s.stats and s.stats.generated_tokens == 5 and s.stats.finish_reason == "length"


def test_a_prompt_over_one_sequence_is_refused_before_running(par: Engine) -> None:
    huge = [Message("user", "word " * 1500)]  # over 1024, under 4 x 1024
    with pytest.raises(ContextOverflowError, match="context window holds 1024"):
        par.chat(huge, GREEDY)
    with pytest.raises(ContextOverflowError):
        par.complete_tokens(list(range(100, 1200)), GREEDY)
    assert not par.scheduler.busy


def test_a_full_queue_refuses(par: Engine) -> None:
    par.reset()
    hold = threading.Event()
    sched = par.scheduler
    old = sched.max_queued
    streams = []
    try:
        for _ in range(4):  # one per slot
            streams.append(
                par.chat([Message("user", "Tell a story.")], SamplingParams(temperature=0), hold)
            )
        deadline = time.monotonic() + 30
        while sched._queue and time.monotonic() < deadline:  # the slots take them
            time.sleep(0.01)
        sched.max_queued = 2
        waiting = [par.chat([Message("user", w)], GREEDY, hold) for w in ("Hi", "Hello")]
        streams += waiting
        with pytest.raises(SchedulerBusyError):
            par.chat([Message("user", "Hi")], GREEDY)
        assert [r.stream for r in sched._queue] == waiting  # first come, first served
    finally:
        sched.max_queued = old
        hold.set()
        for s in streams:
            s.text()


def test_inline_consumer_on_the_llama_thread(par: Engine, engine: Engine) -> None:
    """run and the TUI iterate on the llama.cpp thread: that consumer drives the steps,
    and requests read from other threads meanwhile still get theirs."""
    convs = [[Message("user", p)] for p in PROMPTS[:3]]
    want = [alone(engine, c) for c in convs]
    par.reset()
    others = [par.chat(c, GREEDY) for c in convs[1:]]
    box: list[str] = []
    texts: list[str] = [""] * len(others)

    def read(i: int) -> None:
        texts[i] = others[i].text()

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(others))]
    for t in readers:
        t.start()
    mine = par.chat(convs[0], GREEDY)
    on_llama_thread(lambda: box.append("".join(c.text for c in mine)))
    for t in readers:
        t.join(60)
    assert [box[0], *texts] == want


def test_kv_figures_per_sequence(par: Engine) -> None:
    par.reset()
    assert par.scheduler.seq_tokens() == [0, 0, 0, 0]
    streams = [par.chat([Message("user", p)], GREEDY) for p in PROMPTS[:3]]
    for s in streams:
        s.text()
    held = sorted(par.scheduler.seq_tokens())
    want = sorted(
        s.stats.prompt_tokens + s.stats.generated_tokens - (s.stats.finish_reason != "stop")
        for s in streams
        if s.stats
    )
    assert held == [0, *want]
    assert sorted(s.stats.kv.tokens for s in streams if s.stats) == want
    assert par.kv_usage().total_tokens == sum(want)


def test_close_ends_running_requests(model_path: Path) -> None:
    eng = Engine.load(model_path, LoadOptions(ctx=256, threads=2, parallel=2))
    streams = [
        eng.chat([Message("user", "Write a long story.")], SamplingParams(temperature=0))
        for _ in range(3)
    ]
    it = iter(streams[0])
    next(it)
    eng.close()
    for s in streams:
        s.text()
        assert s.stats and s.stats.finish_reason in ("error", "cancelled")
    with pytest.raises(GenerationError):
        eng.chat([Message("user", "Hi")], GREEDY)


def test_a_stop_string_ends_its_request_alone_and_frees_its_slot(par: Engine) -> None:
    from dataclasses import replace

    par.reset()
    long = SamplingParams(temperature=0, max_tokens=40)
    story = [Message("user", "Write a short story about a cat.")]
    other = [Message("user", "Count from 1 to 100.")]
    full, want_other = alone(par, story, long), alone(par, other, long)
    stop = full[15:21]
    stopped = par.chat(story, replace(long, stop=("\x00never", stop)))
    running = par.chat(other, long)
    pieces = []
    for chunk in stopped:
        pieces.append(chunk.text)
    assert "".join(pieces) == full[: full.index(stop)]  # no chunk ever held the stop's text
    assert stopped.stats and stopped.stats.finish_reason == "stop"
    assert stopped.stats.generated_tokens < 40
    assert running.text() == want_other  # the other request went on, unchanged
    assert par.scheduler.figures()[1] == 0
    # inline, on the llama.cpp thread (as `run` consumes it): the same
    inline = on_llama_thread(lambda: par.chat(story, replace(long, stop=(stop,))).text())
    assert inline == full[: full.index(stop)]


def test_logprobs_only_for_the_requests_that_ask(par: Engine) -> None:
    from dataclasses import replace

    par.reset()
    p = SamplingParams(temperature=0, max_tokens=8, repeat_penalty=1.0)
    story = [Message("user", "Write a short story about a cat.")]
    asked = par.chat(story, replace(p, logprobs=4))
    plain = par.chat(story, p)
    chunks = list(asked)
    assert all(c.logprobs == () for c in plain)
    entries = [e for c in chunks for e in c.logprobs]
    assert asked.stats and len(entries) == asked.stats.generated_tokens == 8
    assert "".join(e.token for e in entries) == "".join(c.text for c in chunks)
    assert [e.offset for e in entries] == [
        sum(len(x.token) for x in entries[:i]) for i in range(len(entries))
    ]
    for e in entries:
        assert len(e.top) == 4 and e.top[0].token == e.token  # greedy: the most likely
        assert e.logprob == pytest.approx(e.top[0].logprob) and e.logprob <= 0
        assert [t.logprob for t in e.top] == sorted((t.logprob for t in e.top), reverse=True)


def test_a_new_conversation_copies_the_shared_head_instead_of_evaluating_it(
    par: Engine, model_path: Path
) -> None:
    """B shares A's system head: it takes an empty slot (A's stays for A's next turn) and
    the head is copied there from A's slot, not evaluated again. The copied cells hold what
    A's prompt batch computed, the same cells a one-slot engine reuses in place, so B's
    greedy reply is the one-slot engine's, token for token."""
    system = Message("system", "You are a terse assistant who answers in one sentence. " * 3)
    a = [system, Message("user", "What is the capital of France?")]
    b = [system, Message("user", "Write a haiku about rain.")]
    par.reset()
    copies = par.scheduler.copies
    sa = par.chat(a, GREEDY)
    reply_a = sa.text()
    sb = par.chat(b, GREEDY)
    got = sb.text()
    assert par.scheduler.copies == copies + 1
    assert sa.stats and sb.stats
    shared = par.scheduler._common(par.tokenize(par.render(a)), par.tokenize(par.render(b)))
    assert shared > 20
    assert sb.stats.prompt_tokens_evaluated == sb.stats.prompt_tokens - shared
    # A's conversation is still whole in its own slot: its next turn evaluates the new part
    follow = [*a, Message("assistant", reply_a), Message("user", "And Italy?")]
    s2 = par.chat(follow, GREEDY)
    s2.text()
    assert s2.stats and s2.stats.prompt_tokens_evaluated < 20

    one = Engine.load(model_path, LoadOptions(ctx=1024, threads=2, parallel=1))
    try:
        one.chat(a, GREEDY).text()
        s1 = one.chat(b, GREEDY)  # the same head, reused in place
        assert s1.text() == got
        assert s1.stats and s1.stats.prompt_tokens_evaluated == sb.stats.prompt_tokens_evaluated
    finally:
        one.close()


def test_a_batch_is_written_in_sequence_order() -> None:
    """llama.cpp decodes each run of consecutive sequence ids as its own pass: generating
    slots go in first when room is short, but the batch lists them by id."""
    from types import SimpleNamespace

    from tui_infer.core.inference.decoding import SeqSlot, fill_batch

    cap = 8
    batch = SimpleNamespace(
        token=[0] * cap, pos=[0] * cap, n_seq_id=[0] * cap, seq_id=[[0] for _ in range(cap)],
        logits=[0] * cap, n_tokens=0,
    )  # fmt: skip
    prompt = SeqSlot(seq=1, pending=[7] * 10, pos=0)
    gen = [SeqSlot(seq=2, pending=[5], pos=40), SeqSlot(seq=0, pending=[6], pos=30)]
    n = fill_batch(batch, [gen[0], prompt, gen[1]], cap)
    assert n == cap
    ids = [batch.seq_id[i][0] for i in range(n)]
    assert ids == [0, 1, 1, 1, 1, 1, 1, 2]  # the generating ones in, the prompt in the rest
    assert (gen[1].logits_at, gen[0].logits_at, prompt.logits_at) == (0, 7, -1)
    assert batch.pos[:n] == [30, 0, 1, 2, 3, 4, 5, 40] and len(prompt.pending) == 4


def test_running_sequences_keep_consecutive_ids(par: Engine) -> None:
    """While one request runs in a slot, the next turn of a conversation held in a slot
    that is not next to it goes next to it instead, its conversation copied there."""
    par.reset()
    sched = par.scheduler
    convs = [[Message("user", p)] for p in PROMPTS[:3]]
    replies = [par.chat(c, GREEDY).text() for c in convs]  # one at a time: slots 0, 1, 2
    held = {tuple(s.cached[:3]) for s in sched._slots if s.cached}
    assert len([s for s in sched._slots if s.cached]) == 3 and held
    long = par.chat([Message("user", "Count from 1 to 500.")], SamplingParams(0, max_tokens=400))
    chunks = iter(long)
    next(chunks)  # it runs
    running = next(s.seq for s in sched._slots if s.req is not None)
    # the conversation whose slot is not next to the running one (4 slots: there is one)
    follows = [
        c + [Message("assistant", r), Message("user", "Why?")]
        for c, r in zip(convs, replies, strict=True)
    ]

    def home(f: list[Message]) -> int:
        tokens = par.tokenize(par.render(f))
        idle = [s for s in sched._slots if s.req is None]
        return max(idle, key=lambda s: sched._common(s.cached, tokens)).seq

    homes = [home(f) for f in follows]
    assert len(set(homes)) == 3
    i = next(i for i, h in enumerate(homes) if abs(h - running) != 1)
    copies = sched.copies
    s2 = par.chat(follows[i], GREEDY)
    next(iter(s2))
    placed = next(s.seq for s in sched._slots if s.req is not None and s.seq != running)
    long.cancel.set()
    for _ in chunks:
        pass
    s2.text()
    assert abs(placed - running) == 1  # next to it, not its own slot
    assert sched.copies == copies + 1  # its conversation copied there, not evaluated
    assert s2.stats and s2.stats.prompt_tokens_evaluated < 20
