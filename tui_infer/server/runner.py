"""The server on a thread of this process: what the TUI's Server screen starts and stops on
the model it has loaded (the chat and the server then share one copy of the weights: a chat
reply is one more sequence of the scheduler's batch), and what the tests run.

`tui-infer serve` runs uvicorn on the main thread instead (its signal handling: SIGTERM and
Ctrl+C stop accepting, end the in-flight streams, exit 0).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import ChatEngine
from tui_infer.core.static.store import PredictionStore
from tui_infer.server.app import Server, build_app
from tui_infer.server.metrics import ServerMetrics

GRACE_S = 5.0  # how long in-flight streams get to end when the server stops


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(GRACE_S),
    )


class BackgroundServer:
    """uvicorn serving `engine` on a daemon thread. start() returns once it listens (or
    raises TuiInferError: the port is taken, ...); stop() ends it within GRACE_S."""

    def __init__(
        self,
        engine: ChatEngine,
        model_path: Path,
        store: PredictionStore,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 8080,
        api_key: str | None = None,
        cors: str | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.server = Server(engine, model_path, store, settings, api_key, data_dir)
        self.host = host
        self._uv = uvicorn.Server(uvicorn_config(build_app(self.server, cors), host, port))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.port = port

    @property
    def metrics(self) -> ServerMetrics:
        return self.server.metrics

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        def run() -> None:
            try:
                self._uv.run()
            except BaseException as exc:  # SystemExit when the port is taken
                self._error = exc

        self._thread = threading.Thread(target=run, name="tui-infer-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._uv.should_exit = True
                raise TuiInferError(
                    f"the server could not listen on {self.host}:{self.port} (is the port "
                    "taken? pick another one)"
                )
            time.sleep(0.02)
        servers = getattr(self._uv, "servers", None) or []
        for s in servers:  # port 0: the one the system picked
            for sock in s.sockets:
                self.port = int(sock.getsockname()[1])
                return

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._uv.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACE_S + 5)
