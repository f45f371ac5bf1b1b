"""Full disks and read-only file systems: one line that names the folder and the way out,
nothing written before lost or half-written, and the same command resumes once there is
room. The tests mount a small tmpfs (they run as root in CI); elsewhere they inject the
OSError at the write boundary instead."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gguf_craft import write_gguf
from tui_infer.cli import main
from tui_infer.core import files
from tui_infer.core.chat.history import History
from tui_infer.core.disk import StorageError
from tui_infer.core.errors import ExitCode

MiB = 1 << 20


class SmallDisk:
    """A tmpfs of `size` bytes at `path`; fill() takes what is left, free() gives it back."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.filler = path / ".filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        mode = "ro" if on else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)


def _mount(path: Path, size: int) -> bool:
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    path = tmp_path / "disk"
    if not _mount(path, 8 * MiB):
        pytest.skip("needs root to mount a tmpfs (the injected-error tests still run)")
    monkeypatch.setenv("TUI_INFER_DATA_DIR", str(path / "data"))
    try:
        yield SmallDisk(path, 8 * MiB)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tui-infer: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def integrity(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_batch_and_store_on_a_full_disk(
    disk: SmallDisk, tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("Say yes.\nSay no.\n")
    out = disk.path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--max-tokens", "4"]
    assert main([*argv, "--publish", "--force"]) == 0  # 4 tokens: cut off, flagged
    first = out.read_text()
    capsys.readouterr()

    # a second batch on a full disk: one line, the store and the first output intact
    src2 = tmp_path / "in2.txt"
    src2.write_text("Say maybe.\nSay never.\nSay always.\n")
    out2 = disk.path / "out2.jsonl"
    disk.fill()
    argv2 = ["batch", str(src2), "-o", str(out2), "-m", str(model_path), "--max-tokens", "4"]
    assert main(argv2) == ExitCode.FAILURE
    one_line(capsys.readouterr().err, str(disk.path), "the disk is full", "run the same command")
    assert out.read_text() == first
    assert not out2.exists()
    assert not [p for p in disk.path.iterdir() if p.name.endswith(".tmp")]

    # room again: the store is whole, the first run's answers there, and the same command
    # finishes, every line once
    disk.free()
    db = disk.path / "data" / "store.sqlite3"
    integrity(db)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM predictions WHERE run_id = 1").fetchone()[0] == 2
    conn.close()
    assert main(argv2) == 0
    assert [json.loads(x)["id"] for x in out2.read_text().splitlines()] == [
        "line-1",
        "line-2",
        "line-3",
    ]
    assert main(["store", "runs"]) == 0
    integrity(disk.path / "data" / "store.sqlite3")


def test_exports_on_a_full_disk_leave_no_partial_file(
    disk: SmallDisk, tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("Say yes.\n")
    assert (
        main(
            [
                "batch",
                str(src),
                "-o",
                str(tmp_path / "o.jsonl"),
                "-m",
                str(model_path),
                "--max-tokens",
                "4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    disk.fill()
    target = disk.path / "export.jsonl"
    assert main(["store", "export", "1", "-o", str(target)]) == ExitCode.FAILURE
    one_line(capsys.readouterr().err, str(disk.path), "the disk is full")
    assert not target.exists()
    assert not [p for p in disk.path.iterdir() if p.name.endswith(".tmp")]
    disk.free()
    assert main(["store", "export", "1", "-o", str(target)]) == 0
    assert target.read_text().strip()


def test_import_copy_on_a_full_disk_registers_nothing(
    disk: SmallDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.gguf"
    write_gguf(big, {"general.architecture": "llama", "general.name": "big"})
    with big.open("ab") as f:
        f.write(os.urandom(9 * MiB))  # larger than the whole small disk
    assert main(["models", "import", "--copy", str(big)]) == ExitCode.FAILURE
    one_line(capsys.readouterr().err, "not enough disk space", "import in place without --copy")
    assert main(["models", "list"]) == 0
    assert "big" not in capsys.readouterr().out
    leftovers = [
        p for p in (disk.path / "data").rglob("*") if p.is_file() and p.stat().st_size > MiB
    ]
    assert not leftovers


def test_history_on_a_read_only_disk(disk: SmallDisk) -> None:
    data = disk.path / "data"
    with History.in_data_dir(data) as h:
        cid = h.create("kept", model_name="m", model_path="/m.gguf")
    disk.read_only(True)
    try:
        with pytest.raises(StorageError) as caught, History.in_data_dir(data) as h:
            h.create("new", model_name="m", model_path="/m.gguf")
        assert "read-only" in str(caught.value) and str(data) in str(caught.value)
    finally:
        disk.read_only(False)
    with History.in_data_dir(data) as h:
        assert h.get(cid).title == "kept"
    integrity(data / "history.sqlite3")


def test_config_write_on_a_read_only_disk_keeps_the_file(
    disk: SmallDisk, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui_infer.core.config import write_config_key

    config = disk.path / "config.toml"
    config.write_text("# mine\ntemperature = 0.5\n")
    disk.read_only(True)
    try:
        with pytest.raises(StorageError) as caught:
            write_config_key(config, "overflow", "drop-oldest")
        assert "read-only" in str(caught.value) and str(disk.path) in str(caught.value)
    finally:
        disk.read_only(False)
    assert config.read_text() == "# mine\ntemperature = 0.5\n"


def test_injected_enospc_at_the_write_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a tmpfs (no root): the same one line when the write itself fails."""
    (tmp_path / "in.txt").write_text("x\n")
    real = files.atomic_open

    def full(path: Path, parents: bool = True):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "atomic_open", full)
    target = tmp_path / "sub" / "misses.jsonl"
    assert main(["store", "misses", "-o", str(target)]) == ExitCode.FAILURE
    one_line(capsys.readouterr().err, str(tmp_path / "sub"), "the disk is full")
    monkeypatch.setattr(files, "atomic_open", real)


def test_a_download_that_fills_the_disk_resumes_once_there_is_room(
    disk: SmallDisk, model_path: Path
) -> None:
    """The disk fills while 98 MB come in: one line, nothing in the library; then room,
    and the same command resumes from the bytes already there and verifies the sha256."""
    from tests.support.hub_server import HubServer, Repo, ServedFile

    subprocess.run(["mount", "-o", "remount,size=128m", str(disk.path)], check=True)
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    name = model_path.name
    served = {repo: Repo({name: ServedFile(model_path.read_bytes())})}
    served[repo].files[name].rate = 15_000_000  # slow enough to fill the disk mid-file
    with HubServer(served) as srv:
        env = {**os.environ, "HF_ENDPOINT": srv.url, "HF_HOME": str(disk.path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)
        cmd = [sys.executable, "-m", "tui_infer", "models", "pull", repo, "Q4_1"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 120
        part: Path | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((disk.path / "hf").rglob("*.part"))
            if found and found[0].stat().st_size > 20 * MiB:
                part = found[0]
                break
            time.sleep(0.05)
        assert part is not None, "the download did not start"
        disk.fill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.FAILURE, err
        one_line(err.strip().splitlines()[-1], "the disk is full", "run the same command")
        kept = part.stat().st_size
        assert 20 * MiB <= kept < model_path.stat().st_size
        listing = subprocess.run(
            [sys.executable, "-m", "tui_infer", "models", "list"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert "downloaded" not in listing.stdout  # a partial file is never in the library

        disk.free()
        served[repo].files[name].rate = None
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 0, second.stderr
        assert "downloaded and verified" in second.stdout
        ranged = [g for g in srv.state.gets(name) if g.range == f"bytes={kept}-"]
        assert len(ranged) == 1 and ranged[0].status == 206  # resumed, not started again
