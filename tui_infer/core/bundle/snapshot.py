"""A bundle's copy of the prediction store, taken with SQLite's online backup API: a
consistent picture even while a server or a batch writes the store.

`published` (the default) keeps only published predictions and the runs they belong to
(with their provenance and verification); `all` keeps every run and prediction, staged and
rejected too. Neither carries the local traffic (misses, lookup counts): that belongs to
the machine it happened on. The copy is one self-contained file (no WAL), vacuumed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tui_infer.core.db import BUSY_TIMEOUT_MS

STORE_MODES = ("published", "all", "none")
LOCAL_TABLES = ("misses", "lookup_counts", "lookup_hours")


@dataclass(frozen=True)
class SnapshotInfo:
    runs: int
    predictions: int
    published: int
    schema_version: int
    models: list[tuple[str, str]]  # (model sha256, path on this machine) of its runs


def take(store_file: Path, dest: Path, mode: str) -> SnapshotInfo:
    """Copy `store_file` into `dest` (replaced) and keep what `mode` says."""
    dest.unlink(missing_ok=True)
    src = sqlite3.connect(store_file, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        if mode == "published":
            conn.execute("DELETE FROM predictions WHERE status != 'published'")
            conn.execute("DELETE FROM runs WHERE id NOT IN (SELECT run_id FROM predictions)")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in LOCAL_TABLES:
            if table in tables:
                conn.execute(f"DELETE FROM {table}")
        conn.execute("COMMIT")
        conn.execute("VACUUM")
        return info(conn)
    finally:
        conn.close()


def info(conn: sqlite3.Connection) -> SnapshotInfo:
    runs = int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    preds, published = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(status = 'published'), 0) FROM predictions"
    ).fetchone()
    models = [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT model_sha256, MAX(model_path) FROM runs GROUP BY model_sha256 ORDER BY MIN(id)"
        )
    ]
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    return SnapshotInfo(runs, int(preds), int(published), version, models)


def read_info(path: Path) -> SnapshotInfo:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return info(conn)
    finally:
        conn.close()
