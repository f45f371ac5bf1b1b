"""`tui-infer presets`: the named sampling presets of the config ([presets.NAME]), which
`run --preset NAME`, `batch --preset NAME` and the chat's settings (Ctrl+S) apply.

Only the standard library is imported at the top: `tui-infer --help` stays instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tui_infer.commands.tables import Table, output_flags, print_json, wants

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.paths import Paths


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "presets",
        help="the named sampling presets of the config ([presets.NAME])",
        description="List the presets of the config file: each a name and the sampling "
        "values it sets (temperature, top_p, top_k, min_p, repeat_penalty, seed, max_tokens, "
        "system). Saved from the chat's settings (Ctrl+S), applied by 'run --preset NAME'.",
    )
    output_flags(p, quiet="the names")


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.config import load_presets

    presets = load_presets(paths.config_file)
    if wants(args, "json"):
        print_json([{"name": name, "values": values} for name, values in presets.items()])
        return 0
    if wants(args, "quiet"):
        for name in presets:
            print(name)
        return 0
    if not presets:
        print(
            f"no presets in {paths.config_file}: save one from the chat's settings (Ctrl+S), "
            "or add a [presets.NAME] table"
        )
        return 0
    t = Table("name", "values")
    for name, values in presets.items():
        t.add_row(name, ", ".join(f"{k} = {_toml(v)}" for k, v in values.items()))
    t.print()
    return 0


def _toml(value: Any) -> str:
    """A value as it is written in the config."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
