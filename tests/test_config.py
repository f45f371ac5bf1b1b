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


def test_writes_keep_comments_and_key_order(tmp_path: Path) -> None:
    from tui_infer.core.config import load_presets, write_config_key, write_preset

    cfg = tmp_path / "config.toml"
    text = (
        "# tui-infer settings, by hand\n"
        "ctx = 2048  # the laptop has 8 GB\n"
        "threads = 4\n"
        "\n"
        "[sampling]\n"
        "# warm, but not too warm\n"
        "top_k = 30\n"
        "temperature = 0.6  # was 0.8\n"
        "min_p = 0.1\n"
        "\n"
        "[presets.calm]\n"
        "top-p = 0.5  # spelled with a dash\n"
        "temperature = 0.2\n"
    )
    cfg.write_text(text, encoding="utf-8")
    write_config_key(cfg, "threads", 2)
    write_config_key(cfg, "temperature", 0.3)  # in [sampling]: replaced where it is
    write_config_key(cfg, "overflow", "refuse")  # new: with the top-level keys
    write_preset(cfg, "calm", {"temperature": 0.1, "top_p": 0.5, "seed": 7})
    new = cfg.read_text(encoding="utf-8")
    assert new == (
        "# tui-infer settings, by hand\n"
        "ctx = 2048  # the laptop has 8 GB\n"
        "threads = 2\n"
        'overflow = "refuse"\n'
        "\n"
        "[sampling]\n"
        "# warm, but not too warm\n"
        "top_k = 30\n"
        "temperature = 0.3\n"  # the old value's comment went with it
        "min_p = 0.1\n"
        "\n"
        "[presets.calm]\n"
        "top-p = 0.5  # spelled with a dash\n"  # unchanged value: its comment stays
        "temperature = 0.1\n"
        "seed = 7\n"
    )
    s = load_settings(cfg, {})
    assert (s.threads, s.temperature, s.overflow, s.ctx) == (2, 0.3, "refuse", 2048)
    assert load_presets(cfg)["calm"] == {"top_p": 0.5, "temperature": 0.1, "seed": 7}


def test_a_failed_config_write_leaves_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from tui_infer.core.config import write_config_key

    cfg = tmp_path / "config.toml"
    cfg.write_text("ctx = 2048\n")

    def broken(*_: object) -> None:
        raise OSError(5, "Input/output error")  # (a full disk has its own message: disk.py)

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ConfigError, match="cannot write .*Input/output error"):
        write_config_key(cfg, "ctx", 4096)
    assert cfg.read_text() == "ctx = 2048\n" and [p.name for p in tmp_path.iterdir()] == [
        "config.toml"
    ]


def test_config_writes_wait_for_each_other(tmp_path: Path) -> None:
    """Two processes setting different keys at once: neither change is lost."""
    import threading

    from tui_infer.core.config import write_config_key
    from tui_infer.core.files import lock_for

    cfg = tmp_path / "config.toml"
    cfg.write_text("ctx = 2048\n")
    lock = lock_for(cfg)
    lock.acquire()  # another writer holds it
    t = threading.Thread(target=write_config_key, args=(cfg, "threads", 3))
    t.start()
    t.join(0.3)
    assert t.is_alive() and cfg.read_text() == "ctx = 2048\n"  # waiting, not writing
    lock.release()
    t.join(10)
    assert load_settings(cfg, {}).threads == 3
