"""Write small GGUF files byte by byte, for the bad-input tests."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, value: Any) -> bytes:
    if isinstance(value, bool):
        return _s(key) + struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return _s(key) + struct.pack("<IQ", 10, value)
    if isinstance(value, float):
        return _s(key) + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return _s(key) + struct.pack("<I", 8) + _s(value)
    raise TypeError(value)


def write_gguf(
    path: Path,
    metadata: dict[str, Any],
    tensors: list[tuple[str, tuple[int, ...], int]] | None = None,
    *,
    raw_kv: bytes = b"",
    n_kv_extra: int = 0,
    data: bytes | None = None,
    version: int = 3,
) -> Path:
    """tensors: (name, shape, ggml type); F32 data is laid out one after another."""
    tensors = tensors if tensors is not None else [("w", (4,), 0)]
    body = b"".join(_kv(k, v) for k, v in metadata.items()) + raw_kv
    infos = b""
    offset = 0
    for name, shape, ggml_type in tensors:
        infos += _s(name) + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in shape)
        infos += struct.pack("<IQ", ggml_type, offset)
        n = 1
        for d in shape:
            n *= d
        offset += (n * 4 + 31) // 32 * 32
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata) + n_kv_extra)
    blob = head + body + infos
    blob += b"\0" * ((32 - len(blob) % 32) % 32)
    blob += data if data is not None else b"\0" * offset
    path.write_bytes(blob)
    return path
