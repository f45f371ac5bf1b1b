"""schemathesis over the server's own OpenAPI description (GET /openapi.json), against a real
server: uvicorn on 127.0.0.1, the real model, an API key. Every generated request, valid or
not, must get an answer within a bound, never a 5xx, with the status, content type, headers
and body (each server-sent event too) the description declares; a body outside the
described bounds must be refused, and one inside them answered."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tui_infer.core.config import Settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import LoadOptions
from tui_infer.core.static.store import PredictionStore
from tui_infer.server.app import Server, build_app
from tui_infer.server.openapi import document
from tui_infer.server.runner import BackgroundServer, uvicorn_config

CTX = 1024
KEY = "schemathesis-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_S = 60  # one request, however large its max_tokens: a hang fails the test
FUZZ_EXAMPLES = 20  # per operation, after the coverage phase's boundary cases
SHORT = 2  # generated max_tokens that would run (they fit the context) are cut to this


@pytest.fixture(scope="module")
def base_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine = Engine.load(model_path, LoadOptions(ctx=CTX, threads=2, parallel=2))
    store = PredictionStore(tmp_path_factory.mktemp("schema") / "store.sqlite3")
    server = BackgroundServer(
        engine, model_path, store, Settings(max_tokens=4, temperature=0.0), port=0, api_key=KEY
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        store.close()
        engine.close()


@pytest.fixture(scope="module")
def api(base_url: str) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "request-timeout": TIMEOUT_S,
            # the same cases every run (a CI run is a check, not a search), and a failure
            # is reported as found: shrinking it would send hundreds more requests
            "generation": {"max-examples": FUZZ_EXAMPLES, "deterministic": True, "no-shrink": True},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, timeout=10)


schema = schemathesis.pytest.from_fixture("api")

ACCEPTED_MODELS = (None, "", "default")


def valid_requests_are_answered(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """A body the description calls valid is answered (200), or refused only for what no
    schema can say: a model that is not loaded (404), a prompt plus max_tokens past the
    context (400 context_length_exceeded), an empty prompt for a model without BOS."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or case.method != "POST":
        return
    if response.status_code == 200:
        return
    body = case.body if isinstance(case.body, dict) else {}
    error = (response.json() or {}).get("error", {}) if response.status_code < 500 else {}
    code = error.get("code")
    if response.status_code == 404 and code == "model_not_found":
        assert body.get("model") not in ACCEPTED_MODELS, error
        return
    if response.status_code == 400 and code == "context_length_exceeded":
        return
    value = body.get(error.get("param") or "")
    if response.status_code == 400 and isinstance(value, float) and value.is_integer():
        return  # JSON Schema's integer takes 1.0; the server asks for 1
    raise AssertionError(f"a valid request refused: {response.status_code} {error}")


CHECKS = [
    valid_requests_are_answered,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

# (a 503 is what loading is: not_a_server_error is left out there, the status is asserted)
LOADING_CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shortened(case: Case) -> None:
    """A valid max_tokens that fits the context would generate that many tokens (hundreds,
    at ~100 tokens/s on two cores): cut it to SHORT. Larger ones stay (a 400, at once)."""
    body = case.body
    if not isinstance(body, dict):
        return
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and SHORT < value <= CTX:
            body[name] = SHORT


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_server_keeps_to_its_openapi_description(case: Case) -> None:
    _shortened(case)
    case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=TIMEOUT_S)


# ----- while the model loads -----------------------------------------------------------------


@pytest.fixture
def loading_url(model_path: Path, tmp_path: Path) -> Iterator[str]:
    """A server that listens before its model is loaded (what `tui-infer serve` does)."""
    store = PredictionStore(tmp_path / "store.sqlite3")
    server = Server(None, model_path, store, Settings())
    port = free_port()
    config = uvicorn_config(build_app(server), "127.0.0.1", port)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        store.close()


@pytest.mark.parametrize(
    ("path", "method", "body", "status"),
    [
        ("/health", "GET", None, 503),
        ("/v1/models", "GET", None, 503),
        ("/v1/chat/completions", "POST", {"messages": [{"role": "user", "content": "Hi"}]}, 503),
        ("/v1/completions", "POST", {"prompt": "Hi"}, 503),
        ("/metrics", "GET", None, 200),
    ],
)
def test_the_loading_state_keeps_to_the_description(
    loading_url: str, path: str, method: str, body: dict[str, Any] | None, status: int
) -> None:
    described = schemathesis.openapi.from_dict(document())
    case = described[path][method].Case(body=body) if body else described[path][method].Case()
    response = case.call_and_validate(base_url=loading_url, checks=LOADING_CHECKS, timeout=30)
    assert response.status_code == status
