"""Settings: TOML file, then TUI_INFER_* environment variables, then flags.

Built once by the CLI and passed down; no module-level singleton.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
# the prediction store, then the model; store-any-sample: the store also answers a request
# from a prediction for the same messages under other sampling parameters
SERVE_MODES = ("store-then-live", "live", "store", "store-any-sample")
SPECULATIVE_MODES = ("auto", "ngram", "draft", "off")  # inference/speculative.py


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
    # structured output in the chat (and run/batch): replies are JSON, constrained by
    # llama.cpp's grammar sampler to `json_schema` (a JSON schema as text; "": any object)
    json_mode: bool = False
    json_schema: str = ""
    raw_mode: bool = False  # the chat sends the message as written, through no template
    overflow: str = "ask"
    serve: str = "store-then-live"  # the chat: answer from the prediction store first
    redraws: float = 0  # text updates a second while a reply streams; 0: chosen (pacing.py)
    parallel: int = 1  # live requests the loaded model decodes at once, each with all of ctx
    theme: str = ""  # the TUI's theme (chosen in the palette, saved here); "": Textual's default
    # speculative decoding: auto (drafts by prompt lookup, or with draft_model when one is
    # set, while it pays), ngram (prompt lookup always), draft (draft_model always), off
    # (inference/speculative.py)
    speculative: str = "auto"
    # a small model of the same vocabulary that drafts for the loaded one (a path or a
    # library name; inference/draft.py); "": none
    draft_model: str = ""

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
    if s.serve not in SERVE_MODES:
        raise bad(f"'serve' must be one of {', '.join(SERVE_MODES)}, got {s.serve!r}")
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
    if s.json_schema.strip():
        import json

        try:
            schema = json.loads(s.json_schema)
        except json.JSONDecodeError as exc:
            raise bad(f"'json_schema' is not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(schema, dict):
            raise bad('\'json_schema\' must be a JSON schema object, such as {"type": "object"}')
    if not 1 <= s.parallel <= 256:
        raise bad(f"'parallel' must be 1 to 256 sequences, got {s.parallel}")
    if s.speculative not in SPECULATIVE_MODES:
        raise bad(
            f"'speculative' must be one of {', '.join(SPECULATIVE_MODES)}, got {s.speculative!r}"
        )
    if s.speculative == "draft" and not s.draft_model.strip():
        raise bad(
            "'speculative' draft needs a draft model: give --draft MODEL (or set "
            "'draft_model'), or use --speculative ngram"
        )
    if not 0 <= s.redraws <= 60:
        raise bad(f"'redraws' must be 0 (chosen) or up to 60 a second, got {s.redraws}")
    return s


# tables of the config file that are not settings (each read by its own function)
NOT_SETTINGS = ("presets", "templates", "keys")


def parse_setting(name: str, value: Any, source: str = "settings") -> Any:
    """A value typed by the user (text) as the setting's type; ConfigError says what is wrong."""
    if name not in _FIELDS:
        raise ConfigError(f"{source}: unknown setting '{name}'")
    return _coerce(name, value, source)


def write_config_key(config_file: Path, key: str, value: str | int | float | bool) -> None:
    """Set one key in the TOML file, keeping every other line, comment and the order as
    they were (tomlkit edits the document in place).

    A key already in the file is replaced where it is, at the top or in a table (tables are
    only grouping: load_settings flattens them); a new one goes with the top-level keys,
    before the first table. A file that is not valid TOML is refused rather than rewritten;
    the write holds a lock (two tui-infer processes never lose each other's change) and goes
    through a temporary file and a rename, so a crash never leaves a half-written config.
    """
    with _config_lock(config_file):
        old_data, doc = _read_for_edit(config_file)
        section = None
        if key not in doc:
            section = next(
                (
                    name
                    for name, t in doc.items()
                    if name not in NOT_SETTINGS and isinstance(t, dict) and key in t
                ),
                None,
            )
        _set_value(doc if section is None else doc[section], key, value)
        new = _dumps(doc)
        expected = _plain(old_data)
        (expected if section is None else expected[section])[key] = value
        _check_written(config_file, new, expected, f"cannot set '{key}'")
        _write(config_file, new)


@contextmanager
def _config_lock(config_file: Path, timeout_s: float = 10.0) -> Iterator[None]:
    """Held around read-change-write, so that two tui-infer processes never lose each
    other's change; a writer that never lets go is an error after timeout_s, not a hang."""
    from filelock import Timeout

    from tui_infer.core.files import lock_for

    try:
        with lock_for(config_file, timeout_s):
            yield
    except Timeout:
        raise ConfigError(
            f"{config_file}: another tui-infer has been writing it for {timeout_s:.0f} s; try again"
        ) from None


def _read_for_edit(config_file: Path) -> tuple[dict[str, Any], Any]:
    """The file's data (tomllib's reading) and its tomlkit document; ConfigError when the
    file cannot be read or is not valid TOML."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        old = config_file.read_text(encoding="utf-8") if config_file.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file}: cannot read ({exc})") from None
    try:
        data = tomllib.loads(old)
        doc = tomlkit.parse(old)
    except (tomllib.TOMLDecodeError, TOMLKitError) as exc:
        raise ConfigError(f"{config_file}: invalid TOML ({exc}); fix it first") from None
    return data, doc


def _set_value(table: Any, key: str, value: Any) -> None:
    """table[key] = value; a value that changes loses the comment at the end of its line
    (it spoke of the old value), every other comment stays."""
    changed = key in table and table[key] != value
    table[key] = value
    if changed:
        trivia = table.item(key).trivia
        trivia.comment_ws = trivia.comment = ""


def _dumps(doc: Any) -> str:
    import tomlkit

    return tomlkit.dumps(doc)


def _plain(data: Any) -> Any:
    """A deep copy of parsed TOML as plain dicts (to compare with what was written)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def _check_written(config_file: Path, new: str, expected: dict[str, Any], what: str) -> None:
    """What is about to be written must parse, and must differ from the old file only where
    it was asked to."""
    try:
        got = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - tomlkit writes valid TOML
        raise ConfigError(f"{config_file}: {what} ({exc}); edit the file by hand") from None
    if got != expected:
        raise ConfigError(
            f"{config_file}: {what}: the file is written in a form this cannot update "
            "(inline or dotted keys); edit the file by hand"
        )


def _write(config_file: Path, new: str) -> None:
    from tui_infer.core.files import atomic_write

    try:
        atomic_write(config_file, new)
    except OSError as exc:
        from tui_infer.core.disk import explain

        raise explain(exc, config_file) or ConfigError(
            f"{config_file}: cannot write ({exc})"
        ) from None


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
        data = _read_toml(config_file)
        # Sections ([sampling], [model], ...) are only grouping: flatten them; [presets.*]
        # and [templates] are not settings, only checked here (load_presets, template_override).
        parse_presets(data, config_file)
        parse_templates(data, config_file)
        parse_keys(data, config_file)
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key in NOT_SETTINGS:
                continue
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


# ----- the TUI's keys ([keys]: action = "key[,key...]") ------------------------------------

# Every action a key can be bound to in the TUI, with its default key (the app's bindings
# carry these as their ids; tests check the two agree). No default is a terminal
# multiplexer's prefix (Ctrl+B for tmux, Ctrl+A for screen): inside one the app never sees it.
DEFAULT_KEYS: dict[str, str] = {
    "quit": "ctrl+q",
    "help": "f1",
    "stop": "escape",
    "new_chat": "ctrl+n",
    "toggle_sidebar": "ctrl+l",
    "search_chats": "ctrl+f",
    "regenerate": "ctrl+r",
    "edit_message": "ctrl+g",
    "copy_reply": "f5",
    "settings": "ctrl+s",
    "show_template": "ctrl+t",
    "rename_chat": "f2",
    "delete_chat": "f8",
    "load_model": "ctrl+o",
    "models": "f3",
    "server": "f4",
    "drift": "f6",
    "bench": "f7",
    "batch": "f9",
    "quant": "f10",
}
MULTIPLEXER_PREFIXES = {"ctrl+b": "tmux", "ctrl+a": "screen"}
_MODIFIERS = ("ctrl", "shift", "alt", "meta", "super", "hyper")
_NAMED_KEYS = {
    *(f"f{i}" for i in range(1, 25)),
    "escape",
    "enter",
    "tab",
    "space",
    "backspace",
    "delete",
    "insert",
    "home",
    "end",
    "pageup",
    "pagedown",
    "up",
    "down",
    "left",
    "right",
}
# Textual's names for punctuation, as its key events name them
_CHAR_NAMES = {
    "exclamation_mark", "quotation_mark", "number_sign", "dollar_sign", "percent_sign",
    "ampersand", "apostrophe", "left_parenthesis", "right_parenthesis", "asterisk", "plus",
    "comma", "minus", "full_stop", "slash", "colon", "semicolon", "less_than_sign",
    "equals_sign", "greater_than_sign", "question_mark", "at", "left_square_bracket",
    "backslash", "right_square_bracket", "circumflex_accent", "underscore", "grave_accent",
    "left_curly_bracket", "vertical_line", "right_curly_bracket", "tilde",
}  # fmt: skip


def check_key(key: str, where: str) -> str:
    """One key as Textual names it ("ctrl+l", "f10", "alt+x", "question_mark"), lower case;
    ConfigError names the problem and the way out."""
    text = key.strip().lower()
    parts = text.split("+")
    *mods, base = parts
    ok = (
        bool(base)
        and all(m in _MODIFIERS for m in mods)
        and len(set(mods)) == len(mods)
        and (
            base in _NAMED_KEYS
            or base in _CHAR_NAMES
            or (len(base) == 1 and base.isprintable() and base not in ", +")
        )
    )
    if not ok:
        raise ConfigError(
            f"{where}: {key!r} is not a key; write keys as Textual names them: 'ctrl+l', "
            "'f10', 'alt+x', 'shift+tab', 'escape', a letter, or 'question_mark'"
        )
    return text


def parse_keys(data: dict[str, Any], config_file: Path | str) -> dict[str, str]:
    """[keys]: action = "key" (or "key1,key2"); every action and key checked, so that a
    typo is an error at start, not a key that silently does nothing."""
    raw = data.get("keys", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_file}: [keys] must be a table, got {raw!r}")
    out: dict[str, str] = {}
    for action, value in raw.items():
        name = action.replace("-", "_")
        if name not in DEFAULT_KEYS:
            raise ConfigError(
                f"{config_file}: [keys] unknown action '{action}' (the actions: "
                f"{', '.join(DEFAULT_KEYS)})"
            )
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{config_file}: [keys] '{action}' must be a key such as 'ctrl+l', got {value!r}"
            )
        where = f"{config_file}: [keys] '{action}'"
        out[name] = ",".join(check_key(k, where) for k in value.split(","))
    bound: dict[str, str] = {}
    for name in DEFAULT_KEYS:
        for k in out.get(name, DEFAULT_KEYS[name]).split(","):
            if k in bound and bound[k] != name:
                raise ConfigError(
                    f"{config_file}: [keys] '{k}' is bound to both '{bound[k]}' and "
                    f"'{name}'; give one of them another key"
                )
            bound[k] = name
    return out


def load_keys(config_file: Path) -> dict[str, str]:
    """The [keys] of the config file, checked (empty when none: the defaults)."""
    return parse_keys(_read_toml(config_file), config_file)


def keys_in_force(config_file: Path | None) -> dict[str, str]:
    """Every action's key(s): the defaults, then [keys]."""
    return {**DEFAULT_KEYS, **(load_keys(config_file) if config_file else {})}


# ----- named presets ([presets.NAME]) and per-model chat templates ([templates]) -------------

PRESET_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "seed",
    "max_tokens",
    "system",
)
_PRESET_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def check_preset_name(name: str, source: str = "preset") -> str:
    name = name.strip()
    if not name or not set(name) <= _PRESET_NAME_CHARS:
        raise ConfigError(
            f"{source}: preset name {name!r} must be letters, digits, '-' or '_' (e.g. 'precise')"
        )
    return name


def _check_preset(name: str, values: Any, source: str) -> dict[str, Any]:
    where = f"{source}: preset '{name}'"
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table ([presets.{name}]), got {values!r}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        field = key.replace("-", "_")
        if field not in PRESET_KEYS:
            raise ConfigError(
                f"{where}: unknown key '{key}' (a preset holds {', '.join(PRESET_KEYS)})"
            )
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: '{key}' must be a single value, got {value!r}")
        out[field] = _coerce(field, value, where)
    validate(replace(Settings(), **out), where)  # the same ranges as the settings
    return out


def parse_presets(data: dict[str, Any], config_file: Path) -> dict[str, dict[str, Any]]:
    """The [presets.NAME] tables of parsed TOML, each checked; ConfigError names the preset."""
    raw = data.get("presets", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_file}: 'presets' must be tables ([presets.NAME]), got {raw!r}")
    return {name: _check_preset(name, values, str(config_file)) for name, values in raw.items()}


def parse_templates(data: dict[str, Any], config_file: Path) -> dict[str, str]:
    """[templates]: model file name or stem = a Jinja template, or a path to a .jinja file."""
    raw = data.get("templates", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_file}: [templates] must be a table, got {raw!r}")
    for model, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{config_file}: [templates] '{model}' must be a template or a path to a "
                f".jinja file, got {value!r}"
            )
    return dict(raw)


# The parsed file, by (inode, size, mtime): the settings, the presets and a model's template
# override all come from one read and one parse per command, however many ask.
_parsed: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _read_toml(config_file: Path) -> dict[str, Any]:
    """The config file as parsed TOML ({} when there is none). Callers must not change it."""
    if not config_file.exists():
        return {}
    if config_file.is_dir():
        raise ConfigError(f"{config_file}: is a directory, expected a TOML file")
    try:
        st = config_file.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _parsed.get(str(config_file))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file}: invalid TOML ({exc}); fix or remove it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file}: cannot read ({exc})") from None
    _parsed[str(config_file)] = (stamp, data)
    return data


def load_presets(config_file: Path) -> dict[str, dict[str, Any]]:
    """Named sampling presets from the config file, in file order (empty when none)."""
    return parse_presets(_read_toml(config_file), config_file)


def template_override(config_file: Path | None, model: Path) -> str | None:
    """The [templates] entry for this model (by file name, then stem), as template text.

    A value ending in .jinja is a file (relative to the config file's folder); anything
    else is the template itself. None when the config has no entry for the model.
    """
    if config_file is None:
        return None
    templates = parse_templates(_read_toml(config_file), config_file)
    value = templates.get(model.name, templates.get(model.stem))
    if value is None:
        return None
    if not value.strip().endswith(".jinja"):
        return value
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = config_file.parent / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{config_file}: [templates] '{model.name}': cannot read {path} ({exc}); "
            "fix the path or remove the entry"
        ) from None


def write_preset(config_file: Path, name: str, values: dict[str, Any]) -> None:
    """Write [presets.NAME] into the TOML file, keeping every other line and comment.

    An existing table is updated in place (its keys keep their order and spelling, keys
    the preset no longer has go); a new one is added at the end of the file. A file that is
    not valid TOML is refused, and so is a result that would change anything but this
    preset (an inline table or dotted keys: edit those by hand). Locked and atomic, as
    write_config_key.
    """
    import tomlkit
    from tomlkit.items import Table

    name = check_preset_name(name, str(config_file))
    clean = _check_preset(name, values, str(config_file))
    with _config_lock(config_file):
        old_data, doc = _read_for_edit(config_file)
        parse_presets(old_data, config_file)  # a malformed [presets] is fixed by hand first
        presets = doc.get("presets")
        table = presets.get(name) if isinstance(presets, dict) else None
        if table is None:
            # at the end of the file, after a blank line (tomlkit would slip it in after
            # the last [presets.*], before whatever table follows)
            new = _dumps(doc)
            if new.strip():
                new = new.rstrip("\n") + "\n\n" if not new.endswith("\n\n") else new
            new += tomlkit.dumps({"presets": {name: clean}})
        elif isinstance(table, Table):
            for key in list(table.keys()):
                if key.replace("-", "_") not in clean:
                    del table[key]
            spelled = {k.replace("-", "_"): k for k in table}
            for field_name, value in clean.items():
                _set_value(table, spelled.get(field_name, field_name), value)
            new = _dumps(doc)
        else:
            raise ConfigError(
                f"{config_file}: preset '{name}' is written in a form this cannot update "
                "(inline or dotted keys); edit the file by hand"
            )
        expected = _plain(old_data)
        expected["presets"] = {**old_data.get("presets", {}), name: clean}
        try:
            got = tomllib.loads(new)
        except tomllib.TOMLDecodeError as exc:  # pragma: no cover - tomlkit writes valid TOML
            raise ConfigError(f"{config_file}: cannot update preset '{name}' ({exc})") from None
        if isinstance(got.get("presets"), dict):
            got["presets"] = {
                k: (_check_preset(k, v, str(config_file)) if k == name else v)
                for k, v in got["presets"].items()
            }
        if got != expected:
            raise ConfigError(
                f"{config_file}: preset '{name}' is written in a form this cannot update "
                f"(inline or dotted keys); edit the file by hand"
            )
        _write(config_file, new)


def write_template_override(config_file: Path, model_file: str, source: str) -> None:
    """Set [templates] "<model file name>" = source, keeping the rest of the file (the chat
    offers this with ChatML when a model's own template fails or runs past its bounds)."""
    import tomlkit

    with _config_lock(config_file):
        old_data, doc = _read_for_edit(config_file)
        parse_templates(old_data, config_file)  # a malformed [templates] is fixed by hand
        table = doc.get("templates")
        if table is None:
            table = tomlkit.table()
            doc["templates"] = table
        table[model_file] = source
        _write(config_file, _dumps(doc))
