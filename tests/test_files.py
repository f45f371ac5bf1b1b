"""The one atomic-write helper and the file locks (core/files.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tui_infer.core.files import atomic_open, atomic_write, file_lock, lock_for


def test_writes_text_bytes_and_lines(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"  # the folder is created
    atomic_write(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, ["a", "b"])
    assert target.read_text() == "a\nb\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def lines() -> Iterator[str]:
        yield "new 1"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, lines())
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    # Ctrl+C inside the block too
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as f:
        f.write(b"half")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_a_failing_rename_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.skipif(os.name != "posix", reason="permission bits")
def test_mode_is_kept_and_new_files_follow_the_umask(tmp_path: Path) -> None:
    kept = tmp_path / "private.toml"
    kept.write_text("x")
    kept.chmod(0o600)
    atomic_write(kept, "y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    old = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.txt"
        atomic_write(fresh, "z")
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600


def test_locks_exclude_each_other(tmp_path: Path) -> None:
    from filelock import Timeout

    with file_lock(tmp_path / "x.lock", timeout=0), pytest.raises(Timeout):
        file_lock(tmp_path / "x.lock", timeout=0).acquire()
    target = tmp_path / "config.toml"
    with lock_for(target, timeout=0), pytest.raises(Timeout):
        lock_for(target, timeout=0).acquire()
    assert not list(tmp_path.glob("*config*"))  # no lock file beside the user's file


def test_a_symlinked_file_is_replaced_behind_its_link(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "config.toml"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
