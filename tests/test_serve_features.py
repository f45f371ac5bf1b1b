"""The server's request features against the official openai client, a real uvicorn on
127.0.0.1 and the real model: stop strings, log probabilities, plain completions, where an
answer came from (headers), the context check, loading then ready, stop in the store key."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx  # (the HTTP client huggingface-hub and openai use)
import openai
import pytest
import uvicorn
from openai.types.chat import ChatCompletionMessageParam

from tui_infer.core import request_path as rp
from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.stops import StopScanner
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.static.keys import template_sha256
from tui_infer.core.static.store import PredictionStore
from tui_infer.server.app import Server, build_app

STORY = "Write a short story about a cat."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": STORY}]
# greedy on the model's raw distribution: the sampled token is the most likely one
SETTINGS = Settings(temperature=0.0, repeat_penalty=1.0, max_tokens=24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, url: str, server: Server, engine: Engine) -> None:
        self.url, self.server, self.engine = url, server, engine

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=120)

    def post(self, route: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", json=body, timeout=120)


def serve(tmp_path: Path, model_path: Path, attach: bool = True) -> Iterator[Running]:
    engine = Engine.load(model_path, LoadOptions(ctx=1024, threads=2, parallel=2))
    store = PredictionStore(tmp_path / "data" / "store.sqlite3")
    settings = SETTINGS
    server = Server(engine if attach else None, model_path, store, settings)
    port = free_port()
    config = uvicorn.Config(build_app(server), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", server, engine)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        store.close()
        engine.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Running]:
    yield from serve(tmp_path_factory.mktemp("serve"), model_path)


def ask(running: Running, content: str = STORY, **fields: object) -> str:
    r = running.client().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": content}],
        **fields,  # type: ignore[call-overload]
    )
    return str(r.choices[0].message.content)


# ----- stop strings ----------------------------------------------------------------------------


def test_the_scanner_holds_back_what_may_start_a_stop_string() -> None:
    s = StopScanner(("END", "\n\n"))
    assert s.feed("abc E") == ("abc ", False)  # "E" may start END
    assert s.feed("N") == ("", False)
    assert s.feed("x") == ("ENx", False)  # it did not
    assert s.feed("1\n") == ("1", False)
    assert s.feed("\nafter") == ("", True)  # the earliest stop string ends it
    assert s.feed("more") == ("", True) and s.flush() == ""
    t = StopScanner(("ab",))
    assert t.feed("xa") == ("x", False) and t.flush() == "a"  # the end: release the rest
    u = StopScanner(("world", "lo"))
    assert u.feed("hello world") == ("hel", True)  # the first occurrence of any


def test_stop_ends_the_reply_before_the_stop_string(running: Running) -> None:
    client = running.client()
    full = ask(running)
    assert len(full) > 30
    stop = full[18:24]
    want = full[: full.index(stop)]
    done = client.chat.completions.create(model="default", messages=MESSAGES, stop=stop)
    assert done.choices[0].message.content == want
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens < 24
    pieces, finish = [], None
    for chunk in client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        stop=["never appears", stop],
        stream=True,
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == want and finish == "stop"
    # a stop string that never comes changes nothing
    assert ask(running, stop=["\x00never"]) == full


@pytest.mark.parametrize(
    "stop", ["", [], ["a", "b", "c", "d", "e"], ["ok", ""], 3, ["ok", 4]], ids=repr
)
def test_bad_stop_fields_are_400s_naming_stop(running: Running, stop: object) -> None:
    r = running.post(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stop": stop}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"


# ----- log probabilities -------------------------------------------------------------------------


def test_logprobs_whole_and_streamed(running: Running) -> None:
    client = running.client()
    messages = MESSAGES
    done = client.chat.completions.create(
        model="default",
        messages=messages,
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
    )
    choice = done.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert done.usage is not None and len(entries) == done.usage.completion_tokens == 6
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        top = e.top_logprobs
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert e.token == top[0].token and e.logprob == pytest.approx(top[0].logprob)
        assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-9
        assert e.logprob <= 0 and bytes(e.bytes or []) == e.token.encode()
    streamed = []
    for chunk in client.chat.completions.create(
        model="default", messages=messages, max_tokens=6, logprobs=True, top_logprobs=3,
        stream=True,
    ):  # fmt: skip
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.content or [])
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    # without top_logprobs: each token's own only; without logprobs: none
    plain = client.chat.completions.create(
        model="default",
        messages=messages,
        max_tokens=3,
        logprobs=True,
    )
    content = plain.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(e.top_logprobs == [] for e in content)
    none = client.chat.completions.create(model="default", messages=messages, max_tokens=3)
    assert none.choices[0].logprobs is None


def test_logprobs_with_a_stop_string_cover_the_text_before_it(running: Running) -> None:
    full = ask(running)
    stop = full[18:24]
    r = running.client().chat.completions.create(
        model="default",
        messages=MESSAGES,
        stop=stop,
        logprobs=True,
    )
    text = r.choices[0].message.content or ""
    tokens = "".join(e.token for e in r.choices[0].logprobs.content or [])  # type: ignore[union-attr]
    assert text == full[: full.index(stop)] and tokens.startswith(text)
    assert stop not in tokens


# ----- /v1/completions ---------------------------------------------------------------------------


def test_completions_whole_and_streamed(running: Running) -> None:
    client = running.client()
    prompt = "The capital of France is"
    done = client.completions.create(model="default", prompt=prompt, max_tokens=8)
    assert done.object == "text_completion"
    text = done.choices[0].text
    assert text and done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 8
    assert done.usage.prompt_tokens == len(running.engine.tokenize_prompt(prompt))
    pieces, usage = [], None
    for chunk in client.completions.create(
        model="default",
        prompt=[prompt],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            assert chunk.object == "text_completion"
            pieces.append(chunk.choices[0].text)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens
    # OpenAI's default for this route: 16 tokens
    default = client.completions.create(model="default", prompt="Once upon a time")
    assert default.usage is not None and default.usage.completion_tokens <= 16


def test_completions_stop_and_legacy_logprobs(running: Running) -> None:
    client = running.client()
    prompt = "Once upon a time"
    full = client.completions.create(model="default", prompt=prompt, max_tokens=24).choices[0]
    stop = full.text[10:15]
    cut = client.completions.create(
        model="default", prompt=prompt, max_tokens=24, stop=stop, logprobs=2
    ).choices[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    lp = cut.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens).startswith(cut.text)
    assert lp.text_offset is not None and lp.text_offset[0] == len(prompt)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    first = lp.top_logprobs[0]
    assert lp.token_logprobs[0] == pytest.approx(max(first.values()))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": ["x", "y"]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({}, "prompt"),
    ],
)
def test_completions_refuse_what_they_do_not_do(
    running: Running, body: dict[str, object], param: str
) -> None:
    r = running.post("/v1/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and "\n" not in error["message"]


# ----- where an answer came from, the context, a full queue -------------------------------------


def publish(running: Running, sampling: SamplingParams, output: str) -> int:
    """A published prediction for STORY under `sampling`, as a batch would leave it."""
    server = running.server
    store = server.store
    assert server.target is not None
    req = rp.prepare(store, server.target, [Message("user", STORY)], sampling)
    run = store.create_run(
        signature=f"s{time.time()}",
        model_sha256=req.model_sha256,
        model_path=str(server.model_path),
        template_sha256=template_sha256(server.target.template_source),
        params=req.params,
        n_items=1,
    )
    store.add_prediction(
        run, item_id="q", position=0, key=req.key, model_sha256=req.model_sha256,
        messages=req.messages, output=output, finish_reason="stop", prompt_tokens=9,
        generated_tokens=2, ttft_s=0.01, total_s=0.02, seed=None, params=req.params,
    )  # fmt: skip
    store.set_run_status(run, "done")
    store.publish(run)
    return run


def test_headers_say_where_an_answer_came_from_and_stop_is_in_the_key(
    running: Running,
) -> None:
    client = running.client()
    greedy = SamplingParams.from_settings(SETTINGS)
    run = publish(running, replace(greedy, stop=("END",)), "stored before END")
    messages = MESSAGES
    before = running.server.metrics.snapshot()
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=messages,
        stop="END",
    )
    assert raw.headers["x-tui-infer-source"] == "store"
    assert raw.headers["x-tui-infer-run"] == str(run)
    assert raw.parse().choices[0].message.content == "stored before END"
    after = running.server.metrics.snapshot()
    assert after.store_hits == before.store_hits + 1
    assert after.recent[0].source == "store" and after.recent[0].prompt_head == STORY[:80]
    # the same request without the stop string, or with another: not that prediction
    for stop in (None, "FIN"):
        live = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=4, stop=stop
        )
        assert live.headers["x-tui-infer-source"] == "live"
        assert "x-tui-infer-run" not in live.headers
    streamed = httpx.post(
        f"{running.url}/v1/chat/completions",
        json={"messages": messages, "stop": "END", "stream": True},
        timeout=60,
    )
    assert streamed.headers["x-tui-infer-source"] == "store" and "stored before END" in (
        streamed.text
    )
    done = running.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert done.headers["x-tui-infer-source"] == "live"
    assert running.server.metrics.snapshot().recent[0].route == "/v1/completions"


def test_a_prompt_and_max_tokens_past_the_window_are_refused_before_any_work(
    running: Running,
) -> None:
    for route, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hi"}),
    ):
        r = running.post(route, {**body, "max_tokens": 1100})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "1100" in error["message"] and "1024" in error["message"]
        assert "lower max_tokens" in error["message"]
        ok = running.post(route, {**body, "max_tokens": 2})
        assert ok.status_code == 200
    # no max_tokens: the window caps the reply, as before
    r = running.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200


def test_a_full_queue_is_a_429_with_retry_after(running: Running) -> None:
    scheduler = running.engine.scheduler
    scheduler.max_queued = 0  # nothing may wait: every request finds the queue full
    try:
        bodies: list[tuple[str, dict[str, object]]] = [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
            ("/v1/completions", {"prompt": "Hi"}),
        ]
        for route, body in bodies:
            r = running.post(route, body)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        scheduler.max_queued = 256


# ----- loading, then ready -----------------------------------------------------------------------


def test_the_server_listens_while_loading_then_serves(tmp_path: Path, model_path: Path) -> None:
    for running in serve(tmp_path, model_path, attach=False):
        health = httpx.get(f"{running.url}/health", timeout=10)
        assert health.status_code == 503
        assert health.json() == {"status": "loading", "model": model_path.name}
        for route in ("/v1/chat/completions", "/v1/completions"):
            r = running.post(route, {"prompt": "Hi"})
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["error"]["code"] == "model_loading"
        assert httpx.get(f"{running.url}/v1/models", timeout=10).status_code == 503
        running.server.attach(running.engine)
        health = httpx.get(f"{running.url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json() == {"status": "ready", "model": model_path.name}
        assert ask(running, "Hi", max_tokens=2)
        # every /v1/ request went through the middleware (its hook runs once the answer
        # is sent: wait for it)
        deadline = time.monotonic() + 10
        while running.server.metrics.snapshot().requests < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        snapshot = running.server.metrics.snapshot()
        assert snapshot.requests == 4
        assert [r.source for r in snapshot.recent[:3]] == ["live", "error", "error"]
