"""The hub's vocabulary, with no network in it: its errors (HubError and subclasses), the
endpoint and offline setting (HF_ENDPOINT, HF_HUB_OFFLINE, read at call time), the
token lookup (HF_TOKEN), the checks on hub names (repository ids, file names that must
not leave the repo's folder, the quant a file name gives) and the data classes that
search, listing and download hand back (RepoSummary, HubFile, HubModel, Progress,
DownloadResult, the progress callback type)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tui_infer.core.errors import TuiInferError
from tui_infer.core.models.gguf import FILE_TYPES, GGML_TYPES, GgufHeader
from tui_infer.core.models.library import SPLIT_RE

DEFAULT_ENDPOINT = "https://huggingface.co"


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


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


# ----- names -----------------------------------------------------------------------------

_QUANTS = sorted(
    {q.upper() for q in FILE_TYPES.values()}
    | {t[0].upper() for t in GGML_TYPES.values()}
    | {"Q4_K", "Q5_K", "Q3_K", "Q2_K", "IQ2_M", "IQ3_M", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8"},
    key=len,
    reverse=True,
)
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
