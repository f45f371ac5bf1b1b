"""Settings: TOML file, then TUI_INFER_* environment variables, then flags.

Built once by the CLI and passed down; no module-level singleton.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tui_infer.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
OVERFLOW_POLICIES = ("ask", "refuse", "drop-oldest")  # ask: the TUI asks; run refuses


def default_threads() -> int:
    """llama.cpp's own default is half the cores; all physical cores is faster (+30 % here)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil can fail in odd containers; fall back to os
        physical = None
    return max(1, physical or os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    ctx: int = 4096
    threads: int = 0  # 0: choose (physical cores)
    gpu_layers: int = -1  # -1: all layers when the build can offload; ignored on CPU
    batch: int = 512
    flash_attn: bool = True
    kv_type: str = "f16"
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int = -1  # -1: a new random seed per reply
    max_tokens: int = 1024
    system: str = ""
    overflow: str = "ask"

    @property
    def effective_threads(self) -> int:
        return self.threads if self.threads > 0 else default_threads()

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply flag values; None means 'not given'."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return validate(replace(self, **given), source="command line")


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if value is None:
            return None
        return str(value)
    except (TypeError, ValueError):
        expected = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(
            str(kind), "text"
        )
        raise ConfigError(f"{source}: '{name}' must be {expected}, got {value!r}") from None


def validate(s: Settings, source: str) -> Settings:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source}: {what}")

    if s.ctx < 16:
        raise bad(f"'ctx' must be at least 16, got {s.ctx}")
    if s.threads < 0:
        raise bad(f"'threads' must be 0 (auto) or more, got {s.threads}")
    if s.batch < 1:
        raise bad(f"'batch' must be at least 1, got {s.batch}")
    if s.gpu_layers < -1:
        raise bad(f"'gpu_layers' must be -1 (all) or more, got {s.gpu_layers}")
    if s.kv_type not in KV_TYPES:
        raise bad(f"'kv_type' must be one of {', '.join(KV_TYPES)}, got {s.kv_type!r}")
    if s.overflow not in OVERFLOW_POLICIES:
        raise bad(f"'overflow' must be one of {', '.join(OVERFLOW_POLICIES)}, got {s.overflow!r}")
    if s.temperature < 0:
        raise bad(f"'temperature' must be 0 or more, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise bad(f"'top_p' must be in (0, 1], got {s.top_p}")
    if not 0 <= s.min_p <= 1:
        raise bad(f"'min_p' must be in [0, 1], got {s.min_p}")
    if s.top_k < 0:
        raise bad(f"'top_k' must be 0 (off) or more, got {s.top_k}")
    if s.max_tokens < 1:
        raise bad(f"'max_tokens' must be at least 1, got {s.max_tokens}")
    return s


def parse_setting(name: str, value: Any, source: str = "settings") -> Any:
    """A value typed by the user (text) as the setting's type; ConfigError says what is wrong."""
    if name not in _FIELDS:
        raise ConfigError(f"{source}: unknown setting '{name}'")
    return _coerce(name, value, source)


def write_config_key(config_file: Path, key: str, value: str | int | float | bool) -> None:
    """Set one top-level key in the TOML file, keeping every other line as it was.

    Read, replace (or add) the key's line, write a temporary file beside it and rename it
    over the original, so a crash never leaves a half-written config. A file that is not
    valid TOML is refused rather than rewritten.
    """
    if isinstance(value, bool):
        text_value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text_value = repr(value)
    else:
        text_value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    try:
        old = config_file.read_text(encoding="utf-8") if config_file.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file}: cannot read ({exc})") from None
    try:
        tomllib.loads(old)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file}: invalid TOML ({exc}); fix it first") from None
    lines = old.splitlines(keepends=True)
    done = False
    for i, line in enumerate(lines):
        # sections are only grouping (load_settings flattens them): the key is replaced
        # where it is, in a table or not
        stripped = line.lstrip()
        name = stripped.split("=", 1)[0].strip()
        if "=" in stripped and name == key:
            lines[i] = f"{key} = {text_value}\n"
            done = True
            break
    if not done:
        # a top-level key must come before the first [table]
        at = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
        if at == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.insert(at, f"{key} = {text_value}\n")
    new = "".join(lines)
    tomllib.loads(new)  # what we write must parse
    tmp = config_file.with_name(f".{config_file.name}.{os.getpid()}.tmp")
    try:
        config_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, config_file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{config_file}: cannot write ({exc})") from None


def _from_mapping(base: Settings, values: dict[str, Any], source: str) -> Settings:
    updates: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"{source}: unknown setting '{key}' (known: {known})")
        updates[name] = _coerce(name, value, source)
    return validate(replace(base, **updates), source)


def load_settings(config_file: Path, environ: dict[str, str] | None = None) -> Settings:
    """Defaults < TOML file (if it exists) < TUI_INFER_* variables."""
    env = os.environ if environ is None else environ
    settings = Settings()
    if config_file.exists():
        if config_file.is_dir():
            raise ConfigError(f"{config_file}: is a directory, expected a TOML file")
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML ({exc}); fix or remove it") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_file}: cannot read ({exc})") from None
        # Sections ([sampling], [model], ...) are only grouping: flatten them.
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        settings = _from_mapping(settings, flat, str(config_file))
    from_env = {
        name: env[f"TUI_INFER_{name.upper()}"]
        for name in _FIELDS
        if f"TUI_INFER_{name.upper()}" in env
    }
    if from_env:
        settings = _from_mapping(settings, from_env, "environment (TUI_INFER_*)")
    return settings
