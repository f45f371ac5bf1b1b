"""The Hugging Face hub: search GGUF repos, list their files (split parts grouped, with
sizes and LFS sha256), pick one by file name or quant, read a remote file's GGUF header
with ranged GETs, and download it (the resumable, verified download and the HF cache
paths come from `HubDownloads` in download.py).

Listing goes through huggingface_hub's HfApi (with ``endpoint=`` from HF_ENDPOINT, read
at call time), whose session is set up by http.py; errors, names and data classes live
in hub_types.py.

Offline (HF_HUB_OFFLINE=1, or a hub that cannot be reached within a short timeout)
raises HubOfflineError with a plain message; nothing waits long on the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tui_infer.core.errors import ModelFileError
from tui_infer.core.models.download import HubDownloads
from tui_infer.core.models.gguf import GgufHeader, parse_header_bytes
from tui_infer.core.models.http import (
    API_TIMEOUT_S,
    auth_headers,
    configure_hf_session,
    http_client,
    status_error,
    translate_error,
)
from tui_infer.core.models.hub_types import (
    HubError,
    HubFile,
    HubModel,
    HubNotFoundError,
    HubOfflineError,
    RepoSummary,
    check_filename,
    check_repo_id,
    endpoint,
    hf_token,
    offline_by_env,
    quant_from_name,
)
from tui_infer.core.models.library import SPLIT_RE, hf_hub_cache

HEADER_PROBE_SIZES = (1 << 20, 8 << 20, 32 << 20)  # bytes of a ranged GET for a header


class Hub(HubDownloads):
    def __init__(
        self,
        hf_cache: Path | None = None,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        stall_s: float = 20.0,
    ) -> None:
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
        configure_hf_session()
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=hf_token())

    # ----- listing -----------------------------------------------------------------------

    def search(self, query: str, limit: int = 20) -> list[RepoSummary]:
        api = self._api()
        try:
            found = list(
                api.list_models(search=query, filter="gguf", sort="downloads", limit=limit)
            )
        except Exception as exc:
            raise translate_error(exc, f"search '{query}'") from None
        out = []
        for m in found:
            updated = getattr(m, "last_modified", None) or getattr(m, "created_at", None)
            out.append(
                RepoSummary(
                    repo=m.id,
                    downloads=int(m.downloads or 0),
                    likes=int(m.likes or 0),
                    updated=updated.date().isoformat() if updated else "",
                    gated=bool(m.gated),
                )
            )
        return out

    def models(
        self, repo: str, revision: str = "main", read_headers: bool = False
    ) -> list[HubModel]:
        """The repo's GGUF models (split parts grouped), with sizes and LFS sha256."""
        check_repo_id(repo)
        api = self._api()
        try:
            info = api.model_info(
                repo,
                revision=None if revision == "main" else revision,
                files_metadata=True,
                timeout=API_TIMEOUT_S,
            )
        except Exception as exc:
            raise translate_error(exc, repo) from None
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
        return pick_model(repo, self.models(repo, revision), wanted)

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
                    raise translate_error(exc, f.filename) from None
                if r.status_code not in (200, 206):
                    raise status_error(r.status_code, r.headers, f"{model.repo}/{f.filename}")
                buf = r.content[:n]
                try:
                    return parse_header_bytes(buf, f.filename, f.size or len(buf))
                except ModelFileError as exc:
                    last = exc
                    if len(buf) >= (f.size or len(buf)):
                        break
        raise HubError(f"{model.repo}/{f.filename}: cannot read its GGUF header ({last})")


def pick_model(repo: str, models: list[HubModel], wanted: str | None) -> HubModel:
    """One of a repo's models (a listing from Hub.models) by file name or quant, the quant
    without regard to case; None picks the only one. A quant that matches none or several
    is a HubError (HubNotFoundError for none) that lists the ones there are."""
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
        names = ", ".join(f"{m.quant or '?'} ({m.filename})" for m in (by_quant or models)[:8])
        if len(by_quant) > 1:
            raise HubError(f"{repo}: several files are {wanted} ({names}); give the file name")
        raise HubNotFoundError(f"{repo}: no file or quant '{wanted}' (there are: {names})")
    if len(models) == 1:
        return models[0]
    names = ", ".join(f"{m.filename} ({m.quant or '?'})" for m in models[:8])
    raise HubError(f"{repo} has {len(models)} GGUF models; name one: {names}")
