"""The figures line when the prompt's start comes from the KV cache: it counts and times
only the tokens evaluated, and says how many were cached (it used to say 'prompt 206 tok ·
9 tok/s', the whole prompt over the time of its last few tokens)."""

from __future__ import annotations

from typing import Any

from tui_infer.core.chat.history import ReplyFigures, figures_line, prompt_figures
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.types import Message, SamplingParams


def _reply(engine: Any, messages: list[Message]) -> Any:
    stream = engine.chat(messages, SamplingParams(temperature=0, max_tokens=3))

    def drain() -> Any:
        for _ in stream:
            pass
        return stream.stats

    return on_llama_thread(drain)


def test_a_second_turn_counts_only_what_was_evaluated(engine: Any) -> None:
    engine.reset()
    first = [Message("system", "You answer briefly. " * 20), Message("user", "Hi")]
    stats = _reply(engine, first)
    line = figures_line(ReplyFigures.from_stats(stats))
    assert f"prompt {stats.prompt_tokens} tok · " in line and "cached" not in line

    second = [*first, Message("assistant", "Hello"), Message("user", "And then?")]
    stats = _reply(engine, second)
    evaluated, cached = (
        stats.prompt_tokens_evaluated,
        stats.prompt_tokens - stats.prompt_tokens_evaluated,
    )
    assert 0 < evaluated < cached  # the system prompt and first turn were in the cache
    figures = ReplyFigures.from_stats(stats)
    line = figures_line(figures)
    assert f"prompt {evaluated} tok · {stats.prompt_tps:.0f} tok/s ({cached} cached)" in line
    assert f"prompt {stats.prompt_tokens} tok" not in line
    # kept with the reply and shown the same when the chat is reopened
    again = ReplyFigures.from_dict(dict(figures.__dict__))
    assert figures_line(again) == line


def test_replies_saved_before_the_count_was_kept_show_the_whole_prompt() -> None:
    old = {
        "ttft_s": 0.1, "prompt_tokens": 50, "prompt_tps": 500.0, "generated_tokens": 3,
        "generation_tps": 30.0, "total_s": 0.2, "finish_reason": "stop",
    }  # fmt: skip
    assert ReplyFigures.from_dict(old).prompt_tokens_evaluated is None
    assert "prompt 50 tok · 500 tok/s · " in figures_line(ReplyFigures.from_dict(old))
    assert prompt_figures(50, 0, 0.0) == "prompt 0 tok · - (50 cached)"
