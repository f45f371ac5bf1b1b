"""The ASGI application: OpenAI's chat route, answered from the prediction store first.

Starlette rather than FastAPI: the request body is turned into the request path's own
objects by hand (`parse_chat`), with OpenAI-shaped errors naming the field, so a schema
layer (and pydantic) would add nothing but a second description of the same request.

A request follows the one path: parse -> `prepare` (system prompt, normalization, the key
of exactly what the model is given) -> `lookup` (a published prediction answers at once,
marked `"x_tui_infer": {"source": "store", ...}`) -> otherwise the loaded model's
scheduler, as one more sequence of its batched decoder (several requests decode together;
a full queue is a 429). A client that goes away cancels its sequence.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tui_infer.core import request_path as rp
from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import ChatEngine, SamplingParams
from tui_infer.core.static.store import Prediction, PredictionStore
from tui_infer.server.metrics import SchedulerFigures, ServerMetrics
from tui_infer.server.openapi import openapi_json
from tui_infer.server.requests import MAX_BODY, ApiError, ChatRequest, bad, parse_chat


class Server:
    """What the routes share: the loaded model, its file, the store, the settings."""

    def __init__(
        self,
        engine: ChatEngine,
        model_path: Path,
        store: PredictionStore,
        settings: Settings,
        api_key: str | None = None,
    ) -> None:
        self.engine = engine
        self.model_path = model_path
        self.store = store
        self.settings = settings
        self.api_key = api_key
        self.name = model_path.name
        self.target = rp.LoadedModel(model_path, engine.template.source)
        self._store_lock = threading.Lock()  # one SQLite connection, many request threads
        self.metrics = ServerMetrics(self._figures)

    def _figures(self) -> SchedulerFigures | None:
        scheduler = getattr(self.engine, "scheduler", None)
        if scheduler is None:
            return None
        queued, active, kv_tokens = scheduler.figures()
        parallel = scheduler.parallel
        return SchedulerFigures(queued, active, parallel, kv_tokens, self.engine.n_ctx * parallel)

    # ----- routes ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.name})

    async def models(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        data = {"id": self.name, "object": "model", "created": 0, "owned_by": "tui-infer"}
        return JSONResponse({"object": "list", "data": [data]})

    async def chat(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        try:
            body = await self._body(request)
            chat = parse_chat(body, SamplingParams.from_settings(self.settings), self.name)
            prepared, hit, why = await anyio.to_thread.run_sync(self._look_up, chat)
        except ApiError as exc:
            return exc.response()
        if hit is not None:
            return self._from_store(chat, hit)
        if self.settings.serve == "store":
            note = f" ({why})" if why else ""
            return ApiError(
                404,
                f"not precomputed: the prediction store holds no published answer for this "
                f"request{note}",
                "not_found_error",
                code="not_precomputed",
            ).response()
        return await self._live(chat, prepared)

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

    async def _body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise ApiError(
                413, f"the body is larger than {MAX_BODY} bytes", "invalid_request_error"
            )
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise ApiError(
                    413, f"the body is larger than {MAX_BODY} bytes", "invalid_request_error"
                )
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad(f"the body is not JSON ({exc})") from None

    def _look_up(
        self, chat: ChatRequest
    ) -> tuple[rp.PreparedRequest, Prediction | None, str | None]:
        with self._store_lock:
            prepared = rp.prepare(
                self.store, self.target, chat.messages, chat.sampling, system=self.settings.system
            )
            if self.settings.serve == "live":
                return prepared, None, None
            hit = rp.lookup(self.store, prepared)
            why = rp.explain_miss(self.store, prepared) if hit is None else None
        return prepared, hit, why

    # ----- answers --------------------------------------------------------------------------

    def _completion(
        self, text: str, finish: str, usage: dict[str, int], extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "x_tui_infer": extra,
        }

    def _from_store(self, chat: ChatRequest, hit: Prediction) -> Response:
        usage = _usage(hit.prompt_tokens, hit.generated_tokens)
        extra = {"source": "store", "run": hit.run_id, "published_at": hit.published_at}
        finish = "length" if hit.finish_reason == "length" else "stop"
        if not chat.stream:
            return JSONResponse(self._completion(hit.output, finish, usage, extra))

        async def events() -> AsyncIterator[str]:
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            yield _sse(self._chunk(cid, {"role": "assistant", "content": hit.output}, None))
            yield _sse(self._chunk(cid, {}, finish, extra=extra))
            if chat.include_usage:
                yield _sse({**self._chunk(cid, None, None), "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def _chunk(
        self,
        cid: str,
        delta: dict[str, str] | None,
        finish: str | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
        }
        if extra:
            out["x_tui_infer"] = extra
        return out

    async def _live(self, chat: ChatRequest, prepared: rp.PreparedRequest) -> Response:
        cancel = threading.Event()
        try:
            stream = self.engine.chat(list(prepared.messages), prepared.sampling, cancel)
        except TuiInferError as exc:  # too long for the context, a template past its bounds
            status = 429 if type(exc).__name__ == "SchedulerBusyError" else 400
            kind = "rate_limit_error" if status == 429 else "invalid_request_error"
            return ApiError(status, str(exc), kind).response()
        send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=1024)

        def pump() -> None:
            # reads the scheduler's chunks on a worker thread; ends with the stats
            try:
                for chunk in stream:
                    if chunk.text:
                        anyio.from_thread.run(send.send, chunk.text)
            except anyio.BrokenResourceError:
                cancel.set()  # the client went away
            finally:
                with contextlib.suppress(RuntimeError):
                    anyio.from_thread.run(send.aclose)

        async def run_pump() -> None:
            await anyio.to_thread.run_sync(pump, abandon_on_cancel=True)

        def finish_and_usage() -> tuple[str, dict[str, int]]:
            s = stream.stats
            if s is None:
                return "stop", _usage(0, 0)
            finish = "length" if s.finish_reason == "length" else "stop"
            return finish, _usage(s.prompt_tokens, s.generated_tokens)

        extra = {"source": "live"}
        if not chat.stream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_pump)
                pieces = [piece async for piece in receive]
            finish, usage = finish_and_usage()
            return JSONResponse(self._completion("".join(pieces), finish, usage, extra))

        async def events() -> AsyncIterator[str]:
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_pump)
                    yield _sse(self._chunk(cid, {"role": "assistant", "content": ""}, None))
                    async for piece in receive:
                        yield _sse(self._chunk(cid, {"content": piece}, None))
                finish, usage = finish_and_usage()
                yield _sse(self._chunk(cid, {}, finish, extra=extra))
                if chat.include_usage:
                    yield _sse({**self._chunk(cid, None, None), "usage": usage})
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # a client that went away mid-reply frees its sequence
                receive.close()

        return StreamingResponse(events(), media_type="text/event-stream")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def build_app(server: Server, cors: str | None = None) -> Starlette:
    """The ASGI app; `cors`: an origin allowed to call it from a browser (off by default)."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return ApiError(404, f"no route {request.url.path}", "invalid_request_error").response()

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
    ]
    middleware = []
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
