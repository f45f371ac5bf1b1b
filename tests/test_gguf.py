"""The GGUF reader on the real model and on every kind of bad file."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.support.gguf_craft import write_gguf
from tui_infer.core.errors import ModelFileError
from tui_infer.core.models.gguf import ArraySummary, read_header


def test_reads_the_real_model(model_path: Path) -> None:
    h = read_header(model_path)
    assert h.architecture == "llama"
    assert h.quantization == "Q4_1"
    assert h.n_layer == 30
    assert h.n_embd == 576
    assert (h.n_head, h.n_head_kv) == (9, 3)
    assert h.head_dim_k == h.head_dim_v == 64
    assert h.n_ctx_train == 8192
    assert 130_000_000 < h.parameter_count < 140_000_000  # SmolLM2-135M
    assert h.chat_template and "<|im_start|>" in h.chat_template
    assert isinstance(h.get("tokenizer.ggml.tokens"), ArraySummary)
    assert h.get("tokenizer.ggml.tokens").length == 49152
    assert h.get("general.license") == "apache-2.0"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        read_header(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="is a directory"):
        read_header(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        read_header(p)


def test_text_file_renamed(tmp_path: Path) -> None:
    p = tmp_path / "notes.gguf"
    p.write_text("these are my notes, not a model\n")
    with pytest.raises(ModelFileError, match="not a GGUF file.*looks like text"):
        read_header(p)


@pytest.mark.parametrize("keep", [3, 20, 4096, 1_000_000, -1000])
def test_truncated_model(model_path: Path, tmp_path: Path, keep: int) -> None:
    data = model_path.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:keep])
    with pytest.raises(ModelFileError, match="truncated|not a GGUF"):
        read_header(p)


def test_absurd_hyperparameter(tmp_path: Path) -> None:
    p = write_gguf(
        tmp_path / "big.gguf",
        {"general.architecture": "llama", "llama.block_count": 10**12},
    )
    with pytest.raises(ModelFileError, match="absurd metadata: llama.block_count"):
        read_header(p)


def test_absurd_string_length_is_bounded_before_allocation(tmp_path: Path) -> None:
    key = b"general.name"
    raw = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 2**62)
    p = write_gguf(tmp_path / "s.gguf", {}, raw_kv=raw, n_kv_extra=1)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_header(p)


def test_absurd_array_length(tmp_path: Path) -> None:
    key = b"tokenizer.ggml.tokens"
    raw = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 2**60)
    p = write_gguf(tmp_path / "a.gguf", {}, raw_kv=raw, n_kv_extra=1)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_header(p)


def test_absurd_counts_in_header(tmp_path: Path) -> None:
    p = tmp_path / "counts.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="corrupt GGUF header: claims"):
        read_header(p)


def test_absurd_tensor_shape(tmp_path: Path) -> None:
    p = write_gguf(
        tmp_path / "t.gguf",
        {"general.architecture": "llama"},
        tensors=[("w", (2**40, 2**20), 0)],
        data=b"\0" * 64,
    )
    with pytest.raises(ModelFileError, match="absurd shape|truncated"):
        read_header(p)


def test_unsupported_version(tmp_path: Path) -> None:
    p = write_gguf(tmp_path / "v.gguf", {}, version=99)
    with pytest.raises(ModelFileError, match="unsupported GGUF version 99"):
        read_header(p)


def test_no_tensors(tmp_path: Path) -> None:
    p = write_gguf(tmp_path / "n.gguf", {"general.architecture": "llama"}, tensors=[])
    with pytest.raises(ModelFileError, match="no tensors"):
        read_header(p)


def test_small_valid_file_reads(tmp_path: Path) -> None:
    p = write_gguf(
        tmp_path / "ok.gguf",
        {"general.architecture": "llama", "general.name": "tiny", "llama.block_count": 2},
    )
    h = read_header(p)
    assert h.name == "tiny" and h.n_layer == 2 and h.parameter_count == 4
