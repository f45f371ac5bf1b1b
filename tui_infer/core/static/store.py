"""The prediction store: a batch run's answers, kept to be served at lookup speed.

One SQLite file (data_dir/store.sqlite3, WAL, busy timeout, migrations through
core/db.py). A request's key is the sha256 of the model's sha256, the chat
template's source, the normalized sampling parameters and the normalized
messages. Each batch is a run; its predictions are written one transaction
each (a kill -9 loses at most the one being written) and stay *staged* until
the run is published. The newest published prediction for a key answers it;
rolling back the latest published run makes the previous one answer again.

How keys are made (normalization, the recipe and its version) is in `keys.py`. Every
prediction records the recipe version it was keyed with and the parameters it was made
with; opening the store re-keys predictions of an older recipe where `keys.REKEYERS`
knows how, and `stale_runs()` (shown by `store stats`) names the runs it could not, with
the reason: nothing stops matching silently. A miss can be explained: `near_miss()` finds
the same conversation precomputed under other parameters or another template.

Hit and miss counts are kept in memory and written on flush_counters()/close(), and by
a lookup at most once a minute (FLUSH_EVERY_S: another process's `store drift` sees a
running server's traffic), so that a lookup is a single indexed read (product budget:
20,000/s). They are kept as totals and per hour (table lookup_hours, read by drift.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.db import StoreError, connect, transaction
from tui_infer.core.errors import NotFoundError, TuiInferError
from tui_infer.core.inference.types import Message
from tui_infer.core.models.digest import HASHES_FILE, DigestCache
from tui_infer.core.static import keys
from tui_infer.core.static.keys import messages_json, messages_key, params_hash

STORE_FILE = "store.sqlite3"

MIGRATIONS = [
    """
    CREATE TABLE model_hashes (
        path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        signature TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        model_path TEXT NOT NULL,
        template_sha256 TEXT NOT NULL,
        params_json TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        input_path TEXT NOT NULL DEFAULT '',
        n_items INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'running',
        created_at REAL NOT NULL,
        finished_at REAL,
        published_at REAL,
        llama_cpp_version TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX runs_signature ON runs(signature);
    CREATE TABLE predictions (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        item_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        key TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        messages_json TEXT NOT NULL,
        output TEXT NOT NULL,
        finish_reason TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        generated_tokens INTEGER NOT NULL,
        ttft_s REAL NOT NULL,
        total_s REAL NOT NULL,
        seed INTEGER,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'staged',
        published_at REAL,
        PRIMARY KEY (run_id, item_id)
    );
    CREATE INDEX predictions_serving ON predictions(key, status, published_at);
    CREATE TABLE misses (
        key TEXT PRIMARY KEY,
        model_sha256 TEXT NOT NULL,
        params_json TEXT NOT NULL,
        messages_json TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL
    );
    CREATE TABLE lookup_counts (
        model_sha256 TEXT PRIMARY KEY,
        hits INTEGER NOT NULL DEFAULT 0,
        misses INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: the key recipe's version, the parameters and a messages-only key per prediction
    # (parameters back-filled from the run: per-item max_tokens were not kept before)
    """
    ALTER TABLE predictions ADD COLUMN key_version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE predictions ADD COLUMN params_json TEXT NOT NULL DEFAULT '';
    ALTER TABLE predictions ADD COLUMN messages_key TEXT NOT NULL DEFAULT '';
    UPDATE predictions SET
        params_json = (SELECT params_json FROM runs WHERE runs.id = predictions.run_id),
        messages_key = tui_infer_messages_key(model_sha256, messages_json);
    CREATE INDEX predictions_messages ON predictions(messages_key, status);
    """,
    # 3: model hashes live in the one digest cache (hashes.sqlite3) now
    """
    DROP TABLE IF EXISTS model_hashes;
    """,
    # 4: lookups counted per model and hour (the start of the hour, unix seconds), for
    # `store drift`: the hit rate over time (lookup_counts keeps the all-time totals)
    """
    CREATE TABLE lookup_hours (
        model_sha256 TEXT NOT NULL,
        hour INTEGER NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0,
        misses INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model_sha256, hour)
    ) WITHOUT ROWID;
    """,
    # 5: a miss keeps the template it was rendered with (the rest of its key is kept
    # already): `store misses` writes it, `batch` checks it before running the line
    """
    ALTER TABLE misses ADD COLUMN template_sha256 TEXT NOT NULL DEFAULT '';
    CREATE INDEX misses_count ON misses(count);
    """,
    # 6: verify before publish: each prediction's token log-probabilities (mean and
    # minimum), the verification report (its checks and the rows they flagged) and the
    # run's provenance (versions, backend, input sha256, command line)
    """
    ALTER TABLE predictions ADD COLUMN mean_logprob REAL;
    ALTER TABLE predictions ADD COLUMN min_logprob REAL;
    ALTER TABLE runs ADD COLUMN provenance_json TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE verify_reports (
        run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        checks_json TEXT NOT NULL,
        n_predictions INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE verify_flags (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        item_id TEXT NOT NULL,
        check_name TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (run_id, item_id, check_name)
    );
    """,
]

# What the store serves: a finished answer, not an error or a prompt that did not fit.
SERVABLE = ("stop", "length")

HOUR_S = 3600
FLUSH_EVERY_S = 60.0  # a lookup writes the counts it holds at most this often


# ----- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    id: int
    model_sha256: str
    model_path: str
    params: dict[str, Any]
    params_hash: str
    input_path: str
    n_items: int
    n_done: int
    n_rejected: int
    status: str  # running, done, interrupted, published, rolled-back
    created_at: float
    finished_at: float | None
    published_at: float | None
    generated_tokens: int


@dataclass(frozen=True)
class Prediction:
    run_id: int
    item_id: str
    position: int
    key: str
    model_sha256: str
    messages: list[dict[str, str]]
    output: str
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    total_s: float
    seed: int | None
    created_at: float
    status: str  # staged, published, rejected
    published_at: float | None
    # the generated tokens' log-probabilities (None: no token, or made before they were kept)
    mean_logprob: float | None = None
    min_logprob: float | None = None

    @property
    def prompt(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


_PRED_COLS = (
    "run_id, item_id, position, key, model_sha256, messages_json, output, finish_reason, "
    "prompt_tokens, generated_tokens, ttft_s, total_s, seed, created_at, status, published_at, "
    "mean_logprob, min_logprob"
)


class RunNotFoundError(StoreError, NotFoundError):
    """A run id the store does not have (exit code 4)."""


def _register_functions(conn: sqlite3.Connection) -> None:
    """SQL functions the migrations call."""
    conn.create_function("tui_infer_messages_key", 2, messages_key, deterministic=True)


def _prediction(row: Sequence[Any]) -> Prediction:
    return Prediction(
        run_id=row[0],
        item_id=row[1],
        position=row[2],
        key=row[3],
        model_sha256=row[4],
        messages=json.loads(row[5]),
        output=row[6],
        finish_reason=row[7],
        prompt_tokens=row[8],
        generated_tokens=row[9],
        ttft_s=row[10],
        total_s=row[11],
        seed=row[12],
        created_at=row[13],
        status=row[14],
        published_at=row[15],
        mean_logprob=row[16],
        min_logprob=row[17],
    )


@dataclass(frozen=True)
class VerifyReport:
    """A run's verification: the checks that ran (name -> what they were given) and, per
    flagged item id, (check, detail) pairs; stale when predictions were added since."""

    run_id: int
    checks: dict[str, Any]
    n_predictions: int
    created_at: float
    flags: dict[str, list[tuple[str, str]]]


@dataclass(frozen=True)
class ModelStats:
    model_sha256: str
    entries: int  # published predictions
    staged: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PredictionStore:
    """The store file. Safe to share between threads (one lock) and processes (WAL)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        """clock: the wall clock lookups and misses are counted by (tests give their own)."""
        self.path = path
        self._conn = connect(path, MIGRATIONS, _register_functions)
        self._lock = threading.RLock()
        self._clock = clock
        self._counts: dict[str, list[int]] = {}  # model sha256 -> [hits, misses], unflushed
        # (model sha256, hour start) -> [hits, misses], unflushed
        self._hours: dict[tuple[str, int], list[int]] = {}
        self._flushed_at = clock()
        self._digests = DigestCache(path.parent / HASHES_FILE)  # opened on first use
        self.session_hits = 0
        self.session_misses = 0

        self._rekey()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PredictionStore:
        return cls(data_dir / STORE_FILE)

    # ----- the key recipe's version ---------------------------------------------------------

    def _rekey(self) -> None:
        """Bring predictions keyed with an older recipe to keys.KEY_VERSION where a
        re-keyer knows how; the others keep their version (and stale_runs() names them)."""
        current = keys.KEY_VERSION
        with self._lock:
            old = self._conn.execute(
                "SELECT 1 FROM predictions WHERE key_version < ? LIMIT 1", (current,)
            ).fetchone()
            if old is None:
                return
            rows = self._conn.execute(
                "SELECT p.run_id, p.item_id, p.key_version, p.model_sha256, r.template_sha256, "
                "p.params_json, p.messages_json FROM predictions p JOIN runs r ON r.id = p.run_id "
                "WHERE p.key_version < ?",
                (current,),
            ).fetchall()
            with self._write():
                for run_id, item_id, version, sha, tsha, params, msgs in rows:
                    try:
                        key = None
                        for v in range(version, current):
                            rekeyer = keys.REKEYERS.get(v)
                            if rekeyer is None:
                                raise ValueError(f"no way to re-key recipe v{v}")
                            key = rekeyer(sha, tsha, json.loads(params or "{}"), json.loads(msgs))
                    except ValueError:
                        continue
                    self._conn.execute(
                        "UPDATE predictions SET key = ?, key_version = ? "
                        "WHERE run_id = ? AND item_id = ?",
                        (key, current, run_id, item_id),
                    )

    def stale_runs(self) -> list[tuple[int, int, str]]:
        """(run id, predictions, reason) for runs whose predictions could not be re-keyed
        to the current recipe: they no longer answer any request."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT run_id, key_version, COUNT(*) FROM predictions WHERE key_version < ? "
                "GROUP BY run_id, key_version ORDER BY run_id",
                (keys.KEY_VERSION,),
            ).fetchall()
        return [
            (
                run_id,
                n,
                f"keyed with recipe v{v}; this tui-infer keys with "
                f"v{keys.KEY_VERSION} and cannot re-key it: rerun its batch",
            )
            for run_id, v, n in rows
        ]

    def near_miss(
        self, model_sha256: str, messages: Iterable[Message]
    ) -> tuple[dict[str, Any], str] | None:
        """(params, template sha256) of the newest published prediction for the same model
        and messages under any parameters: what explains a miss."""
        mkey = messages_key(model_sha256, messages_json(messages))
        with self._lock:
            row = self._conn.execute(
                "SELECT p.params_json, r.template_sha256 FROM predictions p "
                "JOIN runs r ON r.id = p.run_id WHERE p.messages_key = ? "
                "AND p.status = 'published' ORDER BY p.published_at DESC LIMIT 1",
                (mkey,),
            ).fetchone()
        return (json.loads(row[0] or "{}"), str(row[1])) if row else None

    def close(self) -> None:
        with self._lock:
            self.flush_counters()
            self._conn.close()
            self._digests.close()

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> Any:
        return transaction(self._conn)

    # ----- model hashes --------------------------------------------------------------------

    def model_sha256(self, path: Path) -> str:
        """The file's sha256 from the one cache (core/models/digest.py, beside the store):
        a 98 MB model is read once, not per run."""
        return self._digests.sha256(path)

    # ----- runs ----------------------------------------------------------------------------

    def find_run(self, signature: str) -> RunInfo | None:
        """The latest run of exactly this model, parameters and input, to resume it."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id FROM runs WHERE signature = ? ORDER BY id DESC LIMIT 1", (signature,)
            ).fetchone()
        return self.run(int(row[0])) if row else None

    def create_run(
        self,
        *,
        signature: str,
        model_sha256: str,
        model_path: str,
        template_sha256: str,
        params: dict[str, Any],
        n_items: int,
        input_path: str = "",
        llama_cpp_version: str = "",
        provenance: dict[str, Any] | None = None,
    ) -> int:
        """`provenance`: what made the run (static/provenance.py), shown by `store show`."""
        with self._lock, self._write():
            cur = self._conn.execute(
                "INSERT INTO runs (signature, model_sha256, model_path, template_sha256, "
                "params_json, params_hash, input_path, n_items, created_at, llama_cpp_version, "
                "provenance_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    signature,
                    model_sha256,
                    model_path,
                    template_sha256,
                    json.dumps(params, sort_keys=True),
                    params_hash(params),
                    input_path,
                    n_items,
                    time.time(),
                    llama_cpp_version,
                    json.dumps(provenance or {}, sort_keys=True),
                ),
            )
            return int(cur.lastrowid or 0)

    def provenance(self, run_id: int) -> dict[str, Any]:
        """What made the run ({} for a run made before provenance was kept)."""
        self.run(run_id)
        with self._lock:
            row = self._conn.execute(
                "SELECT provenance_json, llama_cpp_version FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        prov: dict[str, Any] = json.loads(row[0] or "{}")
        if not prov and row[1]:
            prov = {"llama_cpp_version": row[1]}
        return prov

    def set_run_status(self, run_id: int, status: str) -> None:
        with self._lock, self._write():
            finished = time.time() if status in ("done", "interrupted") else None
            self._conn.execute(
                "UPDATE runs SET status = ?, finished_at = COALESCE(?, finished_at) "
                "WHERE id = ? AND status NOT IN ('published', 'rolled-back')",
                (status, finished, run_id),
            )

    def done_ids(self, run_id: int) -> set[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id FROM predictions WHERE run_id = ?", (run_id,)
            ).fetchall()
        return {r[0] for r in rows}

    def add_prediction(
        self,
        run_id: int,
        *,
        item_id: str,
        position: int,
        key: str,
        model_sha256: str,
        messages: Iterable[Message],
        output: str,
        finish_reason: str,
        prompt_tokens: int,
        generated_tokens: int,
        ttft_s: float,
        total_s: float,
        seed: int | None,
        params: dict[str, Any] | None = None,
        mean_logprob: float | None = None,
        min_logprob: float | None = None,
    ) -> None:
        """One committed transaction per prediction: a kill -9 keeps every finished one.
        `params` are the normalized sampling parameters in its key; the log-probabilities
        are its generated tokens' mean and minimum (what `store verify` judges)."""
        msgs = messages_json(messages)
        with self._lock, self._write():
            self._conn.execute(
                f"INSERT OR IGNORE INTO predictions ({_PRED_COLS}, key_version, params_json, "
                "messages_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'staged', "
                "NULL, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    item_id,
                    position,
                    key,
                    model_sha256,
                    msgs,
                    output,
                    finish_reason,
                    prompt_tokens,
                    generated_tokens,
                    ttft_s,
                    total_s,
                    seed,
                    time.time(),
                    mean_logprob,
                    min_logprob,
                    keys.KEY_VERSION,
                    json.dumps(params or {}, sort_keys=True),
                    messages_key(model_sha256, msgs),
                ),
            )

    def _run_row_to_info(self, row: Sequence[Any]) -> RunInfo:
        counts = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'rejected'), 0), "
            "COALESCE(SUM(generated_tokens), 0) FROM predictions WHERE run_id = ?",
            (row[0],),
        ).fetchone()
        return RunInfo(
            id=row[0],
            model_sha256=row[1],
            model_path=row[2],
            params=json.loads(row[3]),
            params_hash=row[4],
            input_path=row[5],
            n_items=row[6],
            n_done=counts[0],
            n_rejected=counts[1],
            status=row[7],
            created_at=row[8],
            finished_at=row[9],
            published_at=row[10],
            generated_tokens=counts[2],
        )

    _RUN_COLS = (
        "id, model_sha256, model_path, params_json, params_hash, input_path, n_items, status, "
        "created_at, finished_at, published_at"
    )

    def run(self, run_id: int) -> RunInfo:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._RUN_COLS} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(
                    f"no run {run_id} in the store; 'tui-infer store runs' lists them"
                )
            return self._run_row_to_info(row)

    def runs(self) -> list[RunInfo]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {self._RUN_COLS} FROM runs ORDER BY id").fetchall()
            return [self._run_row_to_info(r) for r in rows]

    def predictions(self, run_id: int) -> list[Prediction]:
        self.run(run_id)  # a clear error for an unknown run
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_PRED_COLS} FROM predictions WHERE run_id = ? ORDER BY position",
                (run_id,),
            ).fetchall()
        return [_prediction(r) for r in rows]

    # ----- verification (static/verify.py decides; the report is kept here) ----------------

    def save_verification(
        self,
        run_id: int,
        checks: dict[str, Any],
        flags: Iterable[tuple[str, str, str]],
        *,
        keep_other_checks: bool = False,
    ) -> None:
        """Keep a verification of the run: `checks` (name -> what it was given) and the
        (item id, check, detail) it flagged. It replaces the run's report; with
        keep_other_checks the flags and entries of checks not named here stay."""
        self.run(run_id)
        with self._lock, self._write():
            old = self._conn.execute(
                "SELECT checks_json FROM verify_reports WHERE run_id = ?", (run_id,)
            ).fetchone()
            merged = dict(checks)
            if keep_other_checks and old is not None:
                merged = {**json.loads(old[0]), **checks}
                self._conn.executemany(
                    "DELETE FROM verify_flags WHERE run_id = ? AND check_name = ?",
                    [(run_id, name) for name in checks],
                )
            else:
                self._conn.execute("DELETE FROM verify_flags WHERE run_id = ?", (run_id,))
            self._conn.executemany(
                "INSERT OR REPLACE INTO verify_flags (run_id, item_id, check_name, detail) "
                "VALUES (?, ?, ?, ?)",
                [(run_id, item, check, detail) for item, check, detail in flags],
            )
            n = self._conn.execute(
                "SELECT COUNT(*) FROM predictions WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            self._conn.execute(
                "INSERT OR REPLACE INTO verify_reports (run_id, checks_json, n_predictions, "
                "created_at) VALUES (?, ?, ?, ?)",
                (run_id, json.dumps(merged, sort_keys=True), n, time.time()),
            )

    def verification(self, run_id: int) -> VerifyReport | None:
        """The run's kept verification, or None when it was never verified."""
        with self._lock:
            row = self._conn.execute(
                "SELECT checks_json, n_predictions, created_at FROM verify_reports "
                "WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                return None
            flags: dict[str, list[tuple[str, str]]] = {}
            for item, check, detail in self._conn.execute(
                "SELECT f.item_id, f.check_name, f.detail FROM verify_flags f "
                "LEFT JOIN predictions p ON p.run_id = f.run_id AND p.item_id = f.item_id "
                "WHERE f.run_id = ? ORDER BY p.position, f.check_name",
                (run_id,),
            ):
                flags.setdefault(item, []).append((check, detail))
        return VerifyReport(run_id, json.loads(row[0]), row[1], row[2], flags)

    def prediction_params(self, run_id: int) -> dict[str, dict[str, Any]]:
        """item id -> the normalized sampling parameters it was made with (in its key)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id, params_json FROM predictions WHERE run_id = ?", (run_id,)
            ).fetchall()
        return {r[0]: json.loads(r[1] or "{}") for r in rows}

    def run_template_sha256(self, run_id: int) -> str:
        """The sha256 of the chat template the run's prompts were rendered with."""
        self.run(run_id)
        with self._lock:
            row = self._conn.execute(
                "SELECT template_sha256 FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        return str(row[0])

    def prediction_count(self, run_id: int) -> int:
        with self._lock:
            return int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM predictions WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
            )

    # ----- review: publish, reject, rollback ----------------------------------------------

    def publish(self, run_id: int) -> int:
        """Serve the run's staged, finished predictions; returns how many."""
        info = self.run(run_id)
        if info.status == "running":
            raise StoreError(
                f"run {run_id} is still running (or was killed): rerun its batch command to "
                "finish it, then publish"
            )
        now = time.time()
        with self._lock, self._write():
            cur = self._conn.execute(
                "UPDATE predictions SET status = 'published', published_at = ? "
                f"WHERE run_id = ? AND status = 'staged' AND finish_reason IN {SERVABLE!r}",
                (now, run_id),
            )
            self._conn.execute(
                "UPDATE runs SET status = 'published', published_at = ? WHERE id = ?",
                (now, run_id),
            )
            return int(cur.rowcount)

    def reject(self, run_id: int, item_ids: Iterable[str]) -> int:
        """Reject predictions by item id (also published ones: they stop being served)."""
        ids = list(item_ids)
        self.run(run_id)
        with self._lock:
            known = {
                r[0]
                for r in self._conn.execute(
                    "SELECT item_id FROM predictions WHERE run_id = ?", (run_id,)
                )
            }
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise StoreError(
                f"run {run_id} has no prediction with id {', '.join(unknown)}; "
                f"'tui-infer store show {run_id}' lists its ids"
            )
        with self._lock, self._write():
            n = 0
            for item_id in ids:
                n += self._conn.execute(
                    "UPDATE predictions SET status = 'rejected' "
                    "WHERE run_id = ? AND item_id = ? AND status != 'rejected'",
                    (run_id, item_id),
                ).rowcount
        return n

    def rollback(self) -> int:
        """Unpublish the latest published run (its predictions go back to staged)."""
        with self._lock, self._write():
            row = self._conn.execute(
                "SELECT id FROM runs WHERE status = 'published' "
                "ORDER BY published_at DESC, id DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise StoreError("no published run to roll back; 'tui-infer store runs' lists runs")
            run_id = int(row[0])
            self._conn.execute(
                "UPDATE predictions SET status = 'staged', published_at = NULL "
                "WHERE run_id = ? AND status = 'published'",
                (run_id,),
            )
            self._conn.execute(
                "UPDATE runs SET status = 'rolled-back', published_at = NULL WHERE id = ?",
                (run_id,),
            )
        return run_id

    # ----- serving -------------------------------------------------------------------------

    def lookup(self, key: str, model_sha256: str = "") -> Prediction | None:
        """The newest published prediction for the key; counts a hit or a miss."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_PRED_COLS} FROM predictions WHERE key = ? AND status = 'published' "
                "ORDER BY published_at DESC, run_id DESC LIMIT 1",
                (key,),
            ).fetchone()
            now = self._clock()
            c = self._counts.get(model_sha256)
            if c is None:
                c = self._counts[model_sha256] = [0, 0]
            hour = (model_sha256, int(now // HOUR_S) * HOUR_S)
            h = self._hours.get(hour)
            if h is None:
                h = self._hours[hour] = [0, 0]
            if row is None:
                c[1] += 1
                h[1] += 1
                self.session_misses += 1
            else:
                c[0] += 1
                h[0] += 1
                self.session_hits += 1
            if now - self._flushed_at >= FLUSH_EVERY_S:
                try:
                    self.flush_counters()
                except (sqlite3.Error, TuiInferError):
                    # a full disk or a locked file must not fail a lookup (a hit does not
                    # need the disk): the counts stay in memory, tried again in a minute
                    self._flushed_at = now
        return _prediction(row) if row is not None else None

    def record_miss(
        self,
        key: str,
        model_sha256: str,
        params: dict[str, Any],
        messages: Iterable[Message],
        template_sha256: str = "",
    ) -> None:
        """Remember a request the store could not answer (exported by `store misses`), with
        every part of its key: messages, template, all sampling parameters, stop strings."""
        now = self._clock()
        with self._lock, self._write():
            self._conn.execute(
                "INSERT INTO misses (key, model_sha256, params_json, messages_json, count, "
                "first_at, last_at, template_sha256) VALUES (?, ?, ?, ?, 1, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + 1, last_at = excluded.last_at",
                (
                    key,
                    model_sha256,
                    json.dumps(params, sort_keys=True),
                    messages_json(messages),
                    now,
                    now,
                    template_sha256,
                ),
            )

    def misses(
        self, model_sha256: str | None = None, top: int | None = None, min_count: int = 1
    ) -> list[dict[str, Any]]:
        """Missed requests not answered since, most missed first (then the oldest): each
        {'key', 'model_sha256', 'template_sha256', 'messages', 'params', 'count',
        'first_at', 'last_at'}; at most `top` of them, each missed `min_count` times or more."""
        sql = (
            "SELECT m.key, m.model_sha256, m.params_json, m.messages_json, m.count, m.first_at, "
            "m.last_at, m.template_sha256 FROM misses m "
            "WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.key = m.key "
            "AND p.status = 'published') AND m.count >= ?"
        )
        args: tuple[Any, ...] = (min_count,)
        if model_sha256:
            sql += " AND m.model_sha256 = ?"
            args += (model_sha256,)
        sql += " ORDER BY m.count DESC, m.first_at, m.key"
        if top is not None:
            sql += " LIMIT ?"
            args += (top,)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [
            {
                "key": r[0],
                "model_sha256": r[1],
                "params": json.loads(r[2]),
                "messages": json.loads(r[3]),
                "count": r[4],
                "first_at": r[5],
                "last_at": r[6],
                "template_sha256": r[7],
            }
            for r in rows
        ]

    def any_sample(
        self, model_sha256: str, messages: Iterable[Message], template_sha256: str
    ) -> Prediction | None:
        """--serve store-any-sample: the newest published prediction for the same model and
        messages whatever its sampling parameters (one made with this template first).
        Called right after lookup() missed: when it answers, that miss is counted a hit."""
        mkey = messages_key(model_sha256, messages_json(messages))
        with self._lock:
            row = self._conn.execute(
                f"SELECT {', '.join('p.' + c.strip() for c in _PRED_COLS.split(','))} "
                "FROM predictions p JOIN runs r ON r.id = p.run_id "
                "WHERE p.messages_key = ? AND p.status = 'published' "
                "ORDER BY r.template_sha256 = ? DESC, p.published_at DESC, p.run_id DESC "
                "LIMIT 1",
                (mkey, template_sha256),
            ).fetchone()
            if row is None:
                return None
            hour = int(self._clock() // HOUR_S) * HOUR_S
            for counts in (self._counts.get(model_sha256), self._hours.get((model_sha256, hour))):
                if counts is not None and counts[1] > 0:
                    counts[1] -= 1
                    counts[0] += 1
            if self.session_misses > 0:
                self.session_misses -= 1
                self.session_hits += 1
        return _prediction(row)

    def flush_counters(self) -> None:
        with self._lock:
            self._flushed_at = self._clock()
            pending = {k: v for k, v in self._counts.items() if v[0] or v[1]}
            if not pending:
                return
            with self._write():
                for sha, (hits, misses) in pending.items():
                    self._conn.execute(
                        "INSERT INTO lookup_counts (model_sha256, hits, misses) VALUES (?, ?, ?) "
                        "ON CONFLICT(model_sha256) DO UPDATE SET hits = hits + excluded.hits, "
                        "misses = misses + excluded.misses",
                        (sha, hits, misses),
                    )
                for (sha, hour), (hits, misses) in self._hours.items():
                    self._conn.execute(
                        "INSERT INTO lookup_hours (model_sha256, hour, hits, misses) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT(model_sha256, hour) DO UPDATE SET "
                        "hits = hits + excluded.hits, misses = misses + excluded.misses",
                        (sha, hour, hits, misses),
                    )
            self._counts.clear()
            self._hours.clear()

    def lookup_hours(
        self, model_sha256: str | None = None, since: float = 0.0
    ) -> list[tuple[str, int, int, int]]:
        """(model sha256, hour start, hits, misses) per model and hour from `since` on,
        oldest first (unflushed counts included)."""
        self.flush_counters()
        sql = "SELECT model_sha256, hour, hits, misses FROM lookup_hours WHERE hour >= ?"
        args: tuple[Any, ...] = (int(since // HOUR_S) * HOUR_S,)
        if model_sha256 is not None:
            sql += " AND model_sha256 = ?"
            args += (model_sha256,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY hour, model_sha256", args).fetchall()
        return [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def published_messages(
        self, model_sha256: str | None = None, limit: int = 50_000
    ) -> list[tuple[int, str, list[dict[str, str]]]]:
        """(run id, item id, messages) of the newest `limit` published predictions: what a
        miss is compared with to tell a new kind of request from a near one."""
        sql = "SELECT run_id, item_id, messages_json FROM predictions WHERE status = 'published'"
        args: tuple[Any, ...] = ()
        if model_sha256 is not None:
            sql += " AND model_sha256 = ?"
            args = (model_sha256,)
        with self._lock:
            rows = self._conn.execute(
                sql + " ORDER BY published_at DESC, run_id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

    def model_sha256s(self) -> list[str]:
        """Every model the store has predictions, misses or counted lookups for."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT model_sha256 FROM predictions UNION SELECT model_sha256 FROM misses "
                "UNION SELECT model_sha256 FROM lookup_counts UNION "
                "SELECT model_sha256 FROM lookup_hours"
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def stats(self) -> tuple[list[ModelStats], int]:
        """Per-model figures, and the store file's size in bytes (with its WAL)."""
        self.flush_counters()
        with self._lock:
            per: dict[str, list[int]] = {}
            for sha, published, staged in self._conn.execute(
                "SELECT model_sha256, SUM(status = 'published'), SUM(status = 'staged') "
                "FROM predictions GROUP BY model_sha256"
            ):
                per.setdefault(sha, [0, 0, 0, 0])[0:2] = [published, staged]
            for sha, hits, misses in self._conn.execute(
                "SELECT model_sha256, hits, misses FROM lookup_counts"
            ):
                per.setdefault(sha, [0, 0, 0, 0])[2:4] = [hits, misses]
        size = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                size += os.path.getsize(p)
        stats = [ModelStats(sha, *v) for sha, v in sorted(per.items())]
        return stats, size


__all__ = [
    "MIGRATIONS",
    "ModelStats",
    "Prediction",
    "PredictionStore",
    "RunInfo",
    "StoreError",
    "VerifyReport",
]
