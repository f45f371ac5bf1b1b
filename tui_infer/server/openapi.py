"""The server's OpenAPI description, served at GET /openapi.json (what schemathesis tests)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "tui-infer", "version": "1"},
        "paths": {},
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())
