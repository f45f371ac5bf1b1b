"""The running tui-infer servers and apps of this machine, for `tui-infer ps` and `stop`.

One small JSON file per process, `<state dir>/processes/<pid>.json`: what it is ("server"
or "app"), where it listens, the model, when it started and how many requests it has
answered, rewritten every HEARTBEAT_S by a daemon thread and removed at a clean exit. A
file is replaced in one step (a temporary file, then `os.replace`), so a reader never sees
half of one. A process killed outright leaves its file behind; `list_running` notices
that its pid is gone, or now belongs to another program (the start time the file recorded
is not the process's, pids are reused), and drops the file.

Never written here: the command line or the API key (a key passed as --api-key would be in
the command line; anyone who can read the state directory could read the file).

Plumbing: the standard library and psutil only. The caller passes the state directory
(`Paths.state_dir`), as it passes every path.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import psutil

FOLDER = "processes"
HEARTBEAT_S = 2.0
KINDS = ("server", "app")
_START_SLACK_S = 1.0  # psutil's create_time is rounded (jiffies; boot time read again)


@dataclass(frozen=True)
class Entry:
    """One running process, as its file says."""

    pid: int
    kind: str  # "server" or "app"
    address: str | None  # http://HOST:PORT (an app without a server: None)
    model: str | None  # the model file's name
    started_at: float  # time.time() when it registered
    requests: int  # answered, as of the last heartbeat
    heartbeat_at: float
    process_started: float  # the process's start time (psutil), to tell a reused pid

    @property
    def port(self) -> int | None:
        if not self.address:
            return None
        try:
            return urlsplit(self.address).port
        except ValueError:
            return None

    def uptime_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.started_at)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def processes_dir(state_dir: Path) -> Path:
    return Path(state_dir) / FOLDER


class Registration:
    """This process's entry: kept fresh by a daemon thread until close() (or the end of a
    `with` block) removes it. Writing is best effort: a state directory that cannot be
    written costs `ps` its line, never the server its life."""

    def __init__(self, path: Path, entry: Entry, counter: Callable[[], int]) -> None:
        self.path = path
        self._entry = entry
        self._counter = counter
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._beat, name="tui-infer-registry", daemon=True)
        self._thread.start()

    @property
    def entry(self) -> Entry:
        return self._entry

    def update(self, **changes: Any) -> None:
        """Change what the entry says (the port the system picked, a model loaded later)."""
        with self._lock:
            self._entry = replace(self._entry, **changes)
        self._write()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=HEARTBEAT_S + 1)
        with self._lock, contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _beat(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            self._write()

    def _write(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            try:
                requests = int(self._counter())
            except Exception:  # a counter that fails keeps the last figure
                requests = self._entry.requests
            self._entry = replace(self._entry, requests=requests, heartbeat_at=time.time())
            with contextlib.suppress(OSError):
                _write_json(self.path, self._entry.as_dict())


def register(
    kind: str,
    address: str | None,
    model: str | None,
    counter: Callable[[], int],
    state_dir: Path,
) -> Registration:
    """Enter this process in the registry under `state_dir` (the CLI's `paths.state_dir`);
    `counter` gives the requests answered so far (read every HEARTBEAT_S)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pid = os.getpid()
    now = time.time()
    entry = Entry(pid, kind, address, model, now, 0, now, _process_started(pid) or now)
    folder = processes_dir(state_dir)
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    return Registration(folder / f"{pid}.json", entry, counter)


def list_running(state_dir: Path) -> list[Entry]:
    """The live entries, oldest first; the files of processes that are gone are removed."""
    folder = processes_dir(state_dir)
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # no folder yet: nothing has ever registered
        return []
    live: list[Entry] = []
    for name in names:
        path = folder / name
        if name.startswith(".") and name.endswith(".tmp"):
            # a writer killed between its write and its rename
            pid = name[1:].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid), None):
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        if not name.endswith(".json"):
            continue
        entry = _read(path)
        if entry is None or str(entry.pid) != name[: -len(".json")]:
            if entry is not None or _stale_unreadable(path):
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        if not _alive(entry.pid, entry.process_started):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        live.append(entry)
    return sorted(live, key=lambda e: (e.started_at, e.pid))


def _read(path: Path) -> Entry | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Entry(
            pid=int(data["pid"]),
            kind=str(data["kind"]),
            address=None if data.get("address") is None else str(data["address"]),
            model=None if data.get("model") is None else str(data["model"]),
            started_at=float(data["started_at"]),
            requests=int(data.get("requests", 0)),
            heartbeat_at=float(data.get("heartbeat_at", data["started_at"])),
            process_started=float(data["process_started"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stale_unreadable(path: Path) -> bool:
    """A file that is not an entry, left for a minute: not one being replaced right now
    (files are replaced whole, so that would be odd), junk to drop."""
    try:
        return time.time() - path.stat().st_mtime > 60
    except OSError:
        return False


def _process_started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _alive(pid: int, started: float | None) -> bool:
    """`pid` runs, and (when `started` is known) is the process that registered."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is None:
            return True
        return abs(proc.create_time() - started) <= _START_SLACK_S
    except psutil.AccessDenied:
        return True  # cannot tell: keep it
    except (psutil.Error, OSError):
        return False


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
