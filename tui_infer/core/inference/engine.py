"""The engine: load a GGUF, stream a chat reply token by token, measure it.

The model and its context are created over llama.cpp's low-level bindings (the same
calls as the batch runner: scheduler.load_model / create_context); every reply is a
request to the engine's Scheduler (scheduler.py), which owns the context and decodes
every live request as one sequence of a batched decoder. With LoadOptions.parallel = 1
(the default) that is one sequence of ctx cells, and a step is what a bare llama.cpp loop
does per token (benchmarks/scheduler.py measures it); with parallel = N the context holds
N sequences of ctx cells each, and N replies (the chat, `run`, the HTTP server) are
decoded together. A sequence keeps its tokens between replies and only the new suffix of
a prompt is evaluated.

Cancellation is cooperative: a threading.Event checked between tokens, and llama.cpp's
abort callback while a prompt is evaluated.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tui_infer.core.errors import ContextOverflowError, ModelFileError, TuiInferError
from tui_infer.core.inference import llama_log
from tui_infer.core.inference.backend import (
    BackendInfo,
    describe_backend,
    probe_devices,
    probe_system_info,
)
from tui_infer.core.inference.decoding import (
    create_context,
    load_model,
    make_sampler,
    token_piece,
    tokenize,
)
from tui_infer.core.inference.llama_thread import iterate_on_llama_thread, on_llama_thread
from tui_infer.core.inference.scheduler import GenerationError, Scheduler, SchedulerStream
from tui_infer.core.inference.template import ChatTemplate, TemplateError, limits_for
from tui_infer.core.inference.types import (
    KV_TYPE_IDS,
    GenerationStats,
    KvCacheUsage,
    LoadOptions,
    Message,
    ModelInfo,
    SamplingParams,
    TokenChunk,
    kv_bytes_per_token,
)
from tui_infer.core.models.gguf import GgufHeader, read_header

__all__ = ["Engine", "GenerationError", "ReplyStream", "draft_path", "make_sampler", "token_piece"]


def draft_path(options: LoadOptions) -> Path | None:
    """The draft model's file (LoadOptions.draft_model: a path or a library name), its
    header checked; None without one, or when the mode never drafts with it."""
    if not options.draft_model or options.speculative in ("off", "ngram"):
        return None
    from tui_infer.core.models.resolve import resolve_model

    path = resolve_model(options.draft_model)
    if path is None:  # pragma: no cover - resolve_model raises for a name it cannot find
        raise ModelFileError(f"--draft {options.draft_model}: no such model")
    return read_header(path).path  # ModelFileError names what is wrong with the file


class ReplyStream:
    """A reply over a generator of TokenChunks; `stats` is set once iteration ends.

    The engine's replies are SchedulerStreams now; this wrapper stays for stand-ins that
    produce their chunks themselves (tests/support/fakes.py)."""

    def __init__(self, gen: Iterator[TokenChunk], cancel: threading.Event | None = None) -> None:
        self._gen = gen
        self._cancel = cancel
        self.stats: GenerationStats | None = None

    def __iter__(self) -> Iterator[TokenChunk]:
        if self._cancel is None:
            return self._gen
        # Decoded on the llama.cpp thread (core/llama_thread.py), consumed here.
        return iterate_on_llama_thread(self._gen, self._cancel.set)

    def text(self) -> str:
        return "".join(c.text for c in self)


class Engine:
    """One loaded model. Build with Engine.load(); close() frees it."""

    def __init__(
        self,
        lib: Any,
        model: Any,
        ctx: Any,
        info: ModelInfo,
        options: LoadOptions,
        load_log: list[str],
        draft: Any = None,
        draft_note: str | None = None,
    ) -> None:
        self._lib = lib
        self._model = model
        self._ctx = ctx
        self.info = info
        self.options = options
        self._vocab = lib.llama_model_get_vocab(model)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        bos = self._token_text(lib.llama_vocab_bos(self._vocab))
        eos = self._token_text(lib.llama_vocab_eos(self._vocab))
        self.template_overridden = options.template_override is not None
        try:
            self.template = ChatTemplate(
                options.template_override or info.chat_template,
                bos_token=bos,
                eos_token=eos,
                limits=limits_for(options.ctx),
                # no template: llama.cpp's built-in for the architecture (template.py)
                architecture=info.architecture,
                n_vocab=self._n_vocab,
                add_bos=bool(lib.llama_vocab_get_add_bos(self._vocab)),
                names=[info.path.stem, info.name],
            )
        except TemplateError as exc:
            if draft is not None:
                draft.close()
            lib.llama_free(ctx)
            lib.llama_model_free(model)
            if self.template_overridden:
                raise TemplateError(
                    f"the chat template override in config does not parse ({exc}); "
                    "fix or remove its [templates] entry"
                ) from None
            raise
        self._kv_reported = llama_log.kv_bytes_reported(load_log)
        self.scheduler = Scheduler(
            lib,
            model,
            ctx,
            parallel=options.parallel,
            bytes_per_token=kv_bytes_per_token(info, options.kv_type),
            cache_type=options.kv_type,
            reported_bytes=self._kv_reported,
            speculative=options.speculative,
            draft=draft,
        )
        # the draft model (draft.py, --draft), and a warning about it said once: it is
        # larger than the model
        self.draft = draft
        self.draft_note = draft_note
        # the window of one reply: each of the `parallel` sequences has ctx cells
        self.n_ctx = self.scheduler.n_ctx_seq
        system_info, offload = probe_system_info()
        self.backend: BackendInfo = describe_backend(
            system_info=system_info,
            devices=probe_devices(),
            gpu_offload_supported=offload,
            requested_gpu_layers=options.gpu_layers,
            n_layer=info.n_layer,
            threads=options.threads,
            logged_offload=llama_log.offloaded_layers(load_log),
            load_log=load_log,
        )
        self._close_lock = threading.Lock()
        self._closed = False

    # ----- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | Path, options: LoadOptions, header: GgufHeader | None = None
    ) -> Engine:
        """Check the GGUF header ourselves (or take the one the request path read), then
        hand the file to llama.cpp."""
        if header is None:
            header = read_header(path)  # raises ModelFileError with the reason
        info = ModelInfo.from_header(header)
        import llama_cpp as lib

        llama_log.install()
        if options.kv_type not in KV_TYPE_IDS:
            raise TuiInferError(f"unknown KV cache type {options.kv_type!r}")
        if options.parallel < 1:
            raise TuiInferError(f"parallel must be at least 1, got {options.parallel}")
        mark = llama_log.mark()
        # llama.cpp's C log is caught by llama_log; Python-level prints by the sink.
        sink = io.StringIO()
        n_ctx = options.ctx * options.parallel
        draft_file = draft_path(options)

        def build() -> tuple[Any, Any]:
            model = load_model(lib, header.path, options, sink)
            if not model:
                return None, None
            ctx = create_context(lib, model, options, n_ctx, options.parallel, False, sink)
            if not ctx:
                lib.llama_model_free(model)
            return model, ctx

        model, ctx = on_llama_thread(build)
        if not model:
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise ModelFileError(f"{header.path}: llama.cpp could not load it: {reason}")
        if not ctx:
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise TuiInferError(
                f"llama.cpp could not create a context of {options.ctx} tokens for "
                f"{options.parallel} sequence(s): {reason}; lower --ctx or parallel"
            )
        load_log = llama_log.lines_since(mark)
        draft, note = None, None
        if draft_file is not None:
            from tui_infer.core.inference.draft import load_draft

            try:
                draft, note = on_llama_thread(
                    lambda: load_draft(lib, draft_file, model, header.path, options, n_ctx, sink)
                )
            except BaseException:
                lib.llama_free(ctx)
                lib.llama_model_free(model)
                raise
        return cls(lib, model, ctx, info, options, load_log, draft, note)

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self.scheduler.close()
                if self.draft is not None:
                    self.draft.close()
                self._lib.llama_free(self._ctx)
                self._lib.llama_model_free(self._model)

    # ----- tokens --------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        raw = self._lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (the template adds BOS itself; specials parsed)."""
        if self._closed:  # the vocabulary is freed with the model
            raise GenerationError("the model was unloaded")
        return tokenize(self._lib, self._vocab, text)

    def render(self, messages: list[Message]) -> str:
        return self.template.render(messages)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(self.render(messages)))

    # ----- KV cache ------------------------------------------------------------------------

    def kv_usage(self) -> KvCacheUsage:
        """The cache: `tokens` of the sequence used last (the chat's conversation)."""
        return self.scheduler.kv_usage()

    def reset(self) -> None:
        """Forget the cached conversation(s)."""
        self.scheduler.reset()

    # ----- decoding ------------------------------------------------------------------------

    def decode_raw(self, tokens: list[int]) -> None:
        """Evaluate tokens after what sequence 0 holds, in n_batch chunks (for the bench).

        No sampling, no detokenisation: llama-bench's definition of pp and tg."""
        self.scheduler.decode_raw(tokens)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def chat(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> SchedulerStream:
        """Render with the model's template, check the context, then stream the reply.

        Raises ContextOverflowError before anything runs when the prompt does not
        fit; a reply that reaches the window's end stops with finish_reason 'length'.
        The request is queued at once; iterate the stream on the llama.cpp thread
        (on_llama_thread) to decode it there with no hand-off per token.
        """
        prompt = self.tokenize(self.render(messages))
        if len(prompt) >= self.n_ctx:
            raise ContextOverflowError(
                f"the conversation takes {len(prompt)} tokens, the context window holds "
                f"{self.n_ctx}; start a new chat, drop old turns, or raise --ctx",
                prompt_tokens=len(prompt),
                n_ctx=self.n_ctx,
            )
        self._check_grammar(sampling)
        return self.scheduler.submit(prompt, sampling, cancel=cancel)

    def _check_grammar(self, sampling: SamplingParams) -> None:
        """A grammar that does not compile is the caller's GrammarError, before submitting."""
        if sampling.grammar is not None:
            from tui_infer.core.inference.grammar import check_vocab

            check_vocab(self._lib, self._vocab, sampling.grammar)

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens of a plain prompt (no template): with BOS when the vocabulary adds one."""
        if self._closed:
            raise GenerationError("the model was unloaded")
        tokens = tokenize(self._lib, self._vocab, text)
        if self._lib.llama_vocab_get_add_bos(self._vocab):
            tokens.insert(0, int(self._lib.llama_vocab_bos(self._vocab)))
        return tokens

    def complete(
        self,
        prompt: str | list[int],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> SchedulerStream:
        """Stream the continuation of a plain prompt (text, or its `tokenize_prompt`
        tokens): no chat template. Raises ContextOverflowError before anything runs when
        it does not fit the window, GenerationError when it is empty."""
        tokens = self.tokenize_prompt(prompt) if isinstance(prompt, str) else prompt
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt takes {len(tokens)} tokens, the context window holds "
                f"{self.n_ctx}; shorten it or raise --ctx",
                prompt_tokens=len(tokens),
                n_ctx=self.n_ctx,
            )
        self._check_grammar(sampling)
        return self.scheduler.submit(tokens, sampling, cancel=cancel)

    def complete_tokens(
        self, prompt: list[int], sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> SchedulerStream:
        """Stream a continuation of raw prompt tokens (used by benchmarks and tests)."""
        if self._closed:
            raise GenerationError("the model was unloaded")
        return self.scheduler.submit(prompt, sampling, cancel=cancel)
