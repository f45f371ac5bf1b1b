"""A request body as the request path's objects, or an OpenAI-shaped error naming the field."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from starlette.responses import JSONResponse

from tui_infer.core.inference.grammar import response_format
from tui_infer.core.inference.stops import MAX_STOPS
from tui_infer.core.inference.types import Message, SamplingParams

MAX_BODY = 1 << 20  # bytes: a chat request larger than this is refused before parsing
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An OpenAI-shaped error: status, message, type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.code = code or kind
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    sampling: SamplingParams  # with the stop strings, and `logprobs` when asked
    stream: bool
    include_usage: bool
    max_tokens: int | None = None  # as the request asked it (None: up to the window's end)


@dataclass(frozen=True)
class CompletionRequest:
    """A /v1/completions body: a plain prompt, no template."""

    prompt: str
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    max_tokens: int | None  # as asked; None: OpenAI's default of 16 (in `sampling`)
    logprobs: int | None  # the legacy field: how many alternatives per token (0..5)


MAX_TOKENS = 1 << 20  # a request's bound; the context is the one that matters (a 400)
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


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


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not 1 <= len(stops) <= MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise bad(
            f"'stop' must be a non-empty string or a list of 1 to {MAX_STOPS} non-empty strings",
            "stop",
        )
    return tuple(stops)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false", name)
    return value


def _model(body: dict[str, Any], model_name: str) -> None:
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


def _common(
    body: dict[str, Any], defaults: SamplingParams, max_tokens: int | None
) -> tuple[SamplingParams, bool, bool]:
    """The sampling fields both routes share, stream, include_usage."""
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    sampling = replace(defaults, stop=_stop(body))
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    if temperature is not None:
        sampling = replace(sampling, temperature=temperature)
    if top_p:
        sampling = replace(sampling, top_p=top_p)
    if seed is not None:
        sampling = replace(sampling, seed=seed & 0x7FFFFFFF)
    return sampling, stream, _flag(options, "include_usage")


def parse_chat(body: Any, defaults: SamplingParams, model_name: str) -> ChatRequest:
    """A /v1/chat/completions body as the request path's objects, or an ApiError that
    names the field. Fields a request omits take the configured defaults, as in `run`."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    _model(body, model_name)
    if body.get("n", 1) != 1:
        raise bad("only n = 1 is supported", "n")
    for unsupported in ("tools", "functions"):
        if body.get(unsupported):
            raise bad(f"'{unsupported}' is not supported yet", unsupported)
    try:  # structured output: {"type": "json_object"} or {"type": "json_schema", ...}
        structured = response_format(body.get("response_format"))
    except ValueError as exc:
        raise bad(str(exc), "response_format") from None
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
    newer = _integer(body, "max_completion_tokens", 1, MAX_TOKENS)
    older = _integer(body, "max_tokens", 1, MAX_TOKENS)  # checked even when the newer wins
    max_tokens = older if newer is None else newer
    sampling, stream, include_usage = _common(body, defaults, max_tokens)
    if structured:
        sampling = replace(sampling, **structured)
    top = _integer(body, "top_logprobs", 0, 20)
    if _flag(body, "logprobs"):
        sampling = replace(sampling, logprobs=top or 0)
    elif top is not None:
        raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return ChatRequest(tuple(messages), sampling, stream, include_usage, max_tokens)


def parse_completion(body: Any, defaults: SamplingParams, model_name: str) -> CompletionRequest:
    """A /v1/completions body (OpenAI's legacy completions), or an ApiError naming the
    field. `max_tokens` defaults to 16 as there; the other sampling fields a request omits
    take the configured defaults."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    _model(body, model_name)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("'prompt' must be a string (or a list holding exactly one string)", "prompt")
    if body.get("n", 1) != 1:
        raise bad("only n = 1 is supported", "n")
    if body.get("best_of", 1) not in (None, 1):
        raise bad("only best_of = 1 is supported", "best_of")
    if _flag(body, "echo"):
        raise bad("'echo' is not supported", "echo")
    if body.get("suffix"):
        raise bad("'suffix' is not supported (no insertion)", "suffix")
    max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS)
    asked = max_tokens
    sampling, stream, include_usage = _common(
        body, defaults, COMPLETIONS_MAX_TOKENS if max_tokens is None else max_tokens
    )
    logprobs = _integer(body, "logprobs", 0, 5)
    if logprobs is not None:
        sampling = replace(sampling, logprobs=logprobs)
    return CompletionRequest(prompt, sampling, stream, include_usage, asked, logprobs)
