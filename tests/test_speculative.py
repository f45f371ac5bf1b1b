"""Speculative decoding (inference/speculative.py, the scheduler's drafting): greedy replies
are byte-identical with and without drafts, the acceptance rule keeps the target
distribution, and `run` shows what drafting did."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.speculative import (
    MEMORY_MAX_HOLD,
    NgramDrafter,
    SpecController,
    SpecMemory,
    accept_draft,
    accept_point_draft,
)
from tui_infer.core.inference.types import Message, SamplingParams

CODE = """def area(width, height):
    return width * height

def perimeter(width, height):
    return 2 * (width + heigth)
"""
PROMPTS = [
    "Repeat the following code exactly, fixing the typo:\n\n" + CODE,
    "Copy this list exactly: apples, pears, plums, apples, pears, plums, apples, pears",
    "List the numbers from 1 to 20 separated by commas.",
    "Write a short poem about the sea.",
    "Repeat after me: the quick brown fox jumps over the lazy dog. "
    "The quick brown fox jumps over the lazy dog.",
]


def tv(p: list[float], counts: Counter[int], n: int) -> float:
    return 0.5 * sum(abs(p[i] - counts[i] / n) for i in range(len(p)))


# ----- the rule, on a small synthetic distribution -------------------------------------------

P = [0.05, 0.4, 0.25, 0.2, 0.1]


@pytest.mark.parametrize("x", [0, 1, 4])
def test_point_draft_rule_keeps_the_target_distribution(x: int) -> None:
    rng = random.Random(1234)
    n = 40_000
    counts: Counter[int] = Counter()
    accepted = 0
    for _ in range(n):
        ok, tok = accept_point_draft(P, x, rng)
        counts[tok] += 1
        accepted += ok
        assert ok == (tok == x)
    assert tv(P, counts, n) < 0.01
    assert abs(accepted / n - P[x]) < 0.01  # accepted with probability p(x)


def test_general_rule_keeps_the_target_distribution() -> None:
    rng = random.Random(99)
    q = [0.3, 0.1, 0.1, 0.4, 0.1]
    n = 40_000
    counts: Counter[int] = Counter()
    for _ in range(n):
        x = rng.choices(range(len(q)), weights=q)[0]
        _, tok = accept_draft(P, q, x, rng)
        counts[tok] += 1
    assert tv(P, counts, n) < 0.01
    # a wrong rule (always accept the draft) gives q, which the check tells apart
    assert 0.5 * sum(abs(a - b) for a, b in zip(P, q, strict=True)) > 0.1


# ----- the drafter and the controller --------------------------------------------------------


def test_ngram_drafter_proposes_what_followed_the_last_tokens() -> None:
    d = NgramDrafter([1, 2, 3, 4, 5, 6, 1, 2, 3])
    assert d.propose(3) == [4, 5, 6]
    d.extend([4, 9])
    assert d.propose(4) == []  # (4, 9) and 9 never came before
    d.extend([1, 2])
    assert d.propose(2) == [3, 4]  # (9, 1, 2) never came before; (1, 2) was followed by 3, 4


def test_auto_backs_off_when_drafting_is_slower() -> None:
    c = SpecController("ngram", auto=True)
    plain = 0
    for step in range(2000):
        if step == 40:
            assert plain > 16  # a first back-off came within a few drafting steps
        k = c.want()
        if k:
            c.record_draft(k, 0, 0.03)  # nothing accepted, 3x a plain step
        else:
            c.record_plain(0.01)
            plain += 1
    assert c.off_reason == "auto: no speed-up"
    assert c.want() == 0
    assert c.speedup is not None and c.speedup < 1


# ----- the scheduler: greedy replies are the same bytes ------------------------------------


@pytest.fixture
def modes(engine: Engine) -> Iterator[Engine]:
    yield engine
    engine.scheduler.speculative = "auto"


def reply(engine: Engine, mode: str, prompt: str, sampling: SamplingParams) -> tuple[str, object]:
    engine.scheduler.speculative = mode
    engine.reset()
    stream = engine.chat([Message("user", prompt)], sampling)
    text = on_llama_thread(stream.text)
    assert stream.stats is not None
    return text, stream.stats


def test_greedy_is_byte_identical_with_drafts(modes: Engine) -> None:
    drafted = accepted = 0
    for prompt in PROMPTS:
        sampling = SamplingParams(temperature=0, max_tokens=80)
        want, base = reply(modes, "off", prompt, sampling)
        got, stats = reply(modes, "ngram", prompt, sampling)
        assert got == want, prompt
        assert stats.generated_tokens == base.generated_tokens  # type: ignore[attr-defined]
        assert stats.finish_reason == base.finish_reason  # type: ignore[attr-defined]
        spec = stats.speculative  # type: ignore[attr-defined]
        assert spec.mode == "ngram"
        drafted += spec.drafted
        accepted += spec.accepted
    assert accepted > 0  # the copying prompts had drafts accepted


def test_max_tokens_and_stop_strings_inside_an_accepted_draft(modes: Engine) -> None:
    prompt = PROMPTS[0]
    full, _ = reply(modes, "off", prompt, SamplingParams(temperature=0, max_tokens=80))
    for n in (7, 13, 21):
        sampling = SamplingParams(temperature=0, max_tokens=n)
        want, base = reply(modes, "off", prompt, sampling)
        got, stats = reply(modes, "ngram", prompt, sampling)
        assert got == want and stats.generated_tokens == n  # type: ignore[attr-defined]
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    assert stop.strip()
    sampling = SamplingParams(temperature=0, max_tokens=80, stop=(stop,), logprobs=2)
    want, _ = reply(modes, "off", prompt, sampling)
    got, stats = reply(modes, "ngram", prompt, sampling)
    assert got == want and stop not in got
    assert stats.finish_reason == "stop"  # type: ignore[attr-defined]


def test_seeded_sampling_is_the_same_text_with_drafts(modes: Engine) -> None:
    """One draw per emitted token from the request's own chain: the same seed, the same text."""
    sampling = SamplingParams(temperature=0.8, seed=7, max_tokens=60)
    want, _ = reply(modes, "off", PROMPTS[1], sampling)
    got, _ = reply(modes, "ngram", PROMPTS[1], sampling)
    assert got == want


def test_a_grammar_does_not_draft(modes: Engine) -> None:
    sampling = SamplingParams(temperature=0, max_tokens=20, grammar='root ::= "yes" | "no"')
    _, stats = reply(modes, "ngram", "Yes or no?", sampling)
    spec = stats.speculative  # type: ignore[attr-defined]
    assert spec.mode == "off" and spec.reason == "grammar"


# ----- the command line -----------------------------------------------------------------------


def test_run_json_has_the_speculative_object(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["run", "--json", "--serve", "live", "--temperature", "0", "--max-tokens", "30",
         "--speculative", "ngram", PROMPTS[4]]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    spec = json.loads(out)["speculative"]
    assert spec["mode"] == "ngram"
    assert set(spec) >= {"mode", "drafted", "accepted", "acceptance_rate", "speedup"}
    assert 0 <= spec["accepted"] <= spec["drafted"]


def test_a_bad_speculative_value_is_exit_2(
    model_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--speculative", "bogus", "Hi"])
    assert exc.value.code == 2
    assert "--speculative" in capsys.readouterr().err
    monkeypatch.setenv("TUI_INFER_SPECULATIVE", "bogus")
    assert main(["run", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "'speculative' must be one of auto, ngram, draft, off" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.anyio
async def test_the_stats_panel_shows_drafts() -> None:
    from textual.app import App, ComposeResult
    from textual.widgets import Static

    from tui_infer.app.widgets.stats import StatsPanel
    from tui_infer.core.inference.speculative import SpeculativeStats
    from tui_infer.core.inference.types import GenerationStats, KvCacheUsage

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield StatsPanel(id="stats")

    kv = KvCacheUsage(tokens=10, n_ctx=1024, cache_type="f16", bytes_per_token=1,
                      allocated_bytes=1024, reported_bytes=None)  # fmt: skip
    spec = SpeculativeStats("ngram", drafted=40, accepted=30, speedup=1.5)
    stats = GenerationStats(5, 5, 0.1, 50, 1.0, 0.1, 1.2, "stop", kv, speculative=spec)
    async with Host().run_test() as pilot:
        panel = pilot.app.query_one(StatsPanel)
        panel.reply_finished(stats)
        await pilot.pause()
        text = str(pilot.app.query_one("#reply-figures", Static).render())
        assert "drafts     30/40 accepted · x1.50" in text
        panel.reply_finished(replace(stats, speculative=SpeculativeStats("off", reason="grammar")))
        await pilot.pause()
        assert "drafts" not in str(pilot.app.query_one("#reply-figures", Static).render())


def test_auto_remembers_across_requests_that_drafting_did_not_pay() -> None:
    memory = SpecMemory()
    first = SpecController("ngram", True, memory)
    for _ in range(40):
        k = first.want()
        if k:
            first.record_draft(k, 0, 0.03)  # nothing accepted, 3x a plain step
        else:
            first.record_plain(0.01)
    assert memory.hold >= 16
    # the next request starts with that many plain steps, then tries again
    second = SpecController("ngram", True, memory)
    held = 0
    while second.want() == 0:
        second.record_plain(0.01)
        held += 1
    assert held == memory.hold
    # a trial where drafting pays (everything accepted, 1.5x a plain step for 5 tokens)
    for _ in range(8):
        k = second.want()
        if k:
            second.record_draft(k, k, 0.015)
        else:
            second.record_plain(0.01)
    assert memory.hold == 0
    assert SpecController("ngram", True, memory).want() > 0  # the next one drafts at once
    # the hold never exceeds its cap, and ngram mode (not auto) ignores the memory
    for _ in range(20):
        memory.backed_off()
    assert memory.hold == MEMORY_MAX_HOLD
    assert SpecController("ngram", False, memory).want() > 0


def test_a_batch_gives_the_same_logits_as_lone_tokens_below_cell_256(model_path: Path) -> None:
    """What greedy exactness rests on (speculative.py's docstring): a draft verified in one
    batch sees bit-identical logits to decoding its tokens one at a time, while the cache is
    under 256 cells (flash attention on, as the engine runs). A llama.cpp update that breaks
    it fails here before it shows as a reply that parts."""
    import llama_cpp as L
    import numpy as np

    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(model_path).encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 512, 512, 512
    cp.n_threads = cp.n_threads_batch = 2
    cp.flash_attn_type = 1  # enabled
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(512, 0, 1)
    try:
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        tokens = [(t * 7919) % 20000 + 100 for t in range(240)]
        head = 40

        def run(k: int) -> list[np.ndarray]:
            def go() -> list[np.ndarray]:
                L.llama_memory_clear(L.llama_get_memory(ctx), True)
                rows: list[np.ndarray] = []
                at = 0
                while at < len(tokens):
                    n = head if at == 0 else min(k, len(tokens) - at)
                    batch.n_tokens = n
                    for j in range(n):
                        batch.token[j] = tokens[at + j]
                        batch.pos[j] = at + j
                        batch.n_seq_id[j] = 1
                        batch.seq_id[j][0] = 0
                        batch.logits[j] = 1
                    assert L.llama_decode(ctx, batch) == 0
                    if at:
                        for j in range(n):
                            row = L.llama_get_logits_ith(ctx, j)
                            rows.append(np.ctypeslib.as_array(row, shape=(n_vocab,)).copy())
                    at += n
                return rows

            return on_llama_thread(go)

        lone = run(1)
        for k in (2, 5, 17):
            assert all(np.array_equal(a, b) for a, b in zip(lone, run(k), strict=True)), k
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
