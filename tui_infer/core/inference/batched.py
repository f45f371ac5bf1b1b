"""Batched decoding: many prompts through one llama.cpp context at once.

Each of `parallel` slots is a llama.cpp sequence id. Every step builds one
llama_batch holding the next token of every generating slot plus as many
pending prompt tokens as fit in n_batch, calls llama_decode once, and samples
each slot whose logits were asked for (llama_sampler_sample reads them with
llama_get_logits_ith). A slot whose sequence ends frees its cells with
llama_memory_seq_rm and takes the next prompt at once (continuous batching).

The shared prefix (the chat template's head with the run's system prompt) is
evaluated once in sequence 0 and copied to the other slots with
llama_memory_seq_cp; a slot keeps it between prompts, so only the rest of
each prompt is evaluated. A prompt that does not start with it is evaluated
whole in its slot. The sampler chain is the engine's (penalties, then greedy
or top-k/top-p/min-p/temperature/dist), one per sequence; sampled runs seed
each item from the run seed and the item's id, so a rerun gives the same text.

With kv_unified=False (the default) each slot owns n_ctx / parallel cells and
attention looks only at them; kv_unified=True shares one buffer (prefix copies
are then free, but attention spans every sequence's cells).

Loading, the batch filling, the slot's decoding state and the sampler come from
scheduler.py, which serves live requests (the chat, `run`, the server) the same way;
this runner is the offline one: a whole input file, results as items finish.

Each generated token's log-probability under the model's raw distribution (a log-softmax
of the row of logits it was sampled from) is folded into a running mean and minimum per
sequence: what `store verify` judges an answer's confidence by. The rows of a step are
done together (benchmarks/batch_logprob.py measures the cost).

Speculative decoding (`run(..., speculative=)`; speculative.py): with "ngram" or "auto"
each sequence drafts by prompt lookup over its own prompt and reply (NgramDrafter, its
draft size and counts in a SpecController, both per sequence, as a live request's in the
scheduler). A sequence's draft goes into the step's llama_batch after its last token, so
the drafts of every sequence are verified in the same llama_decode as the other
sequences' tokens and prompts; verification, the draft's logits and the KV cache's
rejected cells are decoding.py's helpers, the scheduler's own. Each emitted token takes
the plain path (end of generation, stop strings, max_tokens, the window) and its
log-probability is read from the row it was drawn from, so greedy outputs, seeded samples
and the mean/min log-probabilities are those of decoding without drafts, within the limit
speculative.py's docstring measures (past KV cell 256 llama.cpp's CPU flash attention
rounds a lone token's logits differently from a batch's, so a near-tie there can part a
long reply). A sequence under a grammar does not draft (as in the scheduler).

With "draft" each sequence drafts with a draft model instead (draft.py: `load(...,
draft=PATH)` loads it beside the model, its vocabulary checked, with one draft sequence per
slot): a ModelDrafter in place of the NgramDrafter, the rest of the path the same. The
draft model's decodes run in _plan_drafts, before the step's, on the llama.cpp thread the
whole loop runs on; each draft token costs one decode of the draft model, so drafting pays
only with a draft much smaller than the model and drafts mostly taken (the model as its
own draft, as the tests use it, is slower). "draft" drafts at any width and acceptance, as
"ngram" does; `auto` drafts by prompt lookup even when a draft model is loaded.

`auto` in a batch: a draft is extra tokens in a decode every sequence waits for. At one or
two sequences a step is bound by reading the weights, and verifying a few more tokens
costs little beside it, so drafts accepted pay nearly in full; the wider the batch, the
more a step is bound by arithmetic over every token in it, so drafted tokens cost what
plain ones cost and a rejected one is lost work for every sequence (the per-sequence
controller sees only its own share of that). So `auto` drafts only while at most
AUTO_MAX_WIDTH sequences run (a narrow run, or the tail of a wide one) and, there, each
sequence's SpecController compares its time per token with and without drafts and backs
off as in the scheduler; steps that evaluated prompt tokens are not timed (a prompt's cost
is not the draft's). Timing alone is too slow to judge a batch's short replies (free text
drafts a few times a reply: the controller's warm-up is never reached), and on a CPU a
drafted token costs most of a plain step (the small model's decode grows nearly linearly
with the tokens in it), so an accepted one saves only the step's fixed part and drafting
pays only at a high acceptance: `auto` also stops a sequence's drafting when its first
AUTO_PROBE drafted tokens or more were accepted at less than AUTO_MIN_ACCEPT, and starts a
new sequence without drafts once the run's drafts so far were (AUTO_POOL, AUTO_RETRY).
`ngram` drafts at any width and acceptance. benchmarks/batch_speculative.py measured these
choices (see AUTO_MAX_WIDTH; figures in its commit and BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tui_infer.core.errors import ModelFileError, TuiInferError
from tui_infer.core.inference import llama_log
from tui_infer.core.inference.decoding import (
    SeqSlot,
    ask_draft_logits,
    create_context,
    draft_into,
    fill_batch,
    load_model,
    make_sampler,
    token_piece,
    tokenize,
    verify_draft,
)
from tui_infer.core.inference.draft import DraftModel, ModelDrafter, load_draft
from tui_infer.core.inference.llama_thread import iterate_on_llama_thread, on_llama_thread
from tui_infer.core.inference.speculative import NgramDrafter, SpecController, SpeculativeStats
from tui_infer.core.inference.template import ChatTemplate, limits_for
from tui_infer.core.inference.types import (
    KV_TYPE_IDS,
    LoadOptions,
    Message,
    ModelInfo,
    SamplingParams,
)
from tui_infer.core.models.gguf import read_header

_PLACEHOLDER = "\x00tui-infer-prefix\x00"
# rows of logits turned into log-probabilities at once (a copy of each: 8 x 256k floats at
# most, 8 MB, for the largest vocabularies)
LOGPROB_ROWS = 8
_LOG2E = np.float32(1.4426950408889634)
# `auto` drafts only while at most this many sequences are in a step (module docstring;
# benchmarks/batch_speculative.py)
AUTO_MAX_WIDTH = 2
# `auto`: a sequence stops drafting once AUTO_PROBE tokens drafted show an acceptance below
# AUTO_MIN_ACCEPT (module docstring: on a CPU a drafted token costs most of a step), and
# once the run's sequences together show it over AUTO_POOL drafted tokens, a new sequence
# starts without drafts, but for one in AUTO_RETRY (a trial, which keeps the figure fresh)
AUTO_PROBE = 4
AUTO_MIN_ACCEPT = 0.8
AUTO_POOL = 16
AUTO_RETRY = 8
AUTO_K_START = 2  # `auto`'s first draft (the controller doubles it while drafts are taken)
# what the batch runner does: "draft" needs a draft model (load(..., draft=PATH))
SPECULATIVE_MODES = ("auto", "ngram", "draft", "off")


class BatchError(TuiInferError):
    pass


@dataclass(frozen=True)
class BatchItem:
    """One prompt of a batch: `id` names it in the output and seeds sampled runs."""

    id: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None  # None: the run's
    # this item's own sampling (None: the run's); its seed, when not -1, is the item's
    # sampling seed itself (else one from the run seed and the id); its stop strings end it
    sampling: SamplingParams | None = None
    raw_prompt: str | None = None  # a plain prompt: no chat template, BOS as the vocab says


@dataclass(frozen=True)
class BatchResult:
    id: str
    text: str
    finish_reason: str  # "stop", "length", "overflow" (the prompt does not fit a slot)
    prompt_tokens: int
    prompt_tokens_evaluated: int  # prompt_tokens less the shared prefix reused from the KV cache
    generated_tokens: int
    ttft_s: float  # from the slot taking the item to its first token
    total_s: float
    seed: int | None  # the item's sampling seed (None when greedy)
    # the generated tokens' log-probabilities (None when no token was generated)
    mean_logprob: float | None = None
    min_logprob: float | None = None
    drafted: int = 0  # speculative decoding: tokens drafted for it, and of those accepted
    accepted: int = 0


def item_seed(run_seed: int, item_id: str) -> int:
    """A 32-bit seed from the run's seed and the item's id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{run_seed}\x1f{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class _Slot(SeqSlot):
    has_prefix: bool = False
    item: BatchItem | None = None
    tokens: list[int] = field(default_factory=list)  # the item's whole prompt
    kept: int = 0  # prompt tokens reused from the cache
    uses_prefix: bool = False
    max_tokens: int = 0
    sampler: Any = None
    seed: int | None = None
    pieces: list[bytes] = field(default_factory=list)
    n_gen: int = 0
    t_start: float = 0.0
    t_first: float = 0.0
    stops: tuple[str, ...] = ()  # the item's stop strings
    lp_sum: float = 0.0  # the generated tokens' log-probabilities: their sum and minimum
    lp_min: float = 0.0
    spec: SpecController | None = None  # None: it does not draft
    drafter: NgramDrafter | ModelDrafter | None = None
    t_step: float = 0.0  # when its last token was emitted (drafting's timing)
    spec_grammar: bool = False  # it may not draft: a grammar
    # its sampler chain is llama.cpp's greedy alone (no penalty, no grammar): its token is
    # the row's argmax, taken in the log-probability pass (_draw) without the sampler
    argmax: bool = False


@dataclass
class BatchProgress:
    """Running totals, readable from another thread."""

    done: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    # speculative decoding over the finished items (speculative_stats())
    speculative: str = "off"  # the mode asked for
    drafting_items: int = 0  # items that could draft (not under a grammar)
    grammar_items: int = 0  # items that could not: a grammar
    drafted: int = 0
    accepted: int = 0
    narrow_steps: int = 0  # auto: steps narrow enough to draft in
    auto_off_items: int = 0  # auto: items whose controller stopped drafting
    auto_off_reason: str | None = None  # the last one's reason
    # (seconds, tokens) of timed plain steps and of drafting steps, summed over the items
    plain_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])
    spec_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def speculative_stats(self) -> SpeculativeStats:
        """What drafting did over the run, as `run --json`'s `speculative` object: mode
        (what ran: "ngram", "draft" or "off"), drafted, accepted, and the speed-up (the time
        per token of timed plain steps over that of drafting steps, pooled over the items;
        None without timed plain steps, as in "draft", where every step after a reply's
        first token drafts)."""
        if self.speculative == "off":
            return SpeculativeStats("off", reason="setting")
        if not self.drafting_items and self.grammar_items:
            return SpeculativeStats("off", reason="grammar")
        (ps, pn), (ss, sn) = self.plain_sum, self.spec_sum
        speedup = (ps / pn) / (ss / sn) if pn and sn and ss > 0 else None
        reason = None
        if self.speculative == "auto" and not self.narrow_steps:
            reason = f"auto: drafts only at {AUTO_MAX_WIDTH} sequences or fewer"
        elif self.auto_off_items and self.auto_off_items == self.drafting_items:
            reason = self.auto_off_reason
        mode = "draft" if self.speculative == "draft" else "ngram"
        return SpeculativeStats(mode, self.drafted, self.accepted, speedup, reason)


class BatchRunner:
    """One model and one context with `parallel` sequences. Build with BatchRunner.load()."""

    def __init__(
        self,
        lib: Any,
        model: Any,
        ctx: Any,
        info: ModelInfo,
        options: LoadOptions,
        parallel: int,
        kv_unified: bool,
        draft: DraftModel | None = None,
        draft_note: str | None = None,
    ) -> None:
        self._lib = lib
        self._model = model
        self._ctx = ctx
        self.info = info
        self.options = options
        self.parallel = parallel
        self.kv_unified = kv_unified
        self._lock = threading.Lock()  # a llama.cpp context is not thread-safe
        self._vocab = lib.llama_model_get_vocab(model)
        self._mem = lib.llama_get_memory(ctx)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self._scratch: np.ndarray[Any, np.dtype[np.float32]] | None = None  # _logprobs' rows
        self._ones: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self.n_ctx = int(lib.llama_n_ctx(ctx))
        self.n_batch = int(lib.llama_n_batch(ctx))
        # Cells one sequence may use: its own stream, or a fair share of the unified one.
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx))
        if kv_unified:
            self.n_ctx_seq = self.n_ctx // parallel
        bos = self._token_text(lib.llama_vocab_bos(self._vocab))
        eos = self._token_text(lib.llama_vocab_eos(self._vocab))
        # the [templates] override when there is one, as in the engine and the store key
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
        # the draft model (draft.py; load(..., draft=PATH)), one sequence per slot, and a
        # warning about it (it is larger than the model)
        self.draft = draft
        self.draft_note = draft_note
        self._closed = False
        self._spec_mode = "off"  # this run's (run())
        self._pool = [0, 0]  # auto: tokens drafted and accepted in this run so far
        self._auto_items = 0  # auto: items assigned in this run

    @classmethod
    def load(
        cls,
        path: str | Path,
        options: LoadOptions,
        parallel: int = 8,
        kv_unified: bool = False,
        draft: Path | None = None,
    ) -> BatchRunner:
        """Check the GGUF header as Engine.load does, then create a context for `parallel`;
        with `draft` (a checked GGUF path) load that draft model beside it (draft.py's
        load_draft: its vocabulary checked, a context of `parallel` sequences of the
        model's cells each), for run(speculative="draft")."""
        if parallel < 1:
            raise BatchError(f"--parallel must be at least 1, got {parallel}")
        if options.kv_type not in KV_TYPE_IDS:
            raise TuiInferError(f"unknown KV cache type {options.kv_type!r}")
        header = read_header(path)
        info = ModelInfo.from_header(header)
        import llama_cpp as lib

        llama_log.install()
        mark = llama_log.mark()
        sink = io.StringIO()
        model = load_model(lib, header.path, options, sink)
        if not model:
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise ModelFileError(f"{header.path}: llama.cpp could not load it: {reason}")
        ctx = create_context(lib, model, options, options.ctx, parallel, kv_unified, sink)
        if not ctx:
            lib.llama_model_free(model)
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise BatchError(
                f"llama.cpp could not create a context of {options.ctx} tokens for "
                f"{parallel} sequences: {reason}; lower --ctx or --parallel"
            )
        dm, note = None, None
        if draft is not None:
            try:
                # the draft's sequences get the model's cells each: ctx / parallel
                dm, note = on_llama_thread(
                    lambda: load_draft(
                        lib,
                        draft,
                        model,
                        header.path,
                        replace(options, parallel=parallel),
                        options.ctx,
                        sink,
                    )
                )
            except BaseException:
                lib.llama_free(ctx)
                lib.llama_model_free(model)
                raise
        return cls(lib, model, ctx, info, options, parallel, kv_unified, dm, note)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                lib, ctx, model, dm = self._lib, self._ctx, self._model, self.draft

                def free() -> None:
                    if dm is not None:
                        dm.close()
                    lib.llama_free(ctx)
                    lib.llama_model_free(model)

                # on the llama.cpp thread, after the decode it may still be running: after
                # Ctrl+C the caller waits only a moment for that decode (on_llama_thread),
                # and freeing the context under it crashed the process
                on_llama_thread(free)

    def __enter__(self) -> BatchRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- tokens --------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        raw = self._lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: no BOS added (the template has it), specials parsed."""
        return tokenize(self._lib, self._vocab, text)

    def render(self, messages: Iterable[Message]) -> str:
        return self.template.render(list(messages))

    def shared_prefix(self, system: str | None) -> list[int]:
        """The template's head for this system prompt: the tokens every such prompt starts with."""
        head: list[Message] = [Message("system", system)] if system else []
        text = self.render([*head, Message("user", _PLACEHOLDER)])
        cut = text.find(_PLACEHOLDER)
        if cut <= 0:
            return []
        a = self.tokenize(self.render([*head, Message("user", "a")]))
        b = self.tokenize(self.render([*head, Message("user", "Z")]))
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return a[:n]

    def _piece(self, token: int, buf: ctypes.Array[ctypes.c_char]) -> bytes:
        return token_piece(self._lib, self._vocab, token, buf)

    def _logprobs(self, ats: list[int], toks: list[int]) -> list[float]:
        """log p(tok) of each sampled token under the raw distribution of the row of logits
        it was drawn from (`ats`: batch indices; scheduler.py's _logprob): a log-sum-exp
        over this step's rows together, in float32, LOGPROB_ROWS at a time into a scratch
        buffer. A row's place in llama.cpp's output buffer is read from
        llama_get_logits_ith, not assumed. A token given as -1 is the row's argmax (the
        first of equal maxima, as llama.cpp's greedy sampler picks it): `toks` is filled
        in with it."""
        if not ats:
            return []
        lib, ctx, nv = self._lib, self._ctx, self._n_vocab

        def address(ptr: Any) -> int:
            return ctypes.cast(ptr, ctypes.c_void_p).value or 0

        base = address(lib.llama_get_logits(ctx))
        rows_at = [(address(lib.llama_get_logits_ith(ctx, at)) - base) // (4 * nv) for at in ats]
        logits = np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(max(rows_at) + 1, nv))
        if self._scratch is None or self._ones is None:
            self._scratch = np.empty((LOGPROB_ROWS, nv), dtype=np.float32)
            self._ones = np.ones(nv, dtype=np.float32)
        ones = self._ones
        out: list[float] = []
        for at in range(0, len(ats), LOGPROB_ROWS):
            idx = rows_at[at : at + LOGPROB_ROWS]
            k = len(idx)
            lo = idx[0]
            # llama.cpp keeps a step's rows in batch order: a slice, no copy (else gathered)
            rows = logits[lo : lo + k] if idx == list(range(lo, lo + k)) else logits[idx]
            best = rows.argmax(axis=1)
            top = rows[np.arange(k), best]
            for j in range(k):
                if toks[at + j] < 0:
                    toks[at + j] = int(best[j])
            buf = self._scratch[:k]
            # exp(x - top) as 2^(x*log2(e) - top*log2(e)): exp2 is twice as fast as exp here,
            # and the sum a matrix-vector product (25% less than max, subtract, exp, sum)
            np.multiply(rows, _LOG2E, out=buf)
            np.subtract(buf, (top * _LOG2E)[:, None], out=buf)
            np.exp2(buf, out=buf)
            lse = top + np.log(buf @ ones)
            out.extend((logits[idx, toks[at : at + k]] - lse).tolist())
        return out

    # ----- the loop ------------------------------------------------------------------------

    def run(
        self,
        items: Iterable[BatchItem],
        sampling: SamplingParams,
        run_seed: int = 0,
        system: str | None = None,
        cancel: threading.Event | None = None,
        progress: BatchProgress | None = None,
        speculative: str = "off",
    ) -> Iterator[BatchResult]:
        """Yield a BatchResult as each item finishes (not in input order).

        `system` picks the shared prefix; the items' messages must already hold their
        system prompt. On cancel, the items still running are dropped unreported.
        `speculative`: "auto", "ngram", "draft" (with a draft model loaded) or "off" (the
        module docstring); `progress` sums what drafting did.
        """
        if speculative not in SPECULATIVE_MODES:
            raise BatchError(
                f"speculative must be one of {', '.join(SPECULATIVE_MODES)}, got {speculative!r}"
            )
        if speculative == "draft" and self.draft is None:
            raise BatchError(
                "speculative draft needs a draft model: load the runner with draft=PATH, "
                "or use ngram"
            )
        progress = progress or BatchProgress()
        progress.speculative = speculative
        with self._lock:
            if self._closed:
                raise BatchError("the model was unloaded")
            self._spec_mode = speculative
            self._pool = [0, 0]
            self._auto_items = 0
            cancel = cancel or threading.Event()
            # the whole loop on the llama.cpp thread, as the engine's (a hand-off there and
            # back for each step's decode cost 15-20 % at one sequence: benchmarks/
            # vs_llama_bench.py); the loop never waits for this consumer, and a consumer
            # that stops early sets `cancel`, which ends the loop at its next step
            yield from iterate_on_llama_thread(
                self._run_locked(iter(items), sampling, run_seed, system, cancel, progress),
                cancel.set,
            )

    def _run_locked(
        self,
        items: Iterator[BatchItem],
        sampling: SamplingParams,
        run_seed: int,
        system: str | None,
        cancel: threading.Event,
        progress: BatchProgress,
    ) -> Iterator[BatchResult]:
        lib = self._lib
        mem = self._mem
        lib.llama_memory_clear(mem, True)
        prefix = self.shared_prefix(system)
        if len(prefix) >= self.n_ctx_seq:
            prefix = []
        slots = [_Slot(seq=s) for s in range(self.parallel)]
        cap = max(self.n_batch, self.parallel)
        batch = lib.llama_batch_init(cap, 0, 1)
        buf = ctypes.create_string_buffer(64)
        try:
            if prefix:
                self._decode_prefix(batch, prefix)
                for s in slots[1:]:
                    lib.llama_memory_seq_cp(mem, 0, s.seq, -1, -1)
                for s in slots:
                    s.has_prefix = True
            exhausted = False
            while not cancel.is_set():
                # Free slots take the next prompts.
                for slot in slots:
                    while slot.item is None and not exhausted:
                        item = next(items, None)
                        if item is None:
                            exhausted = True
                            break
                        overflow = self._assign(slot, item, prefix, sampling, run_seed)
                        if overflow is not None:
                            progress.done += 1
                            yield overflow
                active = [s for s in slots if s.item is not None]
                if not active:
                    break
                # drafting (module docstring): `auto` only in a narrow step; a step that
                # evaluates prompt tokens is not timed
                may_draft = self._spec_mode in ("ngram", "draft") or (
                    self._spec_mode == "auto" and len(active) <= AUTO_MAX_WIDTH
                )
                timed = may_draft and all(s.n_gen for s in active)
                progress.narrow_steps += may_draft and self._spec_mode == "auto"
                drafting = self._plan_drafts(active, cap) if may_draft else []
                self._fill(batch, active, cap)
                if drafting:
                    ask_draft_logits(batch, drafting)
                rc = int(on_llama_thread(lambda: lib.llama_decode(self._ctx, batch)))
                if rc != 0:
                    raise BatchError(
                        f"llama_decode returned {rc} with {len(active)} sequences; "
                        "lower --parallel or raise --ctx"
                    )
                now = time.perf_counter()
                ready = [s for s in active if s.logits_at >= 0]
                # each ready slot's drawn tokens (one, or a verified draft's), their rows
                drawn: list[tuple[_Slot, list[int], int]] = []  # slot, tokens, accepted
                rows: list[int] = []
                toks: list[int] = []
                for s in ready:
                    dt = now - s.t_step if s.t_step else 0.0
                    s.t_step = now
                    if s.n_draft:
                        d = s.n_draft
                        out, acc, first = verify_draft(lib, self._ctx, mem, s.sampler, s)
                        assert s.spec is not None
                        spec = s.spec
                        spec.record_draft(d, acc, dt if timed else 0.0)
                        self._pool[0] += d
                        self._pool[1] += acc
                        if (
                            spec.auto
                            and spec.drafted >= AUTO_PROBE
                            and spec.accepted < AUTO_MIN_ACCEPT * spec.drafted
                        ):
                            spec.off_reason = "auto: low acceptance"
                        drawn.append((s, out, acc))
                        rows.extend(range(first, first + len(out)))
                        toks.extend(out)
                        continue
                    # greedy alone: the argmax, drawn in _logprobs (-1 until then)
                    tok = (
                        -1
                        if s.argmax
                        else int(lib.llama_sampler_sample(s.sampler, self._ctx, s.logits_at))
                    )
                    if s.spec is not None and timed and dt:
                        s.spec.record_plain(dt)
                    drawn.append((s, [tok], 0))
                    rows.append(s.logits_at)
                    toks.append(tok)
                lps = iter(self._logprobs(rows, toks))
                at = 0  # drawn's tokens in order in `toks` (argmax ones filled in now)
                for slot, out, acc in drawn:
                    out = toks[at : at + len(out)]
                    at += len(out)
                    base = slot.pos - acc  # where out[0] goes in the sequence
                    done_reason = None
                    for i, tok in enumerate(out):
                        lp = next(lps)
                        if done_reason is not None:
                            continue  # after the end: drawn, not emitted
                        done_reason = self._emit(slot, tok, lp, base + i, now, buf, progress)
                    if done_reason is not None:
                        progress.done += 1
                        self._account(slot, progress)
                        yield self._finish(slot, done_reason, prefix, now)
                    else:
                        slot.pending = [out[-1]]
                        if slot.drafter is not None:
                            slot.drafter.extend(out)
        finally:
            for slot in slots:
                if slot.sampler is not None:
                    lib.llama_sampler_free(slot.sampler)
                    slot.sampler = None
            lib.llama_batch_free(batch)

    def _emit(
        self,
        slot: _Slot,
        tok: int,
        lp: float,
        pos: int,
        now: float,
        buf: ctypes.Array[ctypes.c_char],
        progress: BatchProgress,
    ) -> str | None:
        """One drawn token of a slot, `pos` where it goes in the sequence: the reply's
        next token, or the end of it (the finish reason)."""
        if self._lib.llama_vocab_is_eog(self._vocab, tok):
            return "stop"
        slot.n_gen += 1
        progress.generated_tokens += 1
        if slot.n_gen == 1:
            slot.t_first = now
        slot.pieces.append(self._piece(tok, buf))
        slot.lp_sum += lp
        if slot.n_gen == 1 or lp < slot.lp_min:
            slot.lp_min = lp
        if slot.stops and self._stopped(slot):
            return "stop"  # the reply holds a stop string: cut there
        if slot.n_gen >= slot.max_tokens or pos + 1 >= self.n_ctx_seq:
            return "length"
        return None

    @staticmethod
    def _account(slot: _Slot, progress: BatchProgress) -> None:
        """A finished item's drafting into the run's totals."""
        spec = slot.spec
        if spec is None:
            progress.grammar_items += slot.spec_grammar
            return
        progress.drafting_items += 1
        if spec.off_reason is not None:
            progress.auto_off_items += 1
            progress.auto_off_reason = spec.off_reason
        progress.drafted += spec.drafted
        progress.accepted += spec.accepted
        for total, own in (
            (progress.plain_sum, spec.plain_sum),
            (progress.spec_sum, spec.spec_sum),
        ):
            total[0] += own[0]
            total[1] += own[1]

    def _plan_drafts(self, active: list[_Slot], cap: int) -> list[_Slot]:
        """Before a step: each drafting sequence's draft after its last token, while the
        batch has room for every generating slot's whole draft (fill_batch puts them
        first, whole), never past max_tokens (a step emits up to k + 1) nor the window;
        the slots that drafted. The scheduler's _plan_drafts, over this runner's slots."""
        room = cap - len(active)
        limit = self.n_ctx_seq - 2
        out: list[_Slot] = []
        for slot in active:
            if slot.spec is None or len(slot.pending) != 1 or not slot.n_gen:
                continue
            k = min(room, slot.max_tokens - slot.n_gen - 1, limit - slot.pos)
            d = draft_into(slot, slot.spec, slot.drafter, k)
            if d:
                room -= d
                out.append(slot)
        return out

    def _decode_prefix(self, batch: Any, prefix: list[int]) -> None:
        lib = self._lib
        for start in range(0, len(prefix), self.n_batch):
            chunk = prefix[start : start + self.n_batch]
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            batch.n_tokens = len(chunk)
            rc = int(on_llama_thread(lambda: lib.llama_decode(self._ctx, batch)))
            if rc != 0:
                raise BatchError(f"llama_decode returned {rc} on the shared prefix")

    def _assign(
        self,
        slot: _Slot,
        item: BatchItem,
        prefix: list[int],
        sampling: SamplingParams,
        run_seed: int,
    ) -> BatchResult | None:
        """Put `item` in `slot`; a prompt that cannot fit a slot is answered 'overflow' at once."""
        if item.raw_prompt is not None:
            tokens = self.tokenize(item.raw_prompt)
            if self._lib.llama_vocab_get_add_bos(self._vocab):
                tokens.insert(0, int(self._lib.llama_vocab_bos(self._vocab)))
        else:
            tokens = self.tokenize(self.render(item.messages))
        t0 = time.perf_counter()
        if len(tokens) >= self.n_ctx_seq:
            return BatchResult(item.id, "", "overflow", len(tokens), 0, 0, 0.0, 0.0, None)
        np_ = len(prefix)
        uses_prefix = bool(prefix) and len(tokens) > np_ and tokens[:np_] == prefix
        if uses_prefix and slot.has_prefix:
            kept = np_
        else:
            if slot.has_prefix or uses_prefix:
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, 0, -1)
            slot.has_prefix = False
            kept = 0
        if item.sampling is not None:
            sampling = item.sampling
        if sampling.greedy:
            seed = None
        elif item.sampling is not None and sampling.seed >= 0:
            seed = sampling.seed
        else:
            seed = item_seed(run_seed, item.id)
        if slot.sampler is not None:
            self._lib.llama_sampler_free(slot.sampler)
        slot.sampler = make_sampler(self._lib, self._n_vocab, sampling, seed, self._vocab)
        slot.argmax = (
            sampling.greedy and sampling.repeat_penalty == 1.0 and sampling.grammar is None
        )
        slot.item = item
        slot.tokens = tokens
        slot.pending = tokens[kept:]
        slot.pos = kept
        slot.kept = kept
        slot.uses_prefix = uses_prefix
        slot.max_tokens = item.max_tokens if item.max_tokens is not None else sampling.max_tokens
        slot.seed = seed
        slot.stops = sampling.stop
        slot.pieces = []
        slot.n_gen = 0
        slot.t_start = t0
        slot.t_first = 0.0
        slot.lp_sum = 0.0
        slot.lp_min = 0.0
        slot.n_draft = 0
        slot.t_step = 0.0
        slot.spec = slot.drafter = None
        slot.spec_grammar = False
        if self._spec_mode != "off":
            if sampling.grammar is not None:
                # a grammar's sampler state cannot be stepped back over a rejected draft
                slot.spec_grammar = True
            else:
                auto = self._spec_mode == "auto"
                if self._spec_mode == "draft":
                    assert self.draft is not None
                    # the draft's sequence starts where the model's did (`kept`)
                    slot.drafter = self.draft.drafter(slot.seq, tokens, sampling, kept)
                else:
                    slot.drafter = NgramDrafter(tokens)
                slot.spec = SpecController(self._spec_mode if not auto else "ngram", auto=auto)
                if auto:
                    slot.spec.k = AUTO_K_START
                    self._auto_items += 1
                    drafted, accepted = self._pool
                    if (
                        drafted >= AUTO_POOL
                        and accepted < AUTO_MIN_ACCEPT * drafted
                        and self._auto_items % AUTO_RETRY
                    ):
                        slot.spec.off_reason = "auto: low acceptance"
        return None

    @staticmethod
    def _stopped(slot: _Slot) -> bool:
        """Whether the reply now holds one of its stop strings: then it is cut before the
        first of them (the stop string is not part of the reply)."""
        text = b"".join(slot.pieces).decode("utf-8", errors="ignore")
        cuts = [i for s in slot.stops if (i := text.find(s)) >= 0]
        if not cuts:
            return False
        slot.pieces = [text[: min(cuts)].encode("utf-8")]
        return True

    def _fill(self, batch: Any, active: list[_Slot], cap: int) -> int:
        """Generating slots' one token each first, then prompt tokens while room remains."""
        return fill_batch(batch, active, cap)

    def _finish(self, slot: _Slot, reason: str, prefix: list[int], now: float) -> BatchResult:
        item = slot.item
        assert item is not None
        if slot.uses_prefix:
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, len(prefix), -1)
            slot.has_prefix = True
        else:
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, 0, -1)
            slot.has_prefix = False
        text = b"".join(slot.pieces).decode("utf-8", errors="replace")
        result = BatchResult(
            id=item.id,
            text=text,
            finish_reason=reason,
            prompt_tokens=len(slot.tokens),
            prompt_tokens_evaluated=len(slot.tokens) - slot.kept,
            generated_tokens=slot.n_gen,
            ttft_s=(slot.t_first - slot.t_start) if slot.n_gen else 0.0,
            total_s=now - slot.t_start,
            seed=slot.seed,
            mean_logprob=slot.lp_sum / slot.n_gen if slot.n_gen else None,
            min_logprob=slot.lp_min if slot.n_gen else None,
            drafted=slot.spec.drafted if slot.spec is not None else 0,
            accepted=slot.spec.accepted if slot.spec is not None else 0,
        )
        slot.item = None
        slot.pending = []
        slot.n_draft = 0
        slot.spec = slot.drafter = None
        slot.cached = []  # fill_batch's record of the tokens; the runner does not read it
        slot.pieces = []
        return result


def default_parallel() -> int:
    """8 sequences on a CPU (llama.cpp's gain flattens past it on few cores), 32 on a GPU."""
    try:
        import llama_cpp

        return 32 if llama_cpp.llama_supports_gpu_offload() else 8
    except (ImportError, OSError):
        return 8
