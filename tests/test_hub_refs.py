"""`-m owner/repo[:QUANT]` and `hf.co/owner/repo:QUANT`, as other tools name hub models:
found in the Hugging Face cache or the library, else the exact `models pull` command (or
`run --pull`), offline said so; the quant tag case-insensitive, a clear list otherwise.
Against the real HTTP hub of tests/test_hub.py (HF_ENDPOINT pointed at 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.hub_server import HubServer
from tests.test_hub import REAL, served, server  # noqa: F401  (fixtures)
from tui_infer.cli import main
from tui_infer.core.errors import TuiInferError
from tui_infer.core.models.resolve import (
    HubRef,
    HubRefNotLocal,
    parse_hub_ref,
    resolve_model,
)

TINY = "acme/Tiny-GGUF"


def test_what_reads_as_a_hub_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_hub_ref("owner/repo") == HubRef("owner/repo")
    assert parse_hub_ref("owner/repo:q4_k_m") == HubRef("owner/repo", "q4_k_m")
    assert parse_hub_ref("hf.co/bartowski/Qwen-GGUF:Q8_0") == HubRef("bartowski/Qwen-GGUF", "Q8_0")
    assert parse_hub_ref("https://huggingface.co/a/b") == HubRef("a/b")
    # paths stay paths
    for path in ("model.gguf", "./a/b", "~/a/b", "/abs/a", "dir/model.gguf", "name"):
        assert parse_hub_ref(path) is None, path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert parse_hub_ref("models/mine") is None  # it exists here: a path
    with pytest.raises(TuiInferError, match="not a hub reference"):
        parse_hub_ref("hf.co/just-a-name")


def test_a_reference_not_downloaded_names_the_pull_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(HubRefNotLocal) as exc:
        resolve_model("acme/Tiny-GGUF:Q8_0")
    assert "offline" in str(exc.value)  # the tests run with HF_HUB_OFFLINE=1
    assert "'tui-infer models pull acme/Tiny-GGUF Q8_0'" in str(exc.value)
    code = main(["run", "-m", "hf.co/acme/Tiny-GGUF:Q8_0", "Hi"])
    err = capsys.readouterr().err
    assert code == 4 and len(err.splitlines()) == 1
    assert "tui-infer models pull acme/Tiny-GGUF Q8_0" in err and "offline" in err


def test_pulled_quants_resolve_case_insensitively(
    capsys: pytest.CaptureFixture[str],
    server: HubServer,  # noqa: F811
) -> None:
    # online, not here: the pull command and run --pull, no word of being offline
    with pytest.raises(HubRefNotLocal) as exc:
        resolve_model(f"{TINY}:q8_0")
    assert "offline" not in str(exc.value)
    assert "'tui-infer models pull acme/Tiny-GGUF q8_0'" in str(exc.value)
    assert "--pull" in str(exc.value)

    assert main(["models", "pull", TINY, "q8_0"]) == 0  # the quant, in any case
    capsys.readouterr()
    path = resolve_model(f"hf.co/{TINY}:Q8_0")
    assert path is not None and path.name == "tiny.Q8_0.gguf" and path.is_file()
    assert resolve_model(f"{TINY}:q8_0") == path
    assert resolve_model(TINY) == path  # the only one here
    # another quant of the same repo: not here, and the message says what is
    with pytest.raises(HubRefNotLocal) as exc:
        resolve_model(f"{TINY}:F16")
    assert "'tui-infer models pull acme/Tiny-GGUF F16'" in str(exc.value)
    assert "here: Q8_0 (tiny.Q8_0.gguf)" in str(exc.value)

    # models info takes the reference, and the library names it by its hub reference too
    assert main(["models", "info", f"{TINY}:q8_0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(path) and info["ref"] == f"{TINY}:Q8_0"

    # two quants here: a reference without one lists them
    assert main(["models", "pull", TINY, "F16"]) == 0
    capsys.readouterr()
    with pytest.raises(TuiInferError) as exc2:
        resolve_model(TINY)
    assert "F16 (tiny.F16.gguf), Q8_0 (tiny.Q8_0.gguf)" in str(exc2.value)
    assert f"-m {TINY}:F16" in str(exc2.value)
    assert resolve_model(f"{TINY}:f16").name == "tiny.F16.gguf"  # type: ignore[union-attr]
    # models verify and rm take it too (Q8_0: here the two files are one blob, and the
    # library keeps one entry per file's content)
    assert main(["models", "verify", f"{TINY}:q8_0"]) == 0
    assert main(["models", "rm", f"hf.co/{TINY}:Q8_0", "--yes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok      tiny.Q8_0") and "tiny.Q8_0: removed, deleted" in out


def test_a_quant_the_repo_does_not_have_lists_the_ones_it_has(
    capsys: pytest.CaptureFixture[str],
    server: HubServer,  # noqa: F811
) -> None:
    code = main(["models", "pull", TINY, "Q5_K_M"])
    err = capsys.readouterr().err
    assert code == 2 and "no file or quant 'Q5_K_M'" in err
    assert "F16 (tiny.F16.gguf), Q8_0 (tiny.Q8_0.gguf)" in err


def test_run_pull_downloads_then_answers(
    capsys: pytest.CaptureFixture[str],
    server: HubServer,  # noqa: F811
) -> None:
    """`run --pull -m owner/repo:QUANT`: the real SmolLM2 file from the local hub, into the
    library, then the reply; stdout carries only the reply."""
    code = main(
        ["run", "--pull", "-m", f"{REAL}:q4_1", "--temperature", "0", "--max-tokens", "4", "Hi"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() and "downloaded and verified" in err and "downloaded" not in out
    # the second time it is here: no download, the same file
    assert main(["run", "--pull", "-m", f"{REAL}:Q4_1", "--max-tokens", "2", "Hi"]) == 0
    assert "downloaded" not in capsys.readouterr().err
