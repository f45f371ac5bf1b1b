"""`bundle import`: verify a bundle, then add its models, predictions and config here.

In order, each step idempotent: every file is checked against the manifest (nothing is
touched when one is missing or altered); each model is added to the library (referenced in
place, or copied into the data folder with --copy; a model the library already has with
the same sha256 is not added again); the store is merged in one transaction (merge.py);
the bundle's config is installed only where there is none; and where no default model is
configured, the bundle's first model becomes the default. An interrupted import is run
again to finish: what was done is found done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.bundle.manifest import (
    BundleError,
    Problem,
    Progress,
    labelled,
    read_manifest,
    verify,
)
from tui_infer.core.bundle.merge import MergeResult, merge
from tui_infer.core.errors import RunTimeFailure

Say = Callable[[str], None]


class BundleDamagedError(RunTimeFailure):
    """A file of the bundle is missing or altered (exit code 1)."""

    def __init__(self, root: Path, problems: list[Problem]) -> None:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(
            f"{root}: {len(problems)} file(s) do not match the manifest: {shown}{more}; "
            "copy the bundle again"
        )
        self.problems = problems


@dataclass
class ImportResult:
    models: list[tuple[str, Path, bool]] = field(default_factory=list)  # name, path, added
    store: MergeResult | None = None
    config_installed: Path | None = None
    default_model: str | None = None  # set by this import


def bundle_id(manifest: dict[str, Any]) -> str:
    import hashlib
    import json

    files = json.dumps(manifest.get("files", []), sort_keys=True)
    return hashlib.sha256(files.encode()).hexdigest()


def check(root: Path, progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest and the verified files' sha256; BundleDamagedError when any differs."""
    manifest = read_manifest(root)
    problems, good = verify(root, manifest, progress)
    if problems:
        raise BundleDamagedError(root, problems)
    return manifest, good


def import_bundle(
    root: Path,
    *,
    data_dir: Path,
    config_file: Path,
    configured_model: str | None,
    copy: bool,
    replace: bool,
    say: Say,
    progress: Progress | None = None,
) -> ImportResult:
    from tui_infer.core.models.library import USER_SOURCES, ModelLibrary
    from tui_infer.core.static.store import STORE_FILE

    root = root.absolute()
    manifest, good = check(root, progress)
    result = ImportResult()
    with ModelLibrary(data_dir) as lib:
        for m in manifest.get("models", []):
            parts = [root / f for f in m["files"]]
            for f, p in zip(m["files"], parts, strict=True):
                lib.digests.remember(p, good[f])  # verified just now: not read again
            same = [
                e
                for e in lib.entries(refresh=False)
                if e.sha256 == m["sha256"] and e.status == "ok" and e.source in USER_SOURCES
            ]
            if same:
                result.models.append((same[0].name, same[0].path, False))
                continue
            entry = lib.import_file(
                parts[0],
                copy=copy,
                progress=labelled(progress, f"copying {m['name']}"),
            )
            if entry.sha256 != m["sha256"]:
                raise BundleError(
                    f"{entry.path}: sha256 differs from the manifest's after the copy; import again"
                )
            result.models.append((entry.name, entry.path, True))
    store = manifest.get("store")
    if store:
        result.store = merge(
            root / store["file"],
            data_dir / STORE_FILE,
            bundle_id=bundle_id(manifest),
            bundle_dir=str(root),
            replace=replace,
        )
    first = result.models[0][1] if result.models else None
    if manifest.get("config") and not config_file.exists():
        import shutil

        config_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = config_file.with_name(f".{config_file.name}.bundle.tmp")
        shutil.copyfile(root / manifest["config"], tmp)
        tmp.replace(config_file)
        result.config_installed = config_file
        if first is not None:  # the config's model path was the other machine's
            from tui_infer.core.config import write_config_key

            write_config_key(config_file, "model", str(first))
            result.default_model = str(first)
    elif configured_model is None and first is not None:
        from tui_infer.core.config import write_config_key

        write_config_key(config_file, "model", str(first))
        result.default_model = str(first)
    return result
