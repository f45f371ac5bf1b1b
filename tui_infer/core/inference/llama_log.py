"""Capture llama.cpp's C-side log instead of letting it write to the terminal.

llama.cpp logs from C to stderr, which corrupts a TUI and clutters `run`.
We keep the lines in memory: load errors are explained from them, and the KV
buffer size and offloaded layer count are read from what llama.cpp reports.
Set TUI_INFER_LLAMA_LOG=1 to also echo them to stderr.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from collections import deque

_lines: deque[str] = deque(maxlen=4000)
_lock = threading.Lock()
_partial: list[str] = []
_installed: object | None = None  # keeps the ctypes callback alive


def install() -> None:
    """Route llama.cpp's log into our buffer. Idempotent; needs llama_cpp imported."""
    global _installed
    if _installed is not None:
        return
    import llama_cpp

    echo = os.environ.get("TUI_INFER_LLAMA_LOG") == "1"

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        global _count
        s = text.decode("utf-8", errors="replace")
        if echo and sys.__stderr__:
            sys.__stderr__.write(s)
        with _lock:
            _partial.append(s)
            if s.endswith("\n"):
                _lines.append("".join(_partial).rstrip("\n"))
                _partial.clear()
                _count += 1

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _installed = _callback


_count = 0  # lines ever logged; positions survive the deque dropping old lines


def mark() -> int:
    """A position in the log, to read the lines logged after it with lines_since()."""
    with _lock:
        return _count


def lines_since(position: int) -> list[str]:
    with _lock:
        items = list(_lines)
        dropped = _count - len(items)
    return items[max(0, position - dropped) :]


def last_error(lines: list[str]) -> str | None:
    """The most specific error line llama.cpp printed, without its function prefix."""
    for line in reversed(lines):
        low = line.lower()
        if "error" in low or "failed" in low or "invalid" in low:
            return re.sub(r"^\w+:\s*", "", line.strip())
    return None


_KV_RE = re.compile(r"llama_kv_cache\w*:\s+size\s*=\s*([\d.]+)\s*MiB")
_KV_BUF_RE = re.compile(r"KV buffer size\s*=\s*([\d.]+)\s*MiB")
_OFFLOAD_RE = re.compile(r"offloaded\s+(\d+)/(\d+)\s+layers to GPU")


def kv_bytes_reported(lines: list[str]) -> int | None:
    """The KV cache size llama.cpp says it allocated (summed over buffers)."""
    total = [float(m.group(1)) for line in lines if (m := _KV_RE.search(line))]
    if total:
        return int(round(total[-1] * 1024 * 1024))
    buffers = [float(m.group(1)) for line in lines if (m := _KV_BUF_RE.search(line))]
    return int(round(sum(buffers) * 1024 * 1024)) if buffers else None


def offloaded_layers(lines: list[str]) -> tuple[int, int] | None:
    for line in reversed(lines):
        if m := _OFFLOAD_RE.search(line):
            return int(m.group(1)), int(m.group(2))
    return None
