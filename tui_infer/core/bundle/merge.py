"""Merging a bundle's store snapshot into this machine's prediction store.

Each run is known by its origin (a hash of the run's signature, creation time and model,
kept through any number of imports), so importing the same bundle twice adds nothing.
Imported runs keep their provenance, with an "imported" entry added (the origin, the
bundle, the run's id there, when). A key this store already serves keeps its answer: the
imported prediction for it is kept staged (`store publish RUN` serves it instead), unless
--replace, which publishes it as of the import. Everything is one transaction: an
interrupted import leaves the store as it was, and running it again finishes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.bundle.manifest import BundleError
from tui_infer.core.db import BUSY_TIMEOUT_MS, transaction

RUN_TABLES_BY_RUN = ("verify_reports", "verify_flags")


@dataclass(frozen=True)
class MergeResult:
    runs_added: int
    runs_already: int
    predictions_added: int
    published: int
    kept_existing: int  # imported predictions left staged: the key had a published answer
    replaced: int  # keys whose answer the import took over (--replace)


def origin_of(signature: str, created_at: float, model_sha256: str, provenance_json: str) -> str:
    try:
        prov = json.loads(provenance_json or "{}")
    except ValueError:
        prov = {}
    imported = prov.get("imported") if isinstance(prov, dict) else None
    if isinstance(imported, dict) and imported.get("origin"):
        return str(imported["origin"])
    text = f"{signature}\x00{created_at!r}\x00{model_sha256}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def prepare(snapshot: Path, data_dir: Path, bundle_id: str) -> Path:
    """A working copy of the bundle's store in the data folder, at this tui-infer's schema
    and key recipe (the bundle itself is never written)."""
    from tui_infer.core.static.store import MIGRATIONS, PredictionStore

    conn = sqlite3.connect(f"file:{snapshot}?mode=ro", uri=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    if version > len(MIGRATIONS):
        raise BundleError(
            f"{snapshot}: the store was written by a newer tui-infer (schema {version}, this "
            f"one knows {len(MIGRATIONS)}); install the tui-infer in the bundle (./install.sh)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    work = data_dir / f".bundle-import-{bundle_id[:16]}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(work) + suffix).unlink(missing_ok=True)
    shutil.copyfile(snapshot, work)
    PredictionStore(work).close()  # migrations and re-keying, on the copy
    return work


def merge(
    snapshot: Path,
    store_file: Path,
    *,
    bundle_id: str,
    bundle_dir: str,
    replace: bool,
) -> MergeResult:
    from tui_infer.core.static.store import PredictionStore

    PredictionStore(store_file).close()  # created, or brought to this schema
    work = prepare(snapshot, store_file.parent, bundle_id)
    conn = sqlite3.connect(store_file, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("ATTACH DATABASE ? AS b", (str(work),))
        try:
            return _merge(conn, bundle_id=bundle_id, bundle_dir=bundle_dir, replace=replace)
        finally:
            conn.execute("DETACH DATABASE b")
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(work) + suffix).unlink(missing_ok=True)


def _merge(
    conn: sqlite3.Connection, *, bundle_id: str, bundle_dir: str, replace: bool
) -> MergeResult:
    now = time.time()
    run_cols = [c for c in _columns(conn, "main", "runs") if c != "id"]
    b_run_cols = set(_columns(conn, "b", "runs"))
    run_cols = [c for c in run_cols if c in b_run_cols]
    pred_cols = [c for c in _columns(conn, "main", "predictions") if c != "run_id"]
    b_pred_cols = set(_columns(conn, "b", "predictions"))
    pred_cols = [c for c in pred_cols if c in b_pred_cols]
    added = already = preds = published = kept = replaced = 0
    with transaction(conn):
        origins = {
            origin_of(*r)
            for r in conn.execute(
                "SELECT signature, created_at, model_sha256, provenance_json FROM main.runs"
            )
        }
        served = {
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT key FROM main.predictions WHERE status = 'published'"
            )
        }
        runs = conn.execute(f"SELECT id, {', '.join(run_cols)} FROM b.runs ORDER BY id").fetchall()
        for row in runs:
            old_id, values = row[0], dict(zip(run_cols, row[1:], strict=True))
            origin = origin_of(
                values["signature"],
                values["created_at"],
                values["model_sha256"],
                values.get("provenance_json", "{}"),
            )
            if origin in origins:
                already += 1
                continue
            origins.add(origin)
            prov: dict[str, Any] = json.loads(values.get("provenance_json") or "{}")
            prov["imported"] = {
                "origin": origin,
                "bundle": bundle_id,
                "bundle_dir": bundle_dir,
                "run_id_in_bundle": old_id,
                "imported_at": now,
            }
            if "provenance_json" in values:
                values["provenance_json"] = json.dumps(prov, sort_keys=True)
            cur = conn.execute(
                f"INSERT INTO main.runs ({', '.join(run_cols)}) VALUES "
                f"({', '.join('?' for _ in run_cols)})",
                [values[c] for c in run_cols],
            )
            new_id = int(cur.lastrowid or 0)
            added += 1
            for prow in conn.execute(
                f"SELECT {', '.join(pred_cols)} FROM b.predictions WHERE run_id = ? "
                "ORDER BY position",
                (old_id,),
            ).fetchall():
                p = dict(zip(pred_cols, prow, strict=True))
                if p["status"] == "published":
                    if p["key"] in served:
                        if replace:
                            p["published_at"] = now
                            replaced += 1
                        else:
                            p["status"], p["published_at"] = "staged", None
                            kept += 1
                    if p["status"] == "published":
                        published += 1
                cols = ["run_id", *pred_cols]
                conn.execute(
                    f"INSERT INTO main.predictions ({', '.join(cols)}) VALUES "
                    f"({', '.join('?' for _ in cols)})",
                    [new_id, *(p[c] for c in pred_cols)],
                )
                preds += 1
            for table in RUN_TABLES_BY_RUN:
                cols = [c for c in _columns(conn, "main", table) if c != "run_id"]
                bcols = set(_columns(conn, "b", table))
                if not bcols:
                    continue
                cols = [c for c in cols if c in bcols]
                conn.execute(
                    f"INSERT OR IGNORE INTO main.{table} (run_id, {', '.join(cols)}) "
                    f"SELECT ?, {', '.join(cols)} FROM b.{table} WHERE run_id = ?",
                    (new_id, old_id),
                )
    return MergeResult(added, already, preds, published, kept, replaced)
