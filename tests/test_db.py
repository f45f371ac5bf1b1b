"""The shared SQLite helper: migrations, version checks, transactions, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tui_infer.core.db import StoreError, connect, transaction

V1 = "CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT);"
V2 = "ALTER TABLE t ADD COLUMN y TEXT;\nCREATE INDEX t_x ON t (x);"


def test_migrates_in_order_and_keeps_rows(tmp_path: Path) -> None:
    db = tmp_path / "d" / "a.sqlite3"
    c = connect(db, [V1])
    c.execute("INSERT INTO t (x) VALUES ('kept')")
    c.close()
    c = connect(db, [V1, V2])
    assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    assert c.execute("SELECT x, y FROM t").fetchall() == [("kept", None)]
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    connect(db, [V1, V2]).close()
    with pytest.raises(StoreError, match="newer tui-infer"):
        connect(db, [V1])


def test_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    connect(db, [V1]).close()
    with pytest.raises(StoreError, match="schema to version 2 failed.*unchanged"):
        connect(db, [V1, "ALTER TABLE t ADD COLUMN z TEXT; SELECT * FROM nope;"])
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    assert [r[1] for r in c.execute("PRAGMA table_info(t)")] == ["id", "x"]


def test_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    db.write_text("my notes\n" * 200)
    with pytest.raises(StoreError, match="not a usable database"):
        connect(db, [V1])
    assert db.read_text().startswith("my notes")  # the file is left as it was


def test_transaction_rolls_back(tmp_path: Path) -> None:
    c = connect(tmp_path / "a.sqlite3", [V1])
    with pytest.raises(RuntimeError), transaction(c):
        c.execute("INSERT INTO t (x) VALUES ('gone')")
        raise RuntimeError
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 0
