"""A request body as the request path's objects, or an OpenAI-shaped error naming the field."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from starlette.responses import JSONResponse

from tui_infer.core.inference.types import Message, SamplingParams

MAX_BODY = 1 << 20  # bytes: a chat request larger than this is refused before parsing
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An OpenAI-shaped error: status, message, type, param, code."""

    def __init__(
        self, status: int, message: str, kind: str, param: str | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.code = code or kind

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    sampling: SamplingParams
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad(f"'{name}' must be a number from {lo:g} to {hi:g}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(f"'{name}' must be an integer from {lo} to {hi}", name)
    return value


def parse_chat(body: Any, defaults: SamplingParams, model_name: str) -> ChatRequest:
    """A /v1/chat/completions body as the request path's objects, or an ApiError that
    names the field. Fields a request omits take the configured defaults, as in `run`."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    model = body.get("model")
    if model not in (None, "", "default", model_name):
        raise ApiError(
            404,
            f"the model '{model}' is not loaded; this server serves '{model_name}' "
            "(or say 'default')",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    if body.get("n", 1) != 1:
        raise bad("only n = 1 is supported", "n")
    for unsupported in ("tools", "functions", "response_format"):
        if body.get(unsupported):
            raise bad(f"'{unsupported}' is not supported yet", unsupported)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty list", "messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}", "messages")
        content = m.get("content")
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be text (images are not supported)", "messages")
        messages.append(Message(m["role"], content))
    max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 1 << 20)
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    sampling = defaults
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    if temperature is not None:
        sampling = replace(sampling, temperature=temperature)
    if top_p:
        sampling = replace(sampling, top_p=top_p)
    if seed is not None:
        sampling = replace(sampling, seed=seed & 0x7FFFFFFF)
    return ChatRequest(tuple(messages), sampling, stream, bool(options.get("include_usage")))
