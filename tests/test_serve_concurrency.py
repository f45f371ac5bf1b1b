"""The server under concurrent and misbehaving clients: a real uvicorn on 127.0.0.1, the real
model decoding up to 8 requests at once (ctx 512 each), the official openai client.

Greedy replies are the same alone and among 7 others; a client that goes away mid-stream
frees its sequence at once; a slow reader does not hold a fast one back; half a body and a
vanished client leave nothing stuck; a full queue is a 429 in OpenAI's shape. And the store
path end to end: what `tui-infer batch --publish` wrote, `tui-infer serve` answers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx  # (the HTTP client huggingface-hub and openai use)
import openai
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tui_infer.cli import main
from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import LoadOptions, Message
from tui_infer.core.static.store import PredictionStore
from tui_infer.server.openapi import document
from tui_infer.server.runner import BackgroundServer

CTX = 512
PARALLEL = 8
MAX_TOKENS = 24
LONG = 400  # a reply that would run for seconds: prompt + LONG fits CTX
LONG_PROMPT = "Write a very long story about a dragon who learns to sing, in many chapters."
WITHIN_S = 30.0  # a bound on waiting for the server, not a measurement


class Served:
    def __init__(self, server: BackgroundServer) -> None:
        self.background = server
        self.url = server.url
        self.engine: Any = server.server.engine

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120
        )

    def decoded_last(self, prompt: str) -> int:
        """Tokens decoded for the request that ended last, a one-message chat of `prompt`:
        its sequence's cells (kept for a next turn) less the prompt's."""
        held = int(self.engine.scheduler.kv_usage().tokens)
        return held - int(self.engine.count_tokens([Message("user", prompt)]))

    def figures(self) -> tuple[int, int, int]:
        """(queued, active, kv_tokens) of the scheduler."""
        queued, active, kv = self.engine.scheduler.figures()
        return int(queued), int(active), int(kv)


def _served(tmp: Path, model_path: Path, parallel: int) -> Iterator[Served]:
    engine = Engine.load(model_path, LoadOptions(ctx=CTX, threads=2, parallel=parallel))
    store = PredictionStore(tmp / "store.sqlite3")
    settings = Settings(max_tokens=MAX_TOKENS, temperature=0.0)
    server = BackgroundServer(engine, model_path, store, settings, port=0)
    server.start()
    try:
        yield Served(server)
    finally:
        server.stop()
        store.close()
        engine.close()


@pytest.fixture(scope="module")
def served(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _served(tmp_path_factory.mktemp("concurrency"), model_path, PARALLEL)


def wait_until(condition: Callable[[], bool], what: str, within: float = WITHIN_S) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f} s: {what}")
        time.sleep(0.02)


def idle(served: Served) -> None:
    wait_until(lambda: served.figures()[:2] == (0, 0), "the scheduler is idle")


def ask(client: openai.OpenAI, prompt: str, max_tokens: int = MAX_TOKENS) -> str:
    """A streamed greedy reply's whole text."""
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


# ----- many at once -------------------------------------------------------------------------


def test_eight_concurrent_streams_each_get_the_text_they_get_alone(served: Served) -> None:
    client = served.client()
    prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "Say hello in Spanish.",
        "What is two plus two?",
        "Name a large animal.",
        "What do bees make?",
        "Describe the sea in one sentence.",
        "Which planet is closest to the sun?",
    ]
    alone = {p: ask(client, p) for p in prompts}
    assert all(alone.values())
    together: dict[str, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(prompts))
    peak = [0]

    def one(prompt: str) -> None:
        try:
            start.wait(timeout=WITHIN_S)
            together[prompt] = ask(client, prompt)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], served.figures()[1])
        time.sleep(0.005)
    assert not errors, errors
    assert together == alone
    assert peak[0] > 1  # they really decoded together
    idle(served)


# ----- clients that go away or read slowly ---------------------------------------------------


def test_a_client_that_leaves_mid_stream_frees_its_sequence(served: Served) -> None:
    idle(served)
    client = served.client()
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=LONG,
        temperature=0,
        stream=True,
    )
    chunks = iter(stream)
    for _ in range(2):
        next(chunks)
    stream.close()
    idle(served)
    assert served.decoded_last(LONG_PROMPT) < LONG // 4  # (greedy, it runs to LONG alone)
    # and the server goes on answering
    assert ask(client, "Say hello in Spanish.")


def test_a_non_streaming_client_that_leaves_frees_its_sequence(served: Served) -> None:
    idle(served)
    prompt = LONG_PROMPT + " Make it different."
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": LONG,
        "temperature": 0,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=1.0)
    wait_until(
        lambda: served.figures()[:2] == (0, 0),
        "the sequence of a client that went away (not streaming) is still decoding",
    )
    decoded = served.decoded_last(prompt)
    assert decoded < LONG // 2, f"{decoded} tokens decoded for a client that had gone"


def test_a_slow_reader_does_not_hold_back_a_fast_one(served: Served) -> None:
    """The slow client reads a chunk every 0.5 s and, after two, stops reading until the
    fast one has its whole reply: a server that waited on the slow reader would never
    finish the fast one (the client's timeout fails the test)."""
    idle(served)
    client = served.client()
    prompt = "Name three colours."
    alone = ask(client, prompt)
    pieces: list[str] = []
    slow_started, fast_done = threading.Event(), threading.Event()

    def slow() -> None:
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
        )
        for i, chunk in enumerate(stream):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if i == 2:
                slow_started.set()
                fast_done.wait(timeout=180)
            time.sleep(0.5)

    reader = threading.Thread(target=slow)
    reader.start()
    try:
        assert slow_started.wait(WITHIN_S)
        assert ask(client, "What do bees make?")
        assert reader.is_alive()  # the slow one has not read its reply yet
    finally:
        fast_done.set()
        reader.join(timeout=120)
    assert "".join(pieces) == alone  # and it gets all of it, late
    idle(served)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_half_a_body_then_gone_leaves_nothing_stuck_and_no_traceback(served: Served) -> None:
    idle(served)
    logged = _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "starlette")]
    for logger in loggers:
        logger.addHandler(logged)
    try:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        )
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", served.background.port)) as s:
                s.sendall(head.encode() + b'{"messages": [{"role": "user", "content": "Hel')
                time.sleep(0.2)
        # the server answers the next request, and nothing waits or runs for the others
        assert ask(served.client(), "What is two plus two?")
        idle(served)
    finally:
        for logger in loggers:
            logger.removeHandler(logged)
    errors = [r for r in logged.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.getMessage(), r.exc_info and r.exc_info[0]) for r in errors]


# ----- a bounded queue -----------------------------------------------------------------------


@pytest.fixture
def one_slot(model_path: Path, tmp_path: Path) -> Iterator[Served]:
    yield from _served(tmp_path, model_path, parallel=1)


def test_a_full_queue_is_a_429_in_openai_shape(one_slot: Served) -> None:
    one_slot.engine.scheduler.max_queued = 1
    client = one_slot.client()
    streams: list[Any] = []

    def open_stream(prompt: str, max_tokens: int) -> None:
        streams.append(
            client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
            )
        )

    try:
        open_stream(LONG_PROMPT, LONG)
        next(iter(streams[0]))  # (the role chunk may come before the slot is taken)
        wait_until(lambda: one_slot.figures()[:2] == (0, 1), "the long request holds the slot")
        opener = threading.Thread(target=open_stream, args=("Hi there.", MAX_TOKENS))
        opener.start()
        wait_until(lambda: one_slot.figures()[0] == 1, "the second request waits in the queue")
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "And me?"}], max_tokens=4
            )
        response = refused.value.response
        assert response.status_code == 429
        assert response.headers.get("retry-after", "").isdigit()
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "rate_limit_error" and "waiting" in error["message"]
        streams[0].close()  # the slot frees: the queued request runs
        opener.join(timeout=WITHIN_S)
        assert len(streams) == 2
        assert "".join(c.choices[0].delta.content or "" for c in streams[1] if c.choices)
    finally:
        for s in streams:
            s.close()
    idle(one_slot)


# ----- the store path, end to end ------------------------------------------------------------


CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tui_infer_serve_answers_what_tui_infer_batch_published(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI both ways: `tui-infer batch --publish` fills the store, then a `tui-infer
    serve` process answers the same request, sent by the official client, from it."""
    prompt = "What is the capital of France?"
    src = tmp_path / "in.txt"
    src.write_text(prompt + "\n")
    out = tmp_path / "o.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--max-tokens", "8"]
    assert main([*argv, "--publish", "--force"]) == 0
    stored = json.loads(out.read_text())["output"]
    assert stored
    capsys.readouterr()
    port = _free_port()
    serve = [sys.executable, "-m", "tui_infer", "serve", "-m", str(model_path)]
    serve += ["--port", str(port), "--parallel", "1", "--ctx", "1024"]
    serve += ["--max-tokens", "8", "--temperature", "0"]
    proc = subprocess.Popen(  # TUI_INFER_DATA_DIR (conftest): the store batch wrote
        serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # exited: fail below, with its stderr

        wait_until(ready, "tui-infer serve answers /health", within=90)
        assert proc.poll() is None
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": prompt}]
        )
        assert raw.headers["x-tui-infer-source"] == "store"
        assert raw.headers.get("x-tui-infer-run", "").isdigit()
        hit = raw.parse()
        assert hit.choices[0].message.content == stored
        # the same conversation under other parameters: the model answers, not the store
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": prompt}], max_tokens=3
        )
        assert raw.headers["x-tui-infer-source"] == "live"
        # a store hit, whole and streamed, keeps to the server's OpenAPI description
        described = schemathesis.openapi.from_dict(document())["/v1/chat/completions"]["POST"]
        for stream in (False, True):
            body: Any = {"messages": [{"role": "user", "content": prompt}], "stream": stream}
            case = described.Case(body=body, media_type="application/json")
            answer = case.call_and_validate(base_url=url, checks=CONFORMANCE, timeout=60)
            assert answer.headers["x-tui-infer-source"] == ["store"]
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
