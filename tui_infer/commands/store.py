"""`tui-infer store ...`: review, publish, roll back and export the prediction store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.commands.tables import output_flags, print_json, wants

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
    runs = ss.add_parser("runs", help="list the runs")
    output_flags(runs, quiet="the run ids")
    show = ss.add_parser("show", help="a run's provenance and predictions, with their flags")
    show.add_argument("run", type=int)
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.add_argument(
        "--flagged", action="store_true", help="only the predictions verification flagged"
    )
    pub = ss.add_parser(
        "publish",
        help="serve a run's staged predictions (refused while flagged ones are not reviewed)",
        description="Serve the run's staged predictions. The run is verified first (the "
        "built-in checks, and what 'store verify' found): while a flagged prediction is "
        "neither rejected nor forced through, nothing is published and the command exits 1.",
    )
    pub.add_argument("run", type=int)
    pub.add_argument(
        "--force", action="store_true", help="publish even with flagged predictions not rejected"
    )
    ver = ss.add_parser(
        "verify",
        help="flag what should not be served without a look",
        description="Check a run's answers: cut off at max tokens, empty, degenerate "
        "repetition, control characters or broken UTF-8, a mean token logprob far below the "
        "run's own (a robust outlier), and, when asked, a sample recomputed one sequence at a "
        "time that answers differently, and your own checks. The report is kept with the run; "
        "'store publish' refuses a run whose flagged predictions are not rejected.",
    )
    ver.add_argument("run", type=int)
    ver.add_argument(
        "--resample",
        metavar="SHARE",
        help="recompute this share of the run alone (e.g. 5%%) and flag answers that differ",
    )
    ver.add_argument(
        "--check-regex", metavar="RE", help="flag answers this regular expression does not find"
    )
    ver.add_argument(
        "--check-json-schema",
        type=Path,
        metavar="FILE",
        help="flag answers that are not JSON valid under this schema",
    )
    ver.add_argument(
        "--check-cmd",
        metavar="CMD",
        help="a shell command reading the rows as JSONL on stdin and answering "
        "'ID pass' or 'ID fail REASON' per line on stdout",
    )
    output_flags(ver)
    rej = ss.add_parser("reject", help="reject predictions of a run by id")
    rej.add_argument("run", type=int)
    rej.add_argument("ids", nargs="+", metavar="ID")
    ss.add_parser("rollback", help="unpublish the latest published run")
    stats = ss.add_parser("stats", help="entries, size, hits, misses, hit rate per model")
    output_flags(stats)
    exp = ss.add_parser("export", help="a run's predictions as JSONL")
    exp.add_argument("run", type=int)
    exp.add_argument("-o", "--output", type=Path, required=True)
    mis = ss.add_parser(
        "misses",
        help="requests the store missed, as the next batch's input",
        description="Write the requests the store missed and that no published prediction "
        "answers yet, most missed first, as JSONL that 'tui-infer batch' runs with exactly "
        "their parameters (messages, every sampling parameter, stop strings, and the model "
        "and template they were asked with): once that batch is published, they are hits.",
    )
    mis.add_argument("-o", "--output", type=Path, help="write them here (required unless --json)")
    mis.add_argument(
        "--json", action="store_true", help="print them as one JSON array (the lines -o writes)"
    )
    mis.add_argument("--top", type=int, metavar="N", help="only the N most missed")
    mis.add_argument(
        "--min-count", type=int, default=1, metavar="K", help="only those missed K times or more"
    )
    drift = ss.add_parser(
        "drift",
        help="hit rate and misses over time, the top misses, the share unlike anything stored",
        description="Is the store still answering what is asked? The hit rate and misses per "
        "hour or day, the most frequent requests still missed, and how many of them are "
        "near nothing stored (a near prediction is a suggestion, never served).",
    )
    drift.add_argument(
        "-m",
        "--model",
        default=argparse.SUPPRESS,
        help="only this model: a name, a .gguf path or a sha256 prefix (store stats shows "
        "them); default: every model",
    )
    drift.add_argument("--by", choices=("hour", "day"), default="hour", help="bucket size")
    drift.add_argument(
        "--last", type=int, metavar="N", help="buckets shown (default: 48 hours or 30 days)"
    )
    drift.add_argument("--limit", type=int, default=10, metavar="N", help="top misses shown")
    drift.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="similarity (0-1, character trigrams) from which a stored prompt is near a miss",
    )
    drift.add_argument("--json", action="store_true", help="print one JSON document")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from tui_infer.core.files import atomic_write

    atomic_write(path, [json.dumps(r, ensure_ascii=False) for r in rows], parents=False)


READ_ONLY = ("runs", "show", "stats", "export", "misses", "drift")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.static.store import STORE_FILE, PredictionStore

    path = paths.data_dir / STORE_FILE
    if args.store_command in READ_ONLY and not path.exists():
        # reading must not create the file: an empty store, in memory, answers instead
        path = Path(":memory:")
    store = PredictionStore(path)
    try:
        if args.store_command == "verify":
            return _verify(store, args, settings, paths)
        return _dispatch(store, args)
    finally:
        store.close()


def _dispatch(store: Any, args: argparse.Namespace) -> int:
    cmd = args.store_command
    if cmd == "runs":
        runs = store.runs()
        if wants(args, "json"):
            print_json([_run_json(r) for r in runs])
            return 0
        if wants(args, "quiet"):
            for r in runs:
                print(r.id)
            return 0
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
        return _show(store, args)
    if cmd == "publish":
        return publish(store, args.run, args.force, f"'tui-infer store publish {args.run} --force'")
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
        if wants(args, "json"):
            print_json(_stats_json(store, stats, size))
            return 0
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
        from tui_infer.core.static.verify import report_flags

        preds = store.predictions(args.run)
        flags = report_flags(store, args.run)
        prov = store.provenance(args.run)
        rows = [{**_pred_dict(p, flags), "provenance": prov} for p in preds]
        _write_jsonl(args.output, rows)
        print(f"run {args.run}: {len(rows)} predictions written to {args.output}")
        return 0
    if cmd == "misses":
        return _misses(store, args)
    if cmd == "drift":
        return _drift(store, args)
    raise AssertionError(cmd)


def _misses(store: Any, args: argparse.Namespace) -> int:
    """`store misses -o FILE [--top N] [--min-count K]`: each line a JSONL batch input line
    carrying every part of the missed request's key."""
    from tui_infer.core.errors import TuiInferError

    if args.top is not None and args.top < 1:
        raise TuiInferError(f"--top must be at least 1, got {args.top}")
    if args.min_count < 1:
        raise TuiInferError(f"--min-count must be at least 1, got {args.min_count}")
    if args.output is None and not args.json:
        raise TuiInferError(
            "store misses needs -o FILE (the next batch's input) or --json (print them)"
        )
    from tui_infer.core.static.drift import miss_line

    rows = [
        miss_line(
            m["key"],
            m["messages"],
            m["params"],
            m["model_sha256"],
            m["template_sha256"],
            m["count"],
        )
        for m in store.misses(top=args.top, min_count=args.min_count)
    ]
    if args.output is not None:
        _write_jsonl(args.output, rows)
    if args.json:
        print_json(rows)
        return 0
    print(
        f"{len(rows)} missed requests written to {args.output}, most missed first "
        "(give it to 'tui-infer batch' as INPUT: each line keeps its own parameters)"
    )
    return 0


def publish(store: Any, run_id: int, force: bool, force_hint: str) -> int:
    """Publish through the verification gate (store publish and batch --publish): refused,
    exit 1, while flagged predictions are not rejected, unless forced."""
    from tui_infer.core.static import verify

    n = verify.publish(store, run_id, force, force_hint)  # refused: FlaggedRunError, exit 1
    line = f"run {run_id}: published {n} predictions"
    g = verify.gate(store, run_id) if force else None
    if g is not None and not g.clear:
        what = ", ".join(f"{c} {k}" for c, k in g.counts().items())
        line += f" ({len(g.unreviewed)} flagged and not reviewed, published with --force: {what})"
    print(line)
    return 0


def _run_json(r: Any) -> dict[str, Any]:
    """A run as `store runs --json` prints it (fields in the README)."""
    return {
        "run": r.id,
        "status": r.status,
        "items": r.n_items,
        "done": r.n_done,
        "rejected": r.n_rejected,
        "generated_tokens": r.generated_tokens,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "published_at": r.published_at,
        "model": Path(r.model_path).name,
        "model_path": r.model_path,
        "model_sha256": r.model_sha256,
        "input": r.input_path,
        "params": r.params,
    }


def _stats_json(store: Any, stats: list[Any], size: int) -> dict[str, Any]:
    in_memory = str(store.path) == ":memory:"
    return {
        "store": None if in_memory else str(store.path),
        "size_bytes": 0 if in_memory else size,
        "models": [
            {
                "model_sha256": s.model_sha256,
                "published": s.entries,
                "staged": s.staged,
                "hits": s.hits,
                "misses": s.misses,
                "hit_rate": s.hit_rate,
            }
            for s in stats
        ],
        "stale_runs": [
            {"run": run_id, "predictions": n, "reason": reason}
            for run_id, n, reason in store.stale_runs()
        ],
    }


def _flag_text(flags: list[tuple[str, str]]) -> str:
    return ", ".join(check for check, _ in flags)


def _show(store: Any, args: argparse.Namespace) -> int:
    """`store show RUN [--json] [--flagged]`: provenance and report first (text), then the
    predictions, each with its flags and its tokens' log-probabilities."""
    from tui_infer.core.static.provenance import describe
    from tui_infer.core.static.verify import report_flags

    preds = store.predictions(args.run)
    flags = report_flags(store, args.run)
    shown = [p for p in preds if p.item_id in flags] if args.flagged else preds
    if args.json:
        for p in shown:
            sys.stdout.write(json.dumps(_pred_dict(p, flags), ensure_ascii=False) + "\n")
        return 0
    run = store.run(args.run)
    print(
        f"run {run.id} · {run.status} · {run.n_done}/{run.n_items} done · created "
        f"{_when(run.created_at)}"
    )
    for line in describe(store.provenance(args.run)):
        print(f"  {line}")
    report = store.verification(args.run)
    n_flagged = sum(1 for p in preds if p.item_id in flags)
    checked = "verified " + _when(report.created_at) if report else "not verified yet"
    print(f"  flags: {n_flagged} of {len(preds)} predictions ({checked})")
    print()
    for p in shown:
        prompt = p.prompt.replace("\n", " ")
        reply = p.output.replace("\n", " ")
        lp = f", lp {p.mean_logprob:.2f}" if p.mean_logprob is not None else ""
        mark = f"  FLAGGED: {_flag_text(flags[p.item_id])}" if p.item_id in flags else ""
        print(
            f"{p.item_id}  [{p.status}, {p.finish_reason}, {p.generated_tokens} tok{lp}]  "
            f"{prompt[:60]!r} -> {reply[:80]!r}{mark}"
        )
        if args.flagged:
            for check, detail in flags[p.item_id]:
                print(f"    {check}: {detail}")
    if not preds:
        print(f"run {args.run} has no predictions yet")
    elif args.flagged and not shown:
        print(f"run {args.run}: nothing flagged")
    return 0


def _verify(store: Any, args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    """`store verify RUN [--resample SHARE] [--check-regex RE] [--check-json-schema FILE]
    [--check-cmd CMD]`: the report, kept with the run, and what to do next."""
    from tui_infer.core.static import verify

    checks = verify.Checks(
        resample=verify.parse_fraction(args.resample) if args.resample else 0.0,
        regex=args.check_regex,
        json_schema=args.check_json_schema,
        check_cmd=args.check_cmd,
    )
    outcome = verify.verify_run(store, args.run, checks, _runner_opener(store, settings, paths))
    by_item = outcome.by_item()
    counts: dict[str, int] = {}
    for f in outcome.flags:
        counts[f.check] = counts.get(f.check, 0) + 1
    g = verify.gate(store, args.run)
    if wants(args, "json"):
        print_json(
            {
                "run": args.run,
                "checked": outcome.checked,
                "flagged": len(by_item),
                "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
                "flags": [
                    {"id": item, "check": f.check, "detail": f.detail}
                    for item, flags in by_item.items()
                    for f in flags
                ],
                "resampled": outcome.resampled,
                "notes": outcome.notes,
                "clear": g.clear,
                "unreviewed": list(g.unreviewed),
            }
        )
        return 0
    for item, flags in by_item.items():
        for f in flags:
            print(f"{item}  {f.check}: {f.detail}")
    what = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    summary = f"run {args.run}: {outcome.checked} predictions checked, {len(by_item)} flagged"
    summary += f" ({what})" if what else ""
    if outcome.resampled:
        differ = counts.get("resample", 0)
        summary += f"; {len(outcome.resampled)} recomputed alone, {differ} differ"
    print(summary)
    for note in outcome.notes:
        print(f"  {note}")
    if g.clear:
        print(f"nothing to review: 'tui-infer store publish {args.run}' serves it")
    else:
        print(
            f"review: 'tui-infer store show {args.run} --flagged'; reject: 'tui-infer store "
            f"reject {args.run} ID...'; then 'tui-infer store publish {args.run}'"
        )
    return 0


def _runner_opener(store: Any, settings: Settings, paths: Paths) -> Callable[[Any], Any]:
    """For --resample: a one-sequence BatchRunner of the run's model, once the file and
    its chat template are checked to be the ones the run was made with."""

    def open_runner(run: Any) -> Any:
        from tui_infer.core.errors import TuiInferError
        from tui_infer.core.inference.batched import BatchRunner
        from tui_infer.core.request_path import target_for
        from tui_infer.core.static.keys import template_sha256

        path = Path(run.model_path)
        if not path.is_file():
            raise TuiInferError(
                f"--resample needs run {run.id}'s model, {path}: no such file; put it back "
                "or verify without --resample"
            )
        if store.model_sha256(path) != run.model_sha256:
            raise TuiInferError(
                f"--resample: {path} is not the file run {run.id} was made with (sha256 "
                f"differs); verify without --resample"
            )
        target = target_for(path, paths.config_file)
        if template_sha256(target.template_source) != store.run_template_sha256(run.id):
            raise TuiInferError(
                f"--resample: {path.name}'s chat template is not the one run {run.id} used "
                "(a [templates] entry changed?); verify without --resample"
            )
        return BatchRunner.load(path, target.load_options(settings), parallel=1)

    return open_runner


def _pred_dict(p: Any, flags: dict[str, list[tuple[str, str]]] | None = None) -> dict[str, Any]:
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
        "mean_logprob": p.mean_logprob,
        "min_logprob": p.min_logprob,
        "flags": [{"check": c, "detail": d} for c, d in (flags or {}).get(p.item_id, [])],
    }


def _drift_model(store: Any, arg: str | None) -> str | None:
    """-m as a model sha256: a sha256 prefix the store knows, else a name or a path."""
    import re

    from tui_infer.core.errors import ModelNotFoundError, TuiInferError
    from tui_infer.core.models.resolve import resolve_model

    if not arg:
        return None
    low = arg.lower()
    if re.fullmatch(r"[0-9a-f]{6,64}", low):
        known = [s for s in store.model_sha256s() if s.startswith(low)]
        if len(known) > 1:
            raise TuiInferError(f"-m {arg}: {len(known)} models' sha256 start so; give more of it")
        if known:
            return str(known[0])
    path = resolve_model(arg)
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"-m {arg}: no such model file; give a model name, a .gguf path or a sha256 "
            "prefix ('tui-infer store stats' lists the store's models)"
        )
    if str(store.path) == ":memory:":
        return "-"  # no store yet: nothing to show for any model, and nothing to hash into
    return str(store.model_sha256(path))


def _drift(store: Any, args: argparse.Namespace) -> int:
    from tui_infer.core.errors import TuiInferError
    from tui_infer.core.static.drift import drift

    if args.last is not None and args.last < 1:
        raise TuiInferError(f"--last must be at least 1, got {args.last}")
    if args.limit < 0:
        raise TuiInferError(f"--limit must be 0 or more, got {args.limit}")
    if not 0.0 < args.threshold <= 1.0:
        raise TuiInferError(
            f"--threshold must be above 0 and at most 1, got {args.threshold} "
            "(0.5: half the trigrams shared)"
        )
    sha = _drift_model(store, getattr(args, "model", None))
    report = drift(store, sha, by=args.by, span=args.last, top=args.limit, threshold=args.threshold)
    if args.json:
        print_json(report.as_dict())
        return 0
    print(_drift_text(report, str(store.path) == ":memory:"))
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _one_line(text: str, width: int) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= width else line[: width - 1] + "…")


def _drift_text(report: Any, no_store: bool) -> str:
    from tui_infer.commands.tables import Table

    unit = report.by
    fmt = "%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d"
    who = f"model {report.model_sha256[:12]}" if report.model_sha256 else "every model"
    out = [
        f"store drift per {unit}, the last {len(report.buckets)} {unit}s "
        f"(since {time.strftime(fmt, time.localtime(report.since))}), {who}"
    ]
    if no_store:
        out.append("store: none yet ('tui-infer batch' makes one)")
    out.append(
        f"lookups: {report.hits + report.misses}: {report.hits} hits, {report.misses} misses, "
        f"hit rate {_pct(report.hit_rate)}"
    )
    t = Table(unit, "hits", "misses", "hit rate", right=("hits", "misses", "hit rate"))
    for b in report.buckets:
        if b.lookups:
            t.add_row(
                time.strftime(fmt, time.localtime(b.start)), b.hits, b.misses, _pct(b.hit_rate)
            )
    if t.rows:
        out += ["", *t.lines(), f"({unit}s without lookups are left out; --json has them all)"]
    out.append("")
    if not report.open_misses:
        out.append("no missed request left unanswered in this window")
        return "\n".join(out)
    out.append(
        f"missed and still unanswered: {report.open_misses} requests, asked "
        f"{report.missed_requests} times; unlike anything stored: {report.unlike} "
        f"({_pct(report.unlike_share)} of the asks; similarity below {report.threshold:g})"
    )
    if report.top:
        t = Table("asked", "last", "prompt", "nearest stored (a suggestion, never served)")
        t.right = {0}
        for m in report.top:
            near = "nothing alike: a new kind of request"
            if m.near is not None:
                near = m.near.why
                if m.near.run_id is not None:
                    near += f": {_one_line(m.near.prompt, 40)}"
            t.add_row(
                m.count,
                time.strftime("%m-%d %H:%M", time.localtime(m.last_at)),
                _one_line(m.prompt, 50),
                near,
            )
        out += ["", f"top {len(report.top)} misses:", *t.lines()]
        out.append("'tui-infer store misses -o next.jsonl' writes them all as a batch's input")
    return "\n".join(out)
