"""Flags `run` and `batch` share: --preset NAME, --json-schema FILE, --grammar FILE,
--template NAME|FILE, --draft MODEL; and `run`'s --raw. Imports only the standard library
at the top."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.inference.types import SamplingParams
    from tui_infer.core.paths import Paths
    from tui_infer.core.request_path import ModelTarget


def add_request_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="the sampling values (and system prompt) of [presets.NAME] in the config; "
        "flags given beside it win",
    )
    p.add_argument(
        "--json-schema",
        type=Path,
        metavar="FILE",
        help="constrain the reply to JSON valid against this JSON schema (llama.cpp's "
        "grammar sampler; part of the store's key)",
    )
    p.add_argument(
        "--grammar",
        type=Path,
        metavar="FILE",
        help="constrain the reply to this GBNF grammar (root rule 'root'; part of the key)",
    )
    p.add_argument(
        "--template",
        metavar="NAME|FILE",
        help="the chat template: one of llama.cpp's built-in names (gemma, llama3, phi3, "
        "chatml, mistral-v7, ...) or a Jinja file; default: the model's own, else the "
        "[templates] config, else the built-in for its architecture",
    )


def add_run_flags(p: argparse.ArgumentParser) -> None:
    add_request_flags(p)
    p.add_argument(
        "--raw",
        action="store_true",
        help="raw completion: the prompt is sent as written, through no chat template "
        "(for base models; keyed apart in the store)",
    )
    p.add_argument(
        "--speculative",
        choices=("auto", "ngram", "draft", "off"),
        help="speculative decoding: auto (the default, or the 'speculative' setting: "
        "drafts by prompt lookup, or with --draft's model, while it pays), ngram (prompt "
        "lookup always), draft (the --draft model always), off",
    )
    add_draft_flag(p)


def add_draft_flag(p: argparse.ArgumentParser) -> None:
    """--draft MODEL (`run` and `batch`): the 'draft_model' setting."""
    p.add_argument(
        "--draft",
        dest="draft_model",
        metavar="MODEL",
        help="a small model of the same vocabulary (path or library name) that drafts "
        "tokens for the model to verify (speculative decoding; the 'draft_model' setting)",
    )


def with_preset(args: argparse.Namespace, settings: Settings, paths: Paths) -> Settings:
    """--preset NAME: the preset's values over the config's, under the flags given."""
    return apply_preset(settings, preset_values(args, paths))


def apply_preset(settings: Settings, values: dict[str, Any]) -> Settings:
    values = dict(values)
    if "system" in values:
        settings = replace(settings, system=str(values.pop("system")))
    return settings.with_overrides(**values)


def preset_values(args: argparse.Namespace, paths: Paths) -> dict[str, Any]:
    """The values --preset NAME sets that no flag given overrides ({} without --preset);
    ConfigError (exit 2) naming the presets there are when NAME is not one of them."""
    name = getattr(args, "preset", None)
    if not name:
        return {}
    from tui_infer.core.config import PRESET_KEYS, load_presets
    from tui_infer.core.errors import ConfigError

    presets = load_presets(paths.config_file)
    if name not in presets:
        have = ", ".join(presets) or "none"
        raise ConfigError(
            f"--preset {name}: no such preset in {paths.config_file} (presets: {have}); "
            "add a [presets.NAME] table or save one from the chat's settings (F2)"
        )
    return {
        k: v
        for k, v in presets[name].items()
        if k in PRESET_KEYS and getattr(args, k, None) is None
    }


def structured(args: argparse.Namespace, sampling: SamplingParams) -> SamplingParams:
    """--json-schema FILE / --grammar FILE on `sampling` (GrammarError, exit 2, when bad)."""
    schema, grammar = getattr(args, "json_schema", None), getattr(args, "grammar", None)
    if schema is None and grammar is None:
        return sampling
    from tui_infer.core.inference.grammar import from_files

    return from_files(sampling, schema, grammar)


def with_template(args: argparse.Namespace, target: ModelTarget) -> ModelTarget:
    """--template NAME|FILE: the target renders (and is keyed) with that template."""
    value = getattr(args, "template", None)
    if not value:
        return target
    from tui_infer.core.inference.template import resolve_template_arg

    return replace(target, override=resolve_template_arg(value))
