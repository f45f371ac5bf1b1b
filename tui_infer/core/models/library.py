"""The model library: one index of every GGUF the user has.

Entries come from four places: files the user imported (registered in place or
copied into ``data_dir/models``), files downloaded from the hub (kept in the
standard Hugging Face cache), GGUFs shipped inside installed Python
distributions, and GGUFs already in the Hugging Face cache. The index is a
SQLite file (``data_dir/library.sqlite3``); the files themselves are never
modified. A split GGUF (``name-00001-of-00003.gguf`` ...) is one entry with
several parts. A file that disappeared is an entry with status "missing", not
an error.

Each part records its sha256 with the size and mtime it was computed for (what
`models verify` checks the file against). Hashing goes through the one cache of
core/models/digest.py: a file the store or the bench already hashed is not read again,
and a changed file is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.db import connect, transaction
from tui_infer.core.disk import StorageError
from tui_infer.core.errors import ModelFileError, ModelNotFoundError, TuiInferError
from tui_infer.core.files import atomic_open
from tui_infer.core.models.digest import HASH_CHUNK, DigestCache, ProgressFn, sha256_file
from tui_infer.core.models.gguf import ArraySummary, GgufHeader, read_header
from tui_infer.core.units import human_size

# An entry's source: imported, copied, downloaded, bundled or hf-cache. Entries the user
# put there themselves stay (shown as missing) when their file goes; scanned ones are
# simply re-scanned.
USER_SOURCES = ("imported", "copied", "downloaded")
# Files the library itself wrote: `models rm` deletes them (after asking).
OWNED_SOURCES = ("copied", "downloaded")

MIGRATIONS = [
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        real_path TEXT NOT NULL UNIQUE,
        parts TEXT NOT NULL,
        source TEXT NOT NULL,
        repo TEXT,
        metadata TEXT NOT NULL,
        added_at REAL NOT NULL
    );
    """,
    # 2: a failed `models verify` is remembered until a verify passes
    """
    ALTER TABLE models ADD COLUMN verify_failed TEXT;
    """,
]

SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


class LibraryError(TuiInferError):
    pass


@dataclass
class Part:
    """One file of a model, with the sha256 known for a given size and mtime."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    sha256: str | None = None

    def stale(self) -> bool:
        """True when the file changed since its hash was computed (or it has none)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return self.sha256 is None or (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns)


@dataclass
class ModelEntry:
    name: str
    parts: list[Part]
    source: str
    metadata: dict[str, Any]
    repo: str | None = None
    added_at: float = 0.0
    id: int | None = None
    verify_failed: str | None = None  # the last `models verify` found this; None: passed

    @property
    def path(self) -> Path:
        return Path(self.parts[0].path)

    @property
    def paths(self) -> list[Path]:
        return [Path(p.path) for p in self.parts]

    @property
    def size(self) -> int:
        total = 0
        for p in self.parts:
            try:
                total += os.stat(p.path).st_size
            except OSError:
                total += p.size
        return total

    @property
    def status(self) -> str:
        present = [Path(p.path).is_file() for p in self.parts]
        if all(present):
            return "corrupt (failed verify)" if self.verify_failed else "ok"
        if any(present):
            return f"incomplete ({sum(present)}/{len(present)} parts)"
        return "missing"

    @property
    def sha256(self) -> str | None:
        """One part: its sha256. Split: sha256 of the parts' hex digests joined by newlines."""
        digests = [p.sha256 for p in self.parts]
        if any(d is None for d in digests):
            return None
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256("\n".join(d for d in digests if d).encode()).hexdigest()

    @property
    def quantization(self) -> str:
        return str(self.metadata.get("quantization") or "?")

    @property
    def n_ctx_train(self) -> int:
        return int(self.metadata.get("n_ctx_train") or 0)


# ----- helpers ---------------------------------------------------------------------------


def split_parts(path: Path) -> list[Path]:
    """The files of a split GGUF given any of its parts (or [path] for a single file).

    Raises ModelFileError when a part is missing.
    """
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    if count < 1 or int(m.group("index")) > count:
        raise ModelFileError(f"{path}: bad split file name (part {m.group('index')} of {count})")
    parts = [
        path.with_name(f"{m.group('base')}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
    ]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelFileError(
            f"{path}: split GGUF with {count} parts, missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; put all the parts in one folder"
        )
    return parts


def model_stem(path: Path) -> str:
    m = SPLIT_RE.match(path.name)
    return m.group("base") if m else path.stem


def header_metadata(header: GgufHeader, extra_headers: Iterable[GgufHeader] = ()) -> dict[str, Any]:
    """The header facts the library keeps (JSON-safe)."""
    params = header.parameter_count + sum(h.parameter_count for h in extra_headers)
    tokens = header.get("tokenizer.ggml.tokens")
    n_vocab = tokens.length if isinstance(tokens, ArraySummary) else len(tokens or [])
    license_ = header.get("general.license")
    return {
        "name": header.name,
        "architecture": header.architecture,
        "quantization": header.quantization,
        "parameter_count": int(header.get("general.parameter_count") or params),
        "size_label": header.get("general.size_label")
        if isinstance(header.get("general.size_label"), str)
        else None,
        "n_ctx_train": header.n_ctx_train,
        "n_layer": header.n_layer,
        "n_embd": header.n_embd,
        "n_head": header.n_head,
        "n_head_kv": header.n_head_kv,
        "head_dim_k": header.head_dim_k,
        "head_dim_v": header.head_dim_v,
        "n_vocab": int(n_vocab),
        "tensor_count": len(header.tensors) + sum(len(h.tensors) for h in extra_headers),
        "license": license_ if isinstance(license_, str) else None,
        "chat_template": header.chat_template,
        "gguf_version": header.version,
    }


def read_model(path: Path) -> tuple[list[Path], dict[str, Any]]:
    """Check a GGUF (all parts of a split one) and return its parts and metadata."""
    path = Path(path).expanduser()
    header = read_header(path)  # clear ModelFileError for missing/not GGUF/truncated/hostile
    parts = split_parts(path)
    if parts[0] != path:
        header = read_header(parts[0])
    others = [read_header(p) for p in parts[1:]]
    return parts, header_metadata(header, others)


def hf_hub_cache(environ: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """The Hugging Face hub cache folder, computed as huggingface_hub does, from the
    environment at call time (its constants are frozen at import)."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "hub"


@dataclass(frozen=True)
class CachedFile:
    repo: str
    path: Path  # the snapshot path (a symlink into blobs/ usually)


def scan_hf_cache(cache: Path | None = None) -> list[CachedFile]:
    """GGUFs under models--*/snapshots/*/ (any depth), one per distinct blob."""
    cache = cache or hf_hub_cache()
    out: list[CachedFile] = []
    seen: set[str] = set()
    try:
        repos = sorted(cache.glob("models--*"))
    except OSError:
        return []
    for repo_dir in repos:
        repo = repo_dir.name[len("models--") :].replace("--", "/")
        snaps = repo_dir / "snapshots"
        if not snaps.is_dir():
            continue
        for f in sorted(snaps.glob("*/**/*.gguf")):
            if not f.is_file():
                continue  # dangling symlink: a blob removed by another tool
            real = os.path.realpath(f)
            if real in seen:
                continue
            seen.add(real)
            out.append(CachedFile(repo, f))
    return out


# ----- the library -----------------------------------------------------------------------


class ModelLibrary:
    def __init__(self, data_dir: Path, hf_cache: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / "models"
        self.db_path = self.data_dir / "library.sqlite3"
        self._hf_cache = hf_cache
        self._conn: sqlite3.Connection | None = None
        self.digests = DigestCache.in_data_dir(self.data_dir)

    @property
    def hf_cache(self) -> Path:
        return self._hf_cache or hf_hub_cache()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.db_path, MIGRATIONS)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.digests.close()

    def __enter__(self) -> ModelLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- reading -------------------------------------------------------------------

    def _row(self, row: tuple[Any, ...]) -> ModelEntry:
        id_, name, parts, source, repo, metadata, added_at, verify_failed = row
        return ModelEntry(
            name=name,
            parts=[Part(**p) for p in json.loads(parts)],
            source=source,
            metadata=json.loads(metadata),
            repo=repo,
            added_at=added_at,
            id=id_,
            verify_failed=verify_failed,
        )

    _COLS = "id, name, parts, source, repo, metadata, added_at, verify_failed"

    def entries(self, refresh: bool = True) -> list[ModelEntry]:
        """Every entry (a rescan of bundled and HF-cache GGUFs first, unless refresh=False)."""
        if refresh:
            self.refresh()
        rows = self.conn.execute(f"SELECT {self._COLS} FROM models ORDER BY name COLLATE NOCASE")
        return [self._row(r) for r in rows.fetchall()]

    def get(self, name_or_path: str, refresh: bool = True) -> ModelEntry:
        """An entry by exact name, unique part of a name, or path of one of its files."""
        entries = self.entries(refresh=refresh)
        p = Path(name_or_path).expanduser()
        if "/" in name_or_path or name_or_path.lower().endswith(".gguf") or p.exists():
            real = os.path.realpath(p)
            for e in entries:
                if any(os.path.realpath(q.path) == real or q.path == str(p) for q in e.parts):
                    return e
            raise ModelNotFoundError(
                f"{p}: not in the library; add it with 'tui-infer models import {p}'"
            )
        low = name_or_path.lower()
        exact = [e for e in entries if e.name.lower() == low]
        if exact:
            return exact[0]
        partial = [e for e in entries if low in e.name.lower()]
        if len(partial) == 1:
            return partial[0]
        if len(partial) > 1:
            choices = ", ".join(e.name for e in partial[:6])
            raise ModelNotFoundError(
                f"model name '{name_or_path}' is ambiguous ({choices}); give more of it"
            )
        known = ", ".join(e.name for e in entries[:8]) or "none"
        raise ModelNotFoundError(
            f"no model named '{name_or_path}' in the library (known: {known}); "
            "see 'tui-infer models list' or give a path to a .gguf file"
        )

    # ----- writing -------------------------------------------------------------------

    def _unique_name(self, wanted: str, real_path: str) -> str:
        name, n = wanted, 1
        while True:
            row = self.conn.execute(
                "SELECT real_path FROM models WHERE name = ?", (name,)
            ).fetchone()
            if row is None or row[0] == real_path:
                return name
            n += 1
            name = f"{wanted}-{n}"

    def _upsert(
        self,
        parts: list[Path],
        metadata: dict[str, Any],
        source: str,
        repo: str | None = None,
        name: str | None = None,
        hashes: dict[str, str] | None = None,
    ) -> ModelEntry:
        real = os.path.realpath(parts[0])
        with transaction(self.conn):
            row = self.conn.execute(
                f"SELECT {self._COLS} FROM models WHERE real_path = ?", (real,)
            ).fetchone()
            if row is not None:
                existing = self._row(row)
                # A scan never demotes what the user registered; a user action upgrades a scan.
                if source in USER_SOURCES and existing.source not in USER_SOURCES:
                    self.conn.execute(
                        "UPDATE models SET source = ?, repo = COALESCE(?, repo) WHERE id = ?",
                        (source, repo, existing.id),
                    )
                    existing.source = source
                if hashes:
                    self._store_hashes(existing, hashes)
                return existing
            part_objs = []
            for p in parts:
                st = p.stat()
                sha = (hashes or {}).get(str(p))
                part_objs.append(Part(str(p), st.st_size, st.st_mtime_ns, sha))
            final = self._unique_name(name or model_stem(parts[0]), real)
            entry = ModelEntry(final, part_objs, source, metadata, repo, time.time())
            cur = self.conn.execute(
                "INSERT INTO models (name, real_path, parts, source, repo, metadata, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    final,
                    real,
                    _parts_json(part_objs),
                    source,
                    repo,
                    json.dumps(metadata),
                    entry.added_at,
                ),
            )
            entry.id = cur.lastrowid
            return entry

    def _store_hashes(self, entry: ModelEntry, hashes: dict[str, str]) -> None:
        for part in entry.parts:
            if part.path in hashes:
                st = os.stat(part.path)
                part.size, part.mtime_ns, part.sha256 = (
                    st.st_size,
                    st.st_mtime_ns,
                    hashes[part.path],
                )
        self.conn.execute(
            "UPDATE models SET parts = ? WHERE id = ?", (_parts_json(entry.parts), entry.id)
        )

    def refresh(self) -> None:
        """Rescan bundled GGUFs and the HF cache; unreadable files are skipped, not fatal."""
        from tui_infer.core.models.bundled import find_bundled_models

        found: set[str] = set()
        for b in find_bundled_models():
            self._scan_one(b.path, "bundled", b.distribution, found)
        for c in scan_hf_cache(self.hf_cache):
            self._scan_one(c.path, "hf-cache", c.repo, found)
        # Scanned entries whose file went away (and was not found again) are dropped.
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT id, real_path, parts FROM models WHERE source IN ('bundled', 'hf-cache')"
            ).fetchall()
            for id_, real, parts in rows:
                first = json.loads(parts)[0]["path"]
                if real not in found and not Path(first).is_file():
                    self.conn.execute("DELETE FROM models WHERE id = ?", (id_,))

    def _scan_one(self, path: Path, source: str, repo: str | None, found: set[str]) -> None:
        m = SPLIT_RE.match(path.name)
        if m and int(m.group("index")) != 1:
            return  # the first part stands for the model
        real = os.path.realpath(path)
        found.add(real)
        if self.conn.execute("SELECT 1 FROM models WHERE real_path = ?", (real,)).fetchone():
            return
        try:
            parts, metadata = read_model(path)
        except ModelFileError:
            return  # a broken file in someone else's cache is not the library's business
        self._upsert(parts, metadata, source, repo)

    def import_file(
        self, path: str | Path, copy: bool = False, progress: ProgressFn | None = None
    ) -> ModelEntry:
        """Register a GGUF in place, or copy it (all parts) into data_dir/models first.

        The header is checked before anything is written; the sha256 is computed (while
        copying, when copying). A copy goes through a temporary file and a rename.
        """
        src = Path(path).expanduser().absolute()
        parts, metadata = read_model(src)
        total = sum(p.stat().st_size for p in parts)
        hashes: dict[str, str] = {}
        if copy:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            dests = self._copy_parts(parts, total, progress, hashes)
            return self._upsert(dests, metadata, "copied", hashes=hashes)
        done = 0
        for p in parts:
            hashes[str(p)] = self.digests.sha256(p, progress, done, total)
            done += p.stat().st_size
        return self._upsert(parts, metadata, "imported", hashes=hashes)

    def _copy_parts(
        self, parts: list[Path], total: int, progress: ProgressFn | None, hashes: dict[str, str]
    ) -> list[Path]:
        dest_dir = self.models_dir
        if any((dest_dir / p.name).exists() for p in parts):
            # Same name already there: a fresh subfolder keeps both.
            n = 2
            while (self.models_dir / f"{model_stem(parts[0])}-{n}").exists():
                n += 1
            dest_dir = self.models_dir / f"{model_stem(parts[0])}-{n}"
            dest_dir.mkdir(parents=True)
        free = shutil.disk_usage(dest_dir).free
        if free < total:
            raise StorageError(
                f"not enough disk space in {dest_dir} ({human_size(free)} free, "
                f"{human_size(total)} needed); "
                "free some space or import in place without --copy"
            )
        done = 0
        dests: list[Path] = []
        for p in parts:
            dest = dest_dir / p.name
            h = hashlib.sha256()
            try:
                with p.open("rb") as fi, atomic_open(dest) as fo:
                    while chunk := fi.read(HASH_CHUNK):
                        h.update(chunk)
                        fo.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            except BaseException:
                for d in dests:
                    d.unlink(missing_ok=True)
                raise
            hashes[str(dest)] = h.hexdigest()
            self.digests.remember(dest, hashes[str(dest)])
            dests.append(dest)
        return dests

    def register_download(
        self, path: Path, repo: str, hashes: dict[str, str], name: str | None = None
    ) -> ModelEntry:
        """Add a verified hub download (its sha256 already checked by the hub module)."""
        parts, metadata = read_model(path)
        for p, digest in hashes.items():
            self.digests.remember(Path(p), digest)
        return self._upsert(parts, metadata, "downloaded", repo=repo, name=name, hashes=hashes)

    def ensure_hashes(self, entry: ModelEntry, progress: ProgressFn | None = None) -> str:
        """The entry's sha256, computing (and remembering) only parts that changed."""
        if entry.status != "ok":
            raise LibraryError(f"{entry.name}: the file is {entry.status}; cannot hash it")
        total = entry.size
        done = 0
        hashes = {}
        for part in entry.parts:
            if part.stale():
                hashes[part.path] = self.digests.sha256(Path(part.path), progress, done, total)
            done += os.stat(part.path).st_size
        if hashes:
            with transaction(self.conn):
                self._store_hashes(entry, hashes)
        assert entry.sha256 is not None
        return entry.sha256

    def verify(self, entry: ModelEntry, progress: ProgressFn | None = None) -> list[str]:
        """Rehash every part and compare with the remembered hash; returns the problems."""
        if not all(Path(p.path).is_file() for p in entry.parts):
            return [f"{entry.name}: {entry.status}"]  # missing parts: nothing to hash
        problems = []
        total, done = entry.size, 0
        for part in entry.parts:
            actual = sha256_file(Path(part.path), progress, done, total)  # read, always
            done += os.stat(part.path).st_size
            st = os.stat(part.path)
            self.digests.remember(Path(part.path), actual)
            if part.sha256 is None:
                part.sha256, part.size, part.mtime_ns = actual, st.st_size, st.st_mtime_ns
            elif actual != part.sha256:
                changed = (st.st_size, st.st_mtime_ns) != (part.size, part.mtime_ns)
                why = "the file was modified since" if changed else "the file is corrupt"
                problems.append(
                    f"{part.path}: sha256 {actual[:12]}... differs from the recorded "
                    f"{part.sha256[:12]}... ({why})"
                )
        with transaction(self.conn):
            if problems:  # remembered: `models list` and the TUI show it until a verify passes
                self.conn.execute(
                    "UPDATE models SET verify_failed = ? WHERE id = ?", (problems[0], entry.id)
                )
            else:
                self.conn.execute(
                    "UPDATE models SET parts = ?, verify_failed = NULL WHERE id = ?",
                    (_parts_json(entry.parts), entry.id),
                )
        entry.verify_failed = problems[0] if problems else None
        return problems

    def remove(self, entry: ModelEntry, delete_files: bool) -> list[Path]:
        """Unregister; with delete_files, also delete the files (only ones the library owns)."""
        deleted: list[Path] = []
        if delete_files and entry.source not in OWNED_SOURCES:
            raise LibraryError(
                f"{entry.name}: a {entry.source} model's files are not ours to delete"
            )
        with transaction(self.conn):
            self.conn.execute("DELETE FROM models WHERE id = ?", (entry.id,))
        if delete_files:
            for p in entry.paths:
                if p.is_file() or p.is_symlink():
                    if entry.source == "downloaded" and p.is_symlink():
                        blob = Path(os.path.realpath(p))
                        blob.unlink(missing_ok=True)
                    p.unlink(missing_ok=True)
                    deleted.append(p)
        return deleted


def _parts_json(parts: list[Part]) -> str:
    return json.dumps([p.__dict__ for p in parts])


def find_in_library(name: str, data_dir: Path) -> Path | None:
    """A name's first file in the library, or None when the library does not know it.

    Used by resolve_model; an ambiguous name still raises ModelNotFoundError.
    """
    lib = ModelLibrary(data_dir)
    try:
        if not lib.db_path.exists():
            return None
        try:
            entry = lib.get(name, refresh=False)
        except ModelNotFoundError as exc:
            if "ambiguous" in str(exc):
                raise
            return None
        return entry.path
    finally:
        lib.close()
