"""Provenance: what made a run is recorded with it, printed by `store show`, carried by
`store export`; secrets on the command line are redacted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import llama_cpp
import pytest

from tui_infer.cli import main
from tui_infer.core.inference.types import LoadOptions
from tui_infer.core.static import provenance
from tui_infer.core.static.store import PredictionStore


def test_secrets_on_the_command_line_are_redacted() -> None:
    argv = [
        "tui-infer",
        "serve",
        "--api-key",
        "hunter2",
        "--hf-token=hf_abcdefghijkl",
        "--system",
        "be brief",
        "sk-proj-0123456789abcdef",
        "--password",
        "pw",
    ]
    assert provenance.redact_argv(argv) == [
        "tui-infer",
        "serve",
        "--api-key",
        "***",
        "--hf-token=***",
        "--system",
        "be brief",
        "***",
        "--password",
        "***",
    ]


def test_collect_records_versions_backend_and_hashes(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("Hello.\n")
    prov = provenance.collect(
        argv=["tui-infer", "batch", str(src), "--api-key=abc"],
        model_path=model_path,
        model_sha256="f" * 64,
        input_path=src,
        options=LoadOptions(threads=2, gpu_layers=0),
        n_layer=30,
    )
    assert prov["tui_infer_version"] == "0.1.0"
    assert prov["llama_cpp_version"] == llama_cpp.__version__
    build = prov["llama_cpp_build"]
    assert build["llama_cpp"] == llama_cpp.llama_version().decode()
    assert "CPU" in build["system_info"] and isinstance(build["gpu_offload"], bool)
    assert prov["backend"].startswith("CPU") and "2 threads" in prov["backend"]
    assert prov["input_sha256"] == hashlib.sha256(b"Hello.\n").hexdigest()
    assert prov["argv"][-1] == "--api-key=***"


def test_a_run_made_before_provenance_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(tmp_path / "data" / "store.sqlite3") as store:
        run = store.create_run(
            signature="old",
            model_sha256="a" * 64,
            model_path="m.gguf",
            template_sha256="t",
            params={},
            n_items=0,
        )
    assert main(["store", "show", str(run)]) == 0
    assert "provenance: not recorded" in capsys.readouterr().out


@pytest.mark.slow
def test_batch_records_provenance_shown_and_exported(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "prompts.txt"
    src.write_text("Name a colour.\nSay hi.\n")
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--max-tokens", "6"]
    assert main([*argv, "--parallel", "2", "--ctx", "1024", "--threads", "2"]) == 0
    run = json.loads(out.read_text().splitlines()[0])["run"]
    capsys.readouterr()
    model_sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    input_sha = hashlib.sha256(src.read_bytes()).hexdigest()

    assert main(["store", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert f"tui-infer 0.1.0 · llama-cpp-python {llama_cpp.__version__}" in shown
    assert f"(llama.cpp {llama_cpp.llama_version().decode()})" in shown
    assert "backend: CPU" in shown and "build: CPU : " in shown
    assert f"model: {model_path} (sha256 {model_sha})" in shown
    assert f"input: {src} (sha256 {input_sha})" in shown
    assert f"command: tui-infer batch {src} -o {out} -m {model_path} --max-tokens 6" in shown

    exported = tmp_path / "export.jsonl"
    assert main(["store", "export", str(run), "-o", str(exported)]) == 0
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        prov = row["provenance"]
        assert prov["model_sha256"] == model_sha and prov["input_sha256"] == input_sha
        assert prov["argv"][:3] == ["tui-infer", "batch", str(src)]
        assert prov["llama_cpp_build"]["llama_cpp_python"] == llama_cpp.__version__
        assert row["mean_logprob"] < 0 and row["min_logprob"] <= row["mean_logprob"]
