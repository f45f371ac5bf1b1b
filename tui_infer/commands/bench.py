"""`tui-infer bench`: llama-bench's pp/tg measurements, kept and compared."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui_infer.core.bench.measure import BenchResult
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths

DESCRIPTION = """\
Measure prompt processing (pp) and generation (tg) speed the way llama-bench does.

  pp N  a prompt of N tokens evaluated in --batch chunks into an empty context
        (or after --depth tokens); tokens/s = N / time
  tg N  N tokens decoded one at a time from an empty context (or after --depth
        tokens); input tokens are random, no sampler, as in llama-bench

Each test runs once to warm up, then -r times: the table shows the mean and the
standard deviation of tokens/s. Comma lists sweep a setting (-t 1,2 --kv-type
f16,q8_0). On the CPU, tg is also shown as a fraction of the memory-bandwidth
ceiling (measured bandwidth / bytes of weights read per token). Results are kept:
'tui-infer bench history' lists them, 'tui-infer bench compare A B' compares two runs.
"""


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure pp/tg tokens/s like llama-bench; history, compare",
        description=DESCRIPTION,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("-m", "--model", default=argparse.SUPPRESS, help="a .gguf path or a name")
    p.add_argument("-p", "--n-prompt", type=_ints, default=[512], help="pp sizes (512)")
    p.add_argument("-n", "--n-gen", type=_ints, default=[128], help="tg sizes (128)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="repetitions (5)")
    p.add_argument("-d", "--depth", type=_ints, default=[0], help="tokens already in context")
    p.add_argument(
        "-t",
        "--threads",
        type=_ints,
        default=None,
        dest="bench_threads",
        help="threads (default: config)",
    )
    p.add_argument("--gpu-layers", type=_ints, default=None, dest="bench_gpu_layers")
    p.add_argument(
        "--ctx",
        type=_ints,
        default=None,
        dest="bench_ctx",
        help="context sizes (default: enough for the largest test)",
    )
    p.add_argument("-b", "--batch", type=int, default=512, help="batch size (512)")
    p.add_argument("--kv-type", type=_strs, default=None, dest="bench_kv")
    p.add_argument("--flash-attn", type=_ints, default=None, help="0,1")
    p.add_argument(
        "--parallel",
        type=_ints,
        default=[],
        help="batched throughput at these parallel sequence counts (e.g. 1,4,8):\n"
        "2xN chat prompts of ~32 tokens, greedy, -n new tokens each;\n"
        "aggregate generated tokens/s over the whole run",
    )
    p.add_argument("--no-ceiling", action="store_true", help="skip the bandwidth measurement")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--csv", action="store_true", help="print CSV")
    out.add_argument("--md", action="store_true", help="print a Markdown table")
    bsub = p.add_subparsers(dest="bench_command", metavar="")
    hist = bsub.add_parser("history", help="list the kept runs")
    _sub_output_flags(hist, quiet=True)
    cmp_ = bsub.add_parser("compare", help="two runs side by side, with the noise")
    cmp_.add_argument("a", type=int)
    cmp_.add_argument("b", type=int)
    from tui_infer.commands.bench_quality import add_parser as add_quality

    add_quality(bsub)
    _sub_output_flags(cmp_)


def _sub_output_flags(p: argparse.ArgumentParser, quiet: bool = False) -> None:
    """--json after the subcommand too (`bench history --json`); SUPPRESS keeps a --json
    given before it (`bench --json history`)."""
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    if quiet:
        p.add_argument(
            "-q", "--quiet", action="store_true", help="print only the run ids, one a line"
        )


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    if args.bench_command == "quality":
        from tui_infer.commands.bench_quality import execute as quality

        return quality(args, settings, paths)
    from tui_infer.core.bench.history import BenchHistory

    path = paths.data_dir / "bench.sqlite3"
    if args.bench_command in ("history", "compare") and not path.exists():
        path = Path(":memory:")  # reading must not create the file
    history = BenchHistory(path)
    try:
        if args.bench_command == "history":
            return _history(history, args)
        if args.bench_command == "compare":
            return _compare(history, args.a, args.b, args)
        return _run(args, settings, paths, history)
    finally:
        history.close()


def _run(args: argparse.Namespace, settings: Settings, paths: Paths, history: Any) -> int:
    from tui_infer.core.bench.measure import (
        BenchPlan,
        environment,
        expand_sweep,
        file_sha256,
        run_plan,
    )
    from tui_infer.core.config import KV_TYPES
    from tui_infer.core.errors import TuiInferError
    from tui_infer.core.inference.engine import Engine
    from tui_infer.core.models.gguf import read_header
    from tui_infer.core.models.resolve import NO_MODEL_HELP, resolve_model

    if args.repetitions < 1:
        raise TuiInferError("-r must be at least 1")
    model = resolve_model(settings.model)
    if model is None:
        raise TuiInferError(NO_MODEL_HELP)
    header = read_header(model)
    kv_types = args.bench_kv or [settings.kv_type]
    for kv in kv_types:
        if kv not in KV_TYPES:
            raise TuiInferError(f"--kv-type {kv!r}: must be one of {', '.join(KV_TYPES)}")
    need = max(args.n_prompt + args.n_gen) + max(args.depth)
    ctx = args.bench_ctx or [max(need, 256)]
    configs = expand_sweep(
        threads=args.bench_threads or [settings.effective_threads],
        gpu_layers=args.bench_gpu_layers or [settings.gpu_layers],
        ctx=ctx,
        batch=args.batch,
        kv_types=kv_types,
        flash_attn=[bool(x) for x in (args.flash_attn or [int(settings.flash_attn)])],
    )
    for c in configs:
        if c.threads < 1:
            raise TuiInferError("-t: threads must be at least 1")
        if need > c.ctx:
            raise TuiInferError(f"--ctx {c.ctx} is too small for the tests (need {need})")
    if any(p < 1 for p in args.parallel):
        raise TuiInferError("--parallel: sequence counts must be at least 1")
    plan = BenchPlan(
        model,
        configs,
        args.n_prompt,
        args.n_gen,
        args.depth,
        args.repetitions,
        measure_ceiling=not args.no_ceiling,
        parallel=args.parallel,
    )
    probe = Engine.load(model, configs[0].load_options())
    env = environment(probe.backend.summary, probe.backend.device)
    probe.close()
    run_id = history.start_run(model, file_sha256(model, paths.data_dir), header.quantization, env)
    quiet = args.json or args.csv or args.md
    results: list[BenchResult] = []

    def on_result(r: BenchResult) -> None:
        history.add_result(run_id, r)
        results.append(r)
        if not quiet:
            print(f"  {_label(r)}: {r.mean:.2f} ± {r.stdev:.2f} tok/s", file=sys.stderr)

    from tui_infer.core.models.names import library_name

    if not quiet:
        print(
            f"bench run {run_id}: {library_name(model, paths.data_dir)} ({header.quantization})"
            f" · {env['backend']}",
            file=sys.stderr,
        )
    try:
        run_plan(plan, on_result)
    except ValueError as exc:
        raise TuiInferError(str(exc)) from None
    _print_results(
        results,
        library_name(model, paths.data_dir),
        header.quantization,
        header.file_size,
        header.parameter_count,
        env,
        args,
        run_id,
    )
    return 0


def _label(r: BenchResult) -> str:
    c = r.config
    return (
        f"{r.test} t={c.threads} ngl={c.gpu_layers} ctx={c.ctx} kv={c.kv_type} "
        f"fa={int(c.flash_attn)}"
    )


def _print_results(
    results: list[BenchResult],
    name: str,
    quant: str,
    size: int,
    params: int,
    env: dict[str, Any],
    args: argparse.Namespace,
    run_id: int,
) -> None:
    if args.json:
        out = {
            "run": run_id,
            "model": name,
            "quantization": quant,
            "size_bytes": size,
            "parameters": params,
            "environment": env,
            "results": [r.as_dict() for r in results],
        }
        print(json.dumps(out, indent=2))
        return
    rows = []
    for r in results:
        c = r.config
        frac = r.ceiling_fraction
        rows.append(
            {
                "threads": c.threads,
                "ngl": c.gpu_layers,
                "ctx": c.ctx,
                "kv": c.kv_type,
                "fa": int(c.flash_attn),
                "test": r.test,
                "t/s": f"{r.mean:.2f} ± {r.stdev:.2f}",
                "of ceiling": f"{frac:.0%}" if frac is not None else "",
            }
        )
    cols = list(rows[0]) if rows else []
    heading = (
        f"{name} · {quant} · {size / 2**20:.1f} MiB · {params / 1e6:.1f} M params · "
        f"{env['backend']}"
    )
    if args.csv:
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=["model", "quant", "backend", *cols])
        w.writeheader()
        for row in rows:
            w.writerow({"model": name, "quant": quant, "backend": env["backend"], **row})
        return
    if args.md:
        print(f"{heading}\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---:" if c in ("t/s", "of ceiling") else "---" for c in cols) + "|")
        for row in rows:
            print("| " + " | ".join(str(row[c]) for c in cols) + " |")
        return
    from tui_infer.commands.tables import Table

    print(heading)
    right = [c for c in cols if c in ("t/s", "threads", "ngl", "ctx", "of ceiling")]
    table = Table(*cols, right=right, title=f"bench run {run_id}")
    for row in rows:
        table.add_row(*(row[c] for c in cols))
    table.print()


def _run_json(run: Any) -> dict[str, Any]:
    """A kept bench run as `bench history --json` prints it (fields in the README)."""
    return {
        "run": run.id,
        "created_at": run.created,
        "model": Path(run.model_path).name,
        "model_path": run.model_path,
        "model_sha256": run.model_sha256,
        "quantization": run.quantization,
        "environment": run.environment,
        "results": [_finite(r.as_dict()) for r in run.results],
    }


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no Infinity or NaN: such a figure is null."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _history(history: Any, args: argparse.Namespace) -> int:
    from datetime import datetime

    from tui_infer.commands.tables import Table, print_json

    runs = history.runs()
    if getattr(args, "json", False):
        print_json([_run_json(r) for r in runs])
        return 0
    if getattr(args, "quiet", False):
        for run in runs:
            print(run.id)
        return 0
    if not runs:
        print("no bench runs yet: 'tui-infer bench' makes one")
        return 0
    table = Table("run", "when", "model", "sha256", "backend", "results", right=("run",))
    for run in runs:
        summary = ", ".join(f"{r.test} {r.mean:.1f}" for r in run.results)
        table.add_row(
            str(run.id),
            datetime.fromtimestamp(run.created).strftime("%Y-%m-%d %H:%M"),
            f"{Path(run.model_path).name} {run.quantization}",
            run.model_sha256[:12],
            _short_backend(run.environment.get("backend", "?")),
            summary,
        )
    table.print()
    return 0


def _short_backend(summary: str) -> str:
    """'CPU AVX AVX2 ... · 2 threads' -> 'CPU · 2 threads'."""
    parts = [p.strip() for p in summary.split("·")]
    return " · ".join([parts[0].split(" ")[0], *parts[1:]])


def _compare(history: Any, a_id: int, b_id: int, args: argparse.Namespace) -> int:
    from tui_infer.commands.tables import Table, print_json
    from tui_infer.core.bench.measure import compare_results

    a, b = history.get(a_id), history.get(b_id)
    notes = []
    if a.model_sha256 != b.model_sha256:
        notes.append(f"different models ({a.model_sha256[:12]} vs {b.model_sha256[:12]})")
    for key in ("backend", "cpu", "llama_cpp_python"):
        if a.environment.get(key) != b.environment.get(key):
            notes.append(f"{key} differs: {a.environment.get(key)} vs {b.environment.get(key)}")
    as_json = getattr(args, "json", False)
    if not as_json:
        for note in notes:
            print(f"note: {note}")
    columns = ("test", f"run {a_id} t/s", f"run {b_id} t/s", "ratio", "verdict")
    table = Table(*columns, right=columns[1:4], title=f"bench run {a_id} vs {b_id}")
    matched = 0
    rows: list[dict[str, Any]] = []
    for ra in a.results:
        rb = next((r for r in b.results if r.test == ra.test and r.config == ra.config), None)
        if rb is None:
            continue
        matched += 1
        cmp = compare_results(ra, rb)
        verdict = (
            ("faster" if cmp.b_mean > cmp.a_mean else "slower")
            if cmp.significant
            else "within noise"
        )
        rows.append(
            _finite(
                {
                    "test": ra.test,
                    "label": _label(ra),
                    "config": dict(ra.config.__dict__),
                    "a_mean_tps": ra.mean,
                    "a_stdev_tps": ra.stdev,
                    "b_mean_tps": rb.mean,
                    "b_stdev_tps": rb.stdev,
                    "ratio": cmp.ratio,
                    "noise_tps": cmp.noise,
                    "significant": cmp.significant,
                    "verdict": verdict,
                }
            )
        )
        table.add_row(
            _label(ra),
            f"{ra.mean:.2f} ± {ra.stdev:.2f}",
            f"{rb.mean:.2f} ± {rb.stdev:.2f}",
            f"{cmp.ratio:.3f}",
            verdict,
        )
    if not matched:
        from tui_infer.core.errors import TuiInferError

        raise TuiInferError(f"runs {a_id} and {b_id} share no test with the same configuration")
    if as_json:
        print_json({"a": a_id, "b": b_id, "notes": notes, "tests": rows})
        return 0
    table.print()
    return 0
