"""Running a BatchRunner in one speculative mode and comparing results with another's
(tests of drafting in batch: prompt lookup and a draft model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tui_infer.cli import main
from tui_infer.core.inference.batched import BatchItem, BatchProgress, BatchResult, BatchRunner
from tui_infer.core.inference.types import Message, SamplingParams

LP_TOL = 2e-3  # the same row of logits decoded in a wider batch: float rounding only


def items(prompts: list[str], tag: str = "p", system: str | None = None) -> list[BatchItem]:
    head = (Message("system", system),) if system else ()
    return [BatchItem(f"{tag}{i}", (*head, Message("user", p))) for i, p in enumerate(prompts)]


def run(
    runner: BatchRunner,
    batch: list[BatchItem],
    sampling: SamplingParams,
    mode: str,
    seed: int = 7,
    system: str | None = None,
) -> tuple[dict[str, BatchResult], BatchProgress]:
    """The results by id and the run's progress, drafting in `mode`."""
    progress = BatchProgress()
    got = runner.run(batch, sampling, seed, system, None, progress, speculative=mode)
    return {r.id: r for r in got}, progress


def assert_same(plain: dict[str, BatchResult], drafted: dict[str, BatchResult]) -> None:
    """Each item's text, finish reason, token count and log-probabilities agree."""
    assert plain.keys() == drafted.keys()
    for key, a in plain.items():
        b = drafted[key]
        assert b.text == a.text, key
        assert (b.finish_reason, b.generated_tokens) == (a.finish_reason, a.generated_tokens)
        assert a.mean_logprob is not None and b.mean_logprob is not None
        assert a.min_logprob is not None and b.min_logprob is not None
        assert math.isclose(b.mean_logprob, a.mean_logprob, abs_tol=LP_TOL), key
        assert math.isclose(b.min_logprob, a.min_logprob, abs_tol=LP_TOL), key


def batch_cli(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    *flags: str,
    prompts: list[str],
    max_tokens: int,
    ctx: int,
) -> tuple[int, list[dict[str, Any]], str, str]:
    """`tui-infer batch` on `prompts` in a data dir of its own (the store would otherwise
    answer the second run from the first one's predictions): the exit code, the output
    file's rows, stdout and stderr."""
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"c{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    monkeypatch.setenv("TUI_INFER_DATA_DIR", str(tmp_path / f"data-{name}"))
    out = tmp_path / f"{name}.jsonl"
    argv = ["batch", str(src), "-o", str(out), "--max-tokens", str(max_tokens)]
    code = main([*argv, "--ctx", str(ctx), *flags])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, rows, captured.out, captured.err
