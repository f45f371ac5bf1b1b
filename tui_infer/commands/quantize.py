"""`tui-infer models quantize MODEL TYPE`: llama.cpp's quantizer, the result in the library.
Only the standard library is imported at the top."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths

HELP = "quantize a model with llama.cpp's quantizer into the library (<stem>.<TYPE>.gguf)"


def add_parser(msub: Any) -> None:
    """Adds `quantize` to the `models` subcommands."""
    q = msub.add_parser(
        "quantize",
        help=HELP,
        description="Quantize MODEL (a library name or a .gguf path) to TYPE with llama.cpp's "
        "own quantizer. The result is written to the data directory's models folder as "
        "<stem>.<TYPE>.gguf and added to the library with its source's sha256 and type. "
        "An already quantized source is requantized (allowed; its loss adds to the new one). "
        "Ctrl+C stops it and leaves no partial file. 'tui-infer bench quality' measures "
        "what a type costs on your own text.",
    )
    q.add_argument("target", metavar="MODEL", help="a library name or a .gguf path")
    q.add_argument("qtype", metavar="TYPE", help="Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, Q4_0, ...")
    q.add_argument(
        "--threads", type=int, default=None, dest="quant_threads", help="(default: config)"
    )
    q.add_argument("--force", action="store_true", help="overwrite an existing result")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from pathlib import Path

    from tui_infer.core.errors import ModelNotFoundError
    from tui_infer.core.models.library import ModelLibrary
    from tui_infer.core.models.quantize import parse_type, plan, quantize_into_library
    from tui_infer.core.units import human_size

    qtype = parse_type(args.qtype)  # a bad type fails before anything is read
    target = Path(args.target).expanduser()
    if not target.exists():
        with ModelLibrary(paths.data_dir) as lib:
            try:
                target = lib.get(args.target).path
            except ModelNotFoundError:
                if "/" in args.target or args.target.lower().endswith(".gguf"):
                    raise ModelNotFoundError(
                        f"{args.target}: no such file; give a .gguf path or a name from "
                        "'tui-infer models list'"
                    ) from None
                raise
    threads = args.quant_threads if args.quant_threads is not None else settings.effective_threads
    if threads < 1:
        from tui_infer.core.errors import TuiInferError

        raise TuiInferError("--threads must be at least 1")
    p = plan(target, qtype, paths.data_dir / "models", args.force)
    err = sys.stderr
    if p.requantize:
        print(
            f"{target.name} is {p.source_type}, already quantized: requantizing it to {qtype} "
            f"(the result carries {p.source_type}'s loss as well as {qtype}'s; an F16 or BF16 "
            "source gives better quality)",
            file=err,
        )
    else:
        print(f"quantizing {target.name} ({p.source_type}) to {qtype}", file=err)
    with _progress() as bar:
        task = bar.add_task("", total=None)

        def on_tensor(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=name)

        try:
            result = quantize_into_library(
                target, qtype, paths.data_dir, threads=threads, force=args.force, progress=on_tensor
            )
        except KeyboardInterrupt:
            print("\ninterrupted: nothing was written", file=err)
            return 130
    print(
        f"{result.library_name}: {result.type}, {human_size(result.size)} "
        f"(from {result.source_type}, {human_size(result.source_size)}) in {result.seconds:.1f} s"
        f"{'; requantized' if result.requantized else ''}"
    )
    print(f"  {result.path}")
    print(f"  sha256 {result.sha256}")
    print(f"  source {result.source} sha256 {result.source_sha256}")
    return 0


def _progress() -> Any:
    """Tensors done, on stderr (hidden when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    return Progress(
        "[bold]quantizing[/]",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
