"""Copy that works: the system clipboard beside OSC 52 (wl-copy, xclip or xsel where a
graphical session is, pbcopy on macOS), and a message that says which was used, or why
none could be. The tools are real executables on PATH: small scripts that keep what
they are given, as the real ones would put it on the clipboard."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.support.pilot import ready, synthetic_app
from tui_infer.core.clipboard import copy_to_system

pytestmark = pytest.mark.anyio


def tool(folder: Path, name: str, exit_code: int = 0) -> Path:
    """An executable `name` that writes its stdin (and its arguments) to folder/name.out."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    out = folder / f"{name}.out"
    cat = shutil.which("cat")  # by its path: the tests' PATH holds only these tools
    script.write_text(f'#!/bin/sh\necho "$@" > "{out}.args"\n{cat} > "{out}"\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return out


def test_wayland_then_x11_then_none(tmp_path: Path) -> None:
    bin_ = tmp_path / "bin"
    wl, xclip = tool(bin_, "wl-copy"), tool(bin_, "xclip")
    env = {"PATH": str(bin_), "WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}
    got = copy_to_system("héllo\nworld", env, platform="linux")
    assert got.ok and got.tool == "wl-copy" and wl.read_text("utf-8") == "héllo\nworld"
    got = copy_to_system("x11", {"PATH": str(bin_), "DISPLAY": ":0"}, platform="linux")
    assert got.ok and got.tool == "xclip" and xclip.read_text() == "x11"
    assert Path(f"{xclip}.args").read_text().split() == ["-selection", "clipboard"]
    # over SSH, on a console: no graphical session, and the message says so
    got = copy_to_system("x", {"PATH": str(bin_)}, platform="linux")
    assert not got.ok and "neither WAYLAND_DISPLAY nor DISPLAY" in got.reason


def test_a_tool_that_fails_or_is_missing_is_said(tmp_path: Path) -> None:
    bin_ = tmp_path / "bin"
    tool(bin_, "xclip", exit_code=1)
    xsel = tool(bin_, "xsel")
    got = copy_to_system("y", {"PATH": str(bin_), "DISPLAY": ":0"}, platform="linux")
    assert got.ok and got.tool == "xsel" and xsel.read_text() == "y"  # the next one
    os.unlink(bin_ / "xsel")
    got = copy_to_system("y", {"PATH": str(bin_), "DISPLAY": ":0"}, platform="linux")
    assert not got.ok and "xclip exited 1" in got.reason
    got = copy_to_system("y", {"PATH": str(tmp_path / "empty"), "DISPLAY": ":0"}, "linux")
    assert not got.ok and "none of xclip, xsel is installed" in got.reason
    pb = tool(bin_, "pbcopy")
    got = copy_to_system("mac", {"PATH": str(bin_)}, platform="darwin")
    assert got.ok and got.tool == "pbcopy" and pb.read_text() == "mac"


async def test_the_chat_copies_both_ways_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_ = tmp_path / "bin"
    out = tool(bin_, "xclip")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    app = synthetic_app(tmp_path, max_tokens=3)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f5")  # nothing to copy yet
        await pilot.pause(0.1)
        assert any("no reply to copy yet" in n.message for n in app._notifications)
        app.chat.prompt_input.insert("Hello")
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)
        reply = app.chat.session.last_reply()
        assert reply
        await pilot.press("f5")
        await pilot.pause(0.2)
        assert app.clipboard == reply == out.read_text()  # OSC 52 and xclip
        assert any("with OSC 52 and xclip" in n.message for n in app._notifications)
        monkeypatch.delenv("DISPLAY")
        await pilot.press("f5")
        await pilot.pause(0.2)
        assert any(
            "OSC 52 only (no system clipboard: no graphical session" in n.message
            for n in app._notifications
        )
