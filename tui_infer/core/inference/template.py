"""The chat template: the GGUF's own (or the config's override), rendered as untrusted code.

A chat template is code from a stranger: a GGUF from the hub carries it. Jinja's sandbox
(ImmutableSandboxedEnvironment, the fix for CVE-2024-34359) limits what a template can
reach, not the time or memory it uses, so every render happens in a child process
(`template_worker.py`) with bounds on time (the parent kills it past `time_s`), memory
(RLIMIT_AS in the child) and output (`max_chars`, at most what a context can hold). Past a
bound, or on any failure, a one-line TemplateError (TemplateLimitError for the bounds)
says which bound and what to do; the caller's process never runs the template.

The child stays up between renders (one start, ~60 ms; a render costs a pipe round trip,
measured in benchmarks/template_render.py), compiled templates are cached there, and
rendered prompts here (the chat renders the same conversation to count it, then to send
it). A model with no template falls back to ChatML, with a warning the UI shows.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import Message

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(TuiInferError):
    pass


class TemplateLimitError(TemplateError):
    """The template ran past a bound (time, memory or output size)."""

    def __init__(self, message: str, bound: str) -> None:
        super().__init__(message)
        self.bound = bound  # "time", "memory" or "output"


@dataclass(frozen=True)
class RenderLimits:
    time_s: float = 2.0
    memory_bytes: int = 256 << 20
    max_chars: int = 4 << 20  # lowered to what the context can hold by the engine


DEFAULT_LIMITS = RenderLimits()


def limits_for(ctx: int) -> RenderLimits:
    """Bounds for a model with a context of `ctx` tokens: its output may be at most what the
    context can hold (a token is rarely more than 32 characters)."""
    return RenderLimits(max_chars=max(32 * ctx, 1 << 16))


WAY_OUT = "use ChatML for this model with a [templates] override in the config"


class _Worker:
    """One child process that renders; restarted after it is killed or dies."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        script = Path(__file__).with_name("template_worker.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl+C in the terminal reaches us, not it
        )
        return self.proc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def ask(self, request: dict[str, Any], time_s: float) -> dict[str, Any]:
        """One request, one answer; raises TimeoutError (the child is killed) or EOFError."""
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode("ascii") + b"\n")
            proc.stdin.flush()
        except OSError:
            self.stop()
            raise EOFError from None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + time_s
        buf = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.stop()
                raise EOFError
            buf += chunk
            if buf.endswith(b"\n"):
                answer: dict[str, Any] = json.loads(buf)
                return answer


_workers: dict[int, _Worker] = {}
_lock = threading.Lock()  # one render at a time through a worker
_cache: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_CACHE_SIZE = 256


def _stop_workers() -> None:
    for w in _workers.values():
        w.stop()


atexit.register(_stop_workers)


def render_bounded(
    source: str,
    messages: list[dict[str, str]],
    bos: str,
    eos: str,
    limits: RenderLimits = DEFAULT_LIMITS,
    op: str = "render",
) -> str:
    """Render `source` in the child process within `limits` (op "compile": parse only)."""
    key = (source, bos, eos, json.dumps(messages), limits.max_chars, op)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        worker = _workers.get(limits.memory_bytes)
        if worker is None:
            worker = _workers[limits.memory_bytes] = _Worker(limits.memory_bytes)
        request = {
            "op": op,
            "source": source,
            "bos": bos,
            "eos": eos,
            "messages": messages,
            "max_chars": limits.max_chars,
        }
        try:
            answer = worker.ask(request, limits.time_s)
        except TimeoutError:
            raise TemplateLimitError(
                f"the chat template took longer than {limits.time_s:g} s to render and was "
                f"stopped; {WAY_OUT}",
                "time",
            ) from None
        except EOFError:
            raise TemplateLimitError(
                f"the chat template used more than {limits.memory_bytes >> 20} MB while "
                f"rendering and was stopped; {WAY_OUT}",
                "memory",
            ) from None
        if "prompt" in answer:
            prompt = str(answer["prompt"])
            _cache[key] = prompt
            if len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
            return prompt
    kind, message = answer.get("error"), answer.get("message", "")
    if kind == "parse":
        raise TemplateError(f"the chat template does not parse: {message}")
    if kind == "output":
        raise TemplateLimitError(
            f"the chat template's output grew past {limits.max_chars:,} characters, more than "
            f"the context can hold, and was stopped; {WAY_OUT}",
            "output",
        )
    if kind == "memory":
        raise TemplateLimitError(
            f"the chat template went past its memory bound of {limits.memory_bytes >> 20} MB "
            f"({message}) and was stopped; {WAY_OUT}",
            "memory",
        )
    if kind == "security":
        raise TemplateError(f"the chat template tried something unsafe and was stopped: {message}")
    raise TemplateError(f"the chat template failed on this conversation: {message}")


class ChatTemplate:
    """A template checked once (it must parse) and rendered within bounds."""

    def __init__(
        self,
        source: str | None,
        bos_token: str,
        eos_token: str,
        limits: RenderLimits = DEFAULT_LIMITS,
    ) -> None:
        self.from_model = bool(source)
        self.source = source or CHATML_FALLBACK
        self.warning = (
            None
            if self.from_model
            else "this model has no chat template; using ChatML, replies may be poor"
        )
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.limits = limits
        try:
            render_bounded(self.source, [], bos_token, eos_token, limits, op="compile")
        except TemplateLimitError:
            raise
        except TemplateError as exc:
            msg = str(exc).replace("the chat template", "the model's chat template", 1)
            raise TemplateError(msg) from None

    def render(self, messages: list[Message]) -> str:
        return render_bounded(
            self.source,
            [m.as_dict() for m in messages],
            self.bos_token,
            self.eos_token,
            self.limits,
        )
