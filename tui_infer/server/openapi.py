"""The server's OpenAPI 3.1 description, served at GET /openapi.json.

It describes the server as it behaves, not OpenAI's whole API: the request fields and bounds
are exactly what `requests.parse_chat` and `parse_completion` accept (a body outside them is
a 400 naming the field), and every answer's status, headers, content type and shape
(each server-sent event's too) is what the routes send. That is what makes it worth
testing: tests/test_serve_schema.py runs schemathesis over this document against a real
server, so a route that drifts from it (or it from the route) fails there.

A plain function returning a dict: the server has no schema layer to derive it from (see
app.py on why Starlette without pydantic), and the document is small enough to read whole.
Fields a request may carry that are not listed here (OpenAI's `user`, `frequency_penalty`,
...) are accepted and ignored, as OpenAI clients send them; `tools` and `functions` with a
value are a 400 until supported. `response_format` (json_object, json_schema) constrains the
reply with llama.cpp's grammar sampler; its shapes are checked by `requests.parse_chat` and
left out here (a schema generator would send arbitrary JSON schemas). What no schema can
say: a prompt plus `max_tokens` past the loaded context is a 400 `context_length_exceeded`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tui_infer import __version__
from tui_infer.core.inference.stops import MAX_STOPS
from tui_infer.server.requests import MAX_BODY, MAX_TOKENS

MAX_TOP_LOGPROBS = 20  # chat's top_logprobs
MAX_LEGACY_LOGPROBS = 5  # /v1/completions' logprobs
JSON = "application/json"
SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref("ErrorResponse")}},
    }
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

_SOURCE_HEADERS = {
    "x-tui-infer-source": {
        "description": "Where the answer came from: the prediction store or the live model.",
        "required": True,
        "schema": {"type": "string", "enum": ["store", "live"]},
    },
    "x-tui-infer-run": {
        "description": "A store hit only: the batch run that published the answer.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}

_UNAUTHORIZED = _error("The server has an API key and the request does not carry it.")
_LOADING = _error("The model is still loading (code `model_loading`).", _RETRY_AFTER)


def _generation_errors(not_found: str) -> dict[str, Any]:
    return {
        "400": _error(
            "The body is not JSON, a field has the wrong type or is out of bounds (`param` "
            "names it), a feature that is not supported yet, or the prompt plus `max_tokens` "
            "does not fit the context (code `context_length_exceeded`)."
        ),
        "401": _UNAUTHORIZED,
        "404": _error(not_found),
        "413": _error(f"The body is larger than {MAX_BODY} bytes."),
        "429": _error(
            "The queue of requests waiting for the model is full (`--queue`).", _RETRY_AFTER
        ),
        "503": _LOADING,
    }


# ----- request fields ---------------------------------------------------------------------

_COMMON: dict[str, Any] = {
    "model": {
        "type": ["string", "null"],
        "description": "Omitted, empty, `default`, or the loaded model's name (another "
        "name: 404 `model_not_found`).",
    },
    "max_tokens": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_TOKENS,
        "description": "Tokens to generate at most. Omitted: the configured default (chat), "
        "16 (completions).",
    },
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "seed": {
        "type": ["integer", "null"],
        "minimum": -(2**63),
        "maximum": 2**63 - 1,
        "description": "Sampling seed (its low 31 bits are used).",
    },
    "stream": {
        "type": ["boolean", "null"],
        "description": "Server-sent events: chunk objects, then `data: [DONE]`.",
    },
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": ["boolean", "null"]}},
        "description": "`include_usage`: a last chunk with `usage` and no choices.",
    },
    "n": {"const": 1, "description": "Only 1 is supported (another value, even null: 400)."},
    "stop": {
        "description": f"A string, or 1 to {MAX_STOPS} strings: the reply ends before the "
        "first one found (finish_reason `stop`); none of them may be empty.",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": MAX_STOPS,
            },
            {"type": "null"},
        ],
    },
}

# ----- answers ----------------------------------------------------------------------------

_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}

_TUI_INFER = {
    "type": "object",
    "description": "Where the answer came from (also the x-tui-infer-source header).",
    "required": ["source"],
    "properties": {
        "source": {"type": "string", "enum": ["store", "live"]},
        "run": {"type": "integer", "description": "A store hit: the run that published it."},
        "published_at": {"type": ["number", "null"], "description": "Unix time."},
    },
}

_FINISH = {"enum": ["stop", "length"]}
_BYTES = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}
_LOGPROB = {"type": "number", "maximum": 0}
_TOP_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {"token": {"type": "string"}, "logprob": _LOGPROB, "bytes": _BYTES},
}
_CHAT_LOGPROBS = _nullable(
    {
        "type": "object",
        "required": ["content"],
        "properties": {
            "content": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["token", "logprob", "bytes", "top_logprobs"],
                    "properties": {
                        "token": {"type": "string"},
                        "logprob": _LOGPROB,
                        "bytes": _BYTES,
                        "top_logprobs": {
                            "type": "array",
                            "maxItems": MAX_TOP_LOGPROBS,
                            "items": _TOP_LOGPROB,
                        },
                    },
                },
            }
        },
    }
)
_LEGACY_LOGPROBS = _nullable(
    {
        "type": "object",
        "required": ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
        "properties": {
            "tokens": {"type": "array", "items": {"type": "string"}},
            "token_logprobs": {"type": "array", "items": _LOGPROB},
            "top_logprobs": {
                "type": "array",
                "items": {"type": "object", "additionalProperties": _LOGPROB},
            },
            "text_offset": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        },
    }
)


def _answer(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage", "x_tui_infer"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": kind},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": choice},
            "usage": _USAGE,
            "x_tui_infer": _TUI_INFER,
        },
    }


def _chunk(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "description": "The last chunk before [DONE] carries x_tui_infer and the finish "
        "reason; with include_usage one more follows, with no choices and `usage`.",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": kind},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "maxItems": 1, "items": choice},
            "usage": _USAGE,
            "x_tui_infer": _TUI_INFER,
        },
    }


def _event(chunk_schema: str) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1: an event stream's `schema` describes one event):
    `data` is a chunk object as JSON, or, last, [DONE]."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "if": {"const": "[DONE]"},
                "else": {"contentMediaType": JSON, "contentSchema": _ref(chunk_schema)},
            }
        },
    }


def _schemas() -> dict[str, Any]:
    text_choice = {
        "type": "object",
        "required": ["index", "text", "logprobs", "finish_reason"],
        "properties": {
            "index": {"const": 0},
            "text": {"type": "string"},
            "logprobs": _LEGACY_LOGPROBS,
            "finish_reason": _nullable(_FINISH),
        },
    }
    return {
        "ErrorResponse": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string", "minLength": 1},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
        "Message": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"enum": ["system", "user", "assistant"]},
                "content": {"type": "string", "description": "Text only (an image: 400)."},
            },
        },
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
                **_COMMON,
                "max_completion_tokens": {
                    **_COMMON["max_tokens"],
                    "description": "As max_tokens (OpenAI's newer name); wins over it.",
                },
                "logprobs": {
                    "type": ["boolean", "null"],
                    "description": "Each generated token's log probability; answered by the "
                    "model, never the store (under --serve store: 400).",
                },
                "top_logprobs": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": MAX_TOP_LOGPROBS,
                    "description": "With `logprobs: true` only: this many alternatives of "
                    "each token.",
                },
            },
            # top_logprobs without logprobs: true is a 400
            "if": {
                "required": ["top_logprobs"],
                "properties": {"top_logprobs": {"type": "integer"}},
            },
            "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        },
        "ChatCompletion": _answer(
            "chat.completion",
            {
                "type": "object",
                "required": ["index", "message", "logprobs", "finish_reason"],
                "properties": {
                    "index": {"const": 0},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": "string"},
                        },
                    },
                    "logprobs": _CHAT_LOGPROBS,
                    "finish_reason": _FINISH,
                },
            },
        ),
        "ChatCompletionChunk": _chunk(
            "chat.completion.chunk",
            {
                "type": "object",
                "required": ["index", "delta", "finish_reason"],
                "properties": {
                    "index": {"const": 0},
                    "delta": {
                        "type": "object",
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": "string"},
                        },
                    },
                    "logprobs": _CHAT_LOGPROBS,
                    "finish_reason": _nullable(_FINISH),
                },
            },
        ),
        "CompletionRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {
                    "description": "Plain text, no chat template (or a list of exactly one); "
                    "not empty (a model that adds no BOS token would have nothing to go on).",
                    "anyOf": [
                        {"type": "string", "minLength": 1},
                        {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1},
                            "minItems": 1,
                            "maxItems": 1,
                        },
                    ],
                },
                **_COMMON,
                "logprobs": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": MAX_LEGACY_LOGPROBS,
                    "description": "Each token's log probability and this many alternatives.",
                },
                "best_of": {"enum": [1, None], "description": "Only 1 is supported."},
                "echo": {"enum": [False, None], "description": "Not supported (true: 400)."},
                # (and `suffix`: insertion is not supported, a non-empty one is a 400)
            },
        },
        "Completion": _answer("text_completion", text_choice),
        "CompletionChunk": _chunk("text_completion", text_choice),
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
                "loaded": {
                    "type": "boolean",
                    "description": "The one this server answers with (listed first); the "
                    "others are in its library (naming one: 404 model_not_found).",
                },
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "minItems": 1, "items": _ref("Model")},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "model"],
            "properties": {
                "status": {"enum": ["ready", "loading"]},
                "model": {"type": "string", "description": "The model's file name."},
            },
        },
    }


def _generation(
    summary: str, request: str, answer: str, chunk: str, not_found: str
) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": {
            "200": {
                "description": f"The answer, whole, or with `stream: true` as server-sent "
                f"events: `data: {{{chunk}}}` lines, then `data: [DONE]`. `usage` in every "
                "answer (a stream: with include_usage).",
                "headers": _SOURCE_HEADERS,
                "content": {JSON: {"schema": _ref(answer)}, SSE: {"schema": _event(chunk)}},
            },
            **_generation_errors(not_found),
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route `build_app` serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tui-infer serve",
            "version": __version__,
            "description": "An OpenAI-compatible server for one local GGUF model: chat "
            "requests are answered from the prediction store when a batch published the "
            "answer, else by the model, whose live requests decode together.",
        },
        # enforced only when the server has an API key (--api-key-file, TUI_INFER_API_KEY)
        "security": [{"bearer": []}],
        "paths": {
            "/health": {
                "get": {
                    "summary": "Whether the model is loaded (never needs the key).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Ready.",
                            "content": {JSON: {"schema": _ref("Health")}},
                        },
                        "503": {
                            "description": "The model is still loading.",
                            "headers": _RETRY_AFTER,
                            "content": {JSON: {"schema": _ref("Health")}},
                        },
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document (never needs the key).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "The loaded model, then the library's other models.",
                    "responses": {
                        "200": {
                            "description": "The loaded model first, then the library's.",
                            "content": {JSON: {"schema": _ref("ModelList")}},
                        },
                        "401": _UNAUTHORIZED,
                        "503": _LOADING,
                    },
                }
            },
            "/v1/chat/completions": {
                "post": _generation(
                    "A chat reply: from the store when a batch published it, else the model.",
                    "ChatCompletionRequest",
                    "ChatCompletion",
                    "ChatCompletionChunk",
                    "`model` names a model that is not loaded (code `model_not_found`), or "
                    "under --serve store the store holds no answer (code `not_precomputed`).",
                )
            },
            "/v1/completions": {
                "post": _generation(
                    "A plain-prompt completion, always from the model (the store keeps chat "
                    "replies).",
                    "CompletionRequest",
                    "Completion",
                    "CompletionChunk",
                    "`model` names a model that is not loaded (code `model_not_found`), or "
                    "the server answers from the store only (code `not_precomputed`).",
                )
            },
            "/metrics": {
                "get": {
                    "summary": "The server's figures (answers while the model loads too).",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text format: requests by route "
                            "and status, store hits and misses, queue depth, active "
                            "sequences, generated tokens, time to first token and tokens/s "
                            "histograms, KV cache use.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's API key; required on every route but "
                    "/health and /openapi.json when the server has one.",
                }
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())
