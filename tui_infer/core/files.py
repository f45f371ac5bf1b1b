"""Files that must never be seen half-written, and locks between tui-infer processes.

Every writer of a whole file (the config, batch outputs, store exports, chat exports) goes
through `atomic_write`: a temporary file in the same folder, fsync, then `os.replace`, so a
crash, a full disk or Ctrl+C leaves either the old file or the new one. Locks are filelock's
(fcntl on POSIX, msvcrt on Windows): a process killed while holding one releases it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tui_infer.core.errors import TuiInferError

if TYPE_CHECKING:
    from filelock import BaseFileLock


class MissingFolderError(TuiInferError):
    """An output path whose folder is not there (exit code 2)."""


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty file beside `path`, created with mode 0666 so that the kernel applies
    the umask (mkstemp's 0600 would not; reading the umask means setting it, which is not
    thread-safe)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue


@contextmanager
def atomic_open(path: Path, parents: bool = True) -> Iterator[BinaryIO]:
    """A binary file to fill; on a clean exit it replaces `path` in one step.

    The temporary file sits in the same folder (a rename across file systems is not
    atomic), is fsynced before the rename, and is removed on any failure (an OSError,
    Ctrl+C, an exception raised by the caller in the block), leaving the old file
    untouched. An existing file keeps its permission bits; a new one gets what the umask
    allows, as `open()` would give it. The folder is created when needed, unless
    `parents` is false: then a missing folder is a one-line MissingFolderError (a path the
    user typed: a typo is reported, not created; every command's -o follows that rule).
    """
    path = Path(path)
    if path.is_symlink():  # a config linked from a dotfiles repo: replace what it points to
        path = Path(os.path.realpath(path))
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise MissingFolderError(
            f"{path.parent}: no such folder; create it or write {path.name} somewhere else"
        )
    try:
        keep: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep = None
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if keep is not None and hasattr(os, "fchmod"):  # Windows: no bits to keep
                os.fchmod(f.fileno(), keep)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: Path, data: str | bytes | Iterable[str], encoding: str = "utf-8", parents: bool = True
) -> None:
    """Write text, bytes, or lines of text (each followed by a newline) through
    `atomic_open`: readers see the old file or the new one, never a mix."""
    with atomic_open(path, parents) as f:
        if isinstance(data, bytes):
            f.write(data)
        elif isinstance(data, str):
            f.write(data.encode(encoding))
        else:
            for line in data:
                f.write(line.encode(encoding) + b"\n")


def file_lock(path: Path, timeout: float = -1) -> BaseFileLock:
    """A lock on `path` itself (created if needed), shared with other processes.

    timeout < 0 waits as long as it takes; 0 fails at once with filelock.Timeout.
    """
    from filelock import FileLock

    return FileLock(str(path), timeout=timeout)


def lock_for(target: Path, timeout: float = -1) -> BaseFileLock:
    """A lock that guards `target` without leaving a file beside it.

    For files the user owns (the config), where a `.lock` next to them would be litter:
    the lock file lives in the user's runtime folder (XDG_RUNTIME_DIR, private to the user)
    or else the temporary folder, named after the user and the target's real path.
    """
    key = hashlib.sha256(os.path.realpath(target).encode()).hexdigest()[:24]
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "")
    folder = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return file_lock(Path(folder) / f"tui-infer-{user}-{key}.lock", timeout)
