"""The `tui-infer` command. Imports stay inside the commands: --help must be instant
and must import neither llama_cpp nor Textual."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from tui_infer import __version__

if TYPE_CHECKING:
    from tui_infer.app.app import TuiInferApp
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths

EXIT_BAD_INPUT = 2
PLUGGABLE_COMMANDS = (
    "models", "batch", "store", "bench", "chats", "serve", "ps", "bundle", "presets", "completion",
)  # fmt: skip
# commands whose parser another command's module adds, and that module
SHARED_MODULES = {"stop": "ps"}


def _command_module(name: str) -> Any:
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"tui_infer.commands.{name}") is None:
        return None
    return importlib.import_module(f"tui_infer.commands.{name}")


def _model_flags(p: argparse.ArgumentParser, top: bool = False) -> None:
    """The shared flags; on subcommands they default to 'absent' so that
    `tui-infer -m X run` keeps the -m given before the command."""
    g = p.add_argument_group("model and sampling (override config and TUI_INFER_* variables)")
    if not top:
        g.argument_default = argparse.SUPPRESS
    g.add_argument(
        "-m",
        "--model",
        help="a .gguf path or a model name (default: configured, "
        "else the first GGUF bundled in an installed package)",
    )
    g.add_argument("--ctx", type=int, help="context window in tokens (default 4096)")
    g.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    g.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU (-1: all)")
    g.add_argument("--kv-type", help="KV cache type: f16 (default), q8_0, q4_0, ...")
    g.add_argument("--system", help="system prompt")
    g.add_argument("--temperature", type=float, help="0 gives greedy, deterministic output")
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repeat-penalty", type=float)
    g.add_argument("--seed", type=int, help="-1: random")
    g.add_argument("--max-tokens", type=int, help="most tokens in a reply")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tui-infer",
        description="Run quantized GGUF language models locally. With no command, "
        "opens the chat TUI.",
        epilog="Config: TOML at TUI_INFER_CONFIG or the platform config dir; data in "
        "TUI_INFER_DATA_DIR or the platform data dir; the log of internal errors in "
        "TUI_INFER_STATE_DIR or the platform state dir. 'tui-infer doctor' shows them. "
        "Exit codes: 0 ok, 1 failed while running, 2 usage or bad input, 3 not "
        "precomputed, 4 model or run not found, 5 batch finished with rejected lines, "
        "130 interrupted.",
        # the top parser sees every argument: with abbreviations on, a subcommand's own
        # option such as `store misses --top` was refused as ambiguous (--top-p, --top-k);
        # the subcommands keep theirs
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"tui-infer {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an internal error instead of logging it",
    )
    _model_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="answer one prompt headless, streaming to stdout",
        description="Answer PROMPT (or stdin) with the model, streaming "
        "the reply to stdout. Exit codes: 0 ok, 1 failed while running, 2 bad input, "
        "3 not precomputed (--serve store), 4 model not found, 130 interrupted.",
    )
    _model_flags(run)
    run.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    run.add_argument(
        "--json", action="store_true", help="print one JSON object with the reply and its figures"
    )
    run.add_argument("--stats", action="store_true", help="print the figures to stderr")
    run.add_argument("--pull", action="store_true", help="download -m OWNER/REPO:QUANT if not here")
    run.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end the reply before TEXT (repeatable, up to 4; part of the store's key)",
    )
    run.add_argument(
        "--serve",
        choices=("store-then-live", "live", "store", "store-any-sample"),
        help="answer from the prediction store when a published prediction matches "
        "(store-then-live, the default; or the 'serve' setting), never (live), or only "
        "(store: a miss exits 3); store-any-sample also serves a prediction published for "
        "the same prompt under other sampling parameters (temperature, seed, ...)",
    )
    from tui_infer.commands.request_flags import add_run_flags

    add_run_flags(run)  # --preset, --json-schema, --grammar, --template, --raw

    doctor = sub.add_parser("doctor", help="versions, backend, devices, paths, default model")
    _model_flags(doctor)
    doctor.add_argument("--no-network", action="store_true", help="skip the hub check")
    doctor.add_argument("--json", action="store_true", help="print one JSON document")

    # Further commands live in tui_infer/commands/<name>.py, each with
    # add_parser(sub, model_flags) and execute(args, settings, paths) -> int. Their
    # modules import only the standard library at the top, so --help stays instant.
    for name in PLUGGABLE_COMMANDS:
        module = _command_module(name)
        if module is not None:
            module.add_parser(sub, _model_flags)
    return parser


def _settings_from(args: argparse.Namespace, paths: Paths) -> Settings:
    from tui_infer.core.config import load_settings

    flags = (
        "model",
        "ctx",
        "threads",
        "gpu_layers",
        "kv_type",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "seed",
        "max_tokens",
        "serve",
        "speculative",
        "draft_model",
    )
    return load_settings(paths.config_file).with_overrides(
        **{name: getattr(args, name, None) for name in flags}
    )


def _error(message: str) -> int:
    print(f"tui-infer: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn every failure into one line and a documented exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command line as typed, for a batch run's provenance (secrets redacted there)
    args.argv = ["tui-infer", *(sys.argv[1:] if argv is None else argv)]
    from tui_infer.core.errors import ExitCode, TuiInferError
    from tui_infer.core.paths import default_paths

    paths = default_paths()
    try:
        code = _dispatch(args, paths)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except TuiInferError as exc:
        print(f"tui-infer: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # `tui-infer store runs | head -1`: the reader has what it wanted; stop quietly.
        _stdout_to_devnull()
        return int(ExitCode.OK)
    except Exception as exc:  # a full disk, or a bug of ours: one line, the traceback logged
        from tui_infer.core.disk import explain

        storage = explain(exc)
        if storage is not None and not args.debug:
            print(f"tui-infer: error: {storage}", file=sys.stderr)
            return int(storage.exit_code)
        if args.debug:
            raise
        from tui_infer.core.crashlog import one_line, record

        where = record(exc, paths.log_file, f"tui-infer {' '.join(argv or sys.argv[1:])}")
        details = f"the traceback is in {where}" if where else "the traceback could not be saved"
        print(
            f"tui-infer: error: internal error ({one_line(exc)}); {details}; "
            "--debug prints it here",
            file=sys.stderr,
        )
        return int(ExitCode.FAILURE)


def _stdout_to_devnull() -> None:
    """Python flushes stdout again at exit: point it at /dev/null so that no second
    BrokenPipeError is printed (the recipe in Python's signal documentation)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _dispatch(args: argparse.Namespace, paths: Paths) -> int:
    settings = _settings_from(args, paths)
    if args.command == "run":
        from tui_infer.commands.run import run_command

        return run_command(args, settings, paths)
    if args.command == "doctor":
        from tui_infer.commands.doctor import doctor_command

        return doctor_command(args, settings, paths)
    if args.command in PLUGGABLE_COMMANDS or args.command in SHARED_MODULES:
        module = _command_module(SHARED_MODULES.get(args.command, args.command))
        return int(module.execute(args, settings, paths))
    if not sys.stdout.isatty():
        return _error("the TUI needs a terminal; use 'tui-infer run PROMPT' for headless use")
    app = tui_app(settings, paths, debug=args.debug)
    app.run()
    return app.return_code or 0


def tui_app(settings: Settings, paths: Paths, debug: bool = False) -> TuiInferApp:
    """The TUI on the model the settings name. A model that cannot be found is shown in
    the TUI, which stays open so that the user can pick another one; a hub model that is
    not here (-m OWNER/REPO:QUANT) is offered for download."""
    from tui_infer.core.errors import TuiInferError
    from tui_infer.core.models.resolve import HubRefNotLocal, resolve_model

    model, problem, offer = None, None, None
    try:
        model = resolve_model(settings.model)
    except HubRefNotLocal as exc:
        problem, offer = str(exc), exc.ref
    except TuiInferError as exc:
        problem = str(exc)
    from tui_infer.app.app import TuiInferApp

    return TuiInferApp(
        settings=settings,
        paths=paths,
        model_path=model,
        startup_error=problem,
        download_offer=offer,
        debug=debug,
    )


if __name__ == "__main__":
    sys.exit(main())
