"""The llama.cpp calls the engine, the scheduler and the batch runner share: load a model,
create a context for n sequences, tokenize, a token's bytes, a sampler chain, and one
llama_batch filled from the slots that have tokens to decode.
"""

from __future__ import annotations

import ctypes
import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.inference.types import KV_TYPE_IDS, LoadOptions, SamplingParams


def token_piece(lib: Any, vocab: Any, token: int, buf: ctypes.Array[ctypes.c_char]) -> bytes:
    """The bytes of one token (special tokens render as nothing); buf is reused, grown
    only for a token longer than it."""
    n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        big = ctypes.create_string_buffer(-n)
        n = lib.llama_token_to_piece(vocab, token, big, len(big), 0, False)
        return big.raw[:n]
    return buf.raw[:n]


PENALTY_LAST_N = 64  # the repetition penalty looks this many tokens back


def make_sampler(
    lib: Any, n_vocab: int, p: SamplingParams, seed: int | None, vocab: Any = None
) -> Any:
    """A llama.cpp sampler chain for p: the grammar (p.grammar, over `vocab`: only tokens
    that keep the reply inside it, the end only once it is complete), penalties, then
    greedy, or top-k, top-p, min-p, temperature and a seeded draw (seed None: llama.cpp
    picks one). A grammar that does not compile raises grammar.GrammarError (front ends
    check theirs before they submit: grammar.check_sampling). Under a grammar the chain
    holds one sampler that checks the grammar over a shortlist of the likeliest tokens
    rather than the whole vocabulary, with the same result (grammar.shortlist_sampler)."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if p.grammar is None:
        _add_penalties(lib, chain, n_vocab, p)
        _add_draw(lib, chain, p, seed)
        return chain
    from tui_infer.core.inference import grammar

    if vocab is None:
        lib.llama_sampler_free(chain)
        raise grammar.GrammarError("a grammar needs the model's vocabulary")
    try:
        g = grammar.grammar_sampler(lib, vocab, p.grammar)
    except grammar.GrammarError:
        lib.llama_sampler_free(chain)
        raise
    if not grammar.SHORTLIST:  # the grammar over the whole vocabulary, first
        lib.llama_sampler_chain_add(chain, g)
        _add_penalties(lib, chain, n_vocab, p)
        _add_draw(lib, chain, p, seed)
        return chain
    pre = None
    if p.repeat_penalty != 1.0:
        pre = lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repeat_penalty, 0, 0)
    post = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    _add_draw(lib, post, p, seed)
    shortlist = grammar.shortlist_sampler(lib, g, pre, post, p, PENALTY_LAST_N)
    lib.llama_sampler_chain_add(chain, shortlist)
    return chain


def _add_penalties(lib: Any, chain: Any, n_vocab: int, p: SamplingParams) -> None:
    if p.repeat_penalty != 1.0:
        lib.llama_sampler_chain_add(
            chain,
            lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repeat_penalty, 0.0, 0.0),
        )


def _add_draw(lib: Any, chain: Any, p: SamplingParams, seed: int | None) -> None:
    """Greedy, or top-k, top-p, min-p, temperature and a seeded draw."""
    if p.greedy:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return
    if p.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(p.top_k))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(p.temperature))
    s = seed if seed is not None else lib.LLAMA_DEFAULT_SEED
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(s & 0xFFFFFFFF))


def tokenize(lib: Any, vocab: Any, text: str) -> list[int]:
    """Tokens of a rendered prompt: no BOS added (the template has it), specials parsed."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (lib.llama_token * cap)()
    n = lib.llama_tokenize(vocab, data, len(data), buf, cap, False, True)
    if n < 0:
        cap = -n
        buf = (lib.llama_token * cap)()
        n = lib.llama_tokenize(vocab, data, len(data), buf, cap, False, True)
    return list(buf[:n])


def load_model(lib: Any, path: Path, options: LoadOptions, sink: io.StringIO) -> Any:
    """llama_model_load_from_file with the options' GPU layers (-1: all); None on failure
    (llama.cpp's reason is in its log). Python-level prints go to `sink`."""
    with redirect_stderr(sink), redirect_stdout(sink):
        lib.llama_backend_init()
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0x7FFFFFFF if options.gpu_layers == -1 else options.gpu_layers
        return lib.llama_model_load_from_file(str(path).encode(), mp)


def create_context(
    lib: Any,
    model: Any,
    options: LoadOptions,
    n_ctx: int,
    parallel: int,
    kv_unified: bool,
    sink: io.StringIO,
) -> Any:
    """A context of n_ctx cells for `parallel` sequences; None on failure."""
    quantized_v = options.kv_type not in ("f16", "f32", "bf16")
    cp = lib.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = options.batch
    cp.n_seq_max = parallel
    cp.n_threads = cp.n_threads_batch = options.threads
    # flash_attn on: llama.cpp's auto mode, which keeps it where the device running a
    # layer has a kernel for it and turns it off elsewhere rather than running attention
    # on the CPU; off: forced off, except that a quantized V cache needs it (llama.cpp
    # refuses the context otherwise; `run` says so).
    cp.flash_attn_type = (
        lib.LLAMA_FLASH_ATTN_TYPE_AUTO
        if options.flash_attn
        else lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if quantized_v
        else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    cp.type_k = cp.type_v = KV_TYPE_IDS[options.kv_type]
    cp.kv_unified = kv_unified
    with redirect_stderr(sink), redirect_stdout(sink):
        return lib.llama_init_from_model(model, cp)


@dataclass
class SeqSlot:
    """One llama.cpp sequence of a batched decoder: what it still has to decode, where."""

    seq: int
    pending: list[int] = field(default_factory=list)  # tokens still to decode
    pos: int = 0  # position of pending[0] = cells the sequence holds
    cached: list[int] = field(default_factory=list)  # the tokens it holds, in order
    logits_at: int = -1  # index in this step's batch whose logits to sample, or -1
    # drafted tokens at the end of `pending` (speculative.py): the slot is a generating
    # one, put whole in the batch with the other generating slots
    n_draft: int = 0


def fill_batch(batch: Any, active: list[Any], cap: int) -> int:
    """Fill `batch` (llama_batch_init'ed for cap tokens) from the slots' pending tokens:
    generating slots' one token each first, then prompt tokens while room remains. A slot
    whose pending tokens all went in asks for logits at its last one (`logits_at`).

    The tokens are written in sequence-id order: with one KV stream per sequence
    (kv_unified=False) llama.cpp splits a batch into ubatches of consecutive sequence ids
    taken in batch order (llama_batch_allocr::split_equal, sequential), each one more pass
    over the weights; generating slots first then prompts, in any other order, cost a pass
    per break in the ids. A slot with drafted tokens counts as a generating one (the
    scheduler leaves room for its whole draft and asks for the draft's logits itself)."""
    takes: list[tuple[Any, int]] = []
    n = 0
    order = (
        sorted(active, key=lambda s: len(s.pending) > 1 + s.n_draft) if len(active) > 1 else active
    )
    for slot in order:
        slot.logits_at = -1
        room = cap - n
        if room <= 0 or not slot.pending:
            continue
        k = min(room, len(slot.pending))
        takes.append((slot, k))
        n += k
    if len(takes) > 1:
        takes.sort(key=lambda t: t[0].seq)
    n = 0
    for slot, k in takes:
        take = slot.pending[:k]
        seq = slot.seq
        pos = slot.pos
        for j, tok in enumerate(take):
            batch.token[n] = tok
            batch.pos[n] = pos + j
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = 0
            n += 1
        slot.pos += k
        slot.cached.extend(take)
        slot.pending = slot.pending[k:]
        if not slot.pending:
            batch.logits[n - 1] = 1
            slot.logits_at = n - 1
    batch.n_tokens = n
    return n


# ----- speculative decoding's steps (speculative.py), shared by the scheduler and BatchRunner


def draft_into(slot: SeqSlot, spec: Any, drafter: Any, cap: int) -> int:
    """Before a step: up to min(spec.want(), cap) drafted tokens (`drafter.propose`) go
    after the slot's last token in `pending` (`n_draft` says how many); how many went.
    `spec` is a SpecController, `drafter` a NgramDrafter or draft.ModelDrafter; `cap`
    keeps the step within the batch's room, the reply's max_tokens and the window."""
    k = min(spec.want(), cap)
    if k <= 0:
        return 0
    draft = drafter.propose(k)
    if draft:
        slot.pending = slot.pending + draft
        slot.n_draft = len(draft)
    return len(draft)


def ask_draft_logits(batch: Any, drafting: list[Any]) -> int:
    """After fill_batch: logits at every drafted position too (fill_batch asked for the
    last one); the number of drafted tokens in the batch."""
    logits = batch.logits
    n = 0
    for slot in drafting:
        at = slot.logits_at
        for i in range(at - slot.n_draft, at):
            logits[i] = 1
        n += slot.n_draft
    return n


def drop_drafts(lib: Any, mem: Any, drafting: list[Any]) -> None:
    """After a failed decode: the drafts are not tokens of the reply; forget them."""
    for slot in drafting:
        d = slot.n_draft
        if d and len(slot.cached) >= d:
            del slot.cached[-d:]
            slot.pos -= d
            lib.llama_memory_seq_rm(mem, slot.seq, slot.pos, -1)
        slot.n_draft = 0


def verify_draft(
    lib: Any, ctx: Any, mem: Any, sampler: Any, slot: SeqSlot
) -> tuple[list[int], int, int]:
    """After the decode of a slot's last token and its draft: the row before each drafted
    token is sampled with the slot's own sampler chain, left to right, while the draw
    equals the draft; the first draw that differs (or the one after the whole draft) is
    the target's own token (speculative.py: for a deterministic draft that is the
    speculative sampling rule, one draw per emitted token). The rejected positions leave
    the KV cache (`cached` and `pos` follow). Returns (the tokens drawn, all of them
    emitted in order; how many drafted tokens were accepted; the batch row the first was
    drawn from, the next ones following it)."""
    d = slot.n_draft
    slot.n_draft = 0
    draft = slot.cached[-d:]
    first = slot.logits_at - d
    out: list[int] = []
    accepted = 0
    for j in range(d + 1):
        tok = int(lib.llama_sampler_sample(sampler, ctx, first + j))
        out.append(tok)
        if j < d and tok == draft[j]:
            accepted += 1
        else:
            break
    rejected = d - accepted
    if rejected:
        del slot.cached[-rejected:]
        slot.pos -= rejected
        lib.llama_memory_seq_rm(mem, slot.seq, slot.pos, -1)
    return out, accepted, first
