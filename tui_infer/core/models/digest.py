"""The sha256 of a model file, read once: remembered by (path, size, mtime_ns).

One cache for everything that needs a model's identity (the library, the prediction store's
keys, bench runs), in one small SQLite file in the data directory (``hashes.sqlite3``, the
discipline of core/db.py). Reading the 94 MiB default model takes 0.07 s from the page
cache on the 2-core dev box (more from a cold disk, and a 7 GB model ~75 times as long), so
a file is read again only when its size or mtime changed. Hashes that are known without
reading the file (a verified hub download, a copy hashed while copying) are remembered as
they are written.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from tui_infer.core.db import connect, transaction

HASHES_FILE = "hashes.sqlite3"
HASH_CHUNK = 1 << 20

MIGRATIONS = [
    """
    CREATE TABLE file_hashes (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );
    """,
]

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


def sha256_file(
    path: Path, progress: ProgressFn | None = None, done: int = 0, total: int = 0
) -> str:
    """Stream a file through sha256, 1 MiB at a time (no cache: see DigestCache)."""
    h = hashlib.sha256()
    total = total or path.stat().st_size
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


class DigestCache:
    """sha256 by (real path, size, mtime_ns). Safe to share between threads (one lock) and
    processes (WAL); the file is opened on first use."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> DigestCache:
        return cls(Path(data_dir) / HASHES_FILE)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.db_path, MIGRATIONS)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        real = os.path.realpath(path)  # a HF-cache snapshot link and its blob: one entry
        st = os.stat(real)
        return real, st.st_size, st.st_mtime_ns

    def known(self, path: Path) -> str | None:
        """The remembered sha256 when the file is unchanged since; None otherwise."""
        real, size, mtime_ns = self._key(path)
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                (real, size, mtime_ns),
            ).fetchone()
        return str(row[0]) if row else None

    def sha256(
        self, path: Path, progress: ProgressFn | None = None, done: int = 0, total: int = 0
    ) -> str:
        """The file's sha256: remembered, or read now (reporting progress) and remembered."""
        cached = self.known(path)
        if cached is not None:
            if progress:
                size = os.stat(path).st_size
                progress(done + size, total or size)
            return cached
        key = self._key(path)
        digest = sha256_file(path, progress, done, total)
        if self._key(path) == key:  # not changed while it was read
            self._store(key, digest)
        return digest

    def remember(self, path: Path, sha256: str) -> None:
        """Record a hash known without reading the file (it was just written or verified)."""
        self._store(self._key(path), sha256)

    def _store(self, key: tuple[str, int, int], digest: str) -> None:
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256) "
                "VALUES (?, ?, ?, ?)",
                (*key, digest),
            )
