"""`tui-infer models ...`: the library (list, info, import, rm, verify) and the hub
(search, files, pull). Only the standard library is imported at the top."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tui_infer.commands.tables import Table, output_flags, print_json, wants
from tui_infer.core.units import human_size

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.models.library import ModelEntry, ModelLibrary
    from tui_infer.core.paths import Paths


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "models",
        help="the model library and the Hugging Face hub",
        description="Every GGUF you have (imported, downloaded, bundled, in the Hugging Face "
        "cache), and models from the hub.",
    )
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = msub.add_parser("list", help="the library: name, quant, size, context, source, status")
    output_flags(ls, quiet="the names")

    info = msub.add_parser("info", help="metadata, sha256, fit estimate, chat template")
    model_flags(info)
    info.add_argument("target", metavar="NAME|PATH|REPO[:QUANT]")
    output_flags(info)

    imp = msub.add_parser("import", help="add a GGUF file to the library (in place by default)")
    imp.add_argument("path", metavar="PATH")
    imp.add_argument("--copy", action="store_true", help="copy it into the data directory")

    rm = msub.add_parser("rm", help="remove a model from the library")
    rm.add_argument("target", metavar="NAME|PATH")
    rm.add_argument(
        "--yes", "-y", action="store_true", help="delete downloaded/copied files without asking"
    )

    verify = msub.add_parser("verify", help="rehash files and compare with the recorded sha256")
    verify.add_argument("target", nargs="?", metavar="NAME|PATH", help="default: every model")
    output_flags(verify)

    search = msub.add_parser("search", help="search GGUF repositories on the hub")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=20)
    output_flags(search, quiet="the repositories")

    files = msub.add_parser("files", help="a hub repository's GGUF files with size and quant")
    files.add_argument("repo", metavar="REPO")
    files.add_argument("--revision", default="main")
    files.add_argument(
        "--headers", action="store_true", help="read each file's header (ranged GET)"
    )
    output_flags(files, quiet="the file names")

    pull = msub.add_parser("pull", help="download a GGUF from the hub (resumes after Ctrl+C)")
    model_flags(pull)
    pull.add_argument("repo", metavar="REPO")
    pull.add_argument(
        "file", nargs="?", metavar="FILE|QUANT", help="a file name or a quant such as Q4_K_M"
    )
    pull.add_argument("--revision", default="main")

    from tui_infer.commands.quantize import add_parser as add_quantize

    add_quantize(msub)


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.models.library import ModelLibrary

    action = args.models_command
    if action == "quantize":
        from tui_infer.commands.quantize import execute as quantize

        return quantize(args, settings, paths)
    if action == "search":
        return _search(args)
    if action == "files":
        return _files(args)
    with ModelLibrary(paths.data_dir) as lib:
        handler: Callable[[argparse.Namespace, ModelLibrary, Settings], int] = {
            "list": _list,
            "info": _info,
            "import": _import,
            "rm": _rm,
            "verify": _verify,
            "pull": _pull,
        }[action]
        return handler(args, lib, settings)


def _list(args: argparse.Namespace, lib: ModelLibrary, settings: Settings) -> int:
    entries = lib.entries()
    if wants(args, "json"):
        print_json([entry_json(e) for e in entries])
        return 0
    if wants(args, "quiet"):
        for e in entries:
            print(e.name)
        return 0
    if not entries:
        print(
            "The library is empty: add a model with 'tui-infer models import PATH' "
            "or 'tui-infer models pull REPO'."
        )
        return 0
    t = Table("name", "quant", "size", "context", "source", "status", right=("size", "context"))
    for e in entries:
        t.add_row(
            e.name,
            e.quantization,
            human_size(e.size),
            str(e.n_ctx_train or "?"),
            e.source + (f" ({e.repo})" if e.repo else ""),
            e.status,
        )
    t.print()
    return 0


def entry_json(e: ModelEntry) -> dict[str, Any]:
    """A library entry as `models list --json` prints it (fields in the README)."""
    from tui_infer.core.models.names import hub_ref

    return {
        "name": e.name,
        "ref": hub_ref(e),
        "quantization": e.quantization,
        "size_bytes": e.size,
        "n_ctx_train": e.n_ctx_train or None,
        "architecture": e.metadata.get("architecture"),
        "source": e.source,
        "repo": e.repo,
        "status": e.status,
        "path": str(e.path),
        "paths": [str(p) for p in e.paths],
        "sha256": e.sha256,
    }


def _progress(label: str) -> Any:
    """A Rich progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    return Progress(
        f"[bold]{label}[/]",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _hash_with_progress(lib: ModelLibrary, entry: ModelEntry, verify: bool = False) -> Any:
    with _progress("hashing" if not verify else "verifying") as bar:
        task = bar.add_task("", total=entry.size)

        def cb(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return lib.verify(entry, cb) if verify else lib.ensure_hashes(entry, cb)


def _library_entry(lib: ModelLibrary, target: str) -> ModelEntry:
    """An entry by name, path or hub reference (owner/repo:QUANT)."""
    from tui_infer.core.models.resolve import parse_hub_ref, resolve_hub_ref

    ref = parse_hub_ref(target)
    return lib.get(str(resolve_hub_ref(ref, lib.data_dir)) if ref is not None else target)


def _entry_for(lib: ModelLibrary, target: str) -> ModelEntry:
    from pathlib import Path

    from tui_infer.core.errors import ModelNotFoundError
    from tui_infer.core.models.resolve import parse_hub_ref, resolve_hub_ref

    ref = parse_hub_ref(target)
    if ref is not None:  # owner/repo:QUANT: the file it means, in the library or not
        target = str(resolve_hub_ref(ref, lib.data_dir))
    try:
        return lib.get(target)
    except ModelNotFoundError:
        p = Path(target).expanduser()
        if p.suffix.lower() == ".gguf" and p.exists():
            # A file outside the library: show it without registering it.
            from tui_infer.core.models.library import ModelEntry, Part, read_model

            parts, metadata = read_model(p)
            return ModelEntry(
                p.stem, [Part(str(q), q.stat().st_size) for q in parts], "not in library", metadata
            )
        raise


def _info(args: argparse.Namespace, lib: ModelLibrary, settings: Settings) -> int:
    from tui_infer.core.inference import fit

    e = _entry_for(lib, args.target)
    md = e.metadata
    as_json = wants(args, "json")
    doc: dict[str, Any] = {
        **entry_json(e),
        "general_name": md.get("name") or None,
        "parameters": int(md.get("parameter_count") or 0) or None,
        "size_label": md.get("size_label"),
        "n_layer": md.get("n_layer"),
        "n_head": md.get("n_head"),
        "n_head_kv": md.get("n_head_kv"),
        "n_embd": md.get("n_embd"),
        "n_vocab": md.get("n_vocab"),
        "tensor_count": md.get("tensor_count"),
        "license": md.get("license"),
        "chat_template": md.get("chat_template") or None,
        "fit": None,
    }
    rows: list[tuple[str, str]] = [
        ("name", e.name),
        ("general.name", str(md.get("name") or "?")),
        ("path", "\n".join(str(p) for p in e.paths)),
        ("source", e.source + (f" ({e.repo})" if e.repo else "")),
        ("status", e.status),
        ("size", f"{human_size(e.size)} ({e.size} bytes)"),
        ("architecture", str(md.get("architecture"))),
        ("parameters", _params(md)),
        ("quantization", e.quantization),
        ("trained context", str(md.get("n_ctx_train") or "?")),
        ("layers", str(md.get("n_layer"))),
        ("heads", f"{md.get('n_head')} (KV heads {md.get('n_head_kv')})"),
        ("embedding", str(md.get("n_embd"))),
        ("vocabulary", str(md.get("n_vocab"))),
        ("tensors", str(md.get("tensor_count"))),
        ("license", str(md.get("license") or "not stated")),
    ]
    if e.status == "ok":
        if e.source == "not in library":
            sha = lib.digests.sha256(e.path) if len(e.parts) == 1 else "(import it to hash it)"
            doc["sha256"] = sha if len(e.parts) == 1 else None
        elif as_json:
            sha = doc["sha256"] = lib.ensure_hashes(e)
        else:
            sha = doc["sha256"] = _hash_with_progress(lib, e)
        rows.append(("sha256", sha))
        info = fit.info_from_metadata(str(e.path), e.size, md)
        machine = fit.current_machine()  # RAM, whether llama.cpp offloads, its GPUs' memory
        est = fit.fit_for_machine(info, int(md.get("n_vocab") or 0), settings, machine)
        rows.append((f"fit ({fit.fit_label(settings)})", est.summary()))
        doc["fit"] = {
            "settings": fit.fit_label(settings),
            "verdict": est.verdict,
            "needed_bytes": est.total_bytes,
            "weights_bytes": est.weights_bytes,
            "kv_bytes": est.kv_bytes,
            "compute_bytes": est.compute_bytes,
            "ram_available_bytes": est.ram_available,
            "gpu_layers": est.gpu_layers,
            "summary": est.summary(),
        }
    else:
        rows.append(("sha256", e.sha256 or "unknown"))
    if as_json:
        print_json(doc)
        return 0
    t = Table("name", "value", header=False)
    for k, v in rows:
        t.add_row(k, v)
    t.print()
    template = md.get("chat_template")
    print()
    if template:
        print("chat template:")
        print(template)
    else:  # llama.cpp's built-in for its architecture (template.py says which)
        from tui_infer.core.inference.template import missing_template_line

        names = [e.name, str(md.get("name") or "")]
        print(missing_template_line(str(md.get("architecture")), md.get("n_vocab"), names))
    return 0


def _params(md: dict[str, Any]) -> str:
    n = int(md.get("parameter_count") or 0)
    if not n:
        return "?"
    label = f" ({md['size_label']})" if md.get("size_label") else ""
    if n >= 1e9:
        return f"{n / 1e9:.2f} B{label}"
    return f"{n / 1e6:.1f} M{label}"


def _import(args: argparse.Namespace, lib: ModelLibrary, settings: Settings) -> int:
    from pathlib import Path

    from tui_infer.core.errors import ModelFileError
    from tui_infer.core.models.gguf import read_header

    p = Path(args.path).expanduser()
    read_header(p)  # a clear error before any progress bar
    total = p.stat().st_size
    with _progress("copying" if args.copy else "hashing") as bar:
        task = bar.add_task("", total=total)
        try:
            e = lib.import_file(
                p, copy=args.copy, progress=lambda d, t: bar.update(task, completed=d, total=t)
            )
        except OSError as exc:
            raise ModelFileError(f"{p}: cannot import ({exc.strerror or exc})") from None
    how = f"copied to {e.path.parent}" if e.source == "copied" else "registered in place"
    if e.source not in ("copied", "imported"):
        how = f"already in the library ({e.source})"
    print(f"{e.name}: {how}; {e.quantization}, {human_size(e.size)}, sha256 {e.sha256}")
    return 0


def _rm(args: argparse.Namespace, lib: ModelLibrary, settings: Settings) -> int:
    from tui_infer.core.models.library import OWNED_SOURCES, LibraryError

    e = _library_entry(lib, args.target)
    if e.source in ("bundled", "hf-cache"):
        where = "an installed Python package" if e.source == "bundled" else "the Hugging Face cache"
        raise LibraryError(
            f"{e.name} comes from {where} and would be found again; "
            + (
                "uninstall the package"
                if e.source == "bundled"
                else "delete it with 'hf cache delete'"
            )
        )
    delete = e.source in OWNED_SOURCES and e.status != "missing"
    if delete and not args.yes:
        files = ", ".join(str(p) for p in e.paths)
        print(f"Delete {files} ({human_size(e.size)})? [y/N] ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    deleted = lib.remove(e, delete_files=delete)
    if deleted:
        print(f"{e.name}: removed, deleted {', '.join(str(p) for p in deleted)}")
    else:
        print(f"{e.name}: removed from the library; the file was left where it is")
    return 0


def _verify(args: argparse.Namespace, lib: ModelLibrary, settings: Settings) -> int:
    entries = [_library_entry(lib, args.target)] if args.target else lib.entries()
    as_json = wants(args, "json")
    checked: list[dict[str, Any]] = []
    for e in entries:
        had = e.sha256
        problems = (
            _hash_with_progress(lib, e, verify=True)
            if e.status == "ok" or e.verify_failed  # a failed one is checked again
            else [f"{e.name}: {e.status}"]
        )
        checked.append(
            {
                "name": e.name,
                "path": str(e.path),
                "sha256": e.sha256,  # the recorded one (a failed file's is not its own)
                "ok": not problems,
                "recorded_now": not problems and not had,
                "problems": problems,
            }
        )
        if as_json:
            continue
        if problems:
            for p in problems:
                print(f"FAILED  {p}")
        else:
            note = "" if had else " (no hash recorded before: recorded now)"
            print(f"ok      {e.name}  {e.sha256}{note}")
    bad = sum(not c["ok"] for c in checked)
    if as_json:
        print_json({"ok": not bad, "checked": len(checked), "failed": bad, "models": checked})
    if bad:
        print(
            f"tui-infer: error: {bad} model(s) failed verification; re-download or re-import them",
            file=sys.stderr,
        )
        return 1
    return 0


# ----- the hub ---------------------------------------------------------------------------


def _search(args: argparse.Namespace) -> int:
    from tui_infer.core.models.hub import Hub

    found = Hub().search(args.query, limit=args.limit)
    if wants(args, "json"):
        print_json(
            [
                {
                    "repo": r.repo,
                    "downloads": r.downloads,
                    "likes": r.likes,
                    "updated": r.updated or None,
                    "gated": r.gated,
                }
                for r in found
            ]
        )
        return 0
    if wants(args, "quiet"):
        for r in found:
            print(r.repo)
        return 0
    if not found:
        print(f"No GGUF repositories match '{args.query}'.")
        return 0
    t = Table("repository", "downloads", "likes", "updated", right=("downloads", "likes"))
    for r in found:
        t.add_row(
            r.repo + (" (gated)" if r.gated else ""), f"{r.downloads:,}", str(r.likes), r.updated
        )
    t.print()
    return 0


def _files(args: argparse.Namespace) -> int:
    from tui_infer.core.models.hub import Hub

    models = Hub().models(args.repo, args.revision, read_headers=args.headers)
    if wants(args, "json"):
        print_json([_hub_model_json(m) for m in models])
        return 0
    if wants(args, "quiet"):
        for m in models:
            print(m.filename)
        return 0
    if not models:
        print(f"{args.repo} has no GGUF files.")
        return 0
    t = Table("file", "quant", "size", "parts", "context", right=("size", "parts", "context"))
    for m in models:
        ctx = (
            str(m.header.n_ctx_train) if m.header else ("?" if not m.header_error else "unreadable")
        )
        t.add_row(m.filename, m.quant or "?", human_size(m.size), str(len(m.files)), ctx)
    t.print()
    return 0


def _hub_model_json(m: Any) -> dict[str, Any]:
    return {
        "file": m.filename,
        "repo": m.repo,
        "ref": f"{m.repo}:{m.quant}" if m.quant else m.repo,
        "quant": m.quant,
        "size_bytes": m.size,
        "parts": [{"file": f.filename, "size_bytes": f.size, "sha256": f.sha256} for f in m.files],
        "n_ctx_train": m.header.n_ctx_train if m.header else None,
        "header_error": m.header_error,
    }


def pull_missing(settings: Settings, paths: Paths) -> None:
    """`run --pull`: a hub reference (-m owner/repo:QUANT) not on this machine is
    downloaded first, as `models pull` does, its messages on stderr."""
    from tui_infer.core.models.library import ModelLibrary
    from tui_infer.core.models.resolve import HubRefNotLocal, parse_hub_ref, resolve_hub_ref

    ref = parse_hub_ref(settings.model) if settings.model else None
    if ref is None:
        return
    try:
        resolve_hub_ref(ref, paths.data_dir)
        return  # already here
    except HubRefNotLocal:
        pass
    pull_args = argparse.Namespace(repo=ref.repo, file=ref.quant, revision="main")
    with ModelLibrary(paths.data_dir) as lib:
        if _pull(pull_args, lib, settings, out=sys.stderr) != 0:
            raise KeyboardInterrupt


def _pull(args: argparse.Namespace, lib: ModelLibrary, settings: Settings, out: Any = None) -> int:
    import shutil
    import threading

    from tui_infer.core.inference import fit
    from tui_infer.core.models.hub import Hub
    from tui_infer.core.models.hub_types import Progress

    hub = Hub()
    model = hub.select(args.repo, args.file, args.revision)
    err = sys.stderr
    print(
        f"{model.repo}: {model.filename} ({model.quant or '?'}, {human_size(model.size)}"
        f"{f', {len(model.files)} parts' if len(model.files) > 1 else ''})",
        file=err,
    )
    print(fit.hub_file_fit(hub, model, settings), file=err)
    hub.cache.mkdir(parents=True, exist_ok=True)
    have = sum(
        hub.part_path(model, f).stat().st_size
        for f in model.files
        if hub.part_path(model, f).exists()
    )
    free = shutil.disk_usage(hub.cache).free
    if free < model.size - have:
        from tui_infer.core.disk import StorageError

        raise StorageError(
            f"not enough disk space in {hub.cache} ({human_size(free)} free, "
            f"{human_size(model.size - have)} needed); free some space or set HF_HOME elsewhere"
        )
    cancel = threading.Event()
    with _progress("downloading") as bar:
        task = bar.add_task("", total=model.size)
        done_before: dict[int, int] = {}

        def on_progress(p: Progress) -> None:
            done_before.setdefault(
                p.file_index, sum(f.size for f in model.files[: p.file_index - 1])
            )
            bar.update(task, completed=done_before[p.file_index] + p.done)
            if p.state == "resumed":
                bar.console.print(f"resuming {p.filename} from {human_size(p.resumed_from)}")
            elif p.state in ("stalled", "retrying"):
                bar.console.print(f"{p.filename}: {p.message}")

        try:
            result = hub.download(model, progress=on_progress, cancel=cancel)
        except KeyboardInterrupt:
            cancel.set()
            kept = sum(
                hub.part_path(model, f).stat().st_size
                for f in model.files
                if hub.part_path(model, f).exists()
            )
            print(
                f"\ninterrupted: kept {human_size(kept)}; run the same command to resume", file=err
            )
            return 130
    entry = lib.register_download(result.paths[0], model.repo, result.hashes)
    resumed = f", resumed from {human_size(result.resumed_from)}" if result.resumed_from else ""
    print(
        f"{entry.name}: downloaded and verified ({human_size(entry.size)}{resumed}); "
        f"sha256 {entry.sha256}",
        file=out or sys.stdout,
    )
    print(f"  {entry.path}", file=out or sys.stdout)
    return 0
