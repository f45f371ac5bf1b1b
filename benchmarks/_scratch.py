"""Benchmarks write their chats, store and bench history to a scratch data directory,
never into the user's own (imported first by each script; children inherit it)."""

import os
import tempfile

_dir = tempfile.mkdtemp(prefix="tui-infer-bench-")
os.environ["TUI_INFER_DATA_DIR"] = os.path.join(_dir, "data")
os.environ["TUI_INFER_CONFIG"] = os.path.join(_dir, "config.toml")
os.environ["TUI_INFER_STATE_DIR"] = os.path.join(_dir, "state")
