"""A defensive GGUF header reader, written against the GGUF spec.

It reads the header, the key/value metadata and the tensor table without loading
the model, so that a bad file is explained to the user instead of handed to
llama.cpp. Every count and length is checked against the bytes that remain
before anything is allocated: a hostile or truncated header gives a
ModelFileError, never a crash or a huge allocation.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4
# Arrays longer than this are summarised (tokenizer vocabularies have ~100k entries).
KEEP_ARRAY_MAX = 64
# Keys and tensor names: GGUF allows 65,535 bytes. String values: chat templates run to
# tens of KiB; 16 MiB keeps a corrupt length from reading (and quoting) a whole model.
MAX_KEY = 65_535
MAX_STRING = 16 << 20
# Bounds on hyperparameters: far above any real model, far below what would
# make llama.cpp allocate absurd buffers.
HPARAM_BOUNDS = {
    "block_count": 8192,
    "embedding_length": 1 << 20,
    "attention.head_count": 1 << 14,
    "attention.head_count_kv": 1 << 14,
    "context_length": 1 << 25,
    "feed_forward_length": 1 << 22,
}

# value type id -> (struct format, size); 8 = string, 9 = array
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9

# ggml tensor type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# llama_ftype (general.file_type) -> quantization name
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array, kept as its type and length only."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int | None:
        spec = GGML_TYPES.get(self.ggml_type)
        if spec is None:
            return None
        _, block, size = spec
        return (self.n_elements + block - 1) // block * size


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    file_size: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    data_offset: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    @property
    def quantization(self) -> str:
        ft = self.metadata.get("general.file_type")
        if isinstance(ft, int) and ft in FILE_TYPES:
            return FILE_TYPES[ft]
        # No file type: name the most common tensor type by bytes.
        by_type: dict[str, int] = {}
        for t in self.tensors:
            spec = GGML_TYPES.get(t.ggml_type)
            if spec:
                by_type[spec[0]] = by_type.get(spec[0], 0) + (t.n_bytes or 0)
        return max(by_type, key=lambda k: by_type[k]) if by_type else "unknown"

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def n_layer(self) -> int:
        return int(self.arch_value("block_count", 0) or 0)

    @property
    def n_ctx_train(self) -> int:
        return int(self.arch_value("context_length", 0) or 0)

    @property
    def n_embd(self) -> int:
        return int(self.arch_value("embedding_length", 0) or 0)

    @property
    def n_head(self) -> int:
        return _first_int(self.arch_value("attention.head_count", 0))

    @property
    def n_head_kv(self) -> int:
        return _first_int(self.arch_value("attention.head_count_kv", self.n_head)) or self.n_head

    @property
    def head_dim_k(self) -> int:
        default = self.n_embd // self.n_head if self.n_head else 0
        return int(self.arch_value("attention.key_length", default) or default)

    @property
    def head_dim_v(self) -> int:
        default = self.n_embd // self.n_head if self.n_head else 0
        return int(self.arch_value("attention.value_length", default) or default)


def _first_int(value: Any) -> int:
    """Per-layer head counts may be arrays; take the first (summaries count as 0)."""
    if isinstance(value, list):
        return int(value[0]) if value else 0
    if isinstance(value, ArraySummary):
        return 0
    return int(value or 0)


def _printable(text: str, limit: int = 400) -> str:
    """One line, whatever a corrupt file put in the names quoted: control characters
    escaped, and long enough to read, no longer."""
    cut = text[:limit]
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in cut)
    return out if len(text) <= limit else out + "…"


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {_printable(what)}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"truncated or corrupt GGUF header ({what} needs {n} bytes at offset "
                f"{self.pos}, file has {self.size}); re-download or re-export the model"
            )

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        n = self.u64(f"{what} length")
        if n > limit:
            raise self.fail(
                f"truncated or corrupt GGUF header: {_printable(what, 80)} claims a string "
                f"of {n:,} bytes (at most {limit:,}); re-download or re-export the model"
            )
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.u64(f"{what} length")
        self.need(n, what)
        self.pos += n

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            return self.scalar(fmt, size, key)
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY:
            if depth > 2:
                raise self.fail(f"metadata '{key}': arrays nested too deep")
            item_type = self.u32(f"{key} array type")
            count = self.u64(f"{key} array length")
            min_size = _SCALARS[item_type][1] if item_type in _SCALARS else 8
            if item_type not in _SCALARS and item_type not in (_STRING, _ARRAY):
                raise self.fail(f"metadata '{key}': unknown array item type {item_type}")
            # Bound the count by the bytes that remain before looping or allocating.
            self.need(count * min_size, f"{key} array of {count} items")
            if count > KEEP_ARRAY_MAX:
                if item_type in _SCALARS:
                    self.pos += count * min_size
                else:
                    for _ in range(count):
                        if item_type == _STRING:
                            self.skip_string(key)
                        else:
                            self.value(item_type, key, depth + 1)
                return ArraySummary(item_type, count)
            return [self.value(item_type, key, depth + 1) for _ in range(count)]
        raise self.fail(f"metadata '{key}': unknown value type {vtype}")


def read_header(path: str | Path) -> GgufHeader:
    """Read and check a GGUF file's header; raise ModelFileError with a one-line reason."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"{p}: no such file; check the path or run 'tui-infer models list'")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, not a GGUF file; give the .gguf file inside")
    try:
        size = p.stat().st_size
        if size == 0:
            raise ModelFileError(f"{p}: the file is empty (0 bytes); re-download the model")
        with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, p, size)
    except PermissionError:
        raise ModelFileError(f"{p}: permission denied; check the file's permissions") from None
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot read ({exc.strerror or exc})") from None


def parse_header_bytes(buf: bytes, name: str, file_size: int) -> GgufHeader:
    """Parse a header from the first bytes of a file (e.g. a ranged HTTP GET).

    Reads are bounded by the bytes given, claims by the whole file's size: a prefix too
    short for the header gives the same "truncated or corrupt" ModelFileError.
    """
    if file_size < len(buf):
        raise ModelFileError(f"{name}: got {len(buf)} bytes of a {file_size}-byte file")
    return _parse(buf, Path(name), file_size)


def _parse(buf: mmap.mmap | bytes, path: Path, size: int) -> GgufHeader:
    r = _Reader(buf, path)
    if size < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        head = bytes(buf[:4])
        hint = " (it looks like text)" if head.isascii() and head.strip() else ""
        raise r.fail(f"not a GGUF file{hint}: it does not start with 'GGUF'; choose a .gguf model")
    r.pos = 4
    version = r.u32("version")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3); re-export the model")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes;
    # each tensor entry at least 8 + 4 + 4 + 8.
    if n_kv * 13 > size - r.pos:
        raise r.fail(f"corrupt GGUF header: claims {n_kv} metadata entries in a {size}-byte file")
    if n_tensors * 24 > size - r.pos:
        raise r.fail(f"corrupt GGUF header: claims {n_tensors} tensors in a {size}-byte file")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("metadata key", MAX_KEY)
        vtype = r.u32(f"{key} type")
        metadata[key] = r.value(vtype, key)

    tensors: list[TensorInfo] = []
    for i in range(n_tensors):
        name = r.string(f"tensor {i} name", MAX_KEY)
        n_dims = r.u32(f"tensor {name} dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"corrupt tensor '{name}': {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(r.u64(f"tensor {name} shape") for _ in range(n_dims))
        ggml_type = r.u32(f"tensor {name} type")
        offset = r.u64(f"tensor {name} offset")
        info = TensorInfo(name, shape, ggml_type, offset)
        if any(d == 0 for d in shape) or info.n_elements > size * 64:
            raise r.fail(f"corrupt tensor '{name}': absurd shape {list(shape)} for the file size")
        tensors.append(info)

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"corrupt GGUF header: alignment {alignment!r} is not a power of two")
    data_offset = (r.pos + alignment - 1) // alignment * alignment

    for t in tensors:
        nbytes = t.n_bytes
        if nbytes is None:
            continue  # a tensor type newer than this table: llama.cpp will check it
        end = data_offset + t.offset + nbytes
        if end > size:
            raise r.fail(
                f"truncated GGUF: tensor '{t.name}' ends at byte {end} but the file has "
                f"{size} bytes; the download or copy was cut short, fetch it again"
            )

    header = GgufHeader(path, version, size, metadata, tuple(tensors), data_offset)
    _check_hparams(header, r)
    return header


def _check_hparams(h: GgufHeader, r: _Reader) -> None:
    for suffix, limit in HPARAM_BOUNDS.items():
        raw = h.arch_value(suffix)
        if raw is None:
            continue
        values = raw if isinstance(raw, list) else [raw]
        for v in values:
            if isinstance(v, ArraySummary):
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= limit:
                raise r.fail(
                    f"absurd metadata: {h.architecture}.{suffix} = {v!r} (limit {limit}); "
                    "the file is corrupt or hostile, do not use it"
                )
    if not h.tensors:
        raise r.fail("the GGUF holds no tensors: it is not a usable model")
