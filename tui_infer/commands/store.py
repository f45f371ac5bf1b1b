"""`tui-infer store ...`: review, publish, roll back and export the prediction store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "store",
        help="the prediction store: runs, review, publish, rollback, stats, export",
        description="Batch runs keep their predictions staged here until published; "
        "published predictions answer identical requests in 'tui-infer run'.",
    )
    ss = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    ss.add_parser("runs", help="list the runs")
    show = ss.add_parser("show", help="a run's predictions")
    show.add_argument("run", type=int)
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    pub = ss.add_parser("publish", help="serve a run's staged predictions")
    pub.add_argument("run", type=int)
    rej = ss.add_parser("reject", help="reject predictions of a run by id")
    rej.add_argument("run", type=int)
    rej.add_argument("ids", nargs="+", metavar="ID")
    ss.add_parser("rollback", help="unpublish the latest published run")
    ss.add_parser("stats", help="entries, size, hits, misses, hit rate per model")
    exp = ss.add_parser("export", help="a run's predictions as JSONL")
    exp.add_argument("run", type=int)
    exp.add_argument("-o", "--output", type=Path, required=True)
    mis = ss.add_parser("misses", help="requests the store missed, as the next batch's input")
    mis.add_argument("-o", "--output", type=Path, required=True)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from tui_infer.core.files import atomic_write

    atomic_write(path, [json.dumps(r, ensure_ascii=False) for r in rows], parents=False)


READ_ONLY = ("runs", "show", "stats", "export", "misses")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.static.store import STORE_FILE, PredictionStore

    path = paths.data_dir / STORE_FILE
    if args.store_command in READ_ONLY and not path.exists():
        # reading must not create the file: an empty store, in memory, answers instead
        path = Path(":memory:")
    store = PredictionStore(path)
    try:
        return _dispatch(store, args)
    finally:
        store.close()


def _dispatch(store: Any, args: argparse.Namespace) -> int:
    cmd = args.store_command
    out = sys.stdout
    if cmd == "runs":
        runs = store.runs()
        if not runs:
            print("no runs yet: 'tui-infer batch INPUT -o OUTPUT' makes one")
            return 0
        from tui_infer.commands.tables import Table

        t = Table(
            "run",
            "status",
            "done",
            "rejected",
            "tokens",
            "created",
            "model",
            right=("run", "done", "rejected", "tokens"),
        )
        for r in runs:
            t.add_row(
                r.id,
                r.status,
                f"{r.n_done}/{r.n_items}",
                r.n_rejected,
                r.generated_tokens,
                _when(r.created_at),
                f"{Path(r.model_path).name} ({r.model_sha256[:12]})",
            )
        t.print()
        return 0
    if cmd == "show":
        preds = store.predictions(args.run)
        for p in preds:
            if args.json:
                out.write(json.dumps(_pred_dict(p), ensure_ascii=False) + "\n")
            else:
                prompt = p.prompt.replace("\n", " ")
                reply = p.output.replace("\n", " ")
                print(
                    f"{p.item_id}  [{p.status}, {p.finish_reason}, {p.generated_tokens} tok]  "
                    f"{prompt[:60]!r} -> {reply[:80]!r}"
                )
        if not preds:
            print(f"run {args.run} has no predictions yet")
        return 0
    if cmd == "publish":
        n = store.publish(args.run)
        print(f"run {args.run}: published {n} predictions")
        return 0
    if cmd == "reject":
        n = store.reject(args.run, args.ids)
        print(f"run {args.run}: rejected {n} predictions")
        return 0
    if cmd == "rollback":
        run_id = store.rollback()
        print(
            f"rolled back run {run_id}: its predictions are staged again; earlier published "
            "runs answer their requests"
        )
        return 0
    if cmd == "stats":
        stats, size = store.stats()
        if str(store.path) == ":memory:":
            print("store: none yet ('tui-infer batch' makes one)")
        else:
            print(f"store: {store.path} ({size / 1024:.1f} KiB)")
        if not stats:
            print("empty")
        for s in stats:
            print(
                f"model {s.model_sha256[:12]}: {s.entries} published, {s.staged} staged, "
                f"{s.hits} hits, {s.misses} misses, hit rate {s.hit_rate:.1%}"
            )
        # nothing stops matching silently: runs the key recipe could not carry forward
        for run_id, n, reason in store.stale_runs():
            print(f"run {run_id}: {n} predictions answer no request: {reason}")
        return 0
    if cmd == "export":
        rows = [_pred_dict(p) for p in store.predictions(args.run)]
        _write_jsonl(args.output, rows)
        print(f"run {args.run}: {len(rows)} predictions written to {args.output}")
        return 0
    if cmd == "misses":
        misses = store.misses()
        rows = [
            {
                "id": m["key"][:16],
                "messages": m["messages"],
                "max_tokens": m["params"].get("max_tokens"),
                "misses": m["count"],
            }
            for m in misses
        ]
        _write_jsonl(args.output, rows)
        print(
            f"{len(rows)} missed requests written to {args.output} "
            "(give it to 'tui-infer batch' as INPUT)"
        )
        return 0
    raise AssertionError(cmd)


def _pred_dict(p: Any) -> dict[str, Any]:
    return {
        "run": p.run_id,
        "id": p.item_id,
        "position": p.position,
        "key": p.key,
        "messages": p.messages,
        "output": p.output,
        "finish_reason": p.finish_reason,
        "prompt_tokens": p.prompt_tokens,
        "generated_tokens": p.generated_tokens,
        "ttft_s": p.ttft_s,
        "total_s": p.total_s,
        "seed": p.seed,
        "status": p.status,
        "model_sha256": p.model_sha256,
        "created_at": p.created_at,
        "published_at": p.published_at,
    }
