"""`tui-infer bundle ...`: carry the app, its models and published predictions to a machine
with no network (export, verify, import). Only the standard library is imported at the top."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.commands.tables import output_flags, print_json, wants
from tui_infer.core.units import human_size

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "bundle",
        help="carry the app, models and published predictions to an air-gapped machine",
        description="A bundle is one folder (or tar file): manifest.json (versions, the "
        "llama.cpp build and the CPU features it needs, every file's size and sha256), "
        "models/, the prediction store's published answers, wheels/ (tui-infer and every "
        "dependency for this platform) and install.sh, which installs them with no network.",
    )
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    exp = bsub.add_parser(
        "export",
        help="write a bundle",
        description="Write a bundle to OUT. Without -m: the default model and every model "
        "the exported predictions were made with. An interrupted export resumes when run "
        "again (OUT.partial holds what was done).",
    )
    exp.add_argument("out", type=Path, metavar="OUT")
    exp.add_argument(
        "-m",
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="MODEL",
        help="a model to carry, by name or path (repeatable)",
    )
    exp.add_argument(
        "--store",
        choices=("published", "all", "none"),
        default="published",
        help="which predictions: published ones (default), all (staged and rejected too), none",
    )
    exp.add_argument("--config", action="store_true", help="carry the config file too")
    exp.add_argument(
        "--no-wheels",
        action="store_true",
        help="no wheelhouse (for a machine with tui-infer installed already)",
    )
    exp.add_argument("--tar", action="store_true", help="write one tar file OUT (name it .tar)")
    exp.add_argument(
        "--platform",
        metavar="TAG",
        help="wheels for another platform (a wheel tag such as manylinux_2_28_aarch64); "
        "llama-cpp-python then goes in as source, compiled by install.sh on the target",
    )
    exp.add_argument(
        "--python-version",
        metavar="X.Y",
        help="with --platform: the target's Python (default: this one's)",
    )
    ver = bsub.add_parser("verify", help="check every file of a bundle against its manifest")
    ver.add_argument("dir", type=Path, metavar="DIR")
    output_flags(ver)
    imp = bsub.add_parser(
        "import",
        help="verify a bundle, then add its models, predictions (and config) here",
        description="Verify DIR, add its models to the library (in place, or copied with "
        "--copy), merge its predictions into the store (a prompt already answered here keeps "
        "its answer unless --replace) and, where no default model is configured, make the "
        "bundle's first model the default. Importing twice changes nothing.",
    )
    imp.add_argument("dir", type=Path, metavar="DIR")
    imp.add_argument("--copy", action="store_true", help="copy the models into the data folder")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="the bundle's answers replace published answers for the same request",
    )


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    action = args.bundle_command
    if action == "export":
        return _export(args, settings, paths)
    if action == "verify":
        return _verify(args)
    return _import(args, settings, paths)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


class _Bar:
    """A Rich progress bar on stderr (hidden when stderr is not a terminal), fed by the
    core's (done, total, label) callbacks."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self._label = label
        self.progress = Progress(
            TextColumn("[bold]{task.description}[/]"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task = self.progress.add_task(label, total=None)

    def __call__(self, done: int, total: int, what: str) -> None:
        self.progress.update(
            self._task, completed=done, total=total or None, description=f"{self._label} {what}"
        )


@contextmanager
def _bar(label: str) -> Iterator[_Bar]:
    bar = _Bar(label)
    with bar.progress:
        yield bar


def _export(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.bundle import export

    started = time.monotonic()
    out: Path = args.out.expanduser().absolute()
    target = None
    if args.platform:
        from tui_infer.core.bundle.platforms import parse

        target = parse(args.platform, args.python_version)
    elif args.python_version:
        from tui_infer.core.bundle.manifest import BundleError

        raise BundleError("--python-version goes with --platform TAG; add one, or drop it")
    with _bar("hashing") as bar:
        plan = export.plan(
            out,
            models=list(args.models),
            configured_model=settings.model,
            store_mode=args.store,
            config=args.config,
            wheels=not args.no_wheels,
            tar=args.tar,
            data_dir=paths.data_dir,
            config_file=paths.config_file,
            say=_say,
            progress=bar,
            target=target,
        )
    total, left = export.needed_space(plan)
    import shutil

    free = shutil.disk_usage(plan.work).free
    models = ", ".join(f"{m.name} ({human_size(m.size)})" for m in plan.models)
    info = plan.store_info
    store = (
        f"{info.runs} run(s), {info.published} published prediction(s)"
        + (
            f", {info.predictions - info.published} unpublished"
            if info.predictions > info.published
            else ""
        )
        if info
        else "none"
    )
    print(f"Bundle {out}")
    print(f"  models: {models}")
    print(f"  store:  {store}")
    if info is not None and not info.published and args.store == "published":
        print(
            "          (nothing published: 'tui-infer store publish RUN' first, or "
            "--store all to carry staged runs too)"
        )
    carried = "tui-infer and its dependencies for " + (
        f"{target.tag}, Python {target.python_version}; llama-cpp-python as source"
        if target
        else "this platform"
    )
    print(f"  wheels: {carried if plan.wheels else 'none (--no-wheels)'}")
    estimated = " (wheels estimated from their installed size)" if plan.wheels else ""
    print(
        f"  about {human_size(total)} in all{estimated}; "
        f"{human_size(left)} to write, {human_size(free)} free at {out.parent}",
        flush=True,
    )
    export.check_free(plan, left)
    wheels_info = None
    if plan.wheels:
        from tui_infer.core.bundle import wheels

        _say("collecting wheels (pip) ...")
        wheels_info = wheels.build(plan.work / "wheels", _say, target)
    with _bar("copying") as bar:
        hashes = export.copy_models(plan, bar)
    with _bar("writing") as bar:
        final = export.finish(plan, hashes, wheels_info, bar)
    size = (
        final.stat().st_size
        if final.is_file()
        else sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    )
    took = time.monotonic() - started
    print(f"Wrote {final} ({human_size(size)}) in {took:.0f} s.")
    where = f"{final.name[:-4]}/" if args.tar else f"{final.name}/"
    if args.tar:
        print(f"On the other machine: tar -xf {final.name}, then ", end="")
    else:
        print("On the other machine: ", end="")
    if plan.wheels:
        print(f"{where}install.sh, then tui-infer-venv/bin/tui-infer bundle import {where}")
    else:
        print(f"tui-infer bundle import {where}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from tui_infer.core.bundle.manifest import read_manifest, verify

    root: Path = args.dir.expanduser().absolute()
    manifest = read_manifest(root)
    with _bar("verifying") as bar:
        problems, good = verify(root, manifest, bar)
    size = sum(int(f["size"]) for f in manifest["files"])
    made_by = (
        manifest.get("tui_infer_version"),
        manifest["python"]["system"],
        manifest["python"]["machine"],
        manifest.get("llama_cpp", {}).get("backend"),
    )
    if wants(args, "json"):
        print_json(
            {
                "bundle": str(root),
                "ok": not problems,
                "files": len(manifest["files"]),
                "size_bytes": size,
                "matched": len(good),
                "problems": [
                    {"path": p.path, "what": p.what, "detail": p.detail} for p in problems
                ],
                "tui_infer_version": made_by[0],
                "system": made_by[1],
                "machine": made_by[2],
                "llama_cpp_backend": made_by[3],
            }
        )
    else:
        for p in problems:
            print(f"{root.name}: {p}")
    if problems:
        print(
            f"tui-infer: error: {root}: {len(problems)} file(s) do not match the manifest; "
            "copy the bundle again",
            file=sys.stderr,
        )
        return 1
    if not wants(args, "json"):
        version, system, machine, backend = made_by
        print(
            f"{root}: intact ({len(good)} files, {human_size(size)}; made by tui-infer "
            f"{'?' if version is None else version} on {system} {machine}, llama.cpp "
            f"{'?' if backend is None else backend})"
        )
    return 0


def _import(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.bundle.importer import import_bundle

    root: Path = args.dir.expanduser().absolute()
    with _bar("verifying") as bar:
        result = import_bundle(
            root,
            data_dir=paths.data_dir,
            config_file=paths.config_file,
            configured_model=settings.model,
            copy=args.copy,
            replace=args.replace,
            say=_say,
            progress=bar,
        )
    print(f"{root}: verified")
    for name, path, added in result.models:
        print(f"model {name}: {'added' if added else 'already in the library'} ({path})")
    s = result.store
    if s is not None:
        if s.runs_added == 0:
            print(f"store: nothing new ({s.runs_already} run(s) imported before)")
        else:
            line = f"store: {s.runs_added} run(s) imported, {s.published} prediction(s) served"
            if s.kept_existing:
                line += (
                    f"; {s.kept_existing} kept staged: this store already answers them "
                    "(--replace serves the bundle's instead)"
                )
            if s.replaced:
                line += f"; {s.replaced} replace the answers served before"
            if s.runs_already:
                line += f"; {s.runs_already} run(s) imported before"
            print(line)
    if result.config_installed is not None:
        print(f"config: installed at {result.config_installed}")
    if result.default_model is not None:
        print(
            f"default model: {result.default_model} (no default was configured; "
            f"set in {paths.config_file})"
        )
    return 0
