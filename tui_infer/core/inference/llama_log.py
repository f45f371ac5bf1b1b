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
from dataclasses import dataclass

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


# "load_tensors:        CUDA0 model buffer size =  4168.09 MiB", "llama_kv_cache:  MTL0 KV
# buffer size = ...", "sched_reserve:  CUDA_Host compute buffer size = ..." (the formats
# "%s: %12s model buffer size = %8.2f MiB" and "%s: %10s {KV,compute} buffer size = ...").
_BUFFER_RE = re.compile(r":\s+(\S+)\s+(model|KV|compute|output) buffer size\s*=\s*([\d.]+)\s*MiB")


def buffers(lines: list[str], kind: str = "model") -> dict[str, int]:
    """Bytes per buffer name ("CUDA0", "CPU_Mapped", "MTL0_Mapped", "CUDA_Host") that
    llama.cpp reported for `kind`: "model", "KV", "compute" or "output"."""
    out: dict[str, int] = {}
    for line in lines:
        m = _BUFFER_RE.search(line)
        if m and m.group(2) == kind:
            out[m.group(1)] = out.get(m.group(1), 0) + int(round(float(m.group(3)) * 1024 * 1024))
    return out


def model_buffers(lines: list[str]) -> dict[str, int]:
    return buffers(lines, "model")


@dataclass(frozen=True)
class FlashAttention:
    """What llama.cpp settled on for flash attention, and why it is off when it is."""

    enabled: bool | None
    reason: str = ""


# resolve_fused_ops (llama-context.cpp, 2026): "%s: layer %d is assigned to device %s but
# %s is assigned to device %s (usually due to missing support)" then "%s: %s not supported,
# set to disabled" or "%s: %s enabled", the op being "Flash Attention". Before it, the
# context's constructor: "... but the Flash Attention tensor is assigned to device %s ..."
# and "Flash Attention was auto, set to %s".
_FA_MISMATCH_RE = re.compile(
    r"layer (\d+) is assigned to device (\S+) but (?:the )?Flash Attention (?:tensor )?"
    r"is assigned to device (\S+)"
)
_FA_SETTING_RE = re.compile(r"flash_attn\s*=\s*(\S+)")


def flash_attention(lines: list[str]) -> FlashAttention | None:
    """Flash attention's state after a context was created, from llama.cpp's own lines;
    None when the log does not say."""
    state: FlashAttention | None = None
    mismatch: tuple[str, str] | None = None
    for line in lines:
        if m := _FA_MISMATCH_RE.search(line):
            mismatch = (m.group(2), m.group(3))
        elif "Flash Attention not supported, set to disabled" in line or (
            "Flash Attention was auto, set to disabled" in line
        ):
            where = (
                f"{mismatch[0]} has no kernel for this model's attention and KV cache type,"
                f" it would run on {mismatch[1]}"
                if mismatch
                else "the GPU has no kernel for this model's attention and KV cache type"
            )
            state = FlashAttention(False, f"auto mode turned it off ({where})")
        elif (
            "Flash Attention enabled" in line or "Flash Attention was auto, set to enabled" in line
        ):
            state = FlashAttention(True)
        elif "flash_attn is not compatible with" in line:
            state = FlashAttention(False, "llama.cpp turns it off for this architecture")
        elif "enabling flash_attn since it is required for quantized V cache" in line:
            state = FlashAttention(True, "on because the quantized V cache requires it")
        elif "llama_context:" in line and (m := _FA_SETTING_RE.search(line)):
            value = m.group(1).lower()
            if value in ("disabled", "0", "false"):
                state = FlashAttention(False, "turned off in the settings (flash_attn = false)")
            elif value in ("enabled", "1", "true"):
                state = FlashAttention(True)
            # "auto": the resolution lines that follow say
    return state
