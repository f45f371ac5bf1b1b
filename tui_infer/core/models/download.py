"""The resumable, sha256-verified download of a hub model into the HF cache, so that
nobody has to babysit it. huggingface_hub checks only the size of what it fetched and
deletes an interrupted download's temporary file, so this is our own loop:

- the bytes go to ``blobs/<sha256>.part`` in the standard HF cache layout; a later run
  (after Ctrl+C, kill -9, a dropped connection) continues from its size with an HTTP
  Range request;
- failures are retried with exponential backoff; no byte for ``stall_s`` seconds is
  reported as a stall and retried, never a frozen display;
- the sha256 is checked against the hub's LFS hash before the file is renamed to its
  blob and linked into ``snapshots/<commit>/``: a partial or corrupt file never appears
  in the cache's snapshots, so never in the library;
- a threading.Event cancels between chunks (the .part is kept for the next run);
- a file name that would leave the repo's folder is refused before anything is written.

It is a mixin, `HubDownloads`, that `Hub` inherits rather than a separate Downloader the
Hub holds: a download needs exactly the Hub's settings (endpoint, cache, retries,
backoff, stall), and callers (the CLI, the TUI, the tests) keep asking one object for
`download`, `part_path` and `snapshot_path`; a Downloader would copy those settings or
point back at the Hub for them. The mixin declares the attributes it reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

from tui_infer.core.files import atomic_write, file_lock
from tui_infer.core.models.http import auth_headers, http_client, status_error, translate_error
from tui_infer.core.models.hub_types import (
    ChecksumMismatchError,
    DownloadCancelled,
    DownloadResult,
    HubError,
    HubFile,
    HubModel,
    HubOfflineError,
    Progress,
    ProgressCallback,
    UnsafeFileNameError,
    check_filename,
    offline_by_env,
)


class HubDownloads:
    """Download and cache-path methods of the Hub (see the module docstring)."""

    endpoint: str
    cache: Path
    retries: int
    backoff_s: float
    stall_s: float

    def _url(self, model: HubModel, filename: str) -> str:
        from urllib.parse import quote

        rev = quote(model.commit or model.revision, safe="")
        return f"{self.endpoint}/{model.repo}/resolve/{rev}/{quote(filename)}"

    def repo_dir(self, repo: str) -> Path:
        return self.cache / ("models--" + repo.replace("/", "--"))

    def snapshot_path(self, model: HubModel, filename: str) -> Path:
        rel = check_filename(filename)
        snap = self.repo_dir(model.repo) / "snapshots" / model.commit
        target = snap.joinpath(*rel.parts)
        # Belt and braces: the joined path must stay under the snapshot folder.
        if os.path.commonpath([os.path.abspath(target), os.path.abspath(snap)]) != os.path.abspath(
            snap
        ):
            raise UnsafeFileNameError(
                f"refusing hub file name {filename!r}: it leaves the snapshot folder"
            )
        return target

    def part_path(self, model: HubModel, f: HubFile) -> Path:
        return self.repo_dir(model.repo) / "blobs" / f"{f.sha256}.part"

    def download(
        self,
        model: HubModel,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Download every file of a model, verified, into the HF cache; return snapshot paths."""
        if offline_by_env():
            raise HubOfflineError(
                "offline (HF_HUB_OFFLINE is set): cannot download; import a file with "
                "'tui-infer models import PATH' instead"
            )
        for f in model.files:  # refuse before writing anything
            self.snapshot_path(model, f.filename)
            if not f.sha256 or not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
                raise HubError(
                    f"{model.repo}/{f.filename}: the hub gives no LFS sha256; cannot verify it"
                )
        cancel = cancel or threading.Event()
        result = DownloadResult([], 0, 0)
        for i, f in enumerate(model.files, 1):
            path, sent, resumed = self._download_file(
                model, f, progress, cancel, i, len(model.files)
            )
            result.paths.append(path)
            result.bytes_transferred += sent
            result.resumed_from += resumed
            assert f.sha256
            result.hashes[str(path)] = f.sha256
        return result

    def _download_file(
        self,
        model: HubModel,
        f: HubFile,
        progress: ProgressCallback | None,
        cancel: threading.Event,
        index: int,
        count: int,
    ) -> tuple[Path, int, int]:
        from filelock import Timeout

        assert f.sha256
        target = self.snapshot_path(model, f.filename)
        blob = self.repo_dir(model.repo) / "blobs" / f.sha256
        if blob.is_file() and blob.stat().st_size == f.size:
            self._link(blob, target)
            return target, 0, 0
        blob.parent.mkdir(parents=True, exist_ok=True)
        part = self.part_path(model, f)
        lock_path = part.with_suffix(".lock")
        lock = file_lock(lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise HubError(
                f"{f.filename}: another tui-infer is downloading it; wait for it to finish"
            ) from None
        try:
            if blob.is_file() and blob.stat().st_size == f.size:  # finished while we waited
                sent = resumed = 0
            else:
                sent, resumed = self._fetch(model, f, part, progress, cancel, index, count)
                os.replace(part, blob)  # under the lock: the next holder sees the blob
        finally:
            # no .lock left in the cache; one who opened it before the unlink finds the
            # blob above once it gets the lock
            lock_path.unlink(missing_ok=True)
            lock.release()
        self._link(blob, target)
        if model.revision and model.commit != model.revision and "/" not in model.revision:
            # refs/<branch> names the commit, as huggingface_hub writes it
            atomic_write(self.repo_dir(model.repo) / "refs" / model.revision, model.commit)
        return target, sent, resumed

    @staticmethod
    def _link(blob: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp-link")
        tmp.unlink(missing_ok=True)
        try:
            tmp.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:  # no symlinks (some file systems): a hard link, else a copy
            try:
                os.link(blob, tmp)
            except OSError:
                import shutil

                shutil.copyfile(blob, tmp)
        os.replace(tmp, target)

    def _fetch(
        self,
        model: HubModel,
        f: HubFile,
        part: Path,
        progress: ProgressCallback | None,
        cancel: threading.Event,
        index: int,
        count: int,
    ) -> tuple[int, int]:
        """Fill `part` to f.size bytes and verify it; returns (bytes sent, resumed from)."""
        import httpx2

        assert f.sha256
        h = hashlib.sha256()
        have = part.stat().st_size if part.exists() else 0
        if have > f.size:
            part.unlink()
            have = 0
        if have:  # hash what an earlier run left (local disk: fast)
            with part.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        resumed_from = have
        sent = 0
        attempt = 0
        rate = _Rate()
        report = Progress(
            f.filename,
            have,
            f.size,
            resumed_from=have,
            file_index=index,
            file_count=count,
            state="resumed" if have else "downloading",
        )
        if progress:
            progress(report)
        with http_client(read_timeout_s=self.stall_s) as client:
            while have < f.size:
                if cancel.is_set():
                    raise DownloadCancelled(f"{f.filename}: cancelled; the same command resumes it")
                headers = auth_headers()
                if have:
                    headers["Range"] = f"bytes={have}-"
                try:
                    with client.stream("GET", self._url(model, f.filename), headers=headers) as r:
                        if r.status_code >= 400:
                            if r.status_code >= 500 or r.status_code == 429:
                                raise _Retry(f"HTTP {r.status_code}")
                            raise status_error(
                                r.status_code, r.headers, f"{model.repo}/{f.filename}"
                            )
                        if have and r.status_code == 200:
                            # The server ignored Range: start over.
                            have, h = 0, hashlib.sha256()
                            part.unlink(missing_ok=True)
                        elif r.status_code == 206:
                            start = _content_range_start(r.headers.get("content-range", ""))
                            if start != have:
                                raise _Retry(f"server resumed at {start}, wanted {have}")
                        with part.open("ab") as out:
                            for chunk in (
                                r.iter_bytes()
                            ):  # as received: a chunk size would drop the tail of a cut body
                                if cancel.is_set():
                                    out.flush()
                                    raise DownloadCancelled(
                                        f"{f.filename}: cancelled at {have} of {f.size} bytes; "
                                        "the same command resumes it"
                                    )
                                if have + len(chunk) > f.size:
                                    chunk = chunk[: f.size - have]
                                out.write(chunk)
                                h.update(chunk)
                                have += len(chunk)
                                sent += len(chunk)
                                attempt = 0
                                if progress:
                                    report.done, report.state, report.message = (
                                        have,
                                        "downloading",
                                        "",
                                    )
                                    report.speed = rate.add(len(chunk))
                                    report.eta_s = (
                                        (f.size - have) / report.speed if report.speed > 0 else None
                                    )
                                    progress(report)
                                if have >= f.size:
                                    break
                    if have < f.size:
                        raise _Retry("the connection closed early")
                except (_Retry, httpx2.TransportError) as exc:
                    stalled = isinstance(exc, httpx2.ReadTimeout)
                    attempt += 1
                    if attempt > self.retries:
                        if stalled:
                            raise HubError(
                                f"{f.filename}: no data for {self.stall_s:.0f} s, "
                                f"{self.retries} times; "
                                f"kept {have} bytes, the same command resumes"
                            ) from None
                        raise (
                            translate_error(exc, f.filename)
                            if isinstance(exc, httpx2.ConnectError)
                            else HubError(
                                f"{f.filename}: download failed after {self.retries} "
                                f"retries ({exc}); "
                                f"kept {have} bytes, the same command resumes"
                            )
                        ) from None
                    wait = self.backoff_s * (2 ** (attempt - 1))
                    if progress:
                        report.done = have
                        report.state = "stalled" if stalled else "retrying"
                        report.message = (
                            f"no data for {self.stall_s:.0f} s" if stalled else str(exc)
                        ) + f"; retry {attempt}/{self.retries} in {wait:.1f} s"
                        report.speed, report.eta_s = 0.0, None
                        progress(report)
                    if cancel.wait(wait):
                        raise DownloadCancelled(
                            f"{f.filename}: cancelled; the same command resumes it"
                        ) from None
        if progress:
            report.state, report.done = "verifying", have
            progress(report)
        digest = h.hexdigest()
        if digest != f.sha256:
            part.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{f.filename}: sha256 {digest[:16]}... does not match the hub's "
                f"{f.sha256[:16]}...; "
                "the download was corrupted and has been deleted, run the command again"
            )
        if progress:
            report.state = "done"
            progress(report)
        return sent, resumed_from


class _Retry(Exception):
    pass


class _Rate:
    """Bytes per second over the last few seconds."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window = window_s
        self.samples: list[tuple[float, int]] = []

    def add(self, n: int) -> float:
        now = time.monotonic()
        self.samples.append((now, n))
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.pop(0)
        span = now - self.samples[0][0]
        total = sum(s for _, s in self.samples)
        return total / span if span > 0.05 else 0.0


def _content_range_start(value: str) -> int:
    m = re.match(r"bytes (\d+)-", value)
    return int(m.group(1)) if m else -1
