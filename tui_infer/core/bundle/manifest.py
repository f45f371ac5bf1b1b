"""manifest.json: what a bundle holds and the size and sha256 of every file in it.

Every file of the bundle but the manifest itself is listed (path relative to the bundle,
with "/"); `verify` reads each one again and names exactly what is missing, altered or
not in the manifest. A manifest of a newer format is refused, not guessed at.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.errors import TuiInferError

MANIFEST = "manifest.json"
FORMAT = "tui-infer-bundle"
FORMAT_VERSION = 1
CHUNK = 1 << 20

# (bytes done, bytes total, what is being read)
Progress = Callable[[int, int, str], None]


def labelled(progress: Progress | None, label: str) -> Callable[[int, int], None] | None:
    """A (done, total) callback for the library's and the digest cache's hashing and
    copying, feeding `progress` with a label."""
    if progress is None:
        return None
    return lambda done, total: progress(done, total, label)


class BundleError(TuiInferError):
    """Not a bundle, a bundle of a newer format, a bad option (exit code 2)."""


def sha256_of(path: Path, progress: Progress | None = None, done: int = 0, total: int = 0) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total, path.name)
    return h.hexdigest()


def file_entry(root: Path, path: Path, sha256: str | None = None) -> dict[str, Any]:
    rel = path.relative_to(root).as_posix()
    return {"path": rel, "size": path.stat().st_size, "sha256": sha256 or sha256_of(path)}


def bundle_files(root: Path) -> list[Path]:
    """Every file under the bundle but the manifest and dot-files (a .DS_Store, a
    resume journal), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p == root / MANIFEST:
                continue
            out.append(p)
    return out


def read_manifest(root: Path) -> dict[str, Any]:
    """The bundle's manifest; BundleError when DIR is not a bundle or is a newer one."""
    path = root / MANIFEST
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        hint = " (unpack a tar bundle first: tar -xf FILE)" if root.suffix == ".tar" else ""
        raise BundleError(f"{root}: {what}; give the bundle's folder{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            f"{root}: not a bundle (no {MANIFEST}); an interrupted export leaves "
            f"{root.name}.partial: run the same 'tui-infer bundle export' again to finish it"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); export the bundle again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path}: not a tui-infer bundle manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {version}, this tui-infer reads format {FORMAT_VERSION}; "
            "install the tui-infer that made it (its wheels are in the bundle)"
        )
    return data


@dataclass(frozen=True)
class Problem:
    path: str
    what: str  # "missing", "altered", "not in the manifest"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.what}: {self.path}" + (f" ({self.detail})" if self.detail else "")


def verify(
    root: Path, manifest: dict[str, Any], progress: Progress | None = None
) -> tuple[list[Problem], dict[str, str]]:
    """Every file against the manifest: the problems (none: intact) and, for the files that
    match, path -> sha256 (so that an import need not read them again)."""
    entries = manifest.get("files") or []
    total = sum(int(e.get("size", 0)) for e in entries)
    done = 0
    problems: list[Problem] = []
    good: dict[str, str] = {}
    listed = set()
    for e in entries:
        rel = str(e["path"])
        listed.add(rel)
        p = root / rel
        if not p.is_file():
            problems.append(Problem(rel, "missing"))
            done += int(e["size"])
            continue
        size = p.stat().st_size
        if size != int(e["size"]):
            problems.append(Problem(rel, "altered", f"{size} bytes, the manifest says {e['size']}"))
            done += int(e["size"])
            continue
        digest = sha256_of(p, progress, done, total)
        done += size
        if digest != e["sha256"]:
            problems.append(
                Problem(
                    rel,
                    "altered",
                    f"sha256 {digest[:12]}..., the manifest says {str(e['sha256'])[:12]}...",
                )
            )
        else:
            good[rel] = digest
    for p in bundle_files(root):
        rel = p.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(Problem(rel, "not in the manifest"))
    return problems, good


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Written last, through a temporary file and a rename: a bundle with a manifest is a
    finished one."""
    from tui_infer.core.files import atomic_write

    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write(root / MANIFEST, text.encode("utf-8"))
