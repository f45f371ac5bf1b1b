"""The wheelhouse: tui-infer and every dependency as installed here, for this platform.

The versions are the ones installed now (the dependency closure of tui-infer, read from
the installed metadata), pinned in wheels/requirements.txt, so that the air-gapped machine
runs the same app. Each wheel comes from PyPI (`pip download`, binary only, this
platform); tui-infer itself is built from its source folder when it is installed from one
(an editable install); llama-cpp-python is the wheel this machine built (the cache of
scripts/install-llama-cpp.sh, ~/.cache/tui-infer/wheels), the one whose files are the
installed ones. What none of these give is packed again from the installed files.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tui_infer.core.bundle.manifest import BundleError
from tui_infer.core.bundle.platforms import Target

Log = Callable[[str], None]
LLAMA = "llama-cpp-python"
CMAKE_SCRIPT = "llama_cmake_args.py"
APP = "tui-infer"
# files pip writes on install that a wheel does not carry
_INSTALL_ONLY = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pinned:
    name: str  # canonical
    version: str


def closure(
    root: str = APP,
    root_requires: list[str] | None = None,
    markers: dict[str, str] | None = None,
    unpinned: list[str] | None = None,
) -> list[Pinned]:
    """`root` and everything it needs here (markers evaluated for this interpreter, the
    extras each requirement asks for), as installed: sorted, `root` first. `root_requires`:
    the root's requirements when they are not the installed metadata's (the wheel just
    built from an editable install's source, whose dependencies may have changed since).
    `markers`: the marker environment of another platform; what it needs that is not
    installed here goes into `unpinned` as the requirement says it (when given)."""
    from packaging.requirements import Requirement

    seen: dict[str, Pinned] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = canonical(name)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if unpinned is not None and name != root:
                unpinned.append(name)
                continue
            raise BundleError(
                f"{name} is needed by {root} but not installed here; install it "
                "(pip install -e . for tui-infer's own) or export with --no-wheels"
            ) from None
        seen[key] = Pinned(key, dist.version)
        requires = dist.requires
        if key == canonical(root) and root_requires is not None:
            requires = root_requires
        for text in requires or []:
            req = Requirement(text)
            wanted = [{**(markers or {}), "extra": e} for e in ("", *sorted(extras))]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in wanted):
                continue
            todo.append((req.name, frozenset(req.extras)))
    ordered = sorted(seen.values(), key=lambda p: (p.name != canonical(root), p.name))
    return ordered


def _pip(args: list[str], log: Log) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repack(dist_name: str, dest: Path) -> Path:
    """A wheel of an installed distribution, from its installed files (RECORD) and its
    WHEEL tags: what it was installed from, less the scripts pip writes itself."""
    dist = md.distribution(dist_name)
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")
    ]
    if not tags or dist.files is None:
        raise BundleError(f"{dist_name}: installed without wheel metadata; cannot pack it again")
    pys, abis, plats = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    tag = "-".join(".".join(x) for x in (pys, abis, plats))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    out = dest / f"{name}-{dist.version}-{tag}.whl"
    info_dir = next(
        (str(f).split("/")[0] for f in dist.files if str(f).endswith(".dist-info/METADATA")), ""
    )
    rows: list[tuple[str, str, str]] = []
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files:
            rel = str(f).replace(os.sep, "/")
            parts = rel.split("/")
            if rel.startswith("..") or "__pycache__" in parts or rel.endswith(".pyc"):
                continue
            if parts[0] == info_dir and parts[-1] in _INSTALL_ONLY:
                continue
            path = Path(str(dist.locate_file(f)))
            if not path.is_file():
                tmp.unlink(missing_ok=True)
                raise BundleError(
                    f"{dist_name}: installed file {rel} is missing; reinstall it or export "
                    "with --no-wheels"
                )
            data = path.read_bytes()
            zf.writestr(rel, data)
            rows.append((rel, _record_hash(data), str(len(data))))
        record = f"{info_dir}/RECORD"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([*rows, (record, "", "")])
        zf.writestr(record, buf.getvalue())
    tmp.replace(out)
    return out


def _wheel_record(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        rows = csv.reader(io.StringIO(zf.read(name).decode()))
        return {r[0]: r[1] for r in rows if len(r) >= 2 and r[1]}


def built_llama_wheel(cache: Path | None = None) -> Path | None:
    """The wheel of the installed llama-cpp-python from this machine's build cache: same
    version, and every installed library file identical to the wheel's (the cache may
    hold builds with other flags)."""
    root = cache or Path(
        os.environ.get("TUI_INFER_WHEEL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tui-infer" / "wheels"
    )
    try:
        dist = md.distribution(LLAMA)
    except md.PackageNotFoundError:
        return None
    installed = {}
    for f in dist.files or []:
        rel = str(f)
        if f.hash is not None and (
            rel.endswith(".so") or ".so." in rel or rel.endswith(".dylib") or rel.endswith(".dll")
        ):
            installed[rel] = f"{f.hash.mode}={f.hash.value}"
    if not root.is_dir():
        return None
    for whl in sorted(root.glob(f"*/llama_cpp_python-{dist.version}-*.whl")):
        try:
            record = _wheel_record(whl)
        except (OSError, zipfile.BadZipFile, StopIteration):
            continue
        if installed and all(record.get(k) == v for k, v in installed.items()):
            return whl
    return None


def _source_dir(dist_name: str) -> Path | None:
    """The source folder tui-infer runs from (an editable install, or a checkout on the
    path): the folder above the package, when it holds its pyproject.toml."""
    import tui_infer

    root = Path(tui_infer.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if f'name = "{dist_name}"' in text else None


def wheel_requires(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    from email.parser import Parser

    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode("utf-8"))
    return list(meta.get_all("Requires-Dist") or [])


def build(dest: Path, log: Log, target: Target | None = None) -> dict[str, object]:
    """Fill `dest` with the wheelhouse; returns what the manifest says of it. With a
    target: binary wheels for it, and llama-cpp-python as its sdist (build_for)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    have = {canonical(p.name.split("-")[0]) for p in dest.glob("*.whl")}
    sources: dict[str, str] = {}
    # tui-infer itself
    src = _source_dir(APP)
    if not any(w.name.startswith("tui_infer-") for w in dest.glob("*.whl")):
        if src is not None:
            log(f"building the tui-infer wheel from {src}")
            r = _build_from_copy(src, dest, log)
            if r.returncode != 0:
                raise BundleError(
                    f"building the tui-infer wheel failed: {_last_line(r)}; export with "
                    "--no-wheels and install tui-infer on the other machine another way"
                )
        else:
            repack(APP, dest)
    sources[APP] = "built from source" if src is not None else "packed from the installed files"
    [app_wheel] = dest.glob("tui_infer-*.whl")
    unpinned: list[str] = []
    pins = closure(
        root_requires=wheel_requires(app_wheel),
        markers=target.marker_environment() if target else None,
        unpinned=unpinned if target else None,
    )
    if target is not None:
        return _build_for(target, dest, pins, unpinned, sources, log)
    # llama-cpp-python: the build of this machine
    if not any(w.name.startswith("llama_cpp_python-") for w in dest.glob("*.whl")):
        built = built_llama_wheel()
        if built is not None:
            log(f"llama-cpp-python: the wheel built here ({built.name})")
            shutil.copyfile(built, dest / built.name)
            sources[LLAMA] = "built on this machine"
        else:
            log("llama-cpp-python: packing the installed build")
            repack(LLAMA, dest)
            sources[LLAMA] = "packed from the installed files"
    # the rest from the index, binary wheels for this platform, the versions installed here
    rest = [p for p in pins if p.name not in (canonical(APP), canonical(LLAMA))]
    wanted = [f"{p.name}=={p.version}" for p in rest if _norm_file_name(p.name) not in have]
    if wanted:
        log(f"downloading {len(wanted)} wheels (pip download)")
        r = _pip(
            ["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *wanted], log
        )
        if r.returncode != 0:
            # one by one: what the index lacks for this platform is packed from the install
            for spec in wanted:
                one = _pip(
                    ["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), spec],
                    log,
                )
                if one.returncode != 0:
                    name = spec.split("==")[0]
                    log(
                        f"{name}: no wheel on the index ({_last_line(one)}); "
                        "packing the installed files"
                    )
                    repack(name, dest)
                    sources[name] = "packed from the installed files"
    requirements = "".join(f"{p.name}=={p.version}\n" for p in pins)
    (dest / "requirements.txt").write_text(requirements, encoding="utf-8")
    return {
        "requirements": "wheels/requirements.txt",
        "packages": len(pins),
        "llama_cpp_python": "wheel",
        "sources": sources,
    }


def _build_for(
    target: Target,
    dest: Path,
    pins: list[Pinned],
    unpinned: list[str],
    sources: dict[str, str],
    log: Log,
) -> dict[str, object]:
    """The wheelhouse for another platform: every dependency as a binary wheel for it (the
    versions installed here), llama-cpp-python as its sdist and its build requirements as
    wheels for the target, so that install.sh compiles it there with no network."""
    import shutil

    rest = [p for p in pins if p.name not in (canonical(APP), canonical(LLAMA))]
    specs = [f"{p.name}=={p.version}" for p in rest] + unpinned
    log(f"downloading {len(specs)} wheels for {target.tag}, Python {target.python_version}")
    r = _pip(["download", "--no-deps", *target.pip_args(), "-q", "-d", str(dest), *specs], log)
    if r.returncode != 0:
        raise BundleError(
            f"pip download for {target.tag} failed: {_last_line(r)}; check the tag and "
            "--python-version (or export on a machine of that platform)"
        )
    llama = next((p for p in pins if p.name == canonical(LLAMA)), None)
    if llama is None:
        raise BundleError("llama-cpp-python is not installed here; install it first")
    log(f"llama-cpp-python {llama.version}: the sdist, compiled on the target")
    r = _pip(
        ["download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(dest),
         f"{LLAMA}=={llama.version}"],
        log,
    )  # fmt: skip
    if r.returncode != 0:
        raise BundleError(f"pip download of the llama-cpp-python sdist failed: {_last_line(r)}")
    [sdist] = dest.glob(f"llama_cpp_python-{llama.version}.tar.gz")
    build_requires = sdist_build_requires(sdist) + ["cmake>=3.21", "ninja"]
    log(f"its build requirements for {target.tag}: {', '.join(build_requires)}")
    r = _pip(["download", *target.pip_args(), "-q", "-d", str(dest), *build_requires], log)
    if r.returncode != 0:
        raise BundleError(
            f"pip download of llama-cpp-python's build requirements failed: {_last_line(r)}"
        )
    requirements = "".join(f"{p.name}=={p.version}\n" for p in pins) + "".join(
        f"{name}\n" for name in unpinned
    )
    (dest / "requirements.txt").write_text(requirements, encoding="utf-8")
    sources[LLAMA] = "sdist, compiled by install.sh on the target"
    # the flags scripts/install-llama-cpp.sh builds with (the AMX workaround), computed
    # there by install.sh for the target's own CPU
    source = _source_dir(APP)
    script = None if source is None else source / "scripts" / CMAKE_SCRIPT
    if script is not None and script.is_file():
        shutil.copyfile(script, dest.parent / CMAKE_SCRIPT)
    else:
        log(f"note: {CMAKE_SCRIPT} is not here (an install without its source folder): "
            "install.sh will use llama.cpp's default native build")  # fmt: skip
    return {
        "requirements": "wheels/requirements.txt",
        "packages": len(pins) + len(unpinned),
        "llama_cpp_python": "sdist",
        "build_requires": build_requires,
        "platform": target.tag,
        "sources": sources,
    }


def sdist_build_requires(sdist: Path) -> list[str]:
    """[build-system] requires of an sdist's pyproject.toml."""
    import tarfile

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.count("/") == 1
                      and m.name.endswith("/pyproject.toml"))  # fmt: skip
        fh = tf.extractfile(member)
        assert fh is not None
        data = tomllib.loads(fh.read().decode("utf-8"))
    return [str(r) for r in data.get("build-system", {}).get("requires", [])]


def _build_from_copy(src: Path, dest: Path, log: Log) -> subprocess.CompletedProcess[str]:
    """`pip wheel` of a copy of the source folder: a build in place would leave build/ and
    an egg-info in the user's tree (and a stale egg-info there shadows the installed
    metadata for a process started in that folder)."""
    import shutil
    import tempfile

    skip = shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "venv", "node_modules"
    )
    with tempfile.TemporaryDirectory(prefix="tui-infer-wheel-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src, copy, ignore=skip, symlinks=True)
        return _pip(["wheel", "--no-deps", "-q", "-w", str(dest.absolute()), str(copy)], log)


def _norm_file_name(name: str) -> str:
    return canonical(name)


def _last_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in (r.stderr or r.stdout or "").splitlines() if x.strip()]
    return lines[-1].strip() if lines else f"exit {r.returncode}"
