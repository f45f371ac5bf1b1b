"""`tui-infer serve`: the loaded model behind an OpenAI-compatible HTTP API on this machine.

Only the standard library is imported at the top (--help stays instant).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.core.errors import TuiInferError

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server: the prediction store first, then the model",
        description="Serve the model on http://HOST:PORT/v1 (chat completions with streaming, "
        "models, /health). A request the prediction store holds is answered from it; the "
        "rest run on the model, up to --parallel at once (continuous batching). Loopback "
        "only unless an API key is set (--api-key-file or TUI_INFER_API_KEY).",
    )
    model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (8080; 0: any free one)")
    p.add_argument("--parallel", type=int, default=None, help="requests decoded at once (8)")
    p.add_argument(
        "--serve",
        choices=("store-then-live", "live", "store"),
        help="answer from the store first (default), never, or only",
    )
    p.add_argument("--api-key-file", type=Path, help="a file holding the API key clients send")


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TuiInferError(
                f"{args.api_key_file}: cannot read the API key ({exc.strerror})"
            ) from None
        if not key:
            raise TuiInferError(f"{args.api_key_file}: the API key file is empty")
        return key
    return os.environ.get("TUI_INFER_API_KEY") or None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    key = _api_key(args)
    if not _loopback(args.host) and key is None:
        raise TuiInferError(
            f"--host {args.host} would let other machines in: set an API key "
            "(--api-key-file FILE or TUI_INFER_API_KEY), or keep the default 127.0.0.1"
        )
    parallel = args.parallel if args.parallel is not None else 8
    if not 1 <= parallel <= 256:
        raise TuiInferError(f"--parallel must be 1 to 256, got {parallel}")
    if not 0 <= args.port <= 65535:
        raise TuiInferError(f"--port must be 0 to 65535, got {args.port}")
    from dataclasses import replace

    from tui_infer.core import request_path as rp
    from tui_infer.core.inference.engine import Engine
    from tui_infer.core.static.store import PredictionStore

    settings = replace(settings, parallel=parallel)
    target = rp.resolve_target(settings, paths)
    engine = Engine.load(target.path, target.load_options(settings), header=target.header)
    store = PredictionStore.in_data_dir(paths.data_dir)
    try:
        return _serve(engine, target.path, store, settings, key, args.host, args.port)
    finally:
        store.close()
        engine.close()


def _serve(
    engine: Any, path: Path, store: Any, settings: Settings, key: str | None, host: str, port: int
) -> int:
    import uvicorn

    from tui_infer.server.app import Server, build_app

    app = build_app(Server(engine, path, store, settings, key))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    print(
        f"serving {path.name} on http://{host}:{port}/v1 ({settings.parallel} at once, "
        f"{settings.serve}); Ctrl+C stops",
        file=sys.stderr,
    )
    server.run()
    return 0
