"""Speculative decoding with a draft model in the batch runner (batched.py's "draft" mode,
`tui-infer batch --draft MODEL`): each sequence drafts with the draft model (one draft
sequence per slot, draft.py's ModelDrafter) and is verified in the same llama_decode as
the other sequences; greedy outputs, finish reasons, token counts and the mean/min
log-probabilities are those without drafts, seeded samples repeat, and the command says
what drafting did. The default model is its own draft (there is no smaller model of its
vocabulary here): nearly every drafted token is accepted. Prompts and replies stay below
KV cell 256 (speculative.py's docstring: past it a near-tie may part a long reply)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.batch_runs import assert_same, items, run
from tests.support.batch_runs import batch_cli as support_batch_cli
from tui_infer.core.inference.batched import (
    BatchError,
    BatchItem,
    BatchRunner,
)
from tui_infer.core.inference.draft import DraftModelError
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams

PROMPTS = [
    "Copy this list exactly: apples, pears, plums, apples, pears, plums",
    "Write a short poem about the sea.",
    "List the numbers from 1 to 12 separated by commas.",
    "Explain what a hash table is to a beginner.",
    "Give three tips for writing clear emails.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=40)


@pytest.fixture(scope="module", params=[1, 3], ids=["parallel1", "parallel3"])
def runner(request: pytest.FixtureRequest, model_path: Path) -> Iterator[BatchRunner]:
    """The default model with itself as the draft model, `parallel` sequences (fewer than
    the prompts at 3, so slots and their draft sequences take a second prompt)."""
    parallel = request.param
    with BatchRunner.load(
        model_path, LoadOptions(ctx=512 * parallel, threads=2), parallel=parallel, draft=model_path
    ) as r:
        assert r.draft is not None and r.draft_note is None  # not larger than itself
        yield r


def test_greedy_outputs_and_logprobs_are_those_without_drafts(runner: BatchRunner) -> None:
    batch = items(PROMPTS)
    plain, _ = run(runner, batch, GREEDY, "off")
    drafted, progress = run(runner, batch, GREEDY, "draft")
    assert_same(plain, drafted)
    # every item drafted (40 tokens each), and the model as its own draft is nearly always right
    assert all(r.drafted > 0 for r in drafted.values())
    assert progress.accepted >= 0.9 * progress.drafted
    stats = progress.speculative_stats()
    assert (stats.mode, stats.reason) == ("draft", None)
    assert stats.drafted == sum(r.drafted for r in drafted.values())
    assert stats.accepted == sum(r.accepted for r in drafted.values())
    # a second run on the same runner: the draft's sequences hold the first run's tokens
    again, _ = run(runner, batch, GREEDY, "draft")
    assert_same(plain, again)


def test_with_a_shared_system_prefix(runner: BatchRunner) -> None:
    """The prefix is kept in each slot between prompts (evaluated once): the draft's
    sequence starts where the model's did."""
    system = "You are a helpful assistant. Answer briefly."
    batch = items(PROMPTS, "s", system)
    plain, _ = run(runner, batch, GREEDY, "off", system=system)
    drafted, progress = run(runner, batch, GREEDY, "draft", system=system)
    assert_same(plain, drafted)
    assert all(r.prompt_tokens_evaluated < r.prompt_tokens for r in drafted.values())
    assert progress.drafted > 0 and progress.accepted >= 0.9 * progress.drafted


def test_seeded_samples_repeat_and_are_those_without_drafts(runner: BatchRunner) -> None:
    """The scheduler's rule: one draw from the model's own chain per emitted token,
    accepted while it equals the draft, so a seed gives the same sample with or without
    drafts (a sampled token often differs from the greedy draft: the rejection path)."""
    sampled = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, max_tokens=32)
    batch = items(PROMPTS[:4])
    batch.append(BatchItem("own", (Message("user", PROMPTS[4]),), None, replace(sampled, seed=5)))
    first, progress = run(runner, batch, sampled, "draft")
    second, _ = run(runner, batch, sampled, "draft")
    assert_same(first, second)
    plain, _ = run(runner, batch, sampled, "off")
    assert_same(plain, first)
    assert progress.drafted > 0
    assert progress.accepted < progress.drafted  # some drafts were rejected
    # the seed matters: another run seed gives other text somewhere, not to the item's own
    other, _ = run(runner, batch, sampled, "draft", seed=8)
    assert any(other[k].text != first[k].text for k in first if k != "own")
    assert other["own"].text == first["own"].text


def test_max_tokens_stop_strings_and_a_grammar(runner: BatchRunner) -> None:
    from tui_infer.core.inference.grammar import with_schema

    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    constrained = with_schema(replace(GREEDY, max_tokens=24), schema, "test")
    batch = [
        BatchItem("short", (Message("user", PROMPTS[0]),), max_tokens=7),
        BatchItem(
            "stop", (Message("user", PROMPTS[0]),), sampling=replace(GREEDY, stop=("plums",))
        ),
        BatchItem("g", (Message("user", "Give a name as JSON."),), sampling=constrained),
    ]
    plain, _ = run(runner, batch, GREEDY, "off")
    drafted, progress = run(runner, batch, GREEDY, "draft")
    assert_same(plain, drafted)
    assert drafted["short"].generated_tokens == 7 and drafted["short"].finish_reason == "length"
    assert drafted["stop"].finish_reason == "stop" and "plums" not in drafted["stop"].text
    assert drafted["short"].drafted > 0
    assert drafted["g"].drafted == 0  # a grammar's item does not draft
    assert progress.grammar_items == 1


def test_other_modes_still_run_beside_a_loaded_draft(runner: BatchRunner) -> None:
    plain, _ = run(runner, items(PROMPTS[:2]), GREEDY, "off")
    ngram, progress = run(runner, items(PROMPTS[:2]), GREEDY, "ngram")
    assert_same(plain, ngram)
    assert progress.speculative_stats().mode == "ngram"


def test_a_draft_of_another_vocabulary_is_one_line(model_path: Path, gemma_path: Path) -> None:
    with pytest.raises(DraftModelError) as exc:
        BatchRunner.load(model_path, LoadOptions(ctx=512, threads=2), parallel=2, draft=gemma_path)
    msg = str(exc.value)
    assert gemma_path.name in msg and model_path.name in msg
    assert "--speculative ngram" in msg and "\n" not in msg


def test_close_frees_the_draft(model_path: Path) -> None:
    r = BatchRunner.load(model_path, LoadOptions(ctx=256, threads=2), parallel=1, draft=model_path)
    dm = r.draft
    assert dm is not None
    r.close()
    assert dm._closed
    r.close()  # twice is harmless
    with pytest.raises(BatchError, match="unloaded"):
        list(r.run(items(PROMPTS[:1]), GREEDY, speculative="draft"))


# ----- the command ---------------------------------------------------------------------------


batch_cli = functools.partial(support_batch_cli, prompts=PROMPTS, max_tokens=32, ctx=1024)


SAME = ("id", "output", "key", "params_hash", "finish_reason", "generated_tokens")


def test_batch_draft_keeps_outputs_and_keys_and_reports_drafting(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, plain, _, err = batch_cli(
        tmp_path, monkeypatch, capsys, "off", "--parallel", "2", "--speculative", "off"
    )
    assert code == 0, err
    # --draft alone: --speculative defaults to draft
    code, drafted, out, err = batch_cli(
        tmp_path, monkeypatch, capsys, "draft", "--parallel", "2", "--draft", str(model_path),
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "warning" not in err and "note" not in err
    spec = json.loads(out)["speculative"]
    assert spec["mode"] == "draft" and spec["drafted"] > 0 and spec["accepted"] > 0
    assert set(spec) >= {"mode", "drafted", "accepted", "acceptance_rate", "speedup"}
    assert spec["acceptance_rate"] == round(spec["accepted"] / spec["drafted"], 4)
    assert [{k: r[k] for k in SAME} for r in drafted] == [{k: r[k] for k in SAME} for r in plain]
    # the text summary says it too
    code, _, out, err = batch_cli(
        tmp_path, monkeypatch, capsys, "text", "--speculative", "draft", "--draft", str(model_path)
    )
    assert code == 0, err
    assert "speculative draft " in out and " accepted" in out


def test_batch_takes_the_draft_settings(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TUI_INFER_SPECULATIVE", "draft")
    monkeypatch.setenv("TUI_INFER_DRAFT_MODEL", str(model_path))
    code, _, out, err = batch_cli(tmp_path, monkeypatch, capsys, "env", "--json")
    assert code == 0, err
    assert "note" not in err
    spec = json.loads(out)["speculative"]
    assert spec["mode"] == "draft" and spec["drafted"] > 0
    # the draft_model setting alone: batch's auto drafts by prompt lookup
    monkeypatch.setenv("TUI_INFER_SPECULATIVE", "auto")
    code, _, out, err = batch_cli(tmp_path, monkeypatch, capsys, "env2", "--json")
    assert code == 0, err
    assert json.loads(out)["speculative"]["mode"] == "ngram"


def test_draft_errors_and_notes_are_one_line(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, rows, _, err = batch_cli(tmp_path, monkeypatch, capsys, "nod", "--speculative", "draft")
    assert code == 2 and not rows
    assert len(err.strip().splitlines()) == 1
    assert "--draft MODEL" in err and "--speculative ngram" in err
    # Ray's actors decode without drafts
    code, rows, _, err = batch_cli(
        tmp_path, monkeypatch, capsys, "ray", "--draft", str(model_path), "--ray"
    )
    assert code == 2 and not rows
    assert len(err.strip().splitlines()) == 1 and "--ray" in err and "drop --draft" in err
    missing = tmp_path / "nope.gguf"
    code, rows, _, err = batch_cli(tmp_path, monkeypatch, capsys, "miss", "--draft", str(missing))
    assert code != 0 and not rows
    assert len(err.strip().splitlines()) == 1 and "nope.gguf" in err
    # --draft beside another mode is unused, and said so
    code, rows, out, err = batch_cli(
        tmp_path, monkeypatch, capsys, "ngram", "--draft", str(model_path),
        "--speculative", "ngram", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "--draft is unused with --speculative ngram" in err
    assert json.loads(out)["speculative"]["mode"] == "ngram"
