"""SQLite the way every store of tui-infer uses it: WAL, a busy timeout, explicit
transactions, and the schema version in PRAGMA user_version with ordered migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from tui_infer.core.errors import TuiInferError

BUSY_TIMEOUT_MS = 10_000


class StoreError(TuiInferError):
    pass


def connect(
    path: Path,
    migrations: Sequence[str],
    setup: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """Open (creating the folder and file if needed) and migrate to len(migrations).

    migrations[i] is the SQL script that takes the schema from version i to i + 1.
    A file written by a newer tui-infer (a higher version) is refused, not altered.
    `setup` runs first (to register SQL functions a migration calls).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        from tui_infer.core.disk import explain

        raise explain(exc, path) or StoreError(
            f"{path}: cannot open the database ({exc})"
        ) from None
    try:
        if setup is not None:
            setup(conn)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            conn.close()
            raise StoreError(
                f"{path}: written by a newer tui-infer (schema {version}, this one knows "
                f"{len(migrations)}); upgrade tui-infer or point TUI_INFER_DATA_DIR elsewhere"
            )
    except sqlite3.DatabaseError as exc:
        conn.close()
        from tui_infer.core.disk import explain, unwritable

        # a full or read-only disk is not a broken file: never advise moving it aside then
        storage = explain(exc, path) or unwritable(path.parent)
        if storage is not None:
            raise storage from None
        raise StoreError(
            f"{path}: not a usable database ({exc}); move it aside and tui-infer starts a new one"
        ) from None
    for target in range(version + 1, len(migrations) + 1):
        try:
            with transaction(conn):
                for statement in _statements(migrations[target - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"{path}: upgrading the schema to version {target} failed ({exc}); "
                "the file is unchanged"
            ) from None
        except TuiInferError:  # a full or read-only disk, said by transaction()
            conn.close()
            raise
    return conn


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would COMMIT on its own)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (with isolation_level=None, `with conn:` is not one).

    A full or read-only disk rolls the transaction back (what was committed before stays)
    and becomes one line naming the database's folder (disk.StorageError)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        _raise_storage(conn, exc)
        raise
    try:
        yield conn
    except BaseException as exc:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            _raise_storage(conn, exc)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        _raise_storage(conn, exc)
        raise


def _raise_storage(conn: sqlite3.Connection, exc: sqlite3.Error) -> None:
    from tui_infer.core.disk import database_path, explain

    storage = explain(exc, database_path(conn))
    if storage is not None:
        raise storage from exc
