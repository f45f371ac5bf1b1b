"""A full disk, a read-only file system or a folder we may not write: one line that names
the folder and the way out, for every writer (stores, history, library, downloads,
exports, config, batch outputs).

Writers do not catch these themselves: SQLite's transactions and `files.atomic_write`
already leave what was there intact, so the error only has to be *said* well. `explain`
turns an OSError or a sqlite3 error into a StorageError (exit code 1), at the top of the
CLI, in the TUI's worker error handler, and in `db.transaction` for SQLite, which does not
name its file.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from tui_infer.core.errors import RunTimeFailure

AGAIN = "run the same command again: what was written before is kept"

_WHAT = {
    errno.ENOSPC: ("the disk is full", "free some space there"),
    errno.EDQUOT: ("the disk quota is used up", "free some space there"),
    errno.EROFS: ("the file system is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "check the folder's permissions"),
    errno.EPERM: ("permission denied", "check the folder's permissions"),
}


class StorageError(RunTimeFailure):
    """Writing failed for a reason of the disk's, not the input's."""


def _nearly_full(path: Path) -> bool:
    import shutil

    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free < 1 << 20
            except OSError:
                return False
    return False


def _folder(path: str | Path | None) -> str:
    if not path:
        return "a data folder"
    p = Path(path)
    return str(p.parent if p.suffix or not p.is_dir() else p)


def _message(folder: str, what: str, fix: str) -> str:
    return f"{folder}: {what}; {fix} (or point TUI_INFER_DATA_DIR at another disk), then {AGAIN}"


def explain(exc: BaseException, path: str | Path | None = None) -> StorageError | None:
    """The one-line error for a storage failure, or None when `exc` is something else."""
    if isinstance(exc, OSError) and exc.errno in _WHAT:
        what, fix = _WHAT[exc.errno]
        return StorageError(_message(_folder(exc.filename or path), what, fix))
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        if "disk is full" in text or "database or disk is full" in text:
            what, fix = _WHAT[errno.ENOSPC]
        elif "readonly" in text or "read-only" in text:
            what, fix = _WHAT[errno.EROFS]
        elif "disk i/o error" in text:
            # what SQLite says when its WAL cannot grow: tell a full disk from the rest
            if path is not None and _nearly_full(Path(path)):
                what, fix = _WHAT[errno.ENOSPC]
            else:
                what, fix = "a disk I/O error (often a full disk)", "free some space there"
        else:
            return None
        return StorageError(_message(_folder(path), what, fix))
    return None


def unwritable(folder: Path) -> StorageError | None:
    """The error for a folder we cannot write (read-only file system, permissions), or None.
    (SQLite says only "unable to open database file" when it cannot create its -wal.)"""
    import os

    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            what, fix = _WHAT[errno.EROFS]
            return StorageError(_message(str(folder), what, fix))
    except (OSError, AttributeError):
        return None
    if not os.access(folder, os.W_OK):
        what, fix = _WHAT[errno.EACCES]
        return StorageError(_message(str(folder), what, fix))
    return None


def database_path(conn: sqlite3.Connection) -> str | None:
    """The file behind a connection (SQLite's errors do not say)."""
    try:
        for _, name, file in conn.execute("PRAGMA database_list"):
            if name == "main":
                return str(file) or None
    except sqlite3.Error:
        pass
    return None
