"""`tui-infer bench quality`: the real default model against itself (agreement 1, KL 0), a Q4_0
made from it by the quantizer (agreement below 1, KL above 0), quantized KV caches on it;
the JSON document's shape; bad input as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tui_infer.cli import main
from tui_infer.core.bench.quality import (
    SCHEMA,
    QualityError,
    evaluate,
    library_family,
    log_softmax_,
)
from tui_infer.core.models.quantize import quantize_into_library

FAST = {"threads": 2, "speed_reps": 1, "max_tokens": 200}


@pytest.fixture(scope="module")
def q4_0(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("quant-data")
    return quantize_into_library(model_path, "Q4_0", data, threads=2).path


def test_log_softmax_matches_float64() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 1000)) * 8).astype(np.float32)
    want = x.astype(np.float64) - np.log(np.exp(x.astype(np.float64)).sum(axis=1))[:, None]
    got = x.copy()
    log_softmax_(got)
    assert np.abs(got - want).max() < 1e-4


def test_the_reference_against_itself(model_path: Path) -> None:
    rows: list[object] = []
    report = evaluate(model_path, [model_path], ("f16",), on_row=rows.append, **FAST)
    assert len(report.rows) == 2 and rows == list(report.rows)
    ref, same = report.rows
    assert ref.reference and not same.reference
    assert same.agreement == 1.0
    assert same.kl_mean < 1e-6 and same.kl_max < 1e-5
    assert same.perplexity == pytest.approx(ref.perplexity, rel=1e-6)
    assert 1.0 < ref.perplexity < 1000.0
    # every next token scored (this vocabulary adds no BOS: the first token has no prediction)
    assert ref.positions == report.text_tokens - 1
    assert ref.pp_tps > 0 and ref.tg_tps > 0
    assert ref.model_bytes == model_path.stat().st_size
    # the default model's f16 KV cache: 23,040 bytes a token (field notes), at 4096 tokens
    assert ref.kv_bytes == 23_040 * 4096
    # only a Q4_1 at hand: the output says the reference is the best file available
    assert any("itself Q4_1" in n and "best file at hand" in n for n in report.notes)


def test_a_q4_0_and_quantized_kv_against_the_reference(model_path: Path, q4_0: Path) -> None:
    report = evaluate(model_path, [q4_0], ("f16", "q8_0", "q4_0"), **FAST)
    labels = [r.label for r in report.rows]
    assert labels == [
        model_path.name,
        q4_0.name,
        f"{model_path.name} kv=q8_0",
        f"{model_path.name} kv=q4_0",
    ]
    _, quant, kv8, kv4 = report.rows
    assert quant.quantization == "Q4_0" and quant.bits_per_weight < report.rows[0].bits_per_weight
    assert 0.5 < quant.agreement < 1.0
    assert quant.kl_mean > 1e-3 and quant.kl_p99 >= quant.kl_mean
    assert quant.model_bytes < report.rows[0].model_bytes
    # a 4-bit KV cache costs more than an 8-bit one, and both cost something
    assert 0 < kv8.kl_mean < kv4.kl_mean
    assert kv8.kv_bytes < report.rows[0].kv_bytes and kv4.kv_bytes < kv8.kv_bytes


def test_the_library_family_picks_the_best_original(model_path: Path, isolated_env: Path) -> None:
    data = isolated_env / "data"
    q8 = quantize_into_library(model_path, "Q8_0", data, threads=2).path
    q4 = quantize_into_library(model_path, "Q4_0", data, threads=2).path
    family = library_family(model_path, data)
    # Q8_0 has more bits, but it was made from the Q4_1: the Q4_1 stays the reference
    assert family.reference == model_path
    assert list(family.others) == [q8, q4]
    assert family.made_from_ref == (True, True)
    report = evaluate(
        family.reference, list(family.others), ("f16",), made_from_ref=family.made_from_ref, **FAST
    )
    assert any(q8.name in n and "made from the reference" in n for n in report.notes)


def test_cli_json_and_table(
    model_path: Path, q4_0: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = isolated_env / "mine.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12, encoding="utf-8")
    args = [str(model_path), str(q4_0), "--prompts", str(text), "--kv-types", "f16,q8_0"]
    assert main(["bench", "quality", *args, "--reps", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == SCHEMA
    assert doc["text"]["source"] == str(text) and doc["text"]["tokens"] > 100
    assert [r["kv_type"] for r in doc["results"]] == ["f16", "f16", "q8_0"]
    first, quant = doc["results"][:2]
    assert first["reference"] is True and quant["reference"] is False
    assert set(quant) >= {
        "label", "path", "quantization", "kv_type", "bits_per_weight", "agreement",
        "kl_divergence", "perplexity", "perplexity_ratio", "speed", "memory",
    }  # fmt: skip
    assert set(quant["kl_divergence"]) == {"mean", "p99", "max"}
    assert set(quant["speed"]) == {"pp_tokens_per_s", "tg_tokens_per_s"}
    assert quant["memory"]["total_bytes"] == (
        quant["memory"]["model_bytes"] + quant["memory"]["kv_bytes"]
    )
    assert quant["agreement"] < 1.0 and quant["kl_divergence"]["mean"] > 0
    # the last report is kept for the Quant view
    kept = json.loads((isolated_env / "data" / "quality" / "last.json").read_text())
    assert kept["results"] == doc["results"]

    assert main(["bench", "quality", *args, "--reps", "1"]) == 0
    out = capsys.readouterr().out
    head, *lines = out.splitlines()
    assert head.startswith(f"reference {model_path.name} (Q4_1, kv f16) · {text}")
    assert lines[0].split()[:5] == ["model", "quant", "kv", "bits/w", "agree"]
    assert any(line.startswith(q4_0.name) and " Q4_0 " in line for line in lines)
    assert any(line.startswith("note: the reference") for line in lines)


@pytest.mark.parametrize(
    ("extra", "needle", "code"),
    [
        (["--kv-types", "f16,q3"], "unknown KV cache type 'q3'", 2),
        (["--prompts", "/nonexistent/prompts.txt"], "no such file", 2),
        (["--reps", "0"], "--reps must be at least 1", 2),
    ],
)
def test_bad_input(
    model_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
    code: int,
) -> None:
    assert main(["bench", "quality", str(model_path), *extra]) == code
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_bad_text_and_files(
    model_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = isolated_env / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    short = isolated_env / "short.txt"
    short.write_text("Hello there.", encoding="utf-8")
    binary = isolated_env / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    junk = isolated_env / "junk.gguf"
    junk.write_bytes(b"nope" * 100)
    for args, needle in [
        (["--prompts", str(empty)], "the file is empty"),
        (["--prompts", str(short)], "give at least 16"),
        (["--prompts", str(binary)], "not UTF-8 text"),
        ([str(junk)], "junk.gguf"),
    ]:
        assert main(["bench", "quality", str(model_path), *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(QualityError, match="chunk must hold"):
        evaluate(model_path, [], ("f16",), chunk=8)
