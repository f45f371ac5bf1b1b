"""The ASGI application: OpenAI's chat and completions routes, chat answered from the
prediction store first.

Starlette rather than FastAPI: the request body is turned into the request path's own
objects by hand (`parse_chat`, `parse_completion`), with OpenAI-shaped errors naming the
field, so a schema layer (and pydantic) would add nothing but a second description of the
same request.

A chat request follows the one path: parse -> `prepare` (system prompt, normalization, the
key of exactly what the model is given, stop strings included) -> `lookup` (a published
prediction answers at once, marked `"x_tui_infer": {"source": "store", ...}` and the header
`x-tui-infer-source: store`, with `x-tui-infer-run`) -> otherwise the loaded model's
scheduler, as one more sequence of its batched decoder (several requests decode together;
a full queue is a 429 with Retry-After). A client that goes away cancels its sequence.
A plain completion (/v1/completions) and a chat request asking for log probabilities go to
the model directly (the store keeps neither). Before any work, a request whose prompt and
explicit max_tokens exceed the window is a 400 `context_length_exceeded`.

The server may listen before its model is loaded (`Server(None, ...)`, then `attach`):
/health says "loading" (503) and the model's routes answer 503 `model_loading` until then.
Every request's route, status and time go to the metrics hooks through `_HttpMetrics`, a
pure ASGI middleware (BaseHTTPMiddleware would buffer streams and hide disconnects).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, cast

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tui_infer.core import request_path as rp
from tui_infer.core.config import Settings
from tui_infer.core.errors import ContextOverflowError, TuiInferError
from tui_infer.core.inference.types import (
    ChatEngine,
    GenerationStats,
    ReplyStreamLike,
    SamplingParams,
    TokenLogprob,
)
from tui_infer.core.static.store import Prediction, PredictionStore
from tui_infer.server.metrics import RequestRecord, SchedulerFigures, ServerMetrics
from tui_infer.server.openapi import openapi_json
from tui_infer.server.relay import Relay
from tui_infer.server.requests import (
    MAX_BODY,
    ApiError,
    ChatRequest,
    CompletionRequest,
    bad,
    parse_chat,
    parse_completion,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RETRY_AFTER = {"Retry-After": "1"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format


class _Completer(Protocol):
    """What /v1/completions needs beyond ChatEngine (Engine has it)."""

    n_ctx: int

    def tokenize_prompt(self, text: str) -> list[int]: ...

    def complete(
        self, prompt: list[int], sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> ReplyStreamLike: ...


class Server:
    """What the routes share: the loaded model (None while it loads), its file, the store,
    the settings, the metrics."""

    def __init__(
        self,
        engine: ChatEngine | None,
        model_path: Path,
        store: PredictionStore,
        settings: Settings,
        api_key: str | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.engine: ChatEngine | None = None
        self.data_dir = data_dir  # its model library is listed by /v1/models
        self.target: rp.LoadedModel | None = None
        self.model_path = model_path
        self.store = store
        self.settings = settings
        self.api_key = api_key
        self.name = model_path.name
        self._store_lock = threading.Lock()  # one SQLite connection, many request threads
        self.metrics = ServerMetrics(self._figures, model=self.name)
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: ChatEngine) -> None:
        """The model is loaded: from now on the server is ready."""
        self.target = rp.LoadedModel(self.model_path, engine.template.source)
        self.engine = engine

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def _figures(self) -> SchedulerFigures | None:
        scheduler = getattr(self.engine, "scheduler", None)
        if scheduler is None or self.engine is None:
            return None
        queued, active, kv_tokens = scheduler.figures()
        parallel = scheduler.parallel
        return SchedulerFigures(queued, active, parallel, kv_tokens, self.engine.n_ctx * parallel)

    # ----- routes ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """{"status": "ready"|"loading", "model": NAME}; 503 while the model loads."""
        if not self.ready:
            body = {"status": "loading", "model": self.name}
            return JSONResponse(body, status_code=503, headers=RETRY_AFTER)
        return JSONResponse({"status": "ready", "model": self.name})

    async def metrics_text(self, request: Request) -> Response:
        """Prometheus text format (answers while the model loads too)."""
        if (refused := self._refuse(request)) is not None:
            return refused
        data = await anyio.to_thread.run_sync(self.metrics.prometheus)
        return Response(data, media_type=METRICS_TYPE)

    async def models(self, request: Request) -> Response:
        if (refused := self._gate(request)) is not None:
            return refused
        loaded = {"id": self.name, "object": "model", "created": 0, "owned_by": "tui-infer"}
        others = await anyio.to_thread.run_sync(self._library)
        return JSONResponse({"object": "list", "data": [{**loaded, "loaded": True}, *others]})

    def _library(self) -> list[dict[str, Any]]:
        """The library's other models (a request naming one gets 404 model_not_found until
        loading on demand exists); none when the library cannot be read."""
        if self.data_dir is None:
            return []
        from tui_infer.core.models.library import ModelLibrary

        try:
            with ModelLibrary(self.data_dir) as library:
                entries = library.entries()
        except (TuiInferError, OSError, sqlite3.Error):
            return []
        loaded = os.path.realpath(self.model_path)
        return [
            {
                "id": e.name,
                "object": "model",
                "created": int(e.added_at),
                "owned_by": e.repo.split("/")[0] if e.repo else "tui-infer",
                "loaded": False,
            }
            for e in entries
            if os.path.realpath(e.path) != loaded and e.status == "ok"
        ]

    async def chat(self, request: Request) -> Response:
        """OpenAI's chat completions: the store first (stop strings are part of the key),
        then the model. A request asking for `logprobs` is answered live (the store keeps
        no log probabilities): under --serve store it is a 400."""
        t0 = time.perf_counter()
        if (refused := self._gate(request)) is not None:
            return self._errored(CHAT, "", t0, refused)
        head = ""
        try:
            body = await self._body(request)
            chat = parse_chat(body, SamplingParams.from_settings(self.settings), self.name)
            head = _head(chat)
            if chat.sampling.logprobs is not None:
                if self.settings.serve == "store":
                    raise bad(
                        "logprobs are computed live only and this server answers from the "
                        "store only (--serve store); leave logprobs out",
                        "logprobs",
                    )
                prepared = await anyio.to_thread.run_sync(self._prepare, chat)
                hit, why = None, None
            else:
                prepared, hit, why = await anyio.to_thread.run_sync(self._look_up, chat)
        except ApiError as exc:
            return self._errored(CHAT, head, t0, exc.response())
        if hit is not None:
            return self._from_store(chat, hit, head, t0)
        if self.settings.serve == "store":
            note = f" ({why})" if why else ""
            return self._errored(
                CHAT,
                head,
                t0,
                ApiError(
                    404,
                    f"not precomputed: the prediction store holds no published answer for "
                    f"this request{note}",
                    "not_found_error",
                    code="not_precomputed",
                ).response(),
            )
        engine = self.engine
        assert engine is not None
        messages = list(prepared.messages)

        def start(cancel: threading.Event) -> ReplyStreamLike:
            if chat.max_tokens is not None:
                self._check_context(engine.count_tokens(messages), chat.max_tokens)
            return engine.chat(messages, prepared.sampling, cancel)

        shape = _ChatShape(self.name, chat.sampling.logprobs is not None)
        return await self._live(
            request, CHAT, head, t0, start, shape, chat.stream, chat.include_usage
        )

    async def completions(self, request: Request) -> Response:
        """OpenAI's legacy completions: a plain prompt, no chat template, with BOS when the
        vocabulary adds one. Answered live only (the store keeps chat replies): header
        `x-tui-infer-source: live`; under --serve store a 404 `not_precomputed`."""
        t0 = time.perf_counter()
        if (refused := self._gate(request)) is not None:
            return self._errored(COMPLETIONS, "", t0, refused)
        head = ""
        try:
            body = await self._body(request)
            req = parse_completion(body, SamplingParams.from_settings(self.settings), self.name)
            head = req.prompt[:80]
            if self.settings.serve == "store":
                raise ApiError(
                    404,
                    "not precomputed: plain completions are answered live only and this "
                    "server answers from the store only (--serve store)",
                    "not_found_error",
                    code="not_precomputed",
                )
            if not callable(getattr(self.engine, "complete", None)):
                raise bad("this model answers no plain completions", "prompt")
        except ApiError as exc:
            return self._errored(COMPLETIONS, head, t0, exc.response())
        engine = cast(_Completer, self.engine)

        def start(cancel: threading.Event) -> ReplyStreamLike:
            tokens = engine.tokenize_prompt(req.prompt)
            if req.max_tokens is not None:
                self._check_context(len(tokens), req.max_tokens)
            return engine.complete(tokens, req.sampling, cancel)

        shape = _TextShape(self.name, req)
        return await self._live(
            request, COMPLETIONS, head, t0, start, shape, req.stream, req.include_usage
        )

    # ----- the request path -----------------------------------------------------------------

    def _refuse(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            return ApiError(
                401, "a valid API key is required (Authorization: Bearer ...)",
                "authentication_error", code="invalid_api_key",
            ).response()  # fmt: skip
        return None

    def _gate(self, request: Request) -> Response | None:
        """The API key, then the model: 503 model_loading until it is attached."""
        if (refused := self._refuse(request)) is not None:
            return refused
        if not self.ready:
            return ApiError(
                503,
                f"the model {self.name} is still loading; retry in a moment (GET /health "
                "says ready once it is)",
                "server_error",
                code="model_loading",
                headers=RETRY_AFTER,
            ).response()
        return None

    async def _body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise ApiError(
                413, f"the body is larger than {MAX_BODY} bytes", "invalid_request_error"
            )
        data = bytearray()
        try:
            async for chunk in request.stream():
                data += chunk
                if len(data) > MAX_BODY:
                    raise ApiError(
                        413, f"the body is larger than {MAX_BODY} bytes", "invalid_request_error"
                    )
        except ClientDisconnect:  # half a body, then gone: nobody reads the answer
            raise bad("the client went away before the end of its body") from None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad(f"the body is not JSON ({exc})") from None

    def _prepare(self, chat: ChatRequest) -> rp.PreparedRequest:
        assert self.target is not None
        with self._store_lock:
            return rp.prepare(
                self.store, self.target, chat.messages, chat.sampling, system=self.settings.system
            )

    def _look_up(
        self, chat: ChatRequest
    ) -> tuple[rp.PreparedRequest, Prediction | None, str | None]:
        assert self.target is not None
        with self._store_lock:
            prepared = rp.prepare(
                self.store, self.target, chat.messages, chat.sampling, system=self.settings.system
            )
            if self.settings.serve == "live":
                return prepared, None, None
            hit = rp.lookup(self.store, prepared, mode=self.settings.serve)
            why = rp.explain_miss(self.store, prepared) if hit is None else None
        self.metrics.store(hit is not None)
        return prepared, hit, why

    def _check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        assert self.engine is not None
        n_ctx = self.engine.n_ctx
        if prompt_tokens + max_tokens > n_ctx:
            raise ApiError(
                400,
                f"the prompt takes {prompt_tokens} tokens and max_tokens asks {max_tokens}: "
                f"{prompt_tokens + max_tokens} tokens, more than the context window of "
                f"{n_ctx}; lower max_tokens (or leave it out: the reply then stops at the "
                "window's end), shorten the prompt, or serve with a larger --ctx",
                "invalid_request_error",
                "max_tokens",
                "context_length_exceeded",
            )

    # ----- metrics --------------------------------------------------------------------------

    def _record(
        self,
        route: str,
        head: str,
        source: str,
        status: int,
        t0: float,
        stats: GenerationStats | None = None,
        tokens: tuple[int, int] = (0, 0),
    ) -> None:
        prompt, completion = tokens
        ttft = None
        if stats is not None:
            prompt, completion = stats.prompt_tokens, stats.generated_tokens
            ttft = stats.ttft_s if stats.generated_tokens else None
        self.metrics.record(
            RequestRecord(
                at=time.time(),
                route=route,
                prompt_head=head,
                source=source,
                status=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                seconds=time.perf_counter() - t0,
                ttft_s=ttft,
            )
        )

    def _errored(self, route: str, head: str, t0: float, response: Response) -> Response:
        self._record(route, head, "error", response.status_code, t0)
        return response

    # ----- answers --------------------------------------------------------------------------

    def _from_store(self, chat: ChatRequest, hit: Prediction, head: str, t0: float) -> Response:
        usage = _usage(hit.prompt_tokens, hit.generated_tokens)
        extra = {"source": "store", "run": hit.run_id, "published_at": hit.published_at}
        headers = {"x-tui-infer-source": "store", "x-tui-infer-run": str(hit.run_id)}
        finish = "length" if hit.finish_reason == "length" else "stop"
        shape = _ChatShape(self.name, False)
        tokens = (hit.prompt_tokens, hit.generated_tokens)
        if not chat.stream:
            self._record(CHAT, head, "store", 200, t0, tokens=tokens)
            body = shape.whole(hit.output, finish, usage, [], extra)
            return JSONResponse(body, headers=headers)

        async def events() -> AsyncIterator[str]:
            cid = shape.new_id()
            try:
                if (first := shape.opening(cid)) is not None:
                    yield _sse(first)
                yield _sse(shape.piece(cid, hit.output, ()))
                yield _sse(shape.closing(cid, finish, extra))
                if chat.include_usage:
                    yield _sse(shape.usage(cid, usage))
                yield "data: [DONE]\n\n"
            finally:
                self._record(CHAT, head, "store", 200, t0, tokens=tokens)

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _live(
        self,
        request: Request,
        route: str,
        head: str,
        t0: float,
        start: Callable[[threading.Event], ReplyStreamLike],
        shape: _Shape,
        streamed: bool,
        include_usage: bool,
    ) -> Response:
        cancel = threading.Event()
        try:
            stream = await anyio.to_thread.run_sync(start, cancel)
        except ApiError as exc:
            return self._errored(route, head, t0, exc.response())
        except ContextOverflowError as exc:
            error = ApiError(400, str(exc), "invalid_request_error", code="context_length_exceeded")
            return self._errored(route, head, t0, error.response())
        except TuiInferError as exc:  # a full queue, an empty prompt, a template's bounds
            if type(exc).__name__ == "SchedulerBusyError":
                busy = ApiError(429, str(exc), "rate_limit_error", headers=RETRY_AFTER)
                return self._errored(route, head, t0, busy.response())
            return self._errored(route, head, t0, bad(str(exc)).response())

        def finish_and_usage() -> tuple[str, dict[str, int]]:
            s = stream.stats
            if s is None:
                return "stop", _usage(0, 0)
            finish = "length" if s.finish_reason == "length" else "stop"
            return finish, _usage(s.prompt_tokens, s.generated_tokens)

        def ended(status: int) -> None:
            if stream.stats is not None:
                self.metrics.live(stream.stats)
            self._record(route, head, "live", status, t0, stream.stats)

        extra = {"source": "live"}
        headers = {"x-tui-infer-source": "live"}

        async def watch_disconnect() -> None:
            # the body is read: the next message is the client going away
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancel.set()

        if not streamed:
            pieces: list[str] = []
            logprobs: list[TokenLogprob] = []
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_disconnect)  # a client that leaves frees its sequence
                    async for chunks in Relay(stream):
                        for chunk in chunks:
                            pieces.append(chunk.text)
                            logprobs.extend(chunk.logprobs)
                    tg.cancel_scope.cancel()  # the reply is whole: stop watching
            finally:
                cancel.set()  # (a no-op once the reply ended)
            finish, usage = finish_and_usage()
            gone = stream.stats is not None and stream.stats.finish_reason == "cancelled"
            ended(499 if gone else 200)  # 499: the client went away before the answer
            body = shape.whole("".join(pieces), finish, usage, logprobs, extra)
            return JSONResponse(body, headers=headers)

        async def events() -> AsyncIterator[str]:
            cid = shape.new_id()
            status = 499  # the client went away before the end
            try:
                if (first := shape.opening(cid)) is not None:
                    yield _sse(first)
                frame = _frame(shape, cid)
                async for chunks in Relay(stream):
                    # every chunk that has arrived, in one write
                    if frame is not None:
                        yield "".join(frame(c.text) for c in chunks)
                    else:
                        yield "".join(_sse(shape.piece(cid, c.text, c.logprobs)) for c in chunks)
                finish, usage = finish_and_usage()
                yield _sse(shape.closing(cid, finish, extra))
                if include_usage:
                    yield _sse(shape.usage(cid, usage))
                yield "data: [DONE]\n\n"
                status = 200
            finally:
                cancel.set()  # a client that went away mid-reply frees its sequence
                ended(status)

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# ----- the shapes of an answer ---------------------------------------------------------------


class _Shape(Protocol):
    """How a route writes an answer: whole, or as the chunks of a stream."""

    def new_id(self) -> str: ...

    def whole(
        self,
        text: str,
        finish: str,
        usage: dict[str, int],
        logprobs: list[TokenLogprob],
        extra: dict[str, Any],
    ) -> dict[str, Any]: ...

    def opening(self, cid: str) -> dict[str, Any] | None: ...

    def piece(self, cid: str, text: str, logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]: ...

    def closing(self, cid: str, finish: str, extra: dict[str, Any]) -> dict[str, Any]: ...

    def usage(self, cid: str, usage: dict[str, int]) -> dict[str, Any]: ...


class _ChatShape:
    """chat.completion and chat.completion.chunk; logprobs as {"content": [...]}."""

    def __init__(self, model: str, logprobs: bool) -> None:
        self.model = model
        self.logprobs = logprobs

    def new_id(self) -> str:
        return f"chatcmpl-{uuid.uuid4().hex}"

    def _logprobs(self, entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> Any:
        if not self.logprobs:
            return None
        return {"content": [_chat_logprob(e) for e in entries]}

    def whole(
        self,
        text: str,
        finish: str,
        usage: dict[str, int],
        logprobs: list[TokenLogprob],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "id": self.new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": self._logprobs(logprobs),
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "x_tui_infer": extra,
        }

    def _chunk(self, cid: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
        }

    def opening(self, cid: str) -> dict[str, Any] | None:
        delta = {"role": "assistant", "content": ""}
        return self._chunk(cid, [{"index": 0, "delta": delta, "finish_reason": None}])

    def piece(self, cid: str, text: str, logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        if self.logprobs:
            choice["logprobs"] = self._logprobs(logprobs)
        return self._chunk(cid, [choice])

    def closing(self, cid: str, finish: str, extra: dict[str, Any]) -> dict[str, Any]:
        out = self._chunk(cid, [{"index": 0, "delta": {}, "finish_reason": finish}])
        out["x_tui_infer"] = extra
        return out

    def usage(self, cid: str, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._chunk(cid, []), "usage": usage}


class _TextShape:
    """text_completion (whole and streamed alike); logprobs in the legacy shape, text_offset
    counted from the prompt's start as OpenAI does."""

    def __init__(self, model: str, req: CompletionRequest) -> None:
        self.model = model
        self.logprobs = req.logprobs is not None
        self.base = len(req.prompt)

    def new_id(self) -> str:
        return f"cmpl-{uuid.uuid4().hex}"

    def _legacy(self, entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> Any:
        if not self.logprobs:
            return None
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": [self.base + e.offset for e in entries],
        }

    def _object(self, cid: str, text: str, finish: str | None, logprobs: Any) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
        }

    def whole(
        self,
        text: str,
        finish: str,
        usage: dict[str, int],
        logprobs: list[TokenLogprob],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        out = self._object(self.new_id(), text, finish, self._legacy(logprobs))
        return {**out, "usage": usage, "x_tui_infer": extra}

    def opening(self, cid: str) -> dict[str, Any] | None:
        return None

    def piece(self, cid: str, text: str, logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
        return self._object(cid, text, None, self._legacy(logprobs))

    def closing(self, cid: str, finish: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {**self._object(cid, "", finish, None), "x_tui_infer": extra}

    def usage(self, cid: str, usage: dict[str, int]) -> dict[str, Any]:
        out = self._object(cid, "", None, None)
        return {**out, "choices": [], "usage": usage}


def _chat_logprob(e: TokenLogprob) -> dict[str, Any]:
    return {
        "token": e.token,
        "logprob": e.logprob,
        "bytes": list(e.raw),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.raw)} for t in e.top
        ],
    }


def _head(chat: ChatRequest) -> str:
    users = [m.content for m in chat.messages if m.role == "user"]
    return (users[-1] if users else chat.messages[-1].content)[:80]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


_HOLE = "\x00piece\x00"
_HOLE_JSON = json.dumps(_HOLE)


def _frame(shape: _Shape, cid: str) -> Callable[[str], str] | None:
    """The SSE event of a text piece without log probabilities, made from the chunk's JSON
    cut once around its text (a json.dumps of the whole chunk per token was measurable on
    2 cores at 8 streams). None when log probabilities are asked for."""
    if getattr(shape, "logprobs", False):
        return None
    whole = _sse(shape.piece(cid, _HOLE, ()))
    at = whole.index(_HOLE_JSON)
    head, tail = whole[:at], whole[at + len(_HOLE_JSON) :]
    dumps = json.dumps
    return lambda text: head + dumps(text, ensure_ascii=False) + tail


# ----- the application -----------------------------------------------------------------------


class _HttpMetrics:
    """Pure ASGI middleware: every HTTP request's route template ("other" for an unknown
    path), method, status and seconds (a stream's until its end) to `metrics.http`."""

    def __init__(self, app: ASGIApp, server: Server, routes: list[Route]) -> None:
        self.app = app
        self.server = server
        self.routes = routes

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return route.path
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - t0
            method = str(scope.get("method", "GET"))
            self.server.metrics.http(self._route(scope), method, status, seconds)


def build_app(server: Server, cors: str | None = None) -> Starlette:
    """The ASGI app; `cors`: an origin allowed to call it from a browser (off by default)."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return ApiError(404, f"no route {request.url.path}", "invalid_request_error").response()

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route(CHAT, server.chat, methods=["POST"]),
        Route(COMPLETIONS, server.completions, methods=["POST"]),
    ]
    middleware = [Middleware(_HttpMetrics, server=server, routes=routes)]
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[cors],
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type"],
            )
        )
    return Starlette(routes=routes, exception_handlers={404: not_found}, middleware=middleware)
