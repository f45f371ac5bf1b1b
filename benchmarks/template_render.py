"""The cost of rendering chat templates in a bounded child process (core/inference/template.py).

Side by side in one run, on the default model's template and a 6-turn conversation:
llama-cpp-python's in-process Jinja2ChatFormatter, our child-process render (each
conversation new, so nothing is cached), and a cached render; plus the child's start.

    .venv/bin/python benchmarks/template_render.py [--n 300]
"""

from __future__ import annotations

import _scratch  # noqa: F401  (first: a scratch data dir, never the user's)

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tui_infer.core.inference import template as tpl
from tui_infer.core.inference.template import ChatTemplate
from tui_infer.core.inference.types import Message
from tui_infer.core.models.bundled import find_bundled_models
from tui_infer.core.models.gguf import read_header


def conversation(i: int) -> list[Message]:
    turns = [Message("system", "You are a helpful assistant.")]
    for k in range(3):
        turns.append(Message("user", f"Question {i}.{k}: what is {i} + {k}?"))
        turns.append(Message("assistant", f"It is {i + k}. " * 20))
    return turns


def per_call_ms(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    a = p.parse_args()
    source = read_header(find_bundled_models()[0].path).chat_template or ""
    t0 = time.perf_counter()
    bounded = ChatTemplate(source, "<s>", "</s>")  # starts the child, compiles
    start_ms = (time.perf_counter() - t0) * 1000
    inproc = Jinja2ChatFormatter(template=source, eos_token="</s>", bos_token="<s>")
    base = 10_000

    def in_process(i: int) -> None:
        inproc(messages=[m.as_dict() for m in conversation(base + i)])

    def child(i: int) -> None:
        bounded.render(conversation(2 * base + i))

    def cached(i: int) -> None:
        bounded.render(conversation(0))

    rows = [
        ("in-process (llama-cpp-python, unbounded)", per_call_ms(in_process, a.n)),
        ("child process, bounded, each new", per_call_ms(child, a.n)),
        ("child process, bounded, cached", per_call_ms(cached, a.n)),
    ]
    print(f"child start + compile: {start_ms:.1f} ms")
    for name, ms in rows:
        print(f"{name:45s} {ms:8.3f} ms per render (median of {a.n})")
    print(f"bounded / in-process: {rows[1][1] / rows[0][1]:.2f}x")
    tpl._stop_workers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
