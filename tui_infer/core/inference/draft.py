"""A draft model for speculative decoding: a small model of the target's vocabulary, loaded
beside it, that drafts K tokens greedily for the target to verify (speculative.py, the
scheduler's `_spec_step`, and the batch runner's step in batched.py).

Loading (`load_draft`, on the llama.cpp thread): the draft file gets its own context of the
target's shape (the same cells per sequence, one sequence per scheduler or batch runner
slot), then its vocabulary is compared with the target's (`fingerprint`, `vocab_mismatch`):
the number of tokens (llama.cpp's own speculative example tolerates a difference of up to
128 padding tokens, and so do we; a drafted id the target does not have ends the draft),
BOS, EOS and EOT, whether BOS is added, the text of a spread sample of token ids, and the
ids a probe text tokenizes to. A mismatch is one error naming both files and the way out.

Drafting (`ModelDrafter`, one per request or batch item, the interface of NgramDrafter):
the draft model's sequence for a slot is kept beside the target's. Before a draft it is
brought in step with the request's tokens (prompt and reply so far): what it holds beyond
their common prefix (a rejected draft, another request's tokens) goes with
llama_memory_seq_rm, the missing tokens are evaluated (the whole prompt the first time, one
or two tokens afterwards), then K tokens are drawn greedily, each evaluated in turn to draw
the next.
The draft's sampler chain is greedy after the request's repetition penalty (fed the reply's
own tokens, as the target's chain is), so that at temperature 0 the draft model used as
its own draft proposes exactly what the target will choose.

A greedy draft is a point mass q on the drafted token x, and the standard rule (accept x
with probability min(1, p(x)/q(x)), else draw from max(0, p - q) renormalised) becomes:
accept with probability p(x), else draw from p without x. The scheduler and the batch
runner verify a model's draft exactly as a prompt-lookup one: one draw from the target's
own chain per emitted token, accepted while it equals the draft (speculative.py explains
why that is the rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.decoding import tokenize
from tui_infer.core.inference.types import SamplingParams

# What a vocabulary check compares: ids sampled across the vocabulary, and a probe text
# with words, digits, punctuation, accents, code and whitespace runs.
SAMPLE_IDS = 256
PROBE_TEXT = (
    "Hello, world! The quick brown fox jumps over 12,345 lazy dogs.\n"
    "Naïve café — déjà vu; 東京 «quotes» 'single'\n"
    'def area(w, h):\n    return w * h  # comment\n\n\t{"key": [1, 2.5, null]}'
)
# llama.cpp's speculative example accepts draft and target vocabularies of sizes this far
# apart (padding rows): the shared ids must still be the same tokens
VOCAB_SIZE_SLACK = 128


class DraftModelError(TuiInferError):
    """The draft model cannot be used with this target."""


@dataclass(frozen=True)
class VocabFingerprint:
    """What must agree between a target and its draft model."""

    n_vocab: int
    vocab_type: int
    bos: int
    eos: int
    eot: int
    add_bos: bool
    sample: tuple[tuple[int, bytes], ...]  # (id, text) across the vocabulary
    probe: tuple[int, ...]  # PROBE_TEXT's tokens

    def texts(self) -> dict[int, bytes]:
        return dict(self.sample)


def sample_ids(n_vocab: int) -> list[int]:
    """The first and last 32 ids and SAMPLE_IDS spread between (control tokens often sit
    at either end)."""
    step = max(1, n_vocab // SAMPLE_IDS)
    ids = set(range(min(32, n_vocab))) | set(range(max(0, n_vocab - 32), n_vocab))
    ids |= set(range(0, n_vocab, step))
    return sorted(ids)


def fingerprint(lib: Any, model: Any, ids: Sequence[int] | None = None) -> VocabFingerprint:
    vocab = lib.llama_model_get_vocab(model)
    n = int(lib.llama_vocab_n_tokens(vocab))
    texts = []
    for i in ids if ids is not None else sample_ids(n):
        raw = lib.llama_vocab_get_text(vocab, i) if 0 <= i < n else None
        texts.append((i, bytes(raw) if raw else b""))
    return VocabFingerprint(
        n_vocab=n,
        vocab_type=int(lib.llama_vocab_type(vocab)),
        bos=int(lib.llama_vocab_bos(vocab)),
        eos=int(lib.llama_vocab_eos(vocab)),
        eot=int(lib.llama_vocab_eot(vocab)),
        add_bos=bool(lib.llama_vocab_get_add_bos(vocab)),
        sample=tuple(texts),
        probe=tuple(tokenize(lib, vocab, PROBE_TEXT)),
    )


def vocab_mismatch(target: VocabFingerprint, draft: VocabFingerprint) -> str | None:
    """Why the draft's vocabulary is not the target's (None: it is, as far as we check)."""
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_SIZE_SLACK:
        return f"{draft.n_vocab} tokens against {target.n_vocab}"
    if target.vocab_type != draft.vocab_type:
        return f"tokenizer type {draft.vocab_type} against {target.vocab_type}"
    for name in ("bos", "eos", "eot", "add_bos"):
        a, b = getattr(target, name), getattr(draft, name)
        if a != b:
            return f"{name.upper()} {b} against {a}"
    shared = min(target.n_vocab, draft.n_vocab)
    theirs = draft.texts()
    for i, text in target.sample:
        if i < shared and i in theirs and theirs[i] != text:
            return f"token {i} is {theirs[i]!r} against {text!r}"
    if target.probe != draft.probe:
        return "a sample text tokenizes differently"
    return None


class DraftModel:
    """The draft model, its context (n_seq sequences, one per scheduler or batch runner
    slot) and what each sequence holds. Used on the llama.cpp thread only, under the
    scheduler's (or the batch runner's) lock."""

    def __init__(self, lib: Any, model: Any, ctx: Any, path: Path, n_vocab_target: int) -> None:
        self._lib = lib
        self.model = model
        self.ctx = ctx
        self.path = path
        self.vocab = lib.llama_model_get_vocab(model)
        self.mem = lib.llama_get_memory(ctx)
        self.n_batch = int(lib.llama_n_batch(ctx))
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx))
        self.n_vocab_target = n_vocab_target
        n_seq = int(lib.llama_n_seq_max(ctx))
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.params = int(lib.llama_model_n_params(model))
        self._closed = False

    def drafter(
        self, seq: int, prompt: Sequence[int], sampling: SamplingParams, reused: int
    ) -> ModelDrafter:
        """`reused`: the prompt tokens the target's sequence already held (evaluated
        before); the draft evaluates the rest of the prompt as the target does."""
        return ModelDrafter(self, seq, prompt, sampling, reused)

    def forget(self, seq: int) -> None:
        """Drop what a sequence holds (after a failed decode its contents are unknown)."""
        self._lib.llama_memory_seq_rm(self.mem, seq, 0, -1)
        self.cached[seq] = []

    def evaluate(self, seq: int, tokens: Sequence[int]) -> bool:
        """Decode tokens after what `seq` holds, logits at the last; False on a failure
        (the sequence is then forgotten)."""
        lib = self._lib
        cached = self.cached[seq]
        batch = self._batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            pos = len(cached)
            for j, tok in enumerate(chunk):
                batch.token[j] = tok
                batch.pos[j] = pos + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = 0
            batch.logits[len(chunk) - 1] = 1
            batch.n_tokens = len(chunk)
            if int(lib.llama_decode(self.ctx, batch)) != 0:
                self.forget(seq)
                return False
            cached.extend(chunk)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            lib = self._lib
            lib.llama_batch_free(self._batch)
            lib.llama_free(self.ctx)
            lib.llama_model_free(self.model)


class ModelDrafter:
    """A request's drafts from the draft model (the interface of NgramDrafter): `tokens`
    are the prompt and the reply so far; `propose(k)` drafts up to k tokens greedily."""

    __slots__ = ("_dm", "_n_prompt", "_penalty", "_reused", "seq", "tokens")

    def __init__(
        self,
        dm: DraftModel,
        seq: int,
        prompt: Sequence[int],
        sampling: SamplingParams,
        reused: int = 0,
    ) -> None:
        self._dm = dm
        self.seq = seq
        self.tokens: list[int] = list(prompt)
        self._n_prompt = len(self.tokens)
        self._penalty = sampling.repeat_penalty
        # until the first draft: how much of the prompt the target reused (-1: done)
        self._reused = reused

    def extend(self, new: Sequence[int]) -> None:
        self.tokens.extend(new)

    def _chain(self) -> Any:
        """Greedy after the target's repetition penalty, made as the target's chain makes
        it (decoding.make_sampler: a window of 64 tokens) and fed the reply's last 64
        tokens, as the target's chain has been."""
        lib = self._dm._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if self._penalty != 1.0:
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_penalties(
                    self._dm.n_vocab_target, 64, self._penalty, 0.0, 0.0
                ),
            )
            for tok in self.tokens[max(self._n_prompt, len(self.tokens) - 64) :]:
                lib.llama_sampler_accept(chain, tok)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain

    def propose(self, k: int) -> list[int]:
        dm = self._dm
        lib = dm._lib
        seq = self.seq
        toks = self.tokens
        cached = dm.cached[seq]
        # in step with the request: keep the common prefix, but at least one token to
        # evaluate (its logits draw the first drafted token)
        keep = min(_common(cached, toks), len(toks) - 1)
        n_prompt = self._n_prompt
        if self._reused >= 0:
            # the first draft: the prompt's rest is evaluated from where the target's was,
            # in the same chunks, then the reply's first token alone, as the target did.
            # The numbers then agree: a row of logits depends a little on the shape of
            # the batch it came from (measured: evaluating a prompt's tail from another
            # point turns ~10 % of self-drafted tokens into near-tie rejections).
            keep = min(keep, self._reused)
            self._reused = -1
        if keep < len(cached):
            lib.llama_memory_seq_rm(dm.mem, seq, keep, -1)
            del cached[keep:]
        k = min(k, dm.n_ctx_seq - len(toks) - 1)
        if k <= 0:
            return []
        if keep < n_prompt and not dm.evaluate(seq, toks[keep:n_prompt]):
            return []
        if not dm.evaluate(seq, toks[max(keep, n_prompt) :]):
            return []
        chain = self._chain()
        out: list[int] = []
        try:
            while True:
                tok = int(lib.llama_sampler_sample(chain, dm.ctx, -1))
                if tok >= dm.n_vocab_target:
                    break  # a padding id the target does not have
                out.append(tok)
                if len(out) >= k or lib.llama_vocab_is_eog(dm.vocab, tok):
                    break
                if not dm.evaluate(seq, (tok,)):
                    break
        finally:
            lib.llama_sampler_free(chain)
        return out


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # the usual case: b extends a by a few tokens, or a holds a rejected draft's tail
    if a[:n] == b[:n]:
        return n
    while i < n and a[i] == b[i]:
        i += 1
    return i


def draft_size_note(target_params: int, draft_params: int, draft_name: str) -> str | None:
    """A warning when the draft model is larger than the target (drafting then costs more
    than it can save)."""
    if draft_params > target_params:
        return (
            f"the draft model {draft_name} ({draft_params / 1e6:.0f}M parameters) is larger "
            f"than the target ({target_params / 1e6:.0f}M): drafting will be slower than "
            "decoding without it; give --draft a smaller model of the same family"
        )
    return None


def load_draft(
    lib: Any,
    path: Path,
    target_model: Any,
    target_path: Path,
    options: Any,
    n_ctx: int,
    sink: Any,
) -> tuple[DraftModel, str | None]:
    """On the llama.cpp thread: load the draft file and a context of the target's shape,
    check its vocabulary against the target's; the DraftModel and a note (the draft is
    larger than the target) or DraftModelError."""
    from tui_infer.core.inference import llama_log
    from tui_infer.core.inference.decoding import create_context, load_model

    mark = llama_log.mark()
    model = load_model(lib, path, options, sink)
    if not model:
        reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
        raise DraftModelError(
            f"{path}: llama.cpp could not load the draft model: {reason}; "
            "check the file, or drop --draft"
        )
    try:
        target_fp = fingerprint(lib, target_model)
        draft_fp = fingerprint(lib, model, [i for i, _ in target_fp.sample])
        why = vocab_mismatch(target_fp, draft_fp)
        if why is not None:
            raise DraftModelError(
                f"the draft model {path.name} does not share the vocabulary of "
                f"{target_path.name} ({why}); give --draft a model of the same family, "
                "or use --speculative ngram"
            )
        ctx = create_context(lib, model, options, n_ctx, options.parallel, False, sink)
        if not ctx:
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise DraftModelError(
                f"llama.cpp could not create a context for the draft model {path.name}: "
                f"{reason}; lower --ctx or drop --draft"
            )
    except BaseException:
        lib.llama_model_free(model)
        raise
    dm = DraftModel(lib, model, ctx, path, target_fp.n_vocab)
    note = draft_size_note(int(lib.llama_model_n_params(target_model)), dm.params, path.name)
    return dm, note
