"""`tui-infer serve` against the official openai client: a real uvicorn on 127.0.0.1, the
real model; the store answers what a batch published, the model the rest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # (the HTTP client huggingface-hub and openai use)
import openai
import pytest
import uvicorn

from tui_infer.cli import main
from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import LoadOptions
from tui_infer.core.models.library import ModelLibrary
from tui_infer.core.static.store import PredictionStore
from tui_infer.server.app import Server, build_app

PROMPT = "What is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, url: str, server: Server) -> None:
        self.url, self.server = url, server

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)


def serve(
    tmp_path: Path, model_path: Path, key: str | None = None, **settings: object
) -> Iterator[Running]:
    engine = Engine.load(model_path, LoadOptions(ctx=1024, threads=2, parallel=4))
    store = PredictionStore(tmp_path / "data" / "store.sqlite3")
    server = Server(
        engine,
        model_path,
        store,
        Settings(**settings),  # type: ignore[arg-type]
        key,
        data_dir=tmp_path / "data",
    )
    port = free_port()
    config = uvicorn.Config(build_app(server), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", server)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        store.close()
        engine.close()


@pytest.fixture
def running(tmp_path: Path, model_path: Path) -> Iterator[Running]:
    yield from serve(tmp_path, model_path, temperature=0.0, max_tokens=8)


def test_models_and_health(running: Running, model_path: Path, tmp_path: Path) -> None:
    client = running.client()
    # the loaded model first, then the library's others (the loaded file not twice)
    assert [m.id for m in client.models.list()][0] == model_path.name
    other = tmp_path / "other-model.gguf"
    other.write_bytes(model_path.read_bytes())
    with ModelLibrary(tmp_path / "data") as library:
        library.import_file(other)
        library.import_file(model_path)
    listed = client.models.list().data
    assert listed[0].id == model_path.name and listed[0].model_extra == {"loaded": True}
    assert "other-model" in [m.id for m in listed[1:]]
    assert len(listed) == len({m.id for m in listed})
    assert all(m.model_extra == {"loaded": False} for m in listed[1:])
    # naming a listed model that is not loaded: 404 naming the loaded one
    with pytest.raises(openai.NotFoundError, match=model_path.name):
        client.chat.completions.create(
            model="other-model", messages=[{"role": "user", "content": "x"}]
        )
    assert httpx.get(f"{running.url}/health").json()["status"] == "ready"


def test_chat_live_and_streamed_give_the_same_greedy_text(running: Running) -> None:
    client = running.client()
    done = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": PROMPT}], max_tokens=8
    )
    text = done.choices[0].message.content
    assert text and done.usage is not None and done.usage.completion_tokens <= 8
    assert done.model_extra and done.model_extra["x_tui_infer"]["source"] == "live"
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens


def test_concurrent_requests_decode_together_and_all_finish(running: Running) -> None:
    client = running.client()
    prompts = [f"Say the number {i}." for i in range(6)]
    alone = {
        p: client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": p}], max_tokens=6
        )
        .choices[0]
        .message.content
        for p in prompts[:2]
    }
    results: dict[str, str | None] = {}

    def ask(p: str) -> None:
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": p}], max_tokens=6
        )
        results[p] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == len(prompts) and all(results.values())
    for p, text in alone.items():
        assert results[p] == text  # greedy: the same text alone and among others


def test_a_published_prediction_answers_from_the_store(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text(PROMPT + "\n")
    argv = ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", str(model_path)]
    assert main([*argv, "--max-tokens", "8", "--publish", "--force"]) == 0
    stored = json.loads((tmp_path / "o.jsonl").read_text())["output"]
    capsys.readouterr()
    for running in serve(tmp_path, model_path, temperature=0.0, max_tokens=8):
        client = running.client()
        hit = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": PROMPT}]
        )
        assert hit.choices[0].message.content == stored
        assert hit.model_extra and hit.model_extra["x_tui_infer"]["source"] == "store"
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            if c.choices
        )
        assert streamed == stored
        # other parameters: not served from the store (the model answers)
        live = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": PROMPT}], temperature=0.7
        )
        assert live.model_extra and live.model_extra["x_tui_infer"]["source"] == "live"


def test_store_only_misses_become_the_next_batch(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--serve store: a miss is 404 not_precomputed (chat and plain completions) and is
    recorded as in the CLI; `store misses` turns it into a batch input; once that batch is
    published the same request is a hit."""
    question = [{"role": "user", "content": "Name a primary colour."}]
    for running in serve(tmp_path, model_path, temperature=0.0, max_tokens=8, serve="store"):
        client = running.client()
        with pytest.raises(openai.NotFoundError) as miss:
            client.chat.completions.create(model="default", messages=question)  # type: ignore[arg-type]
        assert miss.value.code == "not_precomputed"
        with pytest.raises(openai.NotFoundError) as plain:
            client.completions.create(model="default", prompt="Once upon a time")
        assert plain.value.code == "not_precomputed"

        out = tmp_path / "misses.jsonl"
        assert main(["store", "misses", "-o", str(out)]) == 0
        [row] = [json.loads(line) for line in out.read_text().splitlines()]
        assert row["messages"] == question and row["max_tokens"] == 8
        argv = ["batch", str(out), "-o", str(tmp_path / "o.jsonl"), "-m", str(model_path)]
        assert main([*argv, "--temperature", "0", "--max-tokens", "8", "--publish", "--force"]) == 0
        capsys.readouterr()

        hit = client.chat.completions.with_raw_response.create(model="default", messages=question)  # type: ignore[arg-type]
        assert hit.headers["x-tui-infer-source"] == "store"
        assert hit.headers["x-tui-infer-run"].isdigit()
        assert hit.parse().choices[0].message.content


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "invalid_request_error"),
        ({"messages": []}, 400, "invalid_request_error"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request_error"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "invalid_request_error",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "invalid_request_error",
        ),
        (
            {"messages": [{"role": "user", "content": "x" * 20000}]},
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_bad_requests_are_openai_shaped_errors(
    running: Running, body: dict[str, object], status: int, code: str
) -> None:
    r = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and "\n" not in error["message"]


def test_bodies_that_are_not_json_or_too_large(running: Running) -> None:
    url = f"{running.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413
    assert httpx.get(f"{running.url}/v2/nothing").status_code == 404


def test_an_api_key_is_checked(tmp_path: Path, model_path: Path) -> None:
    for running in serve(tmp_path, model_path, key="s3cret", temperature=0.0, max_tokens=4):
        with pytest.raises(openai.AuthenticationError):
            running.client("wrong").models.list()
        assert [m.id for m in running.client("s3cret").models.list()] == [model_path.name]


def test_cli_refuses_an_open_host_without_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set an API key" in err


def test_cli_serves_until_interrupted(tmp_path: Path, model_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui_infer",
            "serve",
            "-m",
            str(model_path),
            "--port",
            str(port),
            "--parallel",
            "2",
            "--ctx",
            "1024",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert r.choices[0].message.content
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
