"""`tui-infer serve`: the loaded model behind an OpenAI-compatible HTTP API on this machine.

Only the standard library is imported at the top (--help stays instant).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.core.errors import TuiInferError

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths


QUEUE_MAX = 100_000
# Once the grace for in-flight replies is over (runner.GRACE_S), the ones still running are
# ended: their streams get this long to send their last chunk and [DONE] before uvicorn cuts
# the connections. Ending takes one decode step: measured up to 3 s on this 2-core machine
# while other test runs shared it (4 s a token), 0.05 s otherwise.
END_MARGIN_S = 5.0
KEY_ON_COMMAND_LINE = (
    "warning: --api-key is visible to other users of this machine (ps, /proc); prefer "
    "--api-key-file FILE or TUI_INFER_API_KEY"
)


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server: the prediction store first, then the model",
        description="Serve the model on http://HOST:PORT/v1 (chat and text completions with "
        "streaming, models, /health, /metrics). A request the prediction store holds is "
        "answered from it; the rest run on the model, up to --parallel at once (continuous "
        "batching), with up to --queue more waiting (then 429). Loopback only unless an API "
        "key is set (--api-key-file, TUI_INFER_API_KEY or --api-key). SIGTERM, Ctrl+C or "
        "'tui-infer stop PORT' stop it: it stops accepting, lets the replies in flight end "
        "(a few seconds at most) and exits 0. 'tui-infer ps' lists the running servers.",
    )
    model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (8080; 0: any free one)")
    p.add_argument("--parallel", type=int, default=None, help="requests decoded at once (8)")
    p.add_argument(
        "--queue",
        type=int,
        default=64,
        metavar="N",
        help="requests that may wait for a free slot (64; more get 429)",
    )
    p.add_argument(
        "--serve",
        choices=("store-then-live", "live", "store", "store-any-sample"),
        help="answer from the store first (default), never, or only; store-any-sample: "
        "also from a prediction for the same messages under other sampling parameters",
    )
    p.add_argument("--api-key-file", type=Path, help="a file holding the API key clients send")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="the API key itself (other users can read a command line: prefer "
        "--api-key-file or TUI_INFER_API_KEY)",
    )
    p.add_argument(
        "--cors",
        metavar="ORIGIN",
        help="let web pages from ORIGIN (http://localhost:3000, or *) call the server",
    )


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key is not None and args.api_key_file is not None:
        raise TuiInferError("--api-key and --api-key-file: give one of them")
    if args.api_key is not None:
        if not args.api_key.strip():
            raise TuiInferError("--api-key is empty")
        print(KEY_ON_COMMAND_LINE, file=sys.stderr)
        return str(args.api_key).strip()
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


def _cors(origin: str | None) -> str | None:
    if origin is None or origin == "*":
        return origin
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise TuiInferError(
            f"--cors {origin!r} is not an origin: give scheme://host[:port] "
            "(http://localhost:3000), or * for any"
        )
    return f"{parts.scheme}://{parts.netloc}"


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
    if not 1 <= args.queue <= QUEUE_MAX:
        raise TuiInferError(f"--queue must be 1 to {QUEUE_MAX}, got {args.queue}")
    if not 0 <= args.port <= 65535:
        raise TuiInferError(f"--port must be 0 to 65535, got {args.port}")
    cors = _cors(args.cors)
    from dataclasses import replace

    from tui_infer.core import request_path as rp
    from tui_infer.core.static.store import PredictionStore

    settings = replace(settings, parallel=parallel)
    target = rp.resolve_target(settings, paths)
    sock = _bind(args.host, args.port)  # before the model loads: a taken port is said at once
    store = PredictionStore.in_data_dir(paths.data_dir)
    try:
        return _Serving(target, store, settings, key, cors, args.queue, sock, paths).run()
    finally:
        store.close()  # after uvicorn has returned: no request is writing to it any more


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here rather than by uvicorn: a port that is taken is one
    line (uvicorn would log and exit), and port 0's pick is known before the first line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TuiInferError(f"--host {host}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TuiInferError(
                f"port {port} on {host} is taken (another server? 'tui-infer ps' lists "
                "tui-infer's): pick another with --port, or --port 0 for any free one"
            ) from None
        raise TuiInferError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


class _Serving:
    """uvicorn on the main thread, listening at once (/health says "loading"), while the
    model loads on another thread; the server enters the registry (`tui-infer ps`) for as
    long as it listens.

    Stopping: uvicorn catches SIGTERM and SIGINT, stops accepting, and gives the streams in
    flight runner.GRACE_S to end; then the replies still running are ended by the scheduler
    (each stream closes with its last chunk and [DONE]), and END_MARGIN_S later uvicorn
    cancels whatever is left (a client that stopped reading). uvicorn raises the signal
    again once it has returned; the handlers installed here take it, so the command exits 0
    (not 130, not killed by SIGTERM), and the registry entry, the model and the store are
    closed in that order.
    """

    def __init__(
        self,
        target: Any,
        store: Any,
        settings: Settings,
        key: str | None,
        cors: str | None,
        queue: int,
        sock: socket.socket,
        paths: Paths,
    ) -> None:
        self.target, self.store, self.settings = target, store, settings
        self.key, self.cors, self.queue, self.sock, self.paths = key, cors, queue, sock, paths
        self.engine: Any = None
        self.load_error: BaseException | None = None

    def run(self) -> int:
        import threading

        from tui_infer.core.registry import register
        from tui_infer.server.app import Server, build_app
        from tui_infer.server.runner import uvicorn_config

        host, port = self.sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        server = Server(
            None, self.target.path, self.store, self.settings, self.key, self.paths.data_dir
        )
        uv = _uvicorn_server(uvicorn_config(build_app(server, self.cors), host, port), self)
        loader = threading.Thread(
            target=self._load, args=(server, uv), name="tui-infer-load", daemon=True
        )

        def take(sig: int, frame: Any) -> None:
            uv.should_exit = True  # (uvicorn raises the signal it caught again, once stopped)

        previous = {s: signal.signal(s, take) for s in (signal.SIGINT, signal.SIGTERM)}
        state_dir = self.paths.state_dir or self.paths.data_dir / "state"
        registration = register(
            "server", url, self.target.path.name, lambda: server.metrics.snapshot().requests,
            state_dir,
        )  # fmt: skip
        try:
            print(
                f"serving {self.target.path.name} on {url}/v1 ({self.settings.parallel} at "
                f"once, {self.queue} queued at most, {self.settings.serve}); loading the "
                f"model. Ctrl+C or 'tui-infer stop {port}' stops it",
                file=sys.stderr,
            )
            loader.start()
            uv.run(sockets=[self.sock])
        finally:
            registration.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if loader.is_alive():
                print("waiting for the model to finish loading, to close it", file=sys.stderr)
            loader.join()
            if self.engine is not None:
                self.engine.close()
        if self.load_error is not None:
            raise self.load_error
        print("stopped", file=sys.stderr)
        return 0

    def end_replies(self) -> None:
        """The bound is near: end every reply still running (the streams close cleanly)."""
        engine = self.engine
        if engine is None:
            return
        queued, active, _ = engine.scheduler.figures()
        if n := queued + active:
            print(f"ending {n} {'reply' if n == 1 else 'replies'} still running", file=sys.stderr)
        from tui_infer.core.inference.llama_thread import on_llama_thread

        # On the llama.cpp thread, where the scheduler's driver steps: the driver lets a
        # waiting job in after its current step. (From here, close() would wait for the step
        # lock, which a driver stepping on a busy CPU takes again at once, step after step.)
        on_llama_thread(engine.scheduler.close)  # every request ends; the model: in run()

    def _load(self, server: Any, uv: Any) -> None:
        import time

        from tui_infer.core.inference.engine import Engine

        t0 = time.perf_counter()
        try:
            target = self.target
            engine = Engine.load(
                target.path, target.load_options(self.settings), header=target.header
            )
        except BaseException as exc:  # said once uvicorn has stopped (the command's error)
            self.load_error = exc
            uv.should_exit = True
            return
        self.engine = engine
        engine.scheduler.max_queued = self.queue
        if uv.should_exit:
            return  # stopped while loading: nothing to serve
        server.attach(engine)
        print(f"ready ({time.perf_counter() - t0:.1f} s to load)", file=sys.stderr)


def _uvicorn_server(config: Any, serving: _Serving) -> Any:
    """uvicorn.Server whose shutdown ends the replies still running after runner.GRACE_S,
    and cuts what is left END_MARGIN_S later."""
    import asyncio
    import logging

    import uvicorn

    from tui_infer.server.runner import GRACE_S

    config.timeout_graceful_shutdown = int(GRACE_S + END_MARGIN_S)

    class CutQuietly(logging.Filter):
        """A reply cut at the end of the bound is the bound working, not a crash: one line
        instead of uvicorn's error and the traceback of the cancelled task."""

        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, asyncio.CancelledError):
                return False
            if "timeout graceful shutdown exceeded" in record.getMessage():
                print("cut the replies that had not ended in time", file=sys.stderr)
                return False
            return True

    logging.getLogger("uvicorn.error").addFilter(CutQuietly())

    class Graceful(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            loop = asyncio.get_running_loop()
            print(
                f"stopping: no new requests; the replies in flight get {GRACE_S:.0f} s to end",
                file=sys.stderr,
            )

            def end() -> None:
                loop.run_in_executor(None, serving.end_replies)

            handle = loop.call_later(GRACE_S, end)
            try:
                await super().shutdown(sockets)
            finally:
                handle.cancel()

    return Graceful(config)
