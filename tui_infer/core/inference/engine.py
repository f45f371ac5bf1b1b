"""The engine: load a GGUF, stream a chat reply token by token, measure it.

The model and context are created by llama_cpp.Llama (its parameter handling
is well tested); the decode loop is our own over the low-level bindings, the
same calls a bare llama.cpp loop makes, so the engine costs next to nothing
over llama.cpp (benchmarks/engine_vs_bare.py measures it). The KV cache of
sequence 0 is kept between replies and only the new suffix of a prompt is
evaluated.

A llama.cpp context is not thread-safe: every call into it holds `_lock`.
Cancellation is cooperative: a threading.Event checked between tokens, and
llama.cpp's abort callback while a prompt is evaluated.
"""

from __future__ import annotations

import codecs
import ctypes
import io
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.core.errors import ContextOverflowError, ModelFileError, TuiInferError
from tui_infer.core.inference import llama_log
from tui_infer.core.inference.backend import (
    BackendInfo,
    describe_backend,
    probe_devices,
    probe_system_info,
)
from tui_infer.core.inference.llama_thread import iterate_on_llama_thread, on_llama_thread
from tui_infer.core.inference.template import ChatTemplate, TemplateError
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
from tui_infer.core.models.gguf import read_header

if TYPE_CHECKING:
    from llama_cpp import Llama

class GenerationError(TuiInferError):
    pass


_NEVER = threading.Event()  # a cancel flag that is never set


def token_piece(lib: Any, vocab: Any, token: int, buf: ctypes.Array[ctypes.c_char]) -> bytes:
    """The bytes of one token (special tokens render as nothing); buf is reused, grown
    only for a token longer than it."""
    n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        big = ctypes.create_string_buffer(-n)
        n = lib.llama_token_to_piece(vocab, token, big, len(big), 0, False)
        return big.raw[:n]
    return buf.raw[:n]


def make_sampler(lib: Any, n_vocab: int, p: SamplingParams, seed: int | None) -> Any:
    """A llama.cpp sampler chain for p: penalties, then greedy, or top-k, top-p, min-p,
    temperature and a seeded draw (seed None: llama.cpp picks one)."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if p.repeat_penalty != 1.0:
        lib.llama_sampler_chain_add(
            chain, lib.llama_sampler_init_penalties(n_vocab, 64, p.repeat_penalty, 0.0, 0.0)
        )
    if p.greedy:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if p.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(p.top_k))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(p.temperature))
    s = seed if seed is not None else lib.LLAMA_DEFAULT_SEED
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(s & 0xFFFFFFFF))
    return chain


class ReplyStream:
    """Iterate for TokenChunks; `stats` is set once iteration ends (also on cancel)."""

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

    def __init__(self, llm: Llama, info: ModelInfo, options: LoadOptions, load_log: list[str]):
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self.info = info
        self.options = options
        # Re-entrant: the reply generator holds it while the consumer, in the same
        # thread, may ask for figures between tokens.
        self._lock = threading.RLock()
        self._ctx = llm.ctx
        self._model = llm.model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        self._kv_tokens: list[int] = []  # what sequence 0 of the KV cache holds
        self._cancel: threading.Event = _NEVER  # the running reply's cancel flag
        self._abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self._cancel.is_set())
        bos = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
        eos = self._token_text(llama_cpp.llama_vocab_eos(self._vocab))
        self.template_overridden = options.template_override is not None
        try:
            self.template = ChatTemplate(
                options.template_override or info.chat_template, bos_token=bos, eos_token=eos
            )
        except TemplateError as exc:
            llm.close()
            if self.template_overridden:
                raise TemplateError(
                    f"the chat template override in config does not parse ({exc}); "
                    "fix or remove its [templates] entry"
                ) from None
            raise
        self._kv_reported = llama_log.kv_bytes_reported(load_log)
        system_info, offload = probe_system_info()
        self.backend: BackendInfo = describe_backend(
            system_info=system_info,
            devices=probe_devices(),
            gpu_offload_supported=offload,
            requested_gpu_layers=options.gpu_layers,
            n_layer=info.n_layer,
            threads=options.threads,
            logged_offload=llama_log.offloaded_layers(load_log),
        )
        self._closed = False

    # ----- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, options: LoadOptions) -> Engine:
        """Check the GGUF header ourselves, then hand the file to llama.cpp."""
        header = read_header(path)  # raises ModelFileError with the reason
        info = ModelInfo.from_header(header)
        import llama_cpp

        llama_log.install()
        if options.kv_type not in KV_TYPE_IDS:
            raise TuiInferError(f"unknown KV cache type {options.kv_type!r}")
        quantized_v = options.kv_type not in ("f16", "f32", "bf16")
        mark = llama_log.mark()
        # verbose=True keeps llama-cpp-python from dup2()ing the terminal's file
        # descriptors to /dev/null during load (that blanks a running TUI); its
        # Python prints are caught here and llama.cpp's C log by llama_log.
        sink = io.StringIO()
        try:
            with redirect_stderr(sink), redirect_stdout(sink):
                llm = on_llama_thread(
                    lambda: llama_cpp.Llama(
                        model_path=str(header.path),
                        n_ctx=options.ctx,
                        n_threads=options.threads,
                        n_threads_batch=options.threads,
                        n_gpu_layers=options.gpu_layers,
                        n_batch=options.batch,
                        n_ubatch=options.batch,
                        flash_attn=options.flash_attn or quantized_v,
                        type_k=KV_TYPE_IDS[options.kv_type],
                        type_v=KV_TYPE_IDS[options.kv_type],
                        verbose=True,
                    )
                )
        except (ValueError, RuntimeError, OSError) as exc:
            lines = llama_log.lines_since(mark)
            reason = llama_log.last_error(lines) or str(exc)
            raise ModelFileError(f"{header.path}: llama.cpp could not load it: {reason}") from None
        llm.verbose = False
        return cls(llm, info, options, llama_log.lines_since(mark))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._llm.close()

    # ----- tokens --------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        raw = self._lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (the template adds BOS itself; specials parsed)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def render(self, messages: list[Message]) -> str:
        return self.template.render(messages)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(self.render(messages)))

    def _piece(self, token: int, buf: ctypes.Array[ctypes.c_char]) -> bytes:
        return token_piece(self._lib, self._vocab, token, buf)

    # ----- KV cache ------------------------------------------------------------------------

    def kv_usage(self) -> KvCacheUsage:
        with self._lock:
            return self._kv_usage_locked()

    def _kv_usage_locked(self) -> KvCacheUsage:
        tokens = 0
        if not self._closed:
            tokens = int(self._lib.llama_memory_seq_pos_max(self._mem, 0)) + 1
        per_token = kv_bytes_per_token(self.info, self.options.kv_type)
        return KvCacheUsage(
            tokens=max(0, tokens),
            n_ctx=self.n_ctx,
            cache_type=self.options.kv_type,
            bytes_per_token=per_token,
            allocated_bytes=int(per_token * self.n_ctx),
            reported_bytes=self._kv_reported,
        )

    def reset(self) -> None:
        """Forget the cached conversation."""
        with self._lock:
            self._lib.llama_memory_clear(self._mem, True)
            self._kv_tokens = []

    # ----- decoding ------------------------------------------------------------------------

    def _stop(self) -> None:
        """Ask the decode under way to stop (the caller was interrupted)."""
        if self._cancel is not _NEVER:
            self._cancel.set()

    def _decode(self, tokens: list[int], abortable: bool) -> int:
        arr = (self._lib.llama_token * len(tokens))(*tokens)
        batch = self._lib.llama_batch_get_one(arr, len(tokens))
        if abortable:
            # The abort callback runs per graph node: worth it for a long prompt, too
            # costly per generated token, so it is set only around prompt batches.
            self._lib.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        try:
            return int(
                on_llama_thread(lambda: self._lib.llama_decode(self._ctx, batch), self._stop)
            )
        finally:
            if abortable:
                self._lib.llama_set_abort_callback(self._ctx, self._lib.ggml_abort_callback(), None)

    def decode_raw(self, tokens: list[int]) -> None:
        """Evaluate tokens after what the cache holds, in n_batch chunks (for the bench).

        No sampling, no detokenisation: llama-bench's definition of pp and tg."""
        with self._lock:
            step = max(1, self.options.batch)
            for i in range(0, len(tokens), step):
                chunk = tokens[i : i + step]
                rc = self._decode(chunk, abortable=False)
                if rc != 0:
                    self._lib.llama_memory_seq_rm(self._mem, 0, len(self._kv_tokens), -1)
                    raise GenerationError(f"llama_decode returned {rc}")
                self._kv_tokens.extend(chunk)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def _make_sampler(self, p: SamplingParams) -> Any:
        return make_sampler(self._lib, self._n_vocab, p, p.seed if p.seed >= 0 else None)

    def chat(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> ReplyStream:
        """Render with the model's template, check the context, then stream the reply.

        Raises ContextOverflowError before anything runs when the prompt does not
        fit; a reply that reaches the window's end stops with finish_reason 'length'.
        """
        prompt = self.tokenize(self.render(messages))
        if len(prompt) >= self.n_ctx:
            raise ContextOverflowError(
                f"the conversation takes {len(prompt)} tokens, the context window holds "
                f"{self.n_ctx}; start a new chat, drop old turns, or raise --ctx",
                prompt_tokens=len(prompt),
                n_ctx=self.n_ctx,
            )
        cancel = cancel or threading.Event()
        stream = ReplyStream(iter(()), cancel)
        stream._gen = self._generate(prompt, sampling, cancel, stream)
        return stream

    def complete_tokens(
        self, prompt: list[int], sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> ReplyStream:
        """Stream a continuation of raw prompt tokens (used by benchmarks and tests)."""
        cancel = cancel or threading.Event()
        stream = ReplyStream(iter(()), cancel)
        stream._gen = self._generate(prompt, sampling, cancel, stream)
        return stream

    def _generate(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        stream: ReplyStream,
    ) -> Iterator[TokenChunk]:
        lib = self._lib
        t0 = time.perf_counter()
        with self._lock:
            if self._closed:
                raise GenerationError("the model was unloaded")
            # Reuse the longest common prefix already in the KV cache; keep at least
            # one token to evaluate so that there are logits to sample from.
            keep = 0
            for a, b in zip(self._kv_tokens, prompt, strict=False):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(prompt) - 1)
            lib.llama_memory_seq_rm(self._mem, 0, keep, -1)
            self._kv_tokens = self._kv_tokens[:keep]
            todo = prompt[keep:]

            finish = "stop"
            error: str | None = None
            n_gen = 0
            ttft = 0.0
            t_first = t_last = t0
            self._cancel = cancel
            t_prompt: float | None = None
            sampler = self._make_sampler(sampling)
            buf = ctypes.create_string_buffer(64)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            try:
                # Prompt, in n_batch chunks; cancellable between and inside chunks.
                step = max(1, self.options.batch)
                for i in range(0, len(todo), step):
                    if cancel.is_set():
                        finish = "cancelled"
                        break
                    chunk = todo[i : i + step]
                    rc = self._decode(chunk, abortable=True)
                    if rc != 0:
                        lib.llama_memory_seq_rm(self._mem, 0, len(self._kv_tokens), -1)
                        if rc == 2 or cancel.is_set():
                            finish = "cancelled"
                        else:
                            finish, error = "error", f"llama_decode returned {rc}"
                        break
                    self._kv_tokens.extend(chunk)
                t_prompt = time.perf_counter()
                n_past = len(self._kv_tokens)
                if finish == "stop":
                    while True:
                        if cancel.is_set():
                            finish = "cancelled"
                            break
                        tok = lib.llama_sampler_sample(sampler, self._ctx, -1)
                        if lib.llama_vocab_is_eog(self._vocab, tok):
                            break
                        n_gen += 1
                        now = time.perf_counter()
                        if n_gen == 1:
                            t_first = now
                            ttft = now - t0
                        t_last = now
                        text = decoder.decode(self._piece(tok, buf))
                        yield TokenChunk(
                            text, n_gen, now - t0, ttft, n_past + 1, t_prompt - t0, len(todo)
                        )
                        if n_gen >= sampling.max_tokens or n_past + 1 >= self.n_ctx:
                            finish = "length"
                            break
                        if cancel.is_set():
                            finish = "cancelled"
                            break
                        rc = self._decode([tok], abortable=False)
                        if rc != 0:
                            lib.llama_memory_seq_rm(self._mem, 0, n_past, -1)
                            finish, error = "error", f"llama_decode returned {rc}"
                            break
                        self._kv_tokens.append(tok)
                        n_past += 1
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield TokenChunk(
                            tail,
                            n_gen,
                            time.perf_counter() - t0,
                            ttft,
                            n_past,
                            t_prompt - t0,
                            len(todo),
                        )
            finally:
                # Also reached when the consumer closes the generator (GeneratorExit).
                self._cancel = _NEVER
                lib.llama_sampler_free(sampler)
                if finish == "stop" and cancel.is_set():
                    finish = "cancelled"
                end = time.perf_counter()
                prompt_s = (t_prompt or end) - t0
                stream.stats = GenerationStats(
                    prompt_tokens=len(prompt),
                    prompt_tokens_evaluated=len(todo),
                    prompt_s=prompt_s,
                    generated_tokens=n_gen,
                    generation_s=max(0.0, t_last - t_first),
                    ttft_s=ttft,
                    total_s=end - t0,
                    finish_reason=finish,
                    kv=self._kv_usage_locked(),
                    error=error,
                )
