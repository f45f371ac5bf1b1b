"""Bench results kept with their configuration, so runs can be compared later."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.bench.measure import BenchConfig, BenchResult
from tui_infer.core.db import connect, transaction
from tui_infer.core.errors import NotFoundError

MIGRATIONS = [
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        created REAL NOT NULL,
        model_path TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        quantization TEXT NOT NULL,
        environment TEXT NOT NULL
    );
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        test TEXT NOT NULL,
        kind TEXT NOT NULL,
        n_tokens INTEGER NOT NULL,
        depth INTEGER NOT NULL,
        config TEXT NOT NULL,
        samples TEXT NOT NULL,
        ceiling_tps REAL
    );
    CREATE INDEX results_run ON results (run_id);
    """,
]


@dataclass(frozen=True)
class BenchRun:
    id: int
    created: float
    model_path: str
    model_sha256: str
    quantization: str
    environment: dict[str, Any]
    results: tuple[BenchResult, ...]


class BenchHistory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path, MIGRATIONS)

    def close(self) -> None:
        self._conn.close()

    def start_run(self, model: Path, sha256: str, quantization: str, env: dict[str, Any]) -> int:
        with transaction(self._conn) as c:
            cur = c.execute(
                "INSERT INTO runs (created, model_path, model_sha256, quantization, environment)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time(), str(model), sha256, quantization, json.dumps(env)),
            )
            return int(cur.lastrowid or 0)

    def add_result(self, run_id: int, r: BenchResult) -> None:
        with transaction(self._conn) as c:
            c.execute(
                "INSERT INTO results (run_id, test, kind, n_tokens, depth, config, samples,"
                " ceiling_tps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    r.test,
                    r.kind,
                    r.n_tokens,
                    r.depth,
                    json.dumps(r.config.__dict__),
                    json.dumps(list(r.samples_tps)),
                    r.ceiling_tps,
                ),
            )

    def runs(self) -> list[BenchRun]:
        ids = [row[0] for row in self._conn.execute("SELECT id FROM runs ORDER BY id")]
        return [self.get(i) for i in ids]

    def get(self, run_id: int) -> BenchRun:
        row = self._conn.execute(
            "SELECT id, created, model_path, model_sha256, quantization, environment"
            " FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no bench run {run_id}; 'tui-infer bench history' lists them")
        results = tuple(
            BenchResult(
                test,
                kind,
                n,
                depth,
                BenchConfig(**json.loads(cfg)),
                tuple(json.loads(samples)),
                ceiling,
            )
            for test, kind, n, depth, cfg, samples, ceiling in self._conn.execute(
                "SELECT test, kind, n_tokens, depth, config, samples, ceiling_tps"
                " FROM results WHERE run_id = ? ORDER BY id",
                (run_id,),
            )
        )
        return BenchRun(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), results)
