"""`tui-infer models quantize`: llama.cpp's quantizer on the real default model (SmolLM2-135M
Q4_1, so every result is a requantization), the result in a temporary data directory's
library; bad input is a one-line error and nothing is written; a stopped run leaves no file."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.models.gguf import read_header
from tui_infer.core.models.library import ModelLibrary
from tui_infer.core.models.quantize import (
    QUANT_TYPES,
    QuantizeError,
    output_name,
    parse_type,
    quantize_into_library,
    run_quantizer,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_dir(isolated_env: Path) -> Path:
    return isolated_env / "data"


def test_names_and_types() -> None:
    assert output_name(Path("/x/SmolLM2-135M-Instruct.Q4_1.gguf"), "Q8_0") == (
        "SmolLM2-135M-Instruct.Q8_0.gguf"
    )
    assert output_name(Path("/x/llama-3-8b-f16.gguf"), "Q4_K_M") == "llama-3-8b.Q4_K_M.gguf"
    assert output_name(Path("/x/plain.gguf"), "Q5_0") == "plain.Q5_0.gguf"
    assert parse_type("q4_k_m") == "Q4_K_M"
    assert {"Q8_0", "Q5_0", "Q4_0", "Q4_K_M", "F16"} <= set(QUANT_TYPES)
    with pytest.raises(QuantizeError, match="unknown quant type 'Q9_9'; valid types: "):
        parse_type("Q9_9")
    with pytest.raises(QuantizeError, match="importance matrix"):
        parse_type("IQ2_XS")


def test_quantize_q8_0_into_the_library(
    model_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "quantize", str(model_path), "q8_0", "--threads", "2"]) == 0
    out, err = capsys.readouterr()
    dest = data_dir(isolated_env) / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert dest.is_file() and not dest.with_name(dest.name + ".part").exists()
    assert read_header(dest).quantization == "Q8_0"
    # the source was Q4_1: a requantization, said so
    assert "Q4_1, already quantized: requantizing it to Q8_0" in err
    assert "requantized" in out and str(dest) in out
    with ModelLibrary(data_dir(isolated_env)) as lib:
        entry = lib.get(str(dest))
    assert entry.source == "copied"  # the library's own file: `models rm` deletes it
    assert entry.quantization == "Q8_0"
    assert entry.sha256 == sha256(dest)
    made = entry.metadata["quantized_from"]
    assert made["sha256"] == sha256(model_path)
    assert made["type"] == "Q4_1" and made["requantized"] is True
    assert Path(made["path"]) == model_path
    assert f"sha256 {sha256(model_path)}" in out

    # once there, the same command refuses to overwrite it, and the file stays as it was
    before = sha256(dest)
    assert main(["models", "quantize", str(model_path), "Q8_0"]) == 2
    _, err = capsys.readouterr()
    assert "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sha256(dest) == before


def test_quantize_q4_0_is_smaller_and_different(model_path: Path, isolated_env: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = quantize_into_library(
        model_path,
        "Q4_0",
        data_dir(isolated_env),
        threads=2,
        progress=lambda done, total, name: seen.append((done, total)),
    )
    assert result.path.name == "SmolLM2-135M-Instruct.Q4_0.gguf"
    assert result.requantized and result.source_type == "Q4_1"
    assert result.size < result.source_size
    assert sha256(result.path) != sha256(model_path)
    # progress: one call per tensor, up to all of them
    total = len(read_header(model_path).tensors)
    assert seen and seen[-1] == (total, total)
    assert [d for d, _ in seen] == list(range(1, total + 1))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["Q9_9"], "unknown quant type 'Q9_9'; valid types: F32, F16, Q4_0"),
        (["IQ1_S"], "needs an importance matrix"),
        (["Q4_1"], "is already Q4_1; pick another type"),
    ],
)
def test_bad_type(
    model_path: Path,
    isolated_env: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needle: str,
) -> None:
    assert main(["models", "quantize", str(model_path), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (data_dir(isolated_env) / "models").exists()


def test_bad_files(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = isolated_env / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    assert main(["models", "quantize", str(junk), "Q8_0"]) == 2
    err = capsys.readouterr().err
    assert "junk.gguf" in err and len(err.strip().splitlines()) == 1, err
    assert main(["models", "quantize", str(isolated_env / "missing.gguf"), "Q8_0"]) == 4
    err = capsys.readouterr().err
    assert "missing.gguf: no such file" in err and len(err.strip().splitlines()) == 1, err
    assert main(["models", "quantize", "no-such-model-name", "Q8_0"]) == 4
    assert "no model named 'no-such-model-name'" in capsys.readouterr().err
    assert not (data_dir(isolated_env) / "models").exists()


def test_stopped_runs_leave_no_file(model_path: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out.Q8_0.gguf"
    part = dest.with_name(dest.name + ".part")
    # the cancel Event (the TUI's way): the child is killed, the part removed
    cancel = threading.Event()
    with pytest.raises(QuantizeError, match="cancelled; nothing was written"):
        run_quantizer(
            model_path,
            dest,
            "Q8_0",
            threads=1,
            allow_requantize=True,
            progress=lambda done, total, name: cancel.set(),
            cancel=cancel,
        )
    assert not dest.exists() and not part.exists()

    # Ctrl+C in the parent (KeyboardInterrupt while it reads the progress)
    def interrupt(done: int, total: int, name: str) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_quantizer(
            model_path, dest, "Q8_0", threads=1, allow_requantize=True, progress=interrupt
        )
    assert not dest.exists() and not part.exists()


def test_requantizing_needs_allow_requantize(model_path: Path, tmp_path: Path) -> None:
    """llama.cpp refuses to requantize a quantized file unless told: the plan always tells
    it for a quantized source; without it, the failure is llama.cpp's own reason."""
    dest = tmp_path / "out.Q8_0.gguf"
    with pytest.raises(Exception, match="requantiz") as info:
        run_quantizer(model_path, dest, "Q8_0", threads=1, allow_requantize=False)
    assert "llama.cpp could not quantize it to Q8_0" in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
