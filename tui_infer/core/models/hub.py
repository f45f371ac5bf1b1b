"""The Hugging Face hub: search GGUF repos, list their files, download them so that
nobody has to babysit the download.

Listing goes through huggingface_hub's HfApi (with ``endpoint=`` from HF_ENDPOINT, read
at call time). Downloads are our own loop, because huggingface_hub checks only the size
of what it fetched and deletes an interrupted download's temporary file:

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

Offline (HF_HUB_OFFLINE=1, or a hub that cannot be reached within a short timeout)
raises HubOfflineError with a plain message; nothing waits long on the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tui_infer.core.errors import ModelFileError, TuiInferError
from tui_infer.core.files import atomic_write, file_lock
from tui_infer.core.models.gguf import FILE_TYPES, GGML_TYPES, GgufHeader, parse_header_bytes
from tui_infer.core.models.library import SPLIT_RE, hf_hub_cache

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 5.0
API_TIMEOUT_S = 15.0
HEADER_PROBE_SIZES = (1 << 20, 8 << 20, 32 << 20)  # bytes of a ranged GET for a header


class HubError(TuiInferError):
    pass


class HubOfflineError(HubError):
    pass


class HubAccessError(HubError):
    """Gated or private repository (401/403)."""


class HubNotFoundError(HubError):
    pass


class UnsafeFileNameError(HubError):
    pass


class ChecksumMismatchError(HubError):
    pass


class DownloadCancelled(HubError):
    pass


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


# ----- names -----------------------------------------------------------------------------

_QUANTS = sorted(
    {q.upper() for q in FILE_TYPES.values()} | {t[0].upper() for t in GGML_TYPES.values()}
    | {"Q4_K", "Q5_K", "Q3_K", "Q2_K", "IQ2_M", "IQ3_M", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"},
    key=len, reverse=True,
)  # fmt: skip
_QUANT_RE = re.compile(
    r"(?:^|[-._/])(" + "|".join(re.escape(q) for q in _QUANTS) + r")(?=$|[-._/])", re.IGNORECASE
)


def quant_from_name(filename: str) -> str | None:
    """The quantization named in a file name (Q4_K_M, IQ3_XS, F16, ...), if any."""
    stem = filename[:-5] if filename.lower().endswith(".gguf") else filename
    found = _QUANT_RE.findall(stem)
    return found[-1].upper() if found else None


def check_filename(filename: str) -> PurePosixPath:
    """A hub file name as a safe relative path, or UnsafeFileNameError."""
    p = PurePosixPath(filename)
    bad = (
        not filename
        or "\\" in filename
        or "\0" in filename
        or p.is_absolute()
        or filename.startswith("~")
        or any(part in ("..", ".", "") for part in filename.split("/"))
        or re.match(r"^[A-Za-z]:", filename) is not None
    )
    if bad:
        raise UnsafeFileNameError(
            f"refusing hub file name {filename!r}: it would be written outside the model's "
            "folder; the repository is broken or hostile"
        )
    return p


def check_repo_id(repo: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo) or ".." in repo:
        raise HubError(f"'{repo}' is not a hub repository id; give it as OWNER/NAME")
    return repo


# ----- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoSummary:
    repo: str
    downloads: int
    likes: int
    updated: str  # ISO date, or ""
    gated: bool = False


@dataclass(frozen=True)
class HubFile:
    filename: str
    size: int
    sha256: str | None


@dataclass
class HubModel:
    """One model in a repo: a single GGUF or all the parts of a split one."""

    repo: str
    revision: str
    commit: str
    files: list[HubFile]
    quant: str | None = None
    header: GgufHeader | None = None
    header_error: str | None = None

    @property
    def name(self) -> str:
        first = PurePosixPath(self.files[0].filename).name
        m = SPLIT_RE.match(first)
        return m.group("base") if m else first[:-5] if first.lower().endswith(".gguf") else first

    @property
    def filename(self) -> str:
        return self.files[0].filename

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Progress:
    """What a download reports: bytes, speed (bytes/s, recent), ETA, and its state."""

    filename: str
    done: int
    total: int
    speed: float = 0.0
    eta_s: float | None = None
    state: str = "downloading"  # downloading, resumed, stalled, retrying, verifying, done
    message: str = ""
    resumed_from: int = 0
    file_index: int = 1
    file_count: int = 1


ProgressCallback = Callable[[Progress], None]


@dataclass
class DownloadResult:
    paths: list[Path]
    bytes_transferred: int
    resumed_from: int
    hashes: dict[str, str] = field(default_factory=dict)


# ----- the HTTP client ---------------------------------------------------------------------


def http_client(
    *, read_timeout_s: float = API_TIMEOUT_S, connect_timeout_s: float = CONNECT_TIMEOUT_S,
    fail_fast: bool = False,
) -> Any:  # fmt: skip
    """The one way tui-infer talks HTTP to the hub: an httpx2.Client with short timeouts,
    tui-infer's user agent, the endpoint (HF_ENDPOINT, read now) as base URL, redirects
    followed, and HF_HUB_OFFLINE checked at each request (huggingface_hub freezes it at
    import). The token is not baked in: callers add `auth_headers()` per request.

    fail_fast: a refused or timed-out connection raises HubOfflineError at once, which
    huggingface_hub's http_backoff does not retry (it would for ~20 s); our own download
    loop wants the plain httpx2 errors, to retry them with its backoff.
    """
    import platform

    import httpx2

    from tui_infer import __version__

    def refuse_offline(request: Any) -> None:
        if offline_by_env():
            raise HubOfflineError("offline (HF_HUB_OFFLINE is set): search and download are off")

    # not build_hf_headers: it may fetch (through get_session, so through this factory)
    # and would deadlock huggingface_hub's session lock
    agent = f"tui-infer/{__version__}; python/{platform.python_version()}"
    return httpx2.Client(
        base_url=endpoint(),
        headers={"user-agent": agent},
        transport=_fail_fast_transport() if fail_fast else httpx2.HTTPTransport(),
        event_hooks={"request": [refuse_offline]},
        follow_redirects=True,
        timeout=httpx2.Timeout(read_timeout_s, connect=connect_timeout_s),
    )


def _fail_fast_transport() -> Any:
    import httpx2

    class FailFast(httpx2.HTTPTransport):
        def handle_request(self, request: Any) -> Any:
            try:
                return super().handle_request(request)
            except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout) as exc:
                raise HubOfflineError(
                    f"offline: cannot reach {request.url.scheme}://{request.url.host}"
                    f"{':' + str(request.url.port) if request.url.port else ''} "
                    f"({type(exc).__name__}); search and download need the network, "
                    "everything else works"
                ) from None

    return FailFast()


def auth_headers() -> dict[str, str]:
    """huggingface_hub's headers for a request, with HF_TOKEN as it is now. (Building them
    may fetch the hub's agent registry once: through our client, like every other call.)"""
    from huggingface_hub.utils import build_hf_headers

    _configure_hf_session()

    from tui_infer import __version__

    return dict(build_hf_headers(token=_token(), library_name="tui-infer",
                                 library_version=__version__))  # fmt: skip


_configured = threading.Lock()
_factory_set = False


def _configure_hf_session() -> None:
    """huggingface_hub's shared client has no timeout (a dead hub hangs list_models), and
    its offline check is frozen at import: it gets ours (fail-fast) instead."""
    global _factory_set
    with _configured:
        if _factory_set:
            return
        from huggingface_hub import set_client_factory

        set_client_factory(lambda: http_client(fail_fast=True))
        _factory_set = True


def ping(timeout_s: float = 3.0) -> int:
    """The HTTP status of one small API request; HubOfflineError (with the reason) when
    the hub cannot be reached within timeout_s."""
    import httpx2

    try:
        with http_client(read_timeout_s=timeout_s, connect_timeout_s=timeout_s) as client:
            return int(client.get("/api/models", params={"limit": 1}).status_code)
    except (httpx2.TransportError, OSError) as exc:
        raise HubOfflineError(str(exc) or type(exc).__name__) from None


def _translate(exc: BaseException, what: str) -> HubError:
    """One clear line for whatever huggingface_hub or httpx2 raised."""
    import httpx2
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubAccessError(
            f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN "
            "to a token of that account"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return HubNotFoundError(f"{what}: no such revision; check --revision")
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return HubNotFoundError(
            f"{what}: no such file in the repository; see 'tui-infer models files'"
        )
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        hint = " (or it is private: set HF_TOKEN)" if not _token() else ""
        return HubNotFoundError(f"{what}: no such repository on {endpoint()}{hint}")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubOfflineError("offline (HF_HUB_OFFLINE is set): search and download are off")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return HubAccessError(
                f"{what}: access denied (HTTP {status}); set HF_TOKEN to a token with access"
            )
        return HubError(f"{what}: the hub answered HTTP {status}")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return HubOfflineError(
            f"offline: cannot reach {endpoint()} ({type(exc).__name__}: {exc}); "
            "search and download need the network, everything else works"
        )
    return HubError(f"{what}: {exc}")


class Hub:
    def __init__(self, hf_cache: Path | None = None, *, retries: int = 5, backoff_s: float = 0.5,
                 stall_s: float = 20.0) -> None:  # fmt: skip
        self.endpoint = endpoint()
        self.cache = hf_cache or hf_hub_cache()
        self.retries = retries
        self.backoff_s = backoff_s
        self.stall_s = stall_s

    def _api(self) -> Any:
        if offline_by_env():
            raise HubOfflineError(
                "offline (HF_HUB_OFFLINE is set): search and download are off; "
                "import a file with 'tui-infer models import PATH'"
            )
        _configure_hf_session()
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=_token())

    # ----- listing -----------------------------------------------------------------------

    def search(self, query: str, limit: int = 20) -> list[RepoSummary]:
        api = self._api()
        try:
            found = list(
                api.list_models(search=query, filter="gguf", sort="downloads", limit=limit)
            )
        except Exception as exc:
            raise _translate(exc, f"search '{query}'") from None
        out = []
        for m in found:
            updated = getattr(m, "last_modified", None) or getattr(m, "created_at", None)
            out.append(RepoSummary(
                repo=m.id, downloads=int(m.downloads or 0), likes=int(m.likes or 0),
                updated=updated.date().isoformat() if updated else "", gated=bool(m.gated),
            ))  # fmt: skip
        return out

    def models(
        self, repo: str, revision: str = "main", read_headers: bool = False
    ) -> list[HubModel]:
        """The repo's GGUF models (split parts grouped), with sizes and LFS sha256."""
        check_repo_id(repo)
        api = self._api()
        try:
            info = api.model_info(
                repo, revision=None if revision == "main" else revision, files_metadata=True,
                timeout=API_TIMEOUT_S,
            )  # fmt: skip
        except Exception as exc:
            raise _translate(exc, repo) from None
        commit = info.sha or revision
        files: list[HubFile] = []
        for s in info.siblings or []:
            if not s.rfilename.lower().endswith(".gguf"):
                continue
            lfs = s.lfs
            sha = lfs.sha256 if lfs is not None else None
            size = (lfs.size if lfs is not None else None) or s.size or 0
            files.append(HubFile(s.rfilename, int(size), sha))
        groups: dict[str, list[HubFile]] = {}
        for f in sorted(files, key=lambda f: f.filename):
            m = SPLIT_RE.match(f.filename)
            key = f"{m.group('base')}|{m.group('count')}" if m else f.filename
            groups.setdefault(key, []).append(f)
        models = [
            HubModel(repo, revision, commit, g, quant_from_name(g[0].filename))
            for g in groups.values()
        ]
        if read_headers:
            for hm in models:
                try:
                    hm.header = self.read_header(hm)
                    hm.quant = hm.header.quantization
                except HubError as exc:
                    hm.header_error = str(exc)
        return models

    def select(self, repo: str, wanted: str | None, revision: str = "main") -> HubModel:
        """A file name or a quant (Q4_K_M) to one model; None picks the only one."""
        models = self.models(repo, revision)
        if not models:
            raise HubNotFoundError(f"{repo}: no GGUF files in this repository")
        if wanted:
            check_filename(wanted) if "/" in wanted or ".." in wanted else None
            by_file = [m for m in models if any(f.filename == wanted for f in m.files)]
            if by_file:
                return by_file[0]
            by_quant = [m for m in models if (m.quant or "").upper() == wanted.upper()]
            if len(by_quant) == 1:
                return by_quant[0]
            names = ", ".join(m.filename for m in (by_quant or models)[:8])
            if len(by_quant) > 1:
                raise HubError(f"{repo}: several files are {wanted} ({names}); give the file name")
            raise HubNotFoundError(f"{repo}: no file or quant '{wanted}' (there are: {names})")
        if len(models) == 1:
            return models[0]
        names = ", ".join(f"{m.filename} ({m.quant or '?'})" for m in models[:8])
        raise HubError(f"{repo} has {len(models)} GGUF models; name one: {names}")

    def _url(self, model: HubModel, filename: str) -> str:
        from urllib.parse import quote

        rev = quote(model.commit or model.revision, safe="")
        return f"{self.endpoint}/{model.repo}/resolve/{rev}/{quote(filename)}"

    def read_header(self, model: HubModel) -> GgufHeader:
        """The GGUF header of a hub file, from ranged GETs of its first bytes."""
        import httpx2

        f = model.files[0]
        check_filename(f.filename)
        if offline_by_env():
            raise HubOfflineError("offline (HF_HUB_OFFLINE is set)")
        last: Exception | None = None
        with http_client() as c:
            for n in HEADER_PROBE_SIZES:
                n = min(n, f.size) if f.size else n
                try:
                    r = c.get(
                        self._url(model, f.filename),
                        headers={**auth_headers(), "Range": f"bytes=0-{n - 1}"},
                    )
                except httpx2.TransportError as exc:
                    raise _translate(exc, f.filename) from None
                if r.status_code not in (200, 206):
                    raise _status_error(r.status_code, r.headers, f"{model.repo}/{f.filename}")
                buf = r.content[:n]
                try:
                    return parse_header_bytes(buf, f.filename, f.size or len(buf))
                except ModelFileError as exc:
                    last = exc
                    if len(buf) >= (f.size or len(buf)):
                        break
        raise HubError(f"{model.repo}/{f.filename}: cannot read its GGUF header ({last})")

    # ----- downloading ---------------------------------------------------------------------

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
        self, model: HubModel, f: HubFile, progress: ProgressCallback | None,
        cancel: threading.Event, index: int, count: int,
    ) -> tuple[Path, int, int]:  # fmt: skip
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
        self, model: HubModel, f: HubFile, part: Path, progress: ProgressCallback | None,
        cancel: threading.Event, index: int, count: int,
    ) -> tuple[int, int]:  # fmt: skip
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
            f.filename, have, f.size, resumed_from=have, file_index=index, file_count=count,
            state="resumed" if have else "downloading",
        )  # fmt: skip
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
                            raise _status_error(
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
                            _translate(exc, f.filename)
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


def _status_error(status: int, headers: Any, what: str) -> HubError:
    code = headers.get("x-error-code", "")
    if code == "GatedRepo" or status in (401, 403):
        if code == "GatedRepo":
            return HubAccessError(
                f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN"
            )
        return HubAccessError(
            f"{what}: access denied (HTTP {status}); set HF_TOKEN to a token with access"
        )
    if status == 404:
        kind = {"RepoNotFound": "no such repository", "EntryNotFound": "no such file",
                "RevisionNotFound": "no such revision"}.get(code, "not found")  # fmt: skip
        return HubNotFoundError(f"{what}: {kind} (HTTP 404)")
    return HubError(f"{what}: the hub answered HTTP {status}")
