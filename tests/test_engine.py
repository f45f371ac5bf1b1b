"""The engine on the real model: streaming, figures, determinism, cancellation, KV."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tui_infer.core.errors import ContextOverflowError, ModelFileError
from tui_infer.core.inference.backend import probe_system_info
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.template import ChatTemplate, TemplateError
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams, kv_bytes_per_token

GREEDY = SamplingParams(temperature=0, max_tokens=40)
Q = [Message("user", "What is the capital of France?")]


def test_streams_and_measures(engine: Engine) -> None:
    engine.reset()
    t0 = time.perf_counter()
    stream = engine.chat(Q, GREEDY)
    chunks = list(stream)
    wall = time.perf_counter() - t0
    s = stream.stats
    assert s is not None
    text = "".join(c.text for c in chunks)
    assert "Paris" in text
    # one chunk per generated token (a final flush of partial UTF-8 may add one)
    assert s.generated_tokens == chunks[-1].n_generated
    assert s.generated_tokens in (len(chunks), len(chunks) - 1)
    assert [c.n_generated for c in chunks[: s.generated_tokens]] == list(
        range(1, s.generated_tokens + 1)
    )
    assert s.prompt_tokens == engine.count_tokens(Q) == s.prompt_tokens_evaluated
    assert 0 < s.ttft_s <= s.total_s <= wall
    assert s.prompt_tps > 0 and s.generation_tps > 0
    # the prompt's figures are known from the first token on (the panel shows them live)
    assert chunks[0].prompt_s == pytest.approx(s.prompt_s)
    assert chunks[0].prompt_tps == pytest.approx(s.prompt_tps)
    # tokens/s agrees with the time it claims
    assert s.generation_tps * s.generation_s == pytest.approx(s.generated_tokens - 1, rel=1e-6)
    assert s.generation_s < s.total_s
    assert s.finish_reason in ("stop", "length")


def test_greedy_is_deterministic(engine: Engine) -> None:
    engine.reset()
    first = engine.chat(Q, GREEDY).text()
    again = engine.chat(Q, GREEDY).text()  # reuses the cached prompt prefix
    engine.reset()
    fresh = engine.chat(Q, GREEDY).text()
    assert first == again == fresh and first


def test_prefix_is_reused(engine: Engine) -> None:
    engine.reset()
    s1 = engine.chat(Q, GREEDY)
    reply = s1.text()
    follow = Q + [Message("assistant", reply), Message("user", "And of Italy?")]
    s2 = engine.chat(follow, GREEDY)
    s2.text()
    assert s2.stats.prompt_tokens > s1.stats.prompt_tokens
    # only the new part of the conversation is evaluated
    assert s2.stats.prompt_tokens_evaluated < s2.stats.prompt_tokens // 2


def test_max_tokens_gives_length(engine: Engine) -> None:
    stream = engine.chat(
        [Message("user", "Count from 1 to 100.")], SamplingParams(temperature=0, max_tokens=5)
    )
    stream.text()
    assert stream.stats.generated_tokens == 5
    assert stream.stats.finish_reason == "length"


def test_cancel_stops_within_one_token(engine: Engine) -> None:
    cancel = threading.Event()
    stream = engine.chat(
        [Message("user", "Write a long story about a dragon.")],
        SamplingParams(temperature=0.8, seed=1, max_tokens=400),
        cancel,
    )
    seen = 0
    for chunk in stream:
        seen = chunk.n_generated
        if seen == 5:
            cancel.set()
    assert stream.stats.finish_reason == "cancelled"
    assert stream.stats.generated_tokens == 5
    assert seen == 5


def test_cancel_during_a_long_prompt(engine: Engine) -> None:
    engine.reset()
    long = [Message("user", "word " * 900)]
    cancel = threading.Event()
    stream = engine.chat(long, SamplingParams(temperature=0, max_tokens=8), cancel)
    timer = threading.Timer(0.02, cancel.set)
    timer.start()
    t0 = time.perf_counter()
    list(stream)
    elapsed = time.perf_counter() - t0
    assert stream.stats.finish_reason == "cancelled"
    assert stream.stats.generated_tokens == 0
    full = engine.count_tokens(long) / 150  # prompt speed here is well over 150 tok/s
    assert elapsed < full
    # the engine is consistent afterwards: the same question gives the same answer
    after = engine.chat(Q, GREEDY).text()
    engine.reset()
    assert after == engine.chat(Q, GREEDY).text()


def test_kv_figures_grow_and_match_llama_cpp(engine: Engine) -> None:
    engine.reset()
    assert engine.kv_usage().tokens == 0
    s1 = engine.chat(Q, GREEDY)
    reply = s1.text()
    kv1 = engine.kv_usage()
    # prompt + every generated token (the end-of-generation token is sampled, not decoded;
    # a reply cut by max_tokens leaves its last token undecoded too)
    undecoded = 0 if s1.stats.finish_reason == "stop" else 1
    assert kv1.tokens == s1.stats.prompt_tokens + s1.stats.generated_tokens - undecoded
    s2 = engine.chat(Q + [Message("assistant", reply), Message("user", "Why?")], GREEDY)
    s2.text()
    kv2 = engine.kv_usage()
    assert kv2.tokens > kv1.tokens
    assert kv2.n_ctx == engine.n_ctx >= 1024
    assert kv2.bytes_per_token == 30 * 3 * (64 + 64) * 2  # layers x KV heads x dims x f16
    assert kv2.reported_bytes == kv2.allocated_bytes  # what llama.cpp says it allocated
    assert kv2.used_bytes == int(kv2.tokens * kv2.bytes_per_token)


def test_overflow_is_refused_before_running(engine: Engine) -> None:
    huge = [Message("user", "word " * 3000)]
    with pytest.raises(ContextOverflowError, match="context window holds 1024"):
        engine.chat(huge, GREEDY)


def test_quantized_kv_cache_size(model_path: Path) -> None:
    eng = Engine.load(model_path, LoadOptions(ctx=512, threads=2, kv_type="q8_0"))
    try:
        kv = eng.kv_usage()
        assert kv.cache_type == "q8_0"
        assert kv.bytes_per_token == pytest.approx(kv_bytes_per_token(eng.info, "f16") * 34 / 64)
        assert kv.reported_bytes == pytest.approx(kv.allocated_bytes, rel=0.001)
        assert "Paris" in eng.chat(Q, GREEDY).text()
    finally:
        eng.close()


@pytest.mark.skipif(
    probe_system_info()[1],
    reason="assumes a CPU build of llama.cpp (tests/test_gpu_logs.py: the GPU backends)",
)
def test_backend_is_the_cpu(engine: Engine) -> None:
    b = engine.backend
    assert b.name == "CPU" and b.offloaded_layers == 0 and b.threads == 2
    assert b.total_layers == 31
    assert "CPU" in b.summary and "2 threads" in b.summary


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is text", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16],
)
def test_bad_files_never_reach_llama_cpp(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match=str(p)):
        Engine.load(p, LoadOptions(ctx=256, threads=1))


def test_template_fallback_and_sandbox() -> None:
    t = ChatTemplate(None, bos_token="<s>", eos_token="</s>")
    assert t.warning and "no chat template" in t.warning
    assert "<|im_start|>user\nhi<|im_end|>" in t.render([Message("user", "hi")])
    evil = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "<s>", "</s>")
    with pytest.raises(TemplateError, match="unsafe"):
        evil.render([Message("user", "hi")])
    reader = ChatTemplate("{% include '/etc/passwd' %}", "<s>", "</s>")
    with pytest.raises(TemplateError):
        reader.render([Message("user", "hi")])
