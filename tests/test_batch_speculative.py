"""Speculative decoding in the batch runner (batched.py, `tui-infer batch --speculative`):
each sequence drafts by prompt lookup, verified in the same llama_decode as the others'
tokens; outputs, seeded samples and the log-probability stats are those of decoding
without drafts, and the run's summary carries what drafting did."""

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
    AUTO_MAX_WIDTH,
    AUTO_MIN_ACCEPT,
    AUTO_POOL,
    AUTO_PROBE,
    BatchItem,
    BatchProgress,
    BatchRunner,
)
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams

CODE = """def area(width, height):
    return width * height

def perimeter(width, height):
    return 2 * (width + heigth)
"""
TEXT = (
    "The meeting is moved to Thursday at 3 pm in room 4B. Please bring the quarterly "
    "report, the budget spreadsheet and your laptop. Lunch will be served after the meeting."
)
COPYING = [  # rewriting and extraction: the answer repeats the input, drafts are accepted
    "Repeat the following code exactly, fixing the typo:\n\n" + CODE,
    "Rewrite the following text, replacing Thursday with Friday and changing nothing "
    "else:\n\n" + TEXT,
    "Extract every sentence of this text that mentions the meeting, as written:\n\n" + TEXT,
    "Copy this list exactly: apples, pears, plums, apples, pears, plums, apples, pears",
    "Repeat this JSON exactly:\n"
    '{"name": "Ada", "age": 36, "city": "London", "languages": ["English", "French"]}',
]
FREE = [
    "Write a short poem about the sea.",
    "Explain how a bicycle works.",
    "Give me three tips for learning to cook.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=64)


@pytest.fixture(scope="module", params=[1, 4], ids=["parallel1", "parallel4"])
def runner(request: pytest.FixtureRequest, model_path: Path) -> Iterator[BatchRunner]:
    parallel = request.param
    with BatchRunner.load(
        model_path, LoadOptions(ctx=1024 * parallel, threads=2), parallel=parallel
    ) as r:
        yield r


def test_greedy_outputs_and_logprobs_are_the_same_with_drafts(runner: BatchRunner) -> None:
    batch = items(COPYING) + items(FREE, "f")
    plain, off = run(runner, batch, GREEDY, "off")
    assert off.drafted == 0 and off.speculative_stats().mode == "off"
    assert all(r.drafted == 0 for r in plain.values())
    for mode in ("ngram", "auto"):
        drafted, progress = run(runner, batch, GREEDY, mode)
        assert_same(plain, drafted)
        assert progress.accepted <= progress.drafted
    # ngram drafts at any width, and on the copying prompts its drafts are taken
    drafted, progress = run(runner, items(COPYING), GREEDY, "ngram")
    assert all(drafted[f"p{i}"].drafted > 0 for i in range(len(COPYING)))
    assert all(drafted[f"p{i}"].accepted > 0 for i in range(len(COPYING)))
    stats = progress.speculative_stats()
    assert stats.mode == "ngram" and stats.accepted > 0
    assert stats.accepted == sum(r.accepted for r in drafted.values())


def test_auto_drafts_only_in_a_narrow_batch_and_while_drafts_are_taken(
    runner: BatchRunner,
) -> None:
    # as many items as auto drafts beside: narrow, whatever --parallel
    batch = items(COPYING[:AUTO_MAX_WIDTH])
    auto, progress = run(runner, batch, GREEDY, "auto")
    ngram, _ = run(runner, batch, GREEDY, "ngram")
    assert progress.drafted > 0 and progress.accepted > 0
    # auto is the more careful: smaller first drafts, and it stops a sequence's drafting
    # once they are taken at less than AUTO_MIN_ACCEPT
    assert progress.drafted <= sum(r.drafted for r in ngram.values())
    for r in auto.values():
        if r.drafted >= AUTO_PROBE and r.accepted < AUTO_MIN_ACCEPT * r.drafted:
            assert progress.auto_off_items > 0
    # `parallel` copies of a prompt run side by side and end together; one more copy then
    # runs alone: in a wide batch only that one drafts
    n = runner.parallel
    got, _ = run(runner, items([COPYING[0]] * (n + 1)), GREEDY, "auto")
    assert len({r.text for r in got.values()}) == 1
    if n > AUTO_MAX_WIDTH:
        assert [got[f"p{i}"].drafted for i in range(n)] == [0] * n
        assert got[f"p{n}"].drafted > 0
    else:
        assert got["p0"].drafted > 0


def test_auto_stops_drafting_where_drafts_are_not_taken(runner: BatchRunner) -> None:
    """Free text, one sequence at a time: after the run's first drafts are mostly
    rejected, new sequences start without drafts (but for a trial now and then)."""
    free = items(FREE * 4)
    if runner.parallel > 1:
        pytest.skip("one run at --parallel 1 shows it")
    auto, progress = run(runner, free, GREEDY, "auto")
    ngram, _ = run(runner, free, GREEDY, "ngram")
    assert {k: r.text for k, r in auto.items()} == {k: r.text for k, r in ngram.items()}
    pooled = sum(r.drafted for r in ngram.values())
    assert pooled >= AUTO_POOL  # ngram drafts throughout
    assert sum(r.accepted for r in ngram.values()) < AUTO_MIN_ACCEPT * pooled
    assert progress.drafted < pooled / 2
    # the last third started after the run's first drafts were judged: without drafts
    late = [auto[f"p{i}"] for i in range(8, 12)]
    assert sum(r.drafted > 0 for r in late) <= 1
    assert progress.speculative_stats().reason is None  # the early ones drafted a while


def test_seeded_samples_are_the_same_text_with_drafts(runner: BatchRunner) -> None:
    sampled = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, max_tokens=48)
    batch = items(COPYING[:3]) + items(FREE[:2], "f")
    # one item with its own seed (its prediction is that seed's sample)
    batch.append(BatchItem("own", (Message("user", COPYING[3]),), None, replace(sampled, seed=5)))
    plain, _ = run(runner, batch, sampled, "off")
    drafted, progress = run(runner, batch, sampled, "ngram")
    assert_same(plain, drafted)
    assert progress.drafted > 0
    # and the seed matters: another run seed gives other text somewhere
    other = {
        r.id: r.text
        for r in runner.run(batch, sampled, 8, None, None, BatchProgress(), speculative="ngram")
    }
    assert any(other[k] != plain[k].text for k in plain if k != "own")
    assert other["own"] == plain["own"].text


def test_max_tokens_and_stop_strings_inside_a_draft(runner: BatchRunner) -> None:
    stop = replace(GREEDY, stop=("height",))
    batch = [
        BatchItem("short", (Message("user", COPYING[0]),), max_tokens=7),
        BatchItem("stop", (Message("user", COPYING[0]),), sampling=stop),
        BatchItem("list", (Message("user", COPYING[3]),), max_tokens=11),
    ]
    plain, _ = run(runner, batch, GREEDY, "off")
    drafted, progress = run(runner, batch, GREEDY, "ngram")
    assert_same(plain, drafted)
    assert drafted["short"].generated_tokens == 7 and drafted["short"].finish_reason == "length"
    assert drafted["stop"].finish_reason == "stop" and "height" not in drafted["stop"].text
    assert progress.drafted > 0


def test_a_grammar_item_does_not_draft(runner: BatchRunner) -> None:
    from tui_infer.core.inference.grammar import with_schema

    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    constrained = with_schema(replace(GREEDY, max_tokens=24), schema, "test")
    batch = [BatchItem("g", (Message("user", "Give a name as JSON."),), sampling=constrained)]
    plain, _ = run(runner, batch, GREEDY, "off")
    drafted, progress = run(runner, batch, GREEDY, "ngram")
    assert drafted["g"].text == plain["g"].text and drafted["g"].drafted == 0
    stats = progress.speculative_stats()
    assert (stats.mode, stats.reason) == ("off", "grammar")


def test_a_bad_mode_for_the_runner(runner: BatchRunner) -> None:
    from tui_infer.core.inference.batched import BatchError

    with pytest.raises(BatchError, match="speculative must be one of auto, ngram, draft, off"):
        list(runner.run(items(FREE[:1]), GREEDY, speculative="fast"))
    # draft needs a draft model loaded (tests/test_batch_draft.py)
    with pytest.raises(BatchError, match="needs a draft model"):
        list(runner.run(items(FREE[:1]), GREEDY, speculative="draft"))


# ----- the command ---------------------------------------------------------------------------


batch_cli = functools.partial(support_batch_cli, prompts=COPYING, max_tokens=40, ctx=2048)


def test_batch_cli_drafts_and_keeps_outputs_and_keys(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, plain, out, err = batch_cli(
        tmp_path, monkeypatch, capsys, "off", "--parallel", "2", "--speculative", "off", "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["speculative"]["mode"] == "off" and summary["speculative"]["drafted"] == 0
    code, drafted, out, err = batch_cli(
        tmp_path, monkeypatch, capsys, "ngram", "--parallel", "2", "--speculative", "ngram",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    spec = json.loads(out)["speculative"]
    assert spec["mode"] == "ngram" and spec["drafted"] > 0 and spec["accepted"] > 0
    assert set(spec) >= {"mode", "drafted", "accepted", "acceptance_rate", "speedup"}
    assert spec["acceptance_rate"] == round(spec["accepted"] / spec["drafted"], 4)
    same = ("id", "output", "key", "params_hash", "finish_reason", "generated_tokens")
    assert [{k: r[k] for k in same} for r in drafted] == [{k: r[k] for k in same} for r in plain]
    # the text summary says it too
    code, _, out, err = batch_cli(tmp_path, monkeypatch, capsys, "text", "--speculative", "ngram")
    assert code == 0, err
    assert "speculative ngram " in out and " accepted" in out


def test_batch_takes_the_speculative_setting(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TUI_INFER_SPECULATIVE", "off")
    code, _, out, err = batch_cli(tmp_path, monkeypatch, capsys, "env", "--json")
    assert code == 0, err
    assert json.loads(out)["speculative"] == {
        "mode": "off", "drafted": 0, "accepted": 0, "acceptance_rate": 0.0, "speedup": None,
        "reason": "setting",
    }  # fmt: skip
    monkeypatch.setenv("TUI_INFER_SPECULATIVE", "ngram")
    code, _, out, err = batch_cli(tmp_path, monkeypatch, capsys, "env2", "--json")
    assert code == 0, err
    assert json.loads(out)["speculative"]["drafted"] > 0
    # the flag wins over the setting
    code, _, out, err = batch_cli(
        tmp_path, monkeypatch, capsys, "env3", "--json", "--speculative", "off"
    )
    assert code == 0, err
    assert json.loads(out)["speculative"]["mode"] == "off"


def test_a_bad_value_is_one_line_exit_2(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # (--speculative draft without a draft model: tests/test_batch_draft.py)
    code, rows, _, err = batch_cli(tmp_path, monkeypatch, capsys, "bad", "--speculative", "fast")
    assert code == 2 and not rows
    assert len(err.strip().splitlines()) == 1
    assert "--speculative must be one of auto, ngram, draft, off, got 'fast'" in err
