"""The vocabulary of inference: what crosses between the core, the front ends and the app.

Frozen dataclasses only (and the ChatEngine Protocol the app is typed against), so the
app, the CLI and the tests can name these without loading llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tui_infer.core.config import Settings
from tui_infer.core.models.gguf import GGML_TYPES, GgufHeader

if TYPE_CHECKING:
    import threading

    from tui_infer.core.inference.speculative import SpeculativeStats


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user", "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


# ggml type ids for the KV cache types we accept
KV_TYPE_IDS = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}


@dataclass(frozen=True)
class LoadOptions:
    ctx: int = 4096
    threads: int = 2
    gpu_layers: int = -1
    batch: int = 512
    flash_attn: bool = True
    kv_type: str = "f16"
    template_override: str | None = None  # [templates] in config: used instead of the GGUF's
    # Sequences decoded together (the scheduler's slots); each keeps `ctx` cells, so the
    # KV cache is ctx x parallel. 1: one request at a time, today's memory.
    parallel: int = 1
    # speculative decoding (speculative.py): auto, ngram, draft or off
    speculative: str = "auto"
    # the draft model (draft.py): a path or a library name, loaded beside the model
    draft_model: str | None = None

    @classmethod
    def from_settings(cls, s: Settings, template_override: str | None = None) -> LoadOptions:
        return cls(
            ctx=s.ctx,
            threads=s.effective_threads,
            gpu_layers=s.gpu_layers,
            batch=s.batch,
            flash_attn=s.flash_attn,
            kv_type=s.kv_type,
            template_override=template_override,
            parallel=s.parallel,
            speculative=s.speculative,
            draft_model=s.draft_model.strip() or None,
        )


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int = -1
    max_tokens: int = 1024
    # the reply ends at the first of these (not included; finish_reason "stop"); in the key
    stop: tuple[str, ...] = ()
    # None: no log probabilities; n: each token's own and the n most likely (0..20), live only
    logprobs: int | None = None
    # structured output (grammar.py): a GBNF grammar llama.cpp's grammar sampler keeps the
    # reply in, and the JSON schema (normalized JSON) it was compiled from; in the key
    grammar: str | None = None
    json_schema: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> SamplingParams:
        p = cls(s.temperature, s.top_p, s.top_k, s.min_p, s.repeat_penalty, s.seed, s.max_tokens)
        if s.json_mode:  # the chat's JSON toggle (or json_mode in the config)
            from tui_infer.core.inference.grammar import JSON_OBJECT_SCHEMA, with_schema

            schema = json.loads(s.json_schema or JSON_OBJECT_SCHEMA)
            p = with_schema(p, schema, "the json_schema setting")
        return p

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    name: str
    architecture: str
    quantization: str
    file_size: int
    parameter_count: int
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    chat_template: str | None

    @classmethod
    def from_header(cls, h: GgufHeader) -> ModelInfo:
        return cls(
            path=h.path,
            name=h.name,
            architecture=h.architecture,
            quantization=h.quantization,
            file_size=h.file_size,
            parameter_count=h.parameter_count,
            n_layer=h.n_layer,
            n_ctx_train=h.n_ctx_train,
            n_embd=h.n_embd,
            n_head=h.n_head,
            n_head_kv=h.n_head_kv,
            head_dim_k=h.head_dim_k,
            head_dim_v=h.head_dim_v,
            chat_template=h.chat_template,
        )


def kv_bytes_per_token(info: ModelInfo, kv_type: str) -> float:
    """Bytes one KV cell takes over all layers: layers x (K width + V width) x element size."""
    _, block, size = GGML_TYPES[KV_TYPE_IDS[kv_type]]
    per_elem = size / block
    width = info.n_head_kv * (info.head_dim_k + info.head_dim_v)
    return info.n_layer * width * per_elem


@dataclass(frozen=True)
class KvCacheUsage:
    tokens: int  # cells of the cache holding this conversation (its sequence)
    n_ctx: int  # cells of one sequence: the context window of one request
    cache_type: str
    bytes_per_token: float
    allocated_bytes: int  # computed from the model's dimensions (all sequences)
    reported_bytes: int | None  # what llama.cpp logged it allocated
    n_seq: int = 1  # sequences sharing the cache: n_ctx x n_seq cells in all
    total_tokens: int | None = None  # cells in use over every sequence (None: `tokens`)

    @property
    def used_bytes(self) -> int:
        return int(self.tokens * self.bytes_per_token)

    @property
    def fraction(self) -> float:
        return self.tokens / self.n_ctx if self.n_ctx else 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log probability under the model's raw distribution (before
    penalties, temperature and truncation), with the most likely alternatives (`top`)."""

    token: str  # the token's text (bytes that are not UTF-8 on their own shown as U+FFFD)
    logprob: float
    raw: bytes  # the token's bytes
    offset: int = 0  # where its text starts in the reply's text (characters)
    top: tuple[TokenLogprob, ...] = ()  # most likely first


@dataclass(frozen=True)
class TokenChunk:
    """Text decoded from one token (may be empty while a UTF-8 character is incomplete, or
    while it may be the start of a stop string: then a later chunk carries it)."""

    text: str
    n_generated: int
    elapsed_s: float  # since the request started
    ttft_s: float
    kv_tokens: int  # cells of the KV cache in use once this token is decoded
    prompt_s: float = 0.0  # time the prompt's evaluation took (known from the first token)
    prompt_tokens_evaluated: int = 0
    # with SamplingParams.logprobs: the tokens whose text this chunk releases
    logprobs: tuple[TokenLogprob, ...] = ()

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens_evaluated / self.prompt_s if self.prompt_s > 0 else 0.0


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int  # tokens in the rendered prompt
    prompt_tokens_evaluated: int  # of those, not already in the KV cache
    prompt_s: float
    generated_tokens: int
    generation_s: float  # first token to last
    ttft_s: float
    total_s: float
    finish_reason: str  # "stop", "length", "cancelled", "error"
    kv: KvCacheUsage
    error: str | None = None
    speculative: SpeculativeStats | None = None  # what drafting did (None: not asked)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens_evaluated / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        # n tokens take n-1 decode steps after the first one is sampled
        steps = self.generated_tokens - 1
        return steps / self.generation_s if steps > 0 and self.generation_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_evaluated": self.prompt_tokens_evaluated,
            "prompt_s": round(self.prompt_s, 6),
            "prompt_tokens_per_s": round(self.prompt_tps, 3),
            "generated_tokens": self.generated_tokens,
            "generation_s": round(self.generation_s, 6),
            "generation_tokens_per_s": round(self.generation_tps, 3),
            "ttft_s": round(self.ttft_s, 6),
            "total_s": round(self.total_s, 6),
            "finish_reason": self.finish_reason,
            "kv_tokens": self.kv.tokens,
            "n_ctx": self.kv.n_ctx,
            "kv_bytes": self.kv.allocated_bytes,
            "kv_type": self.kv.cache_type,
            "error": self.error,
        }


class ReplyStreamLike(Protocol):
    """A reply being streamed: iterate for chunks; `stats` is set once iteration ends."""

    stats: GenerationStats | None

    def __iter__(self) -> Iterator[TokenChunk]: ...


class TemplateLike(Protocol):
    """The chat template as the app shows it."""

    @property
    def source(self) -> str: ...

    @property
    def warning(self) -> str | None: ...


class BackendLike(Protocol):
    """The backend as the stats panel and the pacing read it."""

    @property
    def summary(self) -> str: ...

    @property
    def threads(self) -> int: ...

    @property
    def offloaded_layers(self) -> int: ...

    @property
    def total_layers(self) -> int: ...


class ChatEngine(Protocol):
    """What the app and the request path need of a loaded model (Engine; fakes in tests)."""

    info: ModelInfo
    options: LoadOptions
    n_ctx: int
    template_overridden: bool

    @property
    def template(self) -> TemplateLike: ...

    @property
    def backend(self) -> BackendLike: ...

    def render(self, messages: list[Message]) -> str: ...

    def count_tokens(self, messages: list[Message]) -> int: ...

    def chat(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> ReplyStreamLike: ...

    def kv_usage(self) -> KvCacheUsage: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...
