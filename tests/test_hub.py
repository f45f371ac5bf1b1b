"""The hub against a real HTTP server on 127.0.0.1 (tests/hub_server.py), HF_ENDPOINT
pointed at it, serving the real SmolLM2 GGUF and small crafted ones."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gguf_craft import write_gguf
from tests.support.hub_server import HubServer, Repo, ServedFile
from tui_infer.core.errors import ModelFileError
from tui_infer.core.models import http as http_mod
from tui_infer.core.models import hub_types as hub_mod
from tui_infer.core.models.gguf import parse_header_bytes
from tui_infer.core.models.hub import Hub
from tui_infer.core.models.hub_types import (
    ChecksumMismatchError,
    DownloadCancelled,
    HubAccessError,
    HubNotFoundError,
    HubOfflineError,
    Progress,
    UnsafeFileNameError,
    quant_from_name,
)
from tui_infer.core.models.library import ModelLibrary

REAL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
REAL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
META = {
    "general.architecture": "llama",
    "general.name": "Tiny",
    "general.file_type": 7,
    "llama.block_count": 2,
    "llama.context_length": 256,
    "llama.embedding_length": 8,
    "llama.attention.head_count": 2,
}


def crafted(tmp: Path, name: str, floats: int = 1 << 18, **meta: object) -> bytes:
    p = write_gguf(
        tmp / name, {**META, **meta}, [("w", (floats,), 0)], data=bytes(range(256)) * (floats // 64)
    )
    return p.read_bytes()


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> dict[str, Repo]:
    tmp = tmp_path_factory.mktemp("craft")
    tiny = crafted(tmp, "tiny.gguf")
    return {
        REAL: Repo(
            {REAL_FILE: ServedFile(model_path.read_bytes()), "README.md": ServedFile(b"# hi\n")},
            downloads=5000,
            likes=40,
        ),
        "acme/Tiny-GGUF": Repo(
            {"tiny.Q8_0.gguf": ServedFile(tiny), "tiny.F16.gguf": ServedFile(tiny)}, downloads=10
        ),
        "acme/Split-GGUF": Repo(
            {
                "big-00001-of-00002.gguf": ServedFile(crafted(tmp, "a.gguf", **{"split.count": 2})),
                "big-00002-of-00002.gguf": ServedFile(crafted(tmp, "b.gguf", **{"split.count": 2})),
            }
        ),
        "acme/Gated-GGUF": Repo({"g.Q4_0.gguf": ServedFile(tiny)}, gated=True),
        "acme/Evil-GGUF": Repo({"../../../escape.gguf": ServedFile(tiny)}),
        "acme/Corrupt-GGUF": Repo({"c.Q8_0.gguf": ServedFile(tiny, corrupt=True)}),
    }


@pytest.fixture
def server(served: dict[str, Repo], monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer(served) as srv:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


@pytest.fixture
def lib(isolated_env: Path) -> Iterator[ModelLibrary]:
    with ModelLibrary(isolated_env / "data") as library:
        yield library


def fast_hub(**kw: object) -> Hub:
    return Hub(backoff_s=0.01, **kw)  # type: ignore[arg-type]


def cache_files(hub: Hub) -> list[str]:
    return sorted(str(p.relative_to(hub.cache)) for p in hub.cache.rglob("*") if p.is_file())


def test_search(server: HubServer) -> None:
    found = Hub().search("gguf")
    assert [r.repo for r in found][:2] == [REAL, "acme/Tiny-GGUF"]  # by downloads
    assert found[0].downloads == 5000 and found[0].likes == 40 and found[0].updated == "2025-06-01"
    assert [r.repo for r in Hub().search("smollm2")] == [REAL]
    assert any(h.path == "/api/models" for h in server.state.hits)


def test_files_with_size_quant_sha_and_header(server: HubServer, model_path: Path) -> None:
    models = Hub().models(REAL, read_headers=True)
    assert len(models) == 1  # README.md is not a model
    m = models[0]
    assert m.filename == REAL_FILE and m.size == model_path.stat().st_size
    assert m.files[0].sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert m.quant == "Q4_1" and m.header is not None and m.header.n_layer == 30
    # The header came from ranged GETs, not the whole file.
    gets = server.state.gets(REAL_FILE)
    assert gets and all(h.range and h.range.startswith("bytes=0-") for h in gets)
    assert server.state.bytes_sent(REAL_FILE) < m.size // 4
    names = {x.filename: x.quant for x in Hub().models("acme/Tiny-GGUF")}
    assert names == {"tiny.F16.gguf": "F16", "tiny.Q8_0.gguf": "Q8_0"}


def test_split_files_are_one_model(server: HubServer, lib: ModelLibrary) -> None:
    (m,) = Hub().models("acme/Split-GGUF")
    assert m.name == "big" and len(m.files) == 2
    res = fast_hub().download(m)
    entry = lib.register_download(res.paths[0], m.repo, res.hashes)
    assert entry.name == "big" and len(entry.parts) == 2 and entry.status == "ok"


def test_pull_verifies_and_enters_the_library(
    server: HubServer, lib: ModelLibrary, model_path: Path
) -> None:
    hub = fast_hub()
    m = hub.select(REAL, "Q4_1")
    seen: list[Progress] = []
    res = hub.download(m, progress=lambda p: seen.append(Progress(**p.__dict__)))
    (path,) = res.paths
    assert path.read_bytes() == model_path.read_bytes()
    assert path.is_symlink() and "snapshots" in str(path)
    assert res.bytes_transferred == m.size and res.resumed_from == 0
    states = [p.state for p in seen]
    assert states[-2:] == ["verifying", "done"] and "downloading" in states
    assert any(p.speed > 0 and p.eta_s is not None for p in seen)
    assert (hub.repo_dir(REAL) / "refs" / "main").read_text() == m.commit
    entry = lib.register_download(path, REAL, res.hashes)
    assert entry.source == "downloaded" and entry.sha256 == m.files[0].sha256
    # The HF cache scan finds the same file: still one entry, still "downloaded".
    mine = [e for e in lib.entries() if e.repo == REAL]
    assert len(mine) == 1 and mine[0].source == "downloaded"
    # A second pull transfers nothing.
    before = server.state.bytes_sent(REAL_FILE)
    assert hub.download(m).bytes_transferred == 0
    assert server.state.bytes_sent(REAL_FILE) == before


def test_dropped_connection_resumes_with_range(server: HubServer, served: dict[str, Repo]) -> None:
    f = served[REAL].files[REAL_FILE]
    f.drop_after, f.drops = 3_000_000, 2
    hub = fast_hub()
    m = hub.select(REAL, REAL_FILE)
    seen: list[str] = []
    res = hub.download(m, progress=lambda p: seen.append(p.state))
    assert Path(res.paths[0]).read_bytes() == f.data
    gets = server.state.gets(REAL_FILE)
    assert [g.range for g in gets] == [None, "bytes=3000000-", "bytes=6000000-"]
    assert [g.status for g in gets] == [200, 206, 206]
    # Exactly the file's bytes went over the wire: nothing was fetched twice.
    assert server.state.bytes_sent(REAL_FILE) == len(f.data) == res.bytes_transferred
    assert seen.count("retrying") == 2


def test_stall_is_reported_and_retried(server: HubServer, served: dict[str, Repo]) -> None:
    f = served["acme/Tiny-GGUF"].files["tiny.Q8_0.gguf"]
    f.stall_at, f.stall_s, f.stalls = 200_000, 2.0, 1
    hub = fast_hub(stall_s=0.3)
    msgs: list[str] = []
    res = hub.download(
        hub.select("acme/Tiny-GGUF", "Q8_0"),
        progress=lambda p: msgs.append(f"{p.state}:{p.message}"),
    )
    assert res.paths[0].read_bytes() == f.data
    assert any(s.startswith("stalled:no data for") for s in msgs)
    assert "bytes=200000-" in [g.range for g in server.state.gets("tiny.Q8_0.gguf")]


def test_cancel_keeps_the_part_and_resumes(
    server: HubServer, served: dict[str, Repo], lib: ModelLibrary
) -> None:
    hub = fast_hub()
    m = hub.select(REAL, REAL_FILE)
    cancel = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.done >= 2_000_000:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="resumes"):
        hub.download(m, progress=on_progress, cancel=cancel)
    part = hub.part_path(m, m.files[0])
    kept = part.stat().st_size
    assert kept >= 2_000_000
    assert not [e for e in lib.entries() if e.repo == REAL and e.source != "bundled"]
    assert not (hub.repo_dir(REAL) / "snapshots").exists()
    res = hub.download(m)
    assert res.resumed_from == kept and res.bytes_transferred == m.size - kept
    assert res.paths[0].read_bytes() == served[REAL].files[REAL_FILE].data
    assert not part.exists()


def test_corrupted_download_is_caught_and_never_listed(
    server: HubServer, lib: ModelLibrary
) -> None:
    hub = fast_hub()
    m = hub.select("acme/Corrupt-GGUF", None)
    with pytest.raises(ChecksumMismatchError, match="does not match the hub's.*deleted"):
        hub.download(m)
    assert cache_files(hub) == []  # no blob, no .part, no snapshot
    assert not [e for e in lib.entries() if e.repo == "acme/Corrupt-GGUF"]


def test_path_escape_is_refused(server: HubServer) -> None:
    hub = fast_hub()
    (m,) = hub.models("acme/Evil-GGUF")
    with pytest.raises(UnsafeFileNameError, match="outside the model's folder"):
        hub.download(m)
    assert not hub.cache.exists() or cache_files(hub) == []
    for bad in ("/etc/x.gguf", "a/../../x.gguf", "C:/x.gguf", "a\\..\\x.gguf", ""):
        with pytest.raises(UnsafeFileNameError):
            hub_mod.check_filename(bad)
    assert str(hub_mod.check_filename("Q4_K_M/model-Q4_K_M.gguf")) == "Q4_K_M/model-Q4_K_M.gguf"


def test_not_found_and_gated(server: HubServer) -> None:
    hub = fast_hub()
    with pytest.raises(HubNotFoundError, match="no such repository"):
        hub.models("acme/Nope")
    with pytest.raises(HubNotFoundError, match="no file or quant 'Q2_K'"):
        hub.select("acme/Tiny-GGUF", "Q2_K")
    with pytest.raises(HubAccessError, match="gated.*HF_TOKEN"):
        hub.models("acme/Gated-GGUF")
    with pytest.raises(hub_mod.HubError, match="not a hub repository id"):
        hub.models("../etc")
    # A file that vanished between listing and download: a 404 from resolve.
    m = hub.select("acme/Tiny-GGUF", "Q8_0")
    m.files[0] = hub_mod.HubFile("gone.gguf", 10, "0" * 64)
    with pytest.raises(HubNotFoundError, match="no such file"):
        hub.download(m)


def test_offline_mode_and_unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="offline.*HF_HUB_OFFLINE"):
        Hub().search("x")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # A port nobody listens on: refused at once, said plainly.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(HubOfflineError, match="cannot reach"):
        Hub().search("x")
    with pytest.raises(HubOfflineError, match="cannot reach"):
        Hub().models("a/b")
    assert time.monotonic() - t0 < 30  # no hanging (a bound, not a speed claim)


def test_header_from_a_prefix(model_path: Path) -> None:
    data = model_path.read_bytes()
    h = parse_header_bytes(data[: 2 << 20], "remote.gguf", len(data))
    assert h.quantization == "Q4_1" and h.n_ctx_train == 8192
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        parse_header_bytes(data[:1000], "remote.gguf", len(data))


@pytest.mark.parametrize(
    "name, quant",
    [
        ("Llama-3-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("model.IQ3_XS.gguf", "IQ3_XS"),
        ("qwen2-0_5b-instruct-fp16.gguf", None),
        ("x-f16.gguf", "F16"),
        ("BF16/x-BF16-00001-of-00002.gguf", "BF16"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("plain.gguf", None),
    ],
)
def test_quant_from_name(name: str, quant: str | None) -> None:
    assert quant_from_name(name) == quant


# ----- the CLI ----------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tui_infer", "models", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = cli(*args, env=env)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def test_cli_search_and_files(server: HubServer) -> None:
    rc, out, err = run_cli("search", "gguf")
    assert rc == 0, err
    assert out.splitlines()[0].split() == ["repository", "downloads", "likes", "updated"]
    assert REAL in out and "5,000" in out and "acme/Gated-GGUF (gated)" in out
    rc, out, err = run_cli("files", REAL, "--headers")
    assert rc == 0, err
    row = next(x for x in out.splitlines() if REAL_FILE in x).split()
    assert row[1:] == ["Q4_1", "93.8", "MiB", "1", "8192"]


def test_cli_pull_interrupted_then_resumed(
    server: HubServer, served: dict[str, Repo], isolated_env: Path
) -> None:
    f = served[REAL].files[REAL_FILE]
    f.rate = 15_000_000  # slow enough to interrupt mid-file
    p = cli("pull", REAL, "Q4_1")
    blobs = isolated_env / "hf" / "hub" / ("models--" + REAL.replace("/", "--")) / "blobs"
    part = blobs / f"{f.sha256}.part"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 10_000_000):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)  # Ctrl+C
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "run the same command to resume" in err
    kept = part.stat().st_size
    assert 10_000_000 <= kept < len(f.data)
    rc, out, _ = run_cli("list")
    assert "downloaded" not in out  # a partial file never appears in the library

    f.rate = None
    rc, out, err = run_cli("pull", REAL, "Q4_1")
    assert rc == 0, err
    assert "downloaded and verified" in out and f.sha256 in out
    assert "resuming" in err or "resumed" in out
    # The second run fetched only the rest: one ranged GET from where the first stopped.
    resumed = [g for g in server.state.gets(REAL_FILE) if g.range == f"bytes={kept}-"]
    assert len(resumed) == 1 and resumed[0].status == 206
    assert resumed[0].sent == len(f.data) - kept
    rc, out, _ = run_cli("list")
    row = next(x for x in out.splitlines() if "downloaded" in x)
    assert row.split()[-1] == "ok" and REAL in row
    assert not part.exists()


def test_cli_pull_errors(server: HubServer) -> None:
    for args, needle in [
        (("pull", "acme/Corrupt-GGUF"), "does not match the hub's"),
        (("pull", "acme/Nope"), "no such repository"),
        (("pull", "acme/Tiny-GGUF"), "has 2 GGUF models; name one"),
        (("pull", "acme/Gated-GGUF"), "gated"),
        (("pull", "acme/Evil-GGUF"), "refusing hub file name"),
        (("pull", "not a repo"), "not a hub repository id"),
    ]:
        rc, out, err = run_cli(*args)
        assert rc == 2, (args, err)
        last = err.strip().splitlines()[-1]  # after the file and fit lines, one error line
        assert last.startswith("tui-infer: error: ") and needle in last, err
    rc, out, err = run_cli("search", "x", env={"HF_HUB_OFFLINE": "1"})
    assert rc == 2 and "offline" in err
    rc, out, err = run_cli("pull", REAL, env={"HF_HUB_OFFLINE": "1"})
    assert rc == 2 and "offline" in err and "models import" in err


def test_one_http_client_for_every_hub_call(
    server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http_client is the only place a client is built: the project's timeouts, user agent,
    endpoint and live offline check, and nobody else opens HTTP by hand."""
    import re

    from tui_infer import __version__
    from tui_infer.commands.doctor import hub_status

    with http_mod.http_client() as c:
        assert str(c.base_url).rstrip("/") == server.url
        assert f"tui-infer/{__version__}" in c.headers["user-agent"]
        assert (c.timeout.connect, c.timeout.read) == (
            http_mod.CONNECT_TIMEOUT_S,
            http_mod.API_TIMEOUT_S,
        )
        assert c.get("/api/models", params={"search": "gguf"}).status_code == 200
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at each request, not at import
        with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE"):
            c.get("/api/models")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub_status(no_network=False) == f"reachable ({server.url}, HTTP 200)"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_status(no_network=False).startswith(f"unreachable (http://127.0.0.1:{port}: ")
    root = Path(hub_mod.__file__).parents[2]
    built = {
        str(p.relative_to(root)): len(
            re.findall(
                r"httpx2?\.(?:Async)?Client\(|urlopen\(|"
                r"requests\.(?:get|Session)\(",
                p.read_text(),
            )
        )
        for p in root.rglob("*.py")
    }
    assert {k: v for k, v in built.items() if v} == {"core/models/http.py": 1}  # tui_infer/


def test_a_download_in_progress_elsewhere_is_refused(server: HubServer) -> None:
    from tui_infer.core.files import file_lock

    hub = fast_hub()
    m = hub.select(REAL, "Q4_1")
    lock_path = hub.part_path(m, m.files[0]).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True)
    with (
        file_lock(lock_path, timeout=0),
        pytest.raises(hub_mod.HubError, match="another tui-infer is downloading it"),
    ):
        hub.download(m)
    res = hub.download(m)  # released: this one goes ahead, and leaves no lock behind
    assert res.bytes_transferred == m.size and not lock_path.exists()
