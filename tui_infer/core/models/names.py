"""The name a model goes by: the library's name for it (its file stem, unique in the
library), and for a model from the hub its reference `owner/repo:QUANT`. The GGUF's own
`general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2") is only a detail of `models info`."""

from __future__ import annotations

from pathlib import Path

from tui_infer.core.models.hub_types import quant_from_name
from tui_infer.core.models.library import ModelEntry, ModelLibrary, model_stem

HUB_SOURCES = ("downloaded", "hf-cache")


def hub_ref(entry: ModelEntry) -> str | None:
    """`owner/repo:QUANT` for a model that came from the hub (None otherwise): what
    `-m` takes to name it again."""
    if not entry.repo or entry.source not in HUB_SOURCES:
        return None
    quant = quant_from_name(entry.path.name)
    if quant is None and entry.quantization != "?":
        quant = entry.quantization
    return f"{entry.repo}:{quant}" if quant else entry.repo


def library_name(path: Path, data_dir: Path | None = None) -> str:
    """The library's name for the model at `path` (a file, or any part of a split one);
    the file stem when the library does not know the file. Never creates the library."""
    if data_dir is not None and (data_dir / "library.sqlite3").exists():
        from tui_infer.core.errors import ModelNotFoundError

        lib = ModelLibrary(data_dir)
        try:
            return lib.get(str(Path(path).expanduser().absolute()), refresh=False).name
        except (ModelNotFoundError, OSError):
            pass
        except Exception:  # a locked or broken index: the name is a nicety, never fatal
            pass
        finally:
            lib.close()
    return model_stem(Path(path))
