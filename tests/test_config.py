"""Config precedence (file < environment < flags) and bad config values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui_infer.core.config import Settings, load_settings
from tui_infer.core.errors import ConfigError
from tui_infer.core.paths import default_paths


def test_defaults_without_a_file(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "absent.toml", environ={})
    assert s == Settings()
    assert not (tmp_path / "absent.toml").exists()  # reading never creates it


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("ctx = 2048\ntemperature = 0.2\n[sampling]\ntop_k = 10\n")
    s = load_settings(cfg, environ={"TUI_INFER_TEMPERATURE": "0.5", "TUI_INFER_THREADS": "3"})
    assert (s.ctx, s.temperature, s.top_k, s.threads) == (2048, 0.5, 10, 3)
    s2 = s.with_overrides(temperature=0.0, ctx=None)
    assert (s2.ctx, s2.temperature) == (2048, 0.0)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("ctx = = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML"):
        load_settings(cfg, environ={})
    assert cfg.read_text() == "ctx = = 3\n"  # the user's file is left alone


def test_unknown_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("contxt = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'contxt'"):
        load_settings(cfg, environ={})


def test_bad_env_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'ctx' must be an integer"):
        load_settings(tmp_path / "x.toml", environ={"TUI_INFER_CTX": "lots"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ctx": 4}, "'ctx' must be at least 16"),
        ({"kv_type": "q9"}, "'kv_type' must be one of"),
        ({"temperature": -1.0}, "'temperature' must be 0 or more"),
        ({"top_p": 0.0}, "'top_p'"),
        ({"max_tokens": 0}, "'max_tokens'"),
    ],
)
def test_bad_flags(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings().with_overrides(**overrides)


def test_paths_follow_env(isolated_env: Path) -> None:
    p = default_paths()
    assert p.config_file == isolated_env / "config" / "config.toml"
    assert p.data_dir == isolated_env / "data"
    assert not p.data_dir.exists()  # nothing created until something is written
