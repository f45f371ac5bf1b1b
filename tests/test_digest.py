"""The one sha256 cache (core/models/digest.py): by (path, size, mtime_ns), shared by the
library, the prediction store and the bench."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.support.gguf_craft import write_gguf
from tui_infer.core.models import digest
from tui_infer.core.models.digest import HASHES_FILE, DigestCache
from tui_infer.core.models.library import ModelLibrary
from tui_infer.core.static.store import PredictionStore


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files actually read to hash them."""
    seen: list[Path] = []
    real = digest.sha256_file

    def counting(path: Path, *args: object) -> str:
        seen.append(Path(path))
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(digest, "sha256_file", counting)
    return seen


def test_read_once_until_size_or_mtime_change(tmp_path: Path, reads: list[Path]) -> None:
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(5000))
    with DigestCache.in_data_dir(tmp_path / "data") as cache:
        assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        assert reads == [f]
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
        cache.sha256(f)
        assert reads == [f, f]
        f.write_bytes(os.urandom(5001))  # changed size
        assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        assert reads == [f, f, f]
    # remembered in the data dir: a new process does not read it either
    with DigestCache.in_data_dir(tmp_path / "data") as cache:
        assert cache.known(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        done: list[tuple[int, int]] = []
        cache.sha256(f, lambda d, t: done.append((d, t)))
        assert reads == [f, f, f] and done == [(5001, 5001)]  # progress says "done" at once


def test_one_cache_for_library_and_store(
    tmp_path: Path, reads: list[Path], model_path: Path
) -> None:
    data = tmp_path / "data"
    f = write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"})
    with ModelLibrary(data) as lib:
        entry = lib.import_file(f)
    assert reads == [f]
    with PredictionStore.in_data_dir(data) as store:
        assert store.model_sha256(f) == entry.sha256  # the library's hash: not read again
    assert reads == [f] and (data / HASHES_FILE).is_file()
    # a copy is hashed while it is copied, and remembered: the store does not read it
    with ModelLibrary(data) as lib:
        copy = lib.import_file(model_path, copy=True)
    with PredictionStore.in_data_dir(data) as store:
        assert store.model_sha256(copy.path) == copy.sha256
    assert reads == [f]


def test_a_link_and_its_target_share_an_entry(tmp_path: Path, reads: list[Path]) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"GGUF" + os.urandom(100))
    link = tmp_path / "snapshot.gguf"
    link.symlink_to(blob)
    with DigestCache(tmp_path / "h.sqlite3") as cache:
        cache.remember(blob, "f" * 64)  # e.g. verified against the hub's LFS hash
        assert cache.sha256(link) == "f" * 64 and reads == []
