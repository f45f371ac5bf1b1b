"""Chat templates are untrusted code: rendered in a child process within bounds on time,
memory and output, escapes refused, the same text as llama-cpp-python's formatter."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.inference import template as tpl
from tui_infer.core.inference.template import (
    CHATML_FALLBACK,
    ChatTemplate,
    RenderLimits,
    TemplateError,
    TemplateLimitError,
)
from tui_infer.core.inference.types import Message
from tui_infer.core.models.gguf import read_header

MSGS = [
    Message("system", "Be brief."),
    Message("user", "Hi there"),
    Message("assistant", "Hello! ünïcode ✓"),
    Message("user", "Tell me {{ 7 * 7 }} things"),
]
FAST = RenderLimits(time_s=2.0, memory_bytes=256 << 20, max_chars=1 << 20)

CPU = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
MEMORY = (
    "{% set ns = namespace(s='xxxxxxxx') %}"
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"
)
REPEAT = "{{ 'x' * 1000000000 }}"
LIST_DOUBLING = (
    "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}"
    "{% endfor %}{{ ns.l | length }}"
)
POWER = "{% set n = 100000000 %}{{ 7 ** n }}"
OUTPUT = "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}"
RECURSION = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ self.__init__.__globals__ }}",
]


def test_renders_exactly_as_llama_cpp_python(model_path: Path) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    gguf = read_header(model_path).chat_template
    gemma_like = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{% set role = 'model' %}{% else %}{% set role = m['role'] %}{% endif %}"
        "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        "{{ messages | tojson }}{% generation %}x{% endgeneration %}"
    )
    for source in (gguf, CHATML_FALLBACK, gemma_like):
        assert source
        ours = ChatTemplate(source, "<s>", "</s>").render(MSGS)
        theirs = Jinja2ChatFormatter(template=source, eos_token="</s>", bos_token="<s>")(
            messages=[m.as_dict() for m in MSGS]  # type: ignore[misc]
        ).prompt
        assert ours == theirs


@pytest.mark.parametrize(
    ("source", "bound", "words"),
    [
        (CPU, "time", "longer than 2 s"),
        (MEMORY, "memory", "memory bound of 256 MB"),
        (REPEAT, "memory", "a repetition would build 1,000,000,000"),
        (LIST_DOUBLING, "memory", "a concatenation would pass the bound"),
        (POWER, "memory", "exponent"),
        (OUTPUT, "output", "past 1,048,576 characters"),
    ],
)
def test_hostile_templates_stop_at_their_bound(source: str, bound: str, words: str) -> None:
    t = ChatTemplate(source, "<s>", "</s>", FAST)
    t0 = time.monotonic()
    with pytest.raises(TemplateLimitError) as caught:
        t.render(MSGS)
    elapsed = time.monotonic() - t0
    assert caught.value.bound == bound
    message = str(caught.value)
    assert words in message and "[templates] override" in message
    assert "\n" not in message
    assert elapsed < FAST.time_s + 3  # bounded: killed at the time bound at the latest
    # the next render works: a killed worker is replaced
    assert ChatTemplate(None, "<s>", "</s>", FAST).render(MSGS[1:2]).startswith("<|im_start|>")


def test_recursion_and_escapes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="recursed too deep"):
        ChatTemplate(RECURSION, "<s>", "</s>", FAST).render(MSGS)
    for source in ESCAPES:
        with pytest.raises(TemplateError, match="unsafe|failed on this conversation") as caught:
            ChatTemplate(source, "<s>", "</s>", FAST).render(MSGS)
        assert "\n" not in str(caught.value)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    with pytest.raises(TemplateError) as caught:
        ChatTemplate("{% include '" + str(secret) + "' %}", "<s>", "</s>", FAST).render(MSGS)
    assert "do not read" not in str(caught.value)
    with pytest.raises(TemplateError, match="does not parse"):
        ChatTemplate("{% for %}", "<s>", "</s>", FAST)


def test_the_callers_memory_does_not_grow(model_path: Path) -> None:
    """The hostile render happens in the child: this process's peak stays where it was."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TemplateLimitError):
        ChatTemplate(MEMORY, "<s>", "</s>", FAST).render(MSGS)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 32 * 1024  # KiB: far below the 256 MB the template reached for


def test_renders_are_cached() -> None:
    t = ChatTemplate(CHATML_FALLBACK, "<s>", "</s>", FAST)
    first = t.render(MSGS)
    for w in tpl._workers.values():
        w.stop()  # a cached render does not need the worker
    pids = {id(w.proc) for w in tpl._workers.values()}
    assert t.render(MSGS) == first
    assert {id(w.proc) for w in tpl._workers.values()} == pids


def test_run_names_the_model_and_the_bound(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(os.environ["TUI_INFER_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[templates]\n{json.dumps(model_path.name)} = {json.dumps(CPU)}\n")
    t0 = time.monotonic()
    code = main(["run", "-m", str(model_path), "--serve", "live", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert model_path.name in err and "longer than 2 s" in err
    assert time.monotonic() - t0 < 10
