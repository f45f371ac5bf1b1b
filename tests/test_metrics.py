"""/metrics: the Prometheus series move with the traffic a real server answers (the real
model, a real uvicorn on 127.0.0.1, a prediction published by a real batch run)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from tui_infer.cli import main
from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import GenerationStats, KvCacheUsage, LoadOptions
from tui_infer.core.static.store import PredictionStore
from tui_infer.server.app import Server, build_app
from tui_infer.server.metrics import SchedulerFigures, ServerMetrics

PROMPT = "What is the capital of France?"
CHAT = "/v1/chat/completions"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(tmp_path: Path, model_path: Path, key: str | None = None) -> Iterator[tuple[str, Server]]:
    engine = Engine.load(model_path, LoadOptions(ctx=1024, threads=2, parallel=2))
    store = PredictionStore.in_data_dir(tmp_path / "data")
    server = Server(engine, model_path, store, Settings(temperature=0.0, max_tokens=8), key)
    app = build_app(server)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        store.close()
        engine.close()


def scrape(url: str, key: str | None = None) -> Samples:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def test_the_series_count_store_hits_misses_tokens_and_requests(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text(PROMPT + "\n")
    argv = ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", str(model_path)]
    # 8 tokens: the answer is cut off, flagged; --force serves it anyway
    assert main([*argv, "--max-tokens", "8", "--temperature", "0", "--publish", "--force"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["output"]
    capsys.readouterr()
    for url, server in serve(tmp_path, model_path):
        before = scrape(url)
        assert value(before, "tui_infer_info", model=model_path.name, version="0.1.0") == 1
        assert value(before, "tui_infer_parallel") == 2
        assert server.engine is not None
        assert value(before, "tui_infer_kv_cells_total") == 2 * server.engine.n_ctx
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        hit = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": PROMPT}]
        )
        assert hit.model_extra and hit.model_extra["x_tui_infer"]["source"] == "store"
        live = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Name a colour."}]
        )
        assert live.model_extra and live.model_extra["x_tui_infer"]["source"] == "live"
        streamed = 0
        for chunk in client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Name a fruit."}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.usage:
                streamed = chunk.usage.completion_tokens
        assert live.usage is not None and live.usage.completion_tokens and streamed
        after = scrape(url)

        assert delta(after, before, "tui_infer_store_hits_total") == 1
        assert delta(after, before, "tui_infer_store_misses_total") == 2
        tokens = live.usage.completion_tokens + streamed
        assert delta(after, before, "tui_infer_generated_tokens_total") == tokens
        assert delta(after, before, "tui_infer_time_to_first_token_seconds_count") == 2
        assert delta(after, before, "tui_infer_generation_tokens_per_second_count") == 2
        ok = {"route": CHAT, "method": "POST", "status": "200"}
        assert delta(after, before, "tui_infer_http_requests_total", **ok) == 3
        assert delta(after, before, "tui_infer_request_duration_seconds_count", route=CHAT) == 3
        assert value(after, "tui_infer_http_requests_total", route="/metrics", method="GET",
                     status="200") >= 1  # fmt: skip
        assert value(after, "tui_infer_active_sequences") == 0  # every reply has ended
        assert value(after, "tui_infer_queue_depth") == 0
        snap = server.metrics.snapshot()
        assert (snap.requests, snap.store_hits, snap.store_misses) == (3, 1, 2)


def test_metrics_asks_for_the_api_key(tmp_path: Path, model_path: Path) -> None:
    for url, _ in serve(tmp_path, model_path, key="k3y"):
        r = httpx.get(f"{url}/metrics", timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert value(scrape(url, "k3y"), "tui_infer_parallel") == 2


def test_each_server_has_its_own_series() -> None:
    # Two servers in one process (the TUI restarting one, the tests): no shared registry.
    a = ServerMetrics(lambda: SchedulerFigures(3, 1, 4, 10, 40), model="a.gguf")
    b = ServerMetrics(model="b.gguf")
    kv = KvCacheUsage(tokens=0, n_ctx=1024, cache_type="f16", bytes_per_token=1,
                      allocated_bytes=0, reported_bytes=0)  # fmt: skip
    a.live(GenerationStats(5, 5, 0.1, 9, 0.4, 0.12, 0.5, "stop", kv))
    a.http("/a/path/nobody/has", "get", 404, 0.001)
    sa, sb = parse(a.prometheus().decode()), parse(b.prometheus().decode())
    assert value(sa, "tui_infer_generated_tokens_total") == 9
    assert value(sb, "tui_infer_generated_tokens_total") == 0
    assert value(sa, "tui_infer_time_to_first_token_seconds_bucket", le="0.25") == 1
    assert value(sa, "tui_infer_time_to_first_token_seconds_bucket", le="0.1") == 0
    assert value(sa, "tui_infer_generation_tokens_per_second_bucket", le="20.0") == 1
    assert value(sa, "tui_infer_kv_use_fraction") == 0.25
    assert value(sa, "tui_infer_queue_depth") == 3
    assert (
        value(sa, "tui_infer_http_requests_total", route="other", method="GET", status="404") == 1
    )  # fmt: skip  (a path nobody routes: no series of its own)
    assert "tui_infer_queue_depth" not in {n for n, _ in sb}  # no scheduler: no figures
    assert a.snapshot().requests == 0  # only the API routes count as requests served
