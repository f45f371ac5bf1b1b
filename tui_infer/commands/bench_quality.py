"""`tui-infer bench quality REF OTHER...`: what a quant (or a KV cache type) costs on your
own text. Only the standard library is imported at the top."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui_infer.core.bench.quality import QualityReport, QualityRow
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths

DESCRIPTION = """\
Evaluate models against a reference on your own text (--prompts FILE; default: a
built-in sample of a few paragraphs). Every model reads the same tokens, in chunks of
--chunk tokens; at every position the full next-token distribution is compared with
the reference's:

  agree    top-1 next-token agreement with REF (1.0: always the same choice)
  KL       KL divergence KL(REF || model) in nats: mean and 99th percentile
  PPL      perplexity on the text itself, and its ratio to REF's
  pp, tg   prompt and generation tokens/s (bench's definitions, a few repetitions)
  memory   the file plus the KV cache at --ctx tokens

REF is also evaluated with each of --kv-types (a quantized KV cache against f16).
Where REF is itself quantized (no higher-precision file at hand), the figures are the
loss relative to it, and the output says so. The last report is kept in the data
directory (quality/last.json); the TUI's Quant view shows it.
"""


def add_parser(bsub: Any) -> None:
    """Adds `quality` to the `bench` subcommands."""
    q = bsub.add_parser(
        "quality",
        help="what a quant or KV cache type costs on your text: agreement, KL, perplexity",
        description=DESCRIPTION,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    q.add_argument("ref", metavar="REF", help="the reference model (a name or a .gguf path)")
    q.add_argument("others", metavar="OTHER", nargs="*", help="models to compare with REF")
    q.add_argument("--prompts", type=Path, default=None, help="a UTF-8 text file to evaluate on")
    q.add_argument(
        "--kv-types",
        default="f16,q8_0,q4_0",
        dest="quality_kv",
        help="KV cache types to evaluate on REF (f16,q8_0,q4_0)",
    )
    q.add_argument("--chunk", type=int, default=512, help="tokens per chunk (512)")
    q.add_argument(
        "--max-tokens", type=int, default=4096, dest="quality_max", help="text tokens at most"
    )
    q.add_argument("--reps", type=int, default=3, help="speed repetitions (3)")
    q.add_argument("-t", "--threads", type=int, default=None, dest="quality_threads")
    q.add_argument("--json", action="store_true", dest="quality_json", help="print JSON")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.bench.quality import evaluate, read_text
    from tui_infer.core.errors import TuiInferError
    from tui_infer.core.models.resolve import resolve_model

    kv_types = [x.strip() for x in args.quality_kv.split(",") if x.strip()]
    if args.reps < 1:
        raise TuiInferError("--reps must be at least 1")
    if args.quality_max < 16:
        raise TuiInferError("--max-tokens must be at least 16")
    threads = args.quality_threads or settings.effective_threads
    if threads < 1:
        raise TuiInferError("--threads must be at least 1")
    text, source = read_text(args.prompts)
    ref = resolve_model(args.ref)
    others = [resolve_model(o) for o in args.others]
    assert ref is not None and all(o is not None for o in others)
    others_p: list[Path] = [o for o in others if o is not None]
    quiet = args.quality_json or not sys.stderr.isatty()

    def progress(line: str) -> None:
        if not quiet:
            print(f"\r\x1b[K{line}", end="", file=sys.stderr, flush=True)

    report = evaluate(
        ref,
        others_p,
        kv_types,
        text=text,
        text_source=source,
        threads=threads,
        gpu_layers=settings.gpu_layers,
        chunk=args.chunk,
        max_tokens=args.quality_max,
        memory_ctx=settings.ctx,
        speed_reps=args.reps,
        made_from_ref=_made_from(ref, others_p, paths.data_dir),
        progress=progress,
    )
    if not quiet:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    _keep(report, paths.data_dir)
    if args.quality_json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print_report(report)
    return 0


def _made_from(ref: Path, others: list[Path], data_dir: Path) -> list[bool]:
    """Which of `others` the library says were quantized from REF (models quantize)."""
    import os

    from tui_infer.core.models.library import ModelLibrary

    lib = ModelLibrary(data_dir)
    out = []
    try:
        if not lib.db_path.exists():
            return [False] * len(others)
        real = os.path.realpath(ref)
        for o in others:
            try:
                md = lib.get(str(o), refresh=False).metadata
            except Exception:  # not in the library: nothing known of its source
                out.append(False)
                continue
            src = (md.get("quantized_from") or {}).get("path")
            out.append(isinstance(src, str) and os.path.realpath(src) == real)
    finally:
        lib.close()
    return out


def _keep(report: QualityReport, data_dir: Path) -> None:
    """The last report, for the TUI's Quant view (written atomically)."""
    from tui_infer.core.files import atomic_write

    atomic_write(data_dir / "quality" / "last.json", [json.dumps(report.as_dict(), indent=2)])


def cells(r: QualityRow) -> list[str]:
    from tui_infer.core.units import human_size

    ref = r.reference
    return [
        r.label + (" (ref)" if ref else ""),
        r.quantization,
        r.kv_type,
        f"{r.bits_per_weight:.2f}",
        "-" if ref else f"{r.agreement:.3f}",
        "-" if ref else f"{r.kl_mean:.5f}",
        "-" if ref else f"{r.kl_p99:.4f}",
        f"{r.perplexity:.3f}",
        "-" if ref else f"{r.perplexity_ratio:.4f}",
        f"{r.pp_tps:.1f}",
        f"{r.tg_tps:.1f}",
        human_size(r.memory_bytes),
    ]


COLUMNS = (
    "model",
    "quant",
    "kv",
    "bits/w",
    "agree",
    "KL mean",
    "KL p99",
    "PPL",
    "PPL/ref",
    "pp t/s",
    "tg t/s",
    "memory",
)


def print_report(report: QualityReport) -> None:
    from tui_infer.commands.tables import Table

    ref = report.rows[0]
    print(
        f"reference {report.reference} ({ref.quantization}, kv f16) · {report.text_source}: "
        f"{report.text_tokens} tokens in {report.chunks} chunk(s) of up to "
        f"{report.chunk_tokens} · {report.threads} threads · memory at "
        f"{ref.memory_ctx} tokens of context"
    )
    table = Table(*COLUMNS, right=COLUMNS[3:])
    for r in report.rows:
        table.add_row(*cells(r))
    table.print()
    for note in report.notes:
        print(f"note: {note}")
