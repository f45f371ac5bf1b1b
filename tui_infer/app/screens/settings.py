"""The settings modal: sampling, the conversation's system prompt, and the load options
(context, GPU layers, threads, KV type, flash attention) that need a model reload."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TextArea

from tui_infer.core.config import (
    KV_TYPES,
    PRESET_KEYS,
    Settings,
    check_preset_name,
    load_presets,
    load_settings,
    parse_setting,
    write_preset,
)
from tui_infer.core.errors import ConfigError

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens")
RELOAD = ("ctx", "gpu_layers", "threads")  # plus kv_type and flash_attn
NEEDS_RELOAD = (*RELOAD, "kv_type", "flash_attn")
LABELS = {
    "temperature": "temperature",
    "top_p": "top-p",
    "top_k": "top-k",
    "min_p": "min-p",
    "repeat_penalty": "repeat penalty",
    "seed": "seed (-1 random)",
    "max_tokens": "max tokens",
    "ctx": "context size",
    "gpu_layers": "GPU layers (-1 all)",
    "threads": "threads (0 auto)",
}


def reload_needed(old: Settings, new: Settings) -> list[str]:
    return [name for name in NEEDS_RELOAD if getattr(old, name) != getattr(new, name)]


class SettingsScreen(ModalScreen[Settings | None]):
    """Returns the new Settings (validated), or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, settings: Settings, config_file: Path | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._config_file = config_file  # where [presets.NAME] live; None: no presets
        self._presets: dict[str, dict[str, Any]] = {}
        self._preset_error = ""
        if config_file is not None:
            try:
                self._presets = load_presets(config_file)
            except ConfigError as exc:
                self._preset_error = f"presets: {exc}"

    def compose(self) -> ComposeResult:
        s = self._settings
        with Vertical(classes="dialog wide", id="settings-dialog"):
            yield Label("Settings (Ctrl+S saves, Esc cancels)", classes="dialog-title")
            with VerticalScroll():
                with Horizontal(classes="field"):
                    yield Label("preset", classes="field-label")
                    yield Select(
                        [(n, n) for n in self._presets],
                        prompt="(choose a preset)",
                        id="set-preset",
                        compact=True,
                    )
                with Horizontal(classes="field"):
                    yield Input(placeholder="preset name", id="preset-name", compact=True)
                    yield Button("Save as preset", id="save-preset", compact=True)
                yield Label("Sampling", classes="section")
                for name in SAMPLING:
                    with Horizontal(classes="field"):
                        yield Label(LABELS[name], classes="field-label")
                        yield Input(str(getattr(s, name)), id=f"set-{name}", compact=True)
                yield Label("System prompt (this conversation)", classes="section")
                yield TextArea(s.system, id="set-system", compact=True)
                yield Label("Structured output", classes="section")
                yield Checkbox(
                    "JSON: replies are JSON (llama.cpp's grammar sampler)",
                    s.json_mode,
                    id="set-json_mode",
                )
                yield Label("JSON schema (empty: any JSON object)", classes="field-label")
                yield TextArea(s.json_schema, id="set-json_schema", compact=True)
                yield Checkbox(
                    "raw mode: send the message as written, through no chat template (base models)",
                    s.raw_mode,
                    id="set-raw_mode",
                )
                yield Label("Model (changes reload the model)", classes="section")
                for name in RELOAD:
                    with Horizontal(classes="field"):
                        yield Label(LABELS[name], classes="field-label")
                        yield Input(str(getattr(s, name)), id=f"set-{name}", compact=True)
                with Horizontal(classes="field"):
                    yield Label("KV cache type", classes="field-label")
                    yield Select(
                        [(k, k) for k in KV_TYPES],
                        value=s.kv_type,
                        allow_blank=False,
                        id="set-kv_type",
                        compact=True,
                    )
                yield Checkbox("flash attention", s.flash_attn, id="set-flash_attn")
            yield Static(self._preset_error, id="settings-error", markup=False)
            yield Static("", id="settings-reload", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def _read(self) -> Settings:
        values = {}
        for name in (*SAMPLING, *RELOAD):
            text = self.query_one(f"#set-{name}", Input).value.strip()
            values[name] = parse_setting(name, text, source=LABELS[name])
        values["kv_type"] = self.query_one("#set-kv_type", Select).value
        values["flash_attn"] = self.query_one("#set-flash_attn", Checkbox).value
        base = replace(
            self._settings,
            system=self.query_one("#set-system", TextArea).text,
            json_schema=self.query_one("#set-json_schema", TextArea).text.strip(),
            json_mode=self.query_one("#set-json_mode", Checkbox).value,
            raw_mode=self.query_one("#set-raw_mode", Checkbox).value,
        )
        new = base.with_overrides(**values)
        if new.json_mode:  # the schema must compile to a grammar, said here, not at send
            from tui_infer.core.inference.grammar import GrammarError
            from tui_infer.core.inference.types import SamplingParams

            try:
                SamplingParams.from_settings(new)
            except GrammarError as exc:
                raise ConfigError(str(exc)) from None
        return new

    @on(Select.Changed, "#set-preset")
    def _preset_chosen(self, event: Select.Changed) -> None:
        """Fill the fields with the preset's values; keys it does not set stay as they are."""
        if not isinstance(event.value, str) or event.value not in self._presets:
            return
        for key, value in self._presets[event.value].items():
            if key == "system":
                self.query_one("#set-system", TextArea).text = str(value)
            else:
                self.query_one(f"#set-{key}", Input).value = str(value)
        self.query_one("#preset-name", Input).value = event.value

    def _preset_values(self, new: Settings) -> dict[str, Any]:
        """The fields' values for a preset, less one-off command-line flags: a key the app
        was started with a flag for (its value at launch is not the config's) is left out
        while its field still shows that flag's value."""
        values = {key: getattr(new, key) for key in PRESET_KEYS}
        launch = getattr(self.app, "settings", None)
        if self._config_file is None or not isinstance(launch, Settings):
            return values
        try:
            configured = load_settings(self._config_file)
        except ConfigError:
            return values
        return {
            key: value
            for key, value in values.items()
            if getattr(launch, key) == getattr(configured, key) or value != getattr(launch, key)
        }

    @on(Button.Pressed, "#save-preset")
    def _save_preset(self) -> None:
        error = self.query_one("#settings-error", Static)
        if self._config_file is None:
            error.update("error: no config file to save presets in")
            return
        try:
            name = check_preset_name(self.query_one("#preset-name", Input).value)
            new = self._read()
            values = self._preset_values(new)
            write_preset(self._config_file, name, values)
        except ConfigError as exc:
            error.update(f"error: {str(exc).replace('command line: ', '')}")
            return
        self._presets[name] = values
        select = self.query_one("#set-preset", Select)
        with self.prevent(Select.Changed):
            select.set_options([(n, n) for n in self._presets])
            select.value = name
        error.update("")
        self.notify(f"preset '{name}' saved in {self._config_file}", title="Settings")

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    @on(TextArea.Changed, "#set-json_schema")
    def _changed(self) -> None:
        """Say at once whether saving will reload the model, and whether a value is bad."""
        error = self.query_one("#settings-error", Static)
        note = self.query_one("#settings-reload", Static)
        try:
            new = self._read()
        except ConfigError as exc:
            error.update(f"error: {str(exc).replace('command line: ', '')}")
            return
        error.update("")
        changed = reload_needed(self._settings, new)
        note.update(f"saving reloads the model ({', '.join(changed)} changed)" if changed else "")

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        try:
            new = self._read()
        except ConfigError as exc:
            self.query_one("#settings-error", Static).update(
                f"error: {str(exc).replace('command line: ', '')}"
            )
            return
        self.dismiss(new)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
