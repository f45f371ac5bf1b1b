"""`bundle export`: write a bundle folder (or one tar file) for an air-gapped machine.

The bundle is made in OUT.partial beside OUT and becomes OUT in one rename once its
manifest is written: a folder named OUT is always a finished bundle. An interrupted export
resumes: the same command again keeps what OUT.partial already holds (a model file whose
size and sha256 the journal recorded is not copied again; wheels already there are not
downloaded again) and takes a fresh store snapshot.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.bundle import snapshot
from tui_infer.core.bundle.install_script import INSTALL_SH
from tui_infer.core.bundle.manifest import (
    CHUNK,
    FORMAT,
    FORMAT_VERSION,
    BundleError,
    Progress,
    bundle_files,
    file_entry,
    labelled,
    write_manifest,
)
from tui_infer.core.bundle.platforms import Target
from tui_infer.core.disk import StorageError
from tui_infer.core.units import human_size

JOURNAL = ".export-journal.json"
STORE_PATH = "store/store.sqlite3"
CONFIG_PATH = "config/config.toml"

Say = Callable[[str], None]


@dataclass
class BundleModel:
    name: str
    parts: list[Path]
    sha256: str  # the entry's: one part's, or of the parts' digests (library.ModelEntry)
    part_sha256: list[str]
    why: str  # "default", "asked for", "made predictions"

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)


@dataclass
class ExportPlan:
    out: Path
    work: Path
    tar: bool
    models: list[BundleModel]
    store_mode: str
    store_info: snapshot.SnapshotInfo | None
    config: Path | None
    wheels: bool
    missing_models: list[str] = field(default_factory=list)  # sha256 of runs' models not found
    target: Target | None = None  # --platform: another platform than this one

    @property
    def models_size(self) -> int:
        return sum(m.size for m in self.models)


def work_dir(out: Path) -> Path:
    base = out.name[: -len(".tar")] if out.name.endswith(".tar") else out.name
    return out.with_name(base + ".partial")


def check_out(out: Path) -> None:
    if out.exists():
        raise BundleError(f"{out}: already exists; remove it or choose another name")
    if not out.parent.is_dir():
        raise BundleError(f"{out.parent}: no such folder; create it or choose another OUT")


def _entry_sha(part_digests: list[str]) -> str:
    import hashlib

    if len(part_digests) == 1:
        return part_digests[0]
    return hashlib.sha256("\n".join(part_digests).encode()).hexdigest()


def resolve_models(
    asked: list[str],
    configured: str | None,
    store_models: list[tuple[str, str]],
    data_dir: Path,
    say: Say,
    progress: Progress | None = None,
) -> tuple[list[BundleModel], list[str]]:
    """The models to carry: those asked for (-m), else the default model and every model
    the exported predictions were made with. Returns them and the sha256 of runs' models
    found nowhere on this machine."""
    from tui_infer.core.errors import ModelFileError, ModelNotFoundError
    from tui_infer.core.models.digest import DigestCache
    from tui_infer.core.models.library import ModelLibrary, model_stem, split_parts
    from tui_infer.core.models.resolve import resolve_model

    out: list[BundleModel] = []
    missing: list[str] = []
    digests = DigestCache.in_data_dir(data_dir)

    def add(path: Path, why: str) -> None:
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path}: no such model file; 'tui-infer models list' lists them"
            )
        parts = split_parts(path)
        total = sum(p.stat().st_size for p in parts)
        done = 0
        shas = []
        for p in parts:
            shas.append(digests.sha256(p, labelled(progress, f"hashing {p.name}"), done, total))
            done += p.stat().st_size
        sha = _entry_sha(shas)
        if any(m.sha256 == sha for m in out):
            return
        out.append(BundleModel(model_stem(parts[0]), parts, sha, shas, why))

    try:
        if asked:
            for name in asked:
                path = resolve_model(name)
                if path is None:
                    raise ModelNotFoundError(f"no model named '{name}'")
                add(path, "asked for")
            return out, missing
        default = resolve_model(configured)
        if default is not None:
            add(default, "default")
        known = {m.sha256 for m in out}
        wanted = [(sha, p) for sha, p in store_models if sha not in known]
        if not wanted:
            return out, missing
        lib = ModelLibrary(data_dir)
        try:
            entries = lib.entries()
            for sha, run_path in wanted:
                candidates = [Path(run_path)] + [
                    e.path for e in entries if e.status == "ok" and e.sha256 == sha
                ]
                found = None
                for c in candidates:
                    if c.is_file():
                        try:
                            parts = split_parts(c)
                        except ModelFileError:
                            continue  # a split model missing parts here
                        digests_of = [digests.sha256(p) for p in parts]  # cached, or read
                        if _entry_sha(digests_of) == sha:
                            found = c
                            break
                if found is None:
                    missing.append(sha)
                    say(
                        f"warning: the model of some exported predictions (sha256 {sha[:12]}..., "
                        f"last at {run_path}) is not on this machine; its predictions go in "
                        "the bundle without it"
                    )
                    continue
                add(found, "made predictions")
        finally:
            lib.close()
        return out, missing
    finally:
        digests.close()


def plan(
    out: Path,
    *,
    models: list[str],
    configured_model: str | None,
    store_mode: str,
    config: bool,
    wheels: bool,
    tar: bool,
    data_dir: Path,
    config_file: Path,
    say: Say,
    progress: Progress | None = None,
    target: Target | None = None,
) -> ExportPlan:
    """Check the options, take the store snapshot (into OUT.partial) and find the models."""
    from tui_infer.core.static.store import STORE_FILE, PredictionStore

    if store_mode not in snapshot.STORE_MODES:
        raise BundleError(
            f"--store must be one of {', '.join(snapshot.STORE_MODES)}, got {store_mode!r}"
        )
    if tar and not out.name.endswith(".tar"):
        raise BundleError(
            f"{out}: with --tar, OUT is the tar file to write: name it {out.name}.tar"
        )
    if target is not None and not wheels:
        raise BundleError("--platform is for the wheels: drop --no-wheels, or drop --platform")
    check_out(out)
    work = work_dir(out)
    cfg = None
    if config:
        if not config_file.is_file():
            raise BundleError(f"--config: there is no config file at {config_file}; drop --config")
        cfg = config_file
    created = not work.exists()
    work.mkdir(exist_ok=True)
    try:
        info = None
        store_file = data_dir / STORE_FILE
        if store_mode != "none" and store_file.is_file():
            PredictionStore(store_file).close()  # brought to this tui-infer's schema first
            dest = work / STORE_PATH
            dest.parent.mkdir(exist_ok=True)
            info = snapshot.take(store_file, dest, store_mode)
        elif (work / STORE_PATH).exists():
            (work / STORE_PATH).unlink()
        chosen, missing = resolve_models(
            models, configured_model, info.models if info else [], data_dir, say, progress
        )
        if not chosen:
            raise BundleError("no model to put in the bundle: give one with -m NAME|PATH")
    except BaseException:
        if created:  # a refused export leaves nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportPlan(out, work, tar, chosen, store_mode, info, cfg, wheels, missing, target)


def _journal(work: Path) -> dict[str, Any]:
    try:
        data = json.loads((work / JOURNAL).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_journal(work: Path, journal: dict[str, Any]) -> None:
    from tui_infer.core.files import atomic_write

    atomic_write(work / JOURNAL, json.dumps(journal))


def model_dest(plan_: ExportPlan) -> dict[Path, str]:
    """Each model file -> its path in the bundle (models/NAME; a subfolder when two models'
    files share a name)."""
    dest: dict[Path, str] = {}
    used: set[str] = set()
    for m in plan_.models:
        names = [p.name for p in m.parts]
        sub = "" if not used.intersection(names) else f"{m.sha256[:12]}/"
        for p in m.parts:
            rel = f"models/{sub}{p.name}"
            used.add(p.name)
            dest[p] = rel
    return dest


def wheels_estimate() -> int:
    """An upper bound of the wheelhouse's size: the installed size of the closure."""
    import importlib.metadata as md

    from tui_infer.core.bundle.wheels import closure

    total = 0
    for p in closure():
        for f in md.distribution(p.name).files or []:
            total += f.size or 0
    return total


def python_info() -> dict[str, Any]:
    from packaging.tags import sys_tags

    tags = [str(t) for t in sys_tags()]
    platforms: list[str] = []
    for t in tags:
        plat = t.split("-")[2]
        if plat != "any" and plat not in platforms:
            platforms.append(plat)
    return {
        "version": platform.python_version(),
        "version_short": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "implementation": sys.implementation.name,
        "tag": tags[0] if tags else "",
        "platform_tags": platforms[:8],
        "system": platform.system(),
        "machine": platform.machine(),
    }


def target_python(target: Target) -> dict[str, Any]:
    short = target.python_version
    cp = "cp" + short.replace(".", "")
    return {
        "version": short,
        "version_short": short,
        "implementation": "cpython",
        "tag": f"{cp}-{cp}-{target.tag}",
        "platform_tags": [target.tag],
        "system": target.system,
        "machine": target.machine,
    }


def sdist_build(wheels_info: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's llama.cpp entry when install.sh compiles it on the target: built for
    that CPU (native), so no feature is required beforehand."""
    import importlib.metadata as md

    return {
        "llama_cpp_python": md.version("llama-cpp-python"),
        "backend": "CPU",
        "build": "sdist: compiled by install.sh on the target (CMAKE_ARGS there apply)",
        "gpu_offload": False,
        "gpu": {},
        "system_info": "",
        "cpu_features": [],
        "cpu_requires": {"linux": [], "darwin": [], "unchecked": []},
        "build_requires": (wheels_info or {}).get("build_requires", []),
    }


def needed_space(plan_: ExportPlan) -> tuple[int, int]:
    """(the bundle's expected size, what is still to be written) in bytes."""
    journal = _journal(plan_.work)
    dests = model_dest(plan_)
    total = plan_.models_size
    left = 0
    for p, rel in dests.items():
        size = p.stat().st_size
        if journal.get(rel, {}).get("size") != size or not (plan_.work / rel).is_file():
            left += size
    store = plan_.store_info and (plan_.work / STORE_PATH).stat().st_size or 0
    wheels = wheels_estimate() if plan_.wheels else 0
    have_wheels = sum(p.stat().st_size for p in (plan_.work / "wheels").glob("*.whl"))
    total += store + wheels
    left += max(0, wheels - have_wheels)
    if plan_.tar:
        left += total  # the folder is written first, then the tar file from it
    return total, left


def check_free(plan_: ExportPlan, left: int) -> None:
    free = shutil.disk_usage(plan_.work).free
    if free < left:
        raise StorageError(
            f"{plan_.out.parent}: not enough free space ({human_size(free)} free, "
            f"{human_size(left)} needed); free some space or export elsewhere "
            "(or fewer models: -m NAME)"
        )


def copy_models(plan_: ExportPlan, progress: Progress | None) -> dict[str, str]:
    """Copy the model files into the bundle (hashing as they go, checked against their
    known sha256); returns bundle path -> sha256. Files the journal has are kept."""
    import hashlib

    from tui_infer.core.files import atomic_open

    journal = _journal(plan_.work)
    dests = model_dest(plan_)
    expected = {p: s for m in plan_.models for p, s in zip(m.parts, m.part_sha256, strict=True)}
    total = sum(p.stat().st_size for p in dests)
    done = 0
    out: dict[str, str] = {}
    for src, rel in dests.items():
        size = src.stat().st_size
        target = plan_.work / rel
        j = journal.get(rel)
        if (
            j
            and j.get("size") == size
            and j.get("sha256") == expected[src]
            and target.is_file()
            and target.stat().st_size == size
        ):
            out[rel] = j["sha256"]
            done += size
            if progress:
                progress(done, total, src.name)
            continue
        h = hashlib.sha256()
        with src.open("rb") as fi, atomic_open(target) as fo:
            while chunk := fi.read(CHUNK):
                h.update(chunk)
                fo.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total, src.name)
            if h.hexdigest() != expected[src]:
                raise BundleError(
                    f"{src}: changed while it was exported (sha256 {h.hexdigest()[:12]}..., "
                    f"{expected[src][:12]}... before); run the export again"
                )
        out[rel] = expected[src]
        journal[rel] = {"size": size, "sha256": expected[src]}
        _save_journal(plan_.work, journal)
    return out


def finish(
    plan_: ExportPlan,
    model_hashes: dict[str, str],
    wheels_info: dict[str, Any] | None,
    progress: Progress | None,
) -> Path:
    """install.sh, the config, the manifest; then OUT (a rename, or the tar file)."""
    from tui_infer.core.bundle.cpu import build_info
    from tui_infer.core.static.provenance import tui_infer_version

    work = plan_.work
    if plan_.config is not None:
        (work / "config").mkdir(exist_ok=True)
        shutil.copyfile(plan_.config, work / CONFIG_PATH)
    elif (work / CONFIG_PATH).exists():
        (work / CONFIG_PATH).unlink()
    if not plan_.wheels and (work / "wheels").exists():
        shutil.rmtree(work / "wheels")
    script = work / "install.sh"
    script.write_text(INSTALL_SH, encoding="utf-8")
    script.chmod(0o755)
    dests = model_dest(plan_)
    files = []
    for p in bundle_files(work):
        rel = p.relative_to(work).as_posix()
        files.append(file_entry(work, p, model_hashes.get(rel)))
    info = plan_.store_info
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tui_infer_version": tui_infer_version(),
        "python": python_info() if plan_.target is None else target_python(plan_.target),
        "llama_cpp": build_info() if plan_.target is None else sdist_build(wheels_info),
        "models": [
            {
                "name": m.name,
                "sha256": m.sha256,
                "files": [dests[p] for p in m.parts],
                "size": m.size,
                "why": m.why,
            }
            for m in plan_.models
        ],
        "models_not_found": plan_.missing_models,
        "store": None
        if info is None
        else {
            "file": STORE_PATH,
            "mode": plan_.store_mode,
            "runs": info.runs,
            "predictions": info.predictions,
            "published": info.published,
            "schema_version": info.schema_version,
        },
        "config": CONFIG_PATH if plan_.config is not None else None,
        "wheels": wheels_info,
        "install": "install.sh",
        "files": files,
    }
    write_manifest(work, manifest)
    (work / JOURNAL).unlink(missing_ok=True)
    if not plan_.tar:
        os.replace(work, plan_.out)
        return plan_.out
    write_tar(work, plan_.out, progress)
    shutil.rmtree(work)
    return plan_.out


def write_tar(work: Path, out: Path, progress: Progress | None) -> None:
    """One uncompressed tar (GGUFs do not compress) whose top folder is the bundle's name,
    written through a temporary file and a rename."""
    top = out.name[: -len(".tar")]
    tmp = out.with_name(f".{out.name}.tmp")
    files = [*bundle_files(work), work / "manifest.json"]
    total = sum(p.stat().st_size for p in files)
    done = 0
    try:
        with tarfile.open(tmp, "w") as tf:
            for p in files:
                tf.add(p, arcname=f"{top}/{p.relative_to(work).as_posix()}", recursive=False)
                done += p.stat().st_size
                if progress:
                    progress(done, total, f"tar {p.name}")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
