"""Speculative decoding: drafts, the acceptance rule, and the controller that decides
whether drafting pays (standard library and numpy only; the scheduler does the decoding).

A request that drafts puts its last token plus up to K drafted tokens into one
llama_batch with logits at each position; one llama_decode then gives the target model's
distribution after each prefix of the draft, and the draft is verified left to right
(decoding.py's `verify_draft`, used by the scheduler and the batch runner alike).

Drafts. `NgramDrafter` is prompt lookup: the last n tokens (n from 3 down to 2) are looked
up among the earlier tokens of the prompt and the reply so far, and the tokens that
followed their most recent earlier occurrence are the draft. An index from each n-gram to
where its continuation starts is kept up to date as tokens are emitted, so a lookup costs a
few dict probes whatever the context's length. `draft.ModelDrafter` drafts greedily with a
small model of the same vocabulary (`--draft MODEL`): a point mass too.

Acceptance. Both drafts are deterministic: the draft distribution q is a point mass on
the drafted token x. The standard speculative sampling rule (Leviathan et al., Chen et
al.: accept x with probability min(1, p(x)/q(x)), else sample from max(0, p - q)
renormalised) then reads: accept x with probability p(x); on rejection sample from p with
x removed and renormalised (`accept_point_draft`). That is the same law as drawing
y ~ p once and accepting iff y == x (then y is x; else y is the replacement, and y given
y != x is p without x renormalised), which is what the scheduler does with the request's
own llama.cpp sampler chain (penalties, top-k/top-p/min-p, temperature, its seeded draw):
one draw per emitted token, as without drafting, so a seeded reply is the same text with
and without it, and a greedy reply (the draw is the argmax) is byte-identical. The general
rule for a non-degenerate q is `accept_draft`; tests/test_speculative.py checks both
against the target distribution.

Exactness rests on llama.cpp giving a drafted position the same logits in a batch as alone.
On the CPU with flash attention that holds bit for bit while the cache's padded size
(n_kv, a multiple of 256) is under 512, i.e. below cell 256 (tests/test_speculative.py
checks it). From there a lone token goes through the split-KV kernel (ggml-cpu ops.cpp:
`neq1 == 1 && nek1 >= 512`) and a batch through the row kernel; the rounding differs (up to
~1 in a logit, 0.5 in the top-two margin, measured), so a near-tie can be decided either
way and a long greedy reply can part from the plain one there (3 of 11 copying prompts did,
each after cell 256: benchmarks/speculative.py prints where). Without flash attention the
batched and lone logits differ at every position.

Control. `SpecController` sizes the draft (K grows while whole drafts are accepted, shrinks
to what was accepted after a rejection) and, in `auto` mode, compares the time per emitted
token of drafting steps with that of plain steps (steps where no draft was found count as
plain; every so often a few plain steps are forced to measure it afresh). When drafting
is slower than plain decoding it backs off: no drafts for a number of steps that doubles
each time, then a trial again; after `MAX_BACKOFFS` failed trials the request stops
drafting for good. `ngram` mode always drafts what it finds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("auto", "ngram", "draft", "off")
NGRAM_MAX = 3
# the shortest n-gram looked up: a one-token match is weak evidence (free text repeats single
# tokens all the time); with 1, auto cost 4 % of free generation in wasted drafts and ngram
# gave less on copying tasks (benchmarks/speculative.py --ngram-min, BENCHMARKS.md)
NGRAM_MIN = 2
K_MIN = 1
K_START = 4
K_MAX = 16


@dataclass(frozen=True)
class SpeculativeStats:
    """What drafting did for one reply (run --json's `speculative` object)."""

    mode: str  # what ran: "ngram", "draft" or "off"
    drafted: int = 0  # tokens proposed
    accepted: int = 0  # of those, kept
    speedup: float | None = None  # plain time per token / drafting time per token, measured
    reason: str | None = None  # why it is off ("grammar", "setting", "auto: no speed-up")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "speedup": None if self.speedup is None else round(self.speedup, 3),
            "reason": self.reason,
        }

    @property
    def summary(self) -> str:
        """One line for the stats panel and `run --stats`."""
        if self.mode == "off":
            return f"off ({self.reason})" if self.reason else "off"
        up = f" · x{self.speedup:.2f}" if self.speedup is not None else ""
        return f"{self.mode} {self.accepted}/{self.drafted} accepted{up}"


def check_mode(value: str, source: str = "--speculative") -> str:
    """The mode, or ValueError naming the choices."""
    if value not in MODES:
        raise ValueError(f"{source} must be one of {', '.join(MODES)}, got {value!r}")
    return value


# ----- drafts -------------------------------------------------------------------------------


class NgramDrafter:
    """Prompt lookup over the tokens seen so far (prompt, then each emitted token)."""

    __slots__ = ("_index", "tokens")

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens: list[int] = []
        # n-gram -> index in `tokens` of the token that followed its latest occurrence
        self._index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, new: Sequence[int]) -> None:
        toks = self.tokens
        index = self._index
        for tok in new:
            i = len(toks)
            for n in range(1, NGRAM_MAX + 1):
                if i >= n:
                    index[tuple(toks[i - n : i])] = i
            toks.append(tok)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens continuing the text, from the longest n-gram found (n <= 3)."""
        toks = self.tokens
        end = len(toks)
        index = self._index
        for n in range(min(NGRAM_MAX, end), NGRAM_MIN - 1, -1):
            start = index.get(tuple(toks[end - n :]))
            if start is not None:
                # an n-gram match of one token is weak evidence: draft less
                return toks[start : min(end, start + (k if n > 1 else min(k, 2)))]
        return []


# ----- acceptance ---------------------------------------------------------------------------


def accept_point_draft(p: Sequence[float], x: int, rng: random.Random) -> tuple[bool, int]:
    """The speculative sampling rule for a deterministic draft x (q a point mass on x):
    (True, x) with probability p(x); else (False, y), y drawn from p with x removed and
    renormalised. The law of the returned token is p."""
    px = p[x]
    if rng.random() < px:
        return True, x
    rest = 1.0 - px
    if rest <= 0.0:  # p is a point mass on x: cannot happen for a rejection
        return True, x
    u = rng.random() * rest
    acc = 0.0
    last = x
    for tok, pt in enumerate(p):
        if tok == x or pt <= 0.0:
            continue
        last = tok
        acc += pt
        if u < acc:
            return False, tok
    return False, last  # rounding at the top end


def accept_draft(
    p: Sequence[float], q: Sequence[float], x: int, rng: random.Random
) -> tuple[bool, int]:
    """The general rule (x drawn from q): accept with probability min(1, p(x)/q(x)); on
    rejection draw from max(0, p - q) renormalised. The returned token's law is p."""
    qx = q[x]
    if qx <= 0.0 or rng.random() < min(1.0, p[x] / qx):
        return True, x
    resid = [max(0.0, a - b) for a, b in zip(p, q, strict=True)]
    total = sum(resid)
    u = rng.random() * total
    acc = 0.0
    last = x
    for tok, r in enumerate(resid):
        if r <= 0.0:
            continue
        last = tok
        acc += r
        if u < acc:
            return False, tok
    return False, last


# ----- control ------------------------------------------------------------------------------

PROBE_EVERY = 48  # drafting steps between forced plain steps (auto)
PROBE_STEPS = 3  # plain steps forced each time
WARMUP = 6  # drafting steps measured before auto judges
MAX_BACKOFFS = 5
_EMA = 0.2


MEMORY_MAX_HOLD = 64  # plain steps at most before a new request tries drafting again


class SpecMemory:
    """What `auto` learnt from earlier requests of one scheduler (per draft kind): how many
    plain steps a new request starts with before it tries drafting. Each back-off in a
    request doubles it (up to MEMORY_MAX_HOLD); a trial where drafting paid resets it to 0.

    Without it each request relearnt from scratch, paying WARMUP drafting steps and its
    back-off trials every time: on free text, where drafts are rarely accepted, that cost
    about 7 % of generation (benchmarks/speculative.py). With it, once drafting has not paid,
    a reply starts with up to MEMORY_MAX_HOLD plain steps and then tries (one trial costs a
    few steps); a reply that copies its input then drafts again and, if that pays, resets
    the hold for the next ones. The cap keeps auto from giving up on a mixed workload."""

    __slots__ = ("hold",)

    def __init__(self) -> None:
        self.hold = 0

    def backed_off(self) -> None:
        self.hold = min(MEMORY_MAX_HOLD, max(16, self.hold * 2))

    def paid(self) -> None:
        self.hold = 0


class SpecController:
    """Per request: the draft size, the counts, and auto mode's decision. See the module
    docstring. The scheduler calls `want(n_gen)` before a step (how many tokens to draft,
    0: a plain step), then `record_draft` or `record_plain` with the time the step took
    for this request. `memory` (auto only) carries the decision across requests."""

    __slots__ = (
        "_backoff",
        "_backoffs",
        "_hold",
        "_probe",
        "_since_probe",
        "_spec_steps",
        "accepted",
        "auto",
        "drafted",
        "k",
        "memory",
        "mode",
        "off_reason",
        "plain_s",
        "plain_sum",
        "spec_s",
        "spec_sum",
    )

    def __init__(self, mode: str, auto: bool, memory: SpecMemory | None = None) -> None:
        self.mode = mode  # what drafts: "ngram" or "draft" (a draft model)
        self.auto = auto
        self.memory = memory if auto else None
        self.k = K_START
        self.drafted = 0
        self.accepted = 0
        self.plain_s: float | None = None  # EMA of seconds per token, plain steps
        self.spec_s: float | None = None  # EMA of seconds per emitted token, drafting steps
        # totals over the reply: (seconds, tokens) of plain and of drafting steps
        self.plain_sum = [0.0, 0]
        self.spec_sum = [0.0, 0]
        self._spec_steps = 0
        self._since_probe = 0
        self._probe = 0  # plain steps still forced
        self._hold = 0  # plain steps left in a back-off
        self._backoff = 16
        self._backoffs = 0
        self.off_reason: str | None = None
        if self.memory is not None and self.memory.hold:
            # earlier requests found drafting slower: plain first, then a trial
            self._hold = self.memory.hold
            self._backoff = self.memory.hold * 2

    def want(self) -> int:
        """Tokens to draft at most this step (0: decode plainly)."""
        if self.off_reason is not None:
            return 0
        if self._hold:
            self._hold -= 1
            return 0
        if self._probe:
            self._probe -= 1
            return 0
        return self.k

    def record_plain(self, seconds: float) -> None:
        if seconds > 0:
            self.plain_sum[0] += seconds
            self.plain_sum[1] += 1
            self.plain_s = seconds if self.plain_s is None else _ema(self.plain_s, seconds)

    def record_draft(self, drafted: int, accepted: int, seconds: float) -> None:
        """A drafting step: `drafted` proposed, `accepted` kept, accepted + 1 emitted."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.k = min(K_MAX, self.k * 2)
        else:
            self.k = max(K_MIN, accepted + 1)
        per = seconds / (accepted + 1)
        if seconds > 0:
            self.spec_sum[0] += seconds
            self.spec_sum[1] += accepted + 1
            self.spec_s = per if self.spec_s is None else _ema(self.spec_s, per)
        if not self.auto:
            return
        self._spec_steps += 1
        self._since_probe += 1
        if self.plain_s is None or self._since_probe >= PROBE_EVERY:
            self._since_probe = 0
            self._probe = PROBE_STEPS
            return
        if (
            self._spec_steps == WARMUP
            and self.memory is not None
            and self.spec_s is not None
            and self.spec_s <= self.plain_s
        ):
            self.memory.paid()
        if self._spec_steps >= WARMUP and self.spec_s is not None and self.spec_s > self.plain_s:
            # drafting costs more than it saves: stop a while, then try again
            if self.memory is not None:
                self.memory.backed_off()
            self._backoffs += 1
            if self._backoffs > MAX_BACKOFFS:
                self.off_reason = "auto: no speed-up"
                return
            self._hold = self._backoff
            self._backoff *= 2
            self._spec_steps = 0
            self.spec_s = None
            self.k = K_START

    @property
    def speedup(self) -> float | None:
        """Time per token of plain steps over that of drafting steps, over the reply."""
        (ps, pn), (ss, sn) = self.plain_sum, self.spec_sum
        if not pn or not sn or ss <= 0:
            return None
        return (ps / pn) / (ss / sn)

    def stats(self) -> SpeculativeStats:
        return SpeculativeStats(
            self.mode, self.drafted, self.accepted, self.speedup, self.off_reason
        )


def _ema(old: float, new: float) -> float:
    return old + _EMA * (new - old)
