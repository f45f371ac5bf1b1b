"""The system clipboard, where there is one: pbcopy (macOS), wl-copy (Wayland), xclip or
xsel (X11), clip (Windows), else pyperclip when it is installed. The TUI copies with
OSC 52 as well (through the terminal, which also works over SSH); this is the copy that
works where the terminal refuses OSC 52. Only the standard library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

TIMEOUT_S = 3.0


@dataclass(frozen=True)
class CopyResult:
    ok: bool
    tool: str = ""  # what copied: "wl-copy", "xclip", "pyperclip", ...
    reason: str = ""  # why nothing could, when not ok


def _candidates(env: Mapping[str, str], platform: str) -> tuple[list[list[str]], str]:
    """The commands to try, in order, and what to say when none is there."""
    if platform == "darwin":
        return [["pbcopy"]], "pbcopy is missing"
    if platform.startswith("win"):
        return [["clip"]], "clip.exe is missing"
    cmds: list[list[str]] = []
    if env.get("WAYLAND_DISPLAY"):
        cmds.append(["wl-copy"])
    if env.get("DISPLAY"):
        cmds += [["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    if not cmds:
        return [], "no graphical session here (neither WAYLAND_DISPLAY nor DISPLAY is set)"
    names = ", ".join(c[0] for c in cmds)
    return cmds, f"none of {names} is installed (e.g. apt install wl-clipboard or xclip)"


def copy_to_system(
    text: str, env: Mapping[str, str] | None = None, platform: str | None = None
) -> CopyResult:
    """Copy `text` to the system clipboard with the first tool that is there and works."""
    env = os.environ if env is None else env
    cmds, missing = _candidates(env, platform or sys.platform)
    failures: list[str] = []
    for cmd in cmds:
        exe = shutil.which(cmd[0], path=env.get("PATH"))
        if exe is None:
            continue
        try:
            # output to /dev/null: xclip and wl-copy leave a child serving the selection,
            # which would hold a pipe open and make this wait
            done = subprocess.run(
                [exe, *cmd[1:]],
                input=text.encode("utf-8"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=TIMEOUT_S,
                env=dict(env),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"{cmd[0]} failed ({exc})")
            continue
        if done.returncode == 0:
            return CopyResult(True, cmd[0])
        failures.append(f"{cmd[0]} exited {done.returncode}")
    try:
        import pyperclip  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        try:
            pyperclip.copy(text)
            return CopyResult(True, "pyperclip")
        except Exception as exc:  # pyperclip raises its own exception type
            failures.append(f"pyperclip failed ({exc})")
    return CopyResult(False, reason="; ".join(failures) if failures else missing)
