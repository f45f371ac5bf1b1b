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
it).

A model with no template gets llama.cpp's built-in template for its architecture
(`fallback_template`: gemma for Gemma, llama3 for a Llama 3 vocabulary, phi3, mistral-v7,
...; ChatML, as Jinja, where llama.cpp has none), with a warning the UI shows once. A
built-in template's "source" is its name (one of BUILTIN_TEMPLATES): it is rendered by
llama_chat_apply_template in this process (llama.cpp's own code, not a stranger's), with
the model's BOS in front when its vocabulary adds one. `--template NAME|FILE` and the
[templates] config choose another, by name or as Jinja. A model with no template whose
name has no instruct/chat tag looks like a base model (`looks_like_base`): the front ends
offer raw completion (`run --raw`).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
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


# llama.cpp's built-in chat templates (llama_chat_builtin_templates, llama-cpp-python
# 0.3.x); a name is checked against the library's own list when it renders
BUILTIN_TEMPLATES = (
    "bailing", "bailing-think", "bailing2", "chatglm3", "chatglm4", "chatml", "command-r",
    "deepseek", "deepseek-ocr", "deepseek2", "deepseek3", "exaone-moe", "exaone3", "exaone4",
    "falcon3", "gemma", "gigachat", "glmedge", "gpt-oss", "granite", "granite-4.0",
    "granite-4.1", "grok-2", "hunyuan-dense", "hunyuan-moe", "hunyuan-vl", "kimi-k2",
    "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "llama3", "llama4",
    "megrez", "minicpm", "mistral-v1", "mistral-v3", "mistral-v3-tekken", "mistral-v7",
    "mistral-v7-tekken", "monarch", "openchat", "orion", "pangu-embedded", "phi3", "phi4",
    "rwkv-world", "seed_oss", "smolvlm", "solar-open", "vicuna", "vicuna-orca", "yandex",
    "zephyr",
)  # fmt: skip

# a GGUF's general.architecture -> llama.cpp's built-in template for a model without one
ARCH_TEMPLATES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "phi3": "phi3",
    "mistral3": "mistral-v7",
    "command-r": "command-r",
    "cohere2": "command-r",
    "deepseek": "deepseek",
    "deepseek2": "deepseek2",
    "chatglm": "chatglm4",
    "granite": "granite",
    "granitemoe": "granite",
    "exaone": "exaone3",
    "exaone4": "exaone4",
    "llama4": "llama4",
    "minicpm": "minicpm",
    "orion": "orion",
    "openai-moe": "gpt-oss",
    "gpt-oss": "gpt-oss",
    "hunyuan-moe": "hunyuan-moe",
    "hunyuan-dense": "hunyuan-dense",
}
LLAMA3_VOCAB = 128256  # a llama-architecture model with this vocabulary is a Llama 3


def fallback_name(architecture: str, n_vocab: int | None) -> str:
    """The built-in template llama.cpp has for a model of this architecture: "chatml"
    where it has none (Qwen, SmolLM and most others speak ChatML)."""
    if architecture == "llama":
        return "llama3" if n_vocab == LLAMA3_VOCAB else "chatml"
    return ARCH_TEMPLATES.get(architecture, "chatml")


def fallback_source(architecture: str, n_vocab: int | None) -> str:
    """The template source used for a model with none: a built-in's name, or ChatML as
    Jinja (the fallback every key of such a model was made with before built-ins)."""
    name = fallback_name(architecture, n_vocab)
    return CHATML_FALLBACK if name == "chatml" else name


def is_builtin(source: str) -> bool:
    return source in BUILTIN_TEMPLATES


def template_label(source: str) -> str:
    """How a template is named to the user: 'gemma' (llama.cpp's built-in), ChatML, Jinja."""
    if is_builtin(source):
        return f"llama.cpp's built-in '{source}'"
    if source == CHATML_FALLBACK:
        return "ChatML"
    return "a Jinja template"


_TAGS = re.compile(r"(?:^|[^a-z0-9])(instruct|chat|it|sft|dpo|rlhf|assistant)(?:$|[^a-z0-9])")


def looks_like_base(names: list[str], has_template: bool) -> bool:
    """No chat template and no instruct/chat/it tag in any of the model's names (file
    stem, general.name, finetune): likely a base model, better used for raw completion."""
    return not has_template and not any(_TAGS.search(n.lower()) for n in names if n)


def fallback_note(architecture: str, n_vocab: int | None, names: list[str]) -> str:
    """What is said once about a model without a chat template (run: stderr; TUI: a
    notice; models info: a line)."""
    source = fallback_source(architecture, n_vocab)
    architecture = architecture or "unknown"
    what = (
        f"llama.cpp's built-in '{source}' template for its architecture ({architecture})"
        if is_builtin(source)
        else f"ChatML (llama.cpp has no built-in template for {architecture})"
    )
    note = (
        f"this model has no chat template; using {what}; --template NAME|FILE or "
        "[templates] in the config chooses another"
    )
    if looks_like_base(names, False):
        note += (
            "; it looks like a base model (no instruct or chat tag in its name): raw "
            "completion (run --raw, the chat's raw mode) sends the prompt as written"
        )
    return note


def missing_template_line(architecture: str, n_vocab: Any, names: list[str]) -> str:
    """`models info`'s line for a file without a chat template: which one is used."""
    vocab = n_vocab if isinstance(n_vocab, int) else None
    note = fallback_note(architecture, vocab, names)
    return "chat template: none in the file; " + note.split("; ", 1)[1]


def header_vocab(header: Any) -> int | None:
    """The vocabulary size a GGUF header gives (tokenizer.ggml.tokens' length)."""
    tokens = header.get("tokenizer.ggml.tokens")
    n = getattr(tokens, "length", None)
    if n is None and isinstance(tokens, list):
        n = len(tokens)
    return int(n) if isinstance(n, int) else None


def header_names(header: Any) -> list[str]:
    return [
        header.path.stem,
        str(header.get("general.name") or ""),
        str(header.get("general.finetune") or ""),
    ]


def header_fallback(header: Any) -> str:
    """fallback_source for a GGUF header (request_path.ModelTarget, models info)."""
    return fallback_source(header.architecture, header_vocab(header))


def header_note(header: Any) -> str | None:
    """fallback_note for a GGUF header, None when the file has its own template."""
    if header.chat_template:
        return None
    return fallback_note(header.architecture, header_vocab(header), header_names(header))


def resolve_template_arg(value: str) -> str:
    """`--template NAME|FILE`: a built-in's name, or a Jinja file's text."""
    name = value.strip()
    if is_builtin(name):
        return name
    path = Path(name).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"--template {value}: cannot read it ({exc})") from None
        if not text.strip():
            raise TemplateError(f"--template {value}: the file is empty")
        return text
    shown = ", ".join(n for n in BUILTIN_TEMPLATES if "-" not in n or n.startswith("mistral"))
    raise TemplateError(
        f"--template {value}: no such file and not one of llama.cpp's built-in templates "
        f"({shown}, ...); give a .jinja file or one of those names"
    )


def render_builtin(name: str, messages: list[dict[str, str]], bos: str) -> str:
    """Render with llama.cpp's built-in template `name` (llama_chat_apply_template)."""
    import llama_cpp as lib

    arr = (lib.llama_chat_message * max(1, len(messages)))()
    keep = []
    for i, m in enumerate(messages):
        role, content = m["role"].encode("utf-8"), m["content"].encode("utf-8")
        keep += [role, content]
        arr[i].role = role
        arr[i].content = content
    size = 256 + 2 * sum(len(b) for b in keep)
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = int(lib.llama_chat_apply_template(name.encode(), arr, len(messages), True, buf, size))
        if n < 0:
            raise TemplateError(
                f"llama.cpp has no built-in chat template named {name!r}; give another "
                "with --template NAME|FILE"
            )
        if n <= size:
            return bos + buf.raw[:n].decode("utf-8", errors="replace")
        size = n + 1
    raise TemplateError(f"the built-in template {name!r} did not render")


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
            # -I: the script's folder is not put first on sys.path, where our types.py
            # would shadow the standard library's in a non-editable install
            [sys.executable, "-I", str(script), str(self.memory_bytes)],
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
        architecture: str = "",
        n_vocab: int | None = None,
        add_bos: bool = False,
        names: list[str] | None = None,
    ) -> None:
        self.from_model = bool(source)
        self.source = source or fallback_source(architecture, n_vocab)
        self.warning = (
            None if self.from_model else fallback_note(architecture, n_vocab, names or [])
        )
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.limits = limits
        # a built-in renders without BOS; the model's goes in front when its vocab adds one
        self._bos_prefix = bos_token if add_bos else ""
        if is_builtin(self.source):
            render_builtin(self.source, [{"role": "user", "content": "x"}], "")
            return
        try:
            render_bounded(self.source, [], bos_token, eos_token, limits, op="compile")
        except TemplateLimitError:
            raise
        except TemplateError as exc:
            msg = str(exc).replace("the chat template", "the model's chat template", 1)
            raise TemplateError(msg) from None

    @property
    def builtin(self) -> bool:
        return is_builtin(self.source)

    def render(self, messages: list[Message]) -> str:
        if is_builtin(self.source):
            return render_builtin(self.source, [m.as_dict() for m in messages], self._bos_prefix)
        return render_bounded(
            self.source,
            [m.as_dict() for m in messages],
            self.bos_token,
            self.eos_token,
            self.limits,
        )
