"""Where tui-infer's files live. Nothing is created at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "tui-infer"


@dataclass(frozen=True)
class Paths:
    config_file: Path
    data_dir: Path
    state_dir: Path | None = None  # logs; None: a "state" folder in the data dir

    @property
    def log_file(self) -> Path:
        """Where tracebacks go (rotated), instead of the user's terminal."""
        return (self.state_dir or self.data_dir / "state") / "tui-infer.log"


def default_paths(environ: dict[str, str] | None = None) -> Paths:
    """Platform directories, overridable with TUI_INFER_CONFIG, TUI_INFER_DATA_DIR and
    TUI_INFER_STATE_DIR."""
    env = os.environ if environ is None else environ
    import platformdirs

    config = env.get("TUI_INFER_CONFIG")
    data = env.get("TUI_INFER_DATA_DIR")
    config_file = (
        Path(config).expanduser()
        if config
        else Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"
    )
    data_dir = Path(data).expanduser() if data else Path(platformdirs.user_data_dir(APP_NAME))
    state = env.get("TUI_INFER_STATE_DIR")
    state_dir = Path(state).expanduser() if state else Path(platformdirs.user_state_dir(APP_NAME))
    return Paths(config_file=config_file, data_dir=data_dir, state_dir=state_dir)
