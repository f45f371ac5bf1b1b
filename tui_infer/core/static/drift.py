"""Drift: is the store still answering what is asked? (`tui-infer store drift`, the Drift view)

Three figures, from what the store already counts:

- the hit rate and the miss volume per hour or per day (table lookup_hours, filled by
  `PredictionStore.lookup`);
- the most frequent missed requests still unanswered (`PredictionStore.misses`);
- the share of those misses unlike anything stored: a miss is *near* a published
  prediction when the store holds its very messages under other parameters
  (`PredictionStore.near_miss`), or when the nearest stored prompt is at least `threshold`
  alike (Jaccard similarity of character trigrams: cheap, and blind to meaning). A miss near
  nothing is a new kind of request: the next batch should cover it. A near prediction is
  only ever shown as a suggestion: a request is answered by its exact key or not at all.

No Textual here; the CLI and the TUI both print a `DriftReport`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tui_infer.core.inference.types import Message
from tui_infer.core.static.keys import describe_difference
from tui_infer.core.static.store import HOUR_S, PredictionStore

BY = ("hour", "day")
SPAN = {"hour": 48, "day": 30}  # buckets shown unless told otherwise
SIMILAR_AT = 0.5  # trigram Jaccard from which a stored prompt counts as near a miss
TOP = 10
COMPARED = 2_000  # the most frequent misses compared with the store (the rest not looked at)
STORED = 50_000  # the newest published predictions per model a miss is compared with
# stored texts compared in full with one miss at most: those sharing its rarest trigrams
# (50,000 stored and 2,000 misses of look-alike text: over 10 minutes uncapped, ~4 s so)
CANDIDATES = 100


# ----- similarity ---------------------------------------------------------------------------


def request_text(messages: Sequence[dict[str, str]]) -> str:
    """What a request asks, as compared: its messages' text, the system prompt left out
    (shared by whole batches, it would make every request look alike)."""
    return "\n".join(m.get("content", "") for m in messages if m.get("role") != "system")


def shown_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The last user message: what a row shows of a request."""
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def trigrams(text: str) -> frozenset[str]:
    """Character trigrams of the text, case and runs of whitespace not counting."""
    t = " ".join(text.casefold().split())
    if len(t) < 3:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i : i + 3] for i in range(len(t) - 2))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' trigrams: 1.0 the same, 0.0 nothing shared."""
    x, y = trigrams(a), trigrams(b)
    if not x or not y:
        return 1.0 if x == y else 0.0
    shared = len(x & y)
    return shared / (len(x) + len(y) - shared)


class NearestPrompts:
    """Stored texts, indexed to find the one most alike a query if it is at least
    `threshold` alike, without comparing the query with every text.

    Prefix filtering: order all trigrams rarest first; two sets with Jaccard >= t share at
    least ceil(t * |x|) trigrams, so they share one among the first |x| - ceil(t * |x|) + 1
    of each. Only those prefixes are indexed and probed, rarest first, and rare trigrams
    have short lists. Exact up to `candidates` texts per query: every text at least
    `threshold` alike is found unless more than that many share the query's prefix, and then
    those sharing its rarest trigrams are the ones compared (cheap, bounded, and a suggestion
    only).
    """

    def __init__(
        self, texts: Sequence[str], threshold: float = SIMILAR_AT, candidates: int = CANDIDATES
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not in (0, 1]")
        self.threshold = threshold
        self.candidates = candidates
        self._sets = [trigrams(t) for t in texts]
        counts = Counter(g for s in self._sets for g in s)
        # one global order, rarest first (ties by the trigram); a trigram no stored text has
        # comes first, and matches nothing
        order = sorted(counts, key=lambda g: (counts[g], g))
        self._rank = {g: i for i, g in enumerate(order)}
        self._index: dict[str, list[int]] = {}
        for i, s in enumerate(self._sets):
            for g in self._prefix(s):
                self._index.setdefault(g, []).append(i)

    def _prefix(self, s: frozenset[str]) -> list[str]:
        rank = self._rank
        ordered = sorted(s, key=lambda g: rank.get(g, -1))
        # the epsilon keeps 0.7 * 10 from rounding up to 8
        keep = len(ordered) - math.ceil(self.threshold * len(ordered) - 1e-9) + 1
        return ordered[:keep]

    def nearest(self, text: str) -> tuple[int, float] | None:
        """(index of the most alike text, its similarity), or None below the threshold."""
        q = trigrams(text)
        if not q:
            return None
        best: tuple[int, float] | None = None
        seen: set[int] = set()
        for g in self._prefix(q):
            for i in self._index.get(g, ()):
                if i in seen:
                    continue
                if len(seen) >= self.candidates:
                    return best
                seen.add(i)
                s = self._sets[i]
                shared = len(q & s)
                sim = shared / (len(q) + len(s) - shared)
                if sim >= self.threshold - 1e-12 and (best is None or sim > best[1]):
                    best = (i, sim)
        return best


# ----- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftBucket:
    start: float  # unix seconds: the hour's start, or the local day's midnight
    hits: int
    misses: int

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None


@dataclass(frozen=True)
class NearStored:
    """The published prediction nearest a miss: a suggestion, never served."""

    prompt: str
    similarity: float
    why: str  # one line: how it differs
    run_id: int | None = None  # None: the same messages under other parameters
    item_id: str | None = None


@dataclass(frozen=True)
class MissedRequest:
    key: str
    model_sha256: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    count: int
    first_at: float
    last_at: float
    near: NearStored | None  # None: unlike anything stored
    template_sha256: str = ""  # "" for misses recorded before the template was kept

    @property
    def prompt(self) -> str:
        return shown_prompt(self.messages)


@dataclass(frozen=True)
class DriftReport:
    by: str  # "hour" or "day"
    since: float  # the first bucket's start
    model_sha256: str | None  # None: every model
    threshold: float
    buckets: tuple[DriftBucket, ...]  # every bucket of the window, oldest first, zeros kept
    top: tuple[MissedRequest, ...]  # the most frequent misses of the window still unanswered
    open_misses: int  # distinct unanswered requests missed in the window (compared)
    missed_requests: int  # how often they were asked
    unlike: int  # of open_misses: near nothing stored
    unlike_requests: int  # how often those were asked

    @property
    def hits(self) -> int:
        return sum(b.hits for b in self.buckets)

    @property
    def misses(self) -> int:
        return sum(b.misses for b in self.buckets)

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None

    @property
    def unlike_share(self) -> float | None:
        """Of the missed requests (counted each time asked), the share near nothing stored."""
        return self.unlike_requests / self.missed_requests if self.missed_requests else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since,
            "model_sha256": self.model_sha256,
            "threshold": self.threshold,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "buckets": [
                {"start": b.start, "hits": b.hits, "misses": b.misses, "hit_rate": b.hit_rate}
                for b in self.buckets
            ],
            "open_misses": self.open_misses,
            "missed_requests": self.missed_requests,
            "unlike": self.unlike,
            "unlike_requests": self.unlike_requests,
            "unlike_share": self.unlike_share,
            "top_misses": [
                {
                    "key": m.key,
                    "model_sha256": m.model_sha256,
                    "messages": m.messages,
                    "params": m.params,
                    "count": m.count,
                    "first_at": m.first_at,
                    "last_at": m.last_at,
                    "near": None
                    if m.near is None
                    else {
                        "prompt": m.near.prompt,
                        "similarity": round(m.near.similarity, 3),
                        "why": m.near.why,
                        "run": m.near.run_id,
                        "id": m.near.item_id,
                    },
                }
                for m in self.top
            ],
        }


def bucket_starts(by: str, span: int, now: float) -> list[float]:
    """The starts of the `span` buckets ending with the one holding `now`, oldest first:
    hours (unix hours), or local days (midnight in the local time zone)."""
    if by == "hour":
        last = int(now // HOUR_S) * HOUR_S
        return [float(last - (span - 1 - i) * HOUR_S) for i in range(span)]
    if by != "day":
        raise ValueError(f"--by {by!r}: give hour or day")
    t = time.localtime(now)
    # mktime normalizes a day of 0 or below into the months before; DST is its to settle
    return [
        time.mktime((t.tm_year, t.tm_mon, t.tm_mday - (span - 1 - i), 0, 0, 0, 0, 0, -1))
        for i in range(span)
    ]


def _bucket_of(starts: list[float]) -> Callable[[float], int]:
    """Which bucket (its index) an hour's start falls in; -1 before the first."""
    import bisect

    return lambda t: bisect.bisect_right(starts, t) - 1


def _why_same_messages(stored: dict[str, Any], asked: dict[str, Any]) -> str:
    if stored == asked:
        return "the same messages are precomputed under another chat template or key recipe"
    return describe_difference(stored, "", asked, "")


def drift(
    store: PredictionStore,
    model_sha256: str | None = None,
    *,
    by: str = "hour",
    span: int | None = None,
    top: int = TOP,
    threshold: float = SIMILAR_AT,
    now: float | None = None,
) -> DriftReport:
    """The store's drift over the last `span` hours or days (all models unless one given)."""
    if by not in BY:
        raise ValueError(f"--by {by!r}: give hour or day")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold {threshold}: give a similarity in (0, 1]")
    span = span if span is not None else SPAN[by]
    if span < 1:
        raise ValueError(f"--last {span}: give at least 1 {by}")
    now = time.time() if now is None else now
    starts = bucket_starts(by, span, now)
    since = starts[0]

    counts = [[0, 0] for _ in starts]
    which = _bucket_of(starts)
    for _sha, hour, hits, misses in store.lookup_hours(model_sha256, since):
        i = which(hour)
        if i >= 0:
            counts[i][0] += hits
            counts[i][1] += misses
    buckets = tuple(DriftBucket(s, h, m) for s, (h, m) in zip(starts, counts, strict=True))

    missed = [m for m in store.misses(model_sha256) if m["last_at"] >= since]
    missed.sort(key=lambda m: (-m["count"], -m["last_at"]))
    missed = missed[:COMPARED]

    indexes: dict[str, tuple[NearestPrompts, list[tuple[int, str, list[dict[str, str]]]]]] = {}

    def near(m: dict[str, Any]) -> NearStored | None:
        messages = [Message(x["role"], x["content"]) for x in m["messages"]]
        same = store.near_miss(m["model_sha256"], messages)
        if same is not None:
            return NearStored(
                prompt=shown_prompt(m["messages"]),
                similarity=1.0,
                why=_why_same_messages(same[0], m["params"]),
            )
        sha = m["model_sha256"]
        if sha not in indexes:
            stored = store.published_messages(sha, STORED)
            texts = [request_text(msgs) for _, _, msgs in stored]
            indexes[sha] = (NearestPrompts(texts, threshold), stored)
        index, stored = indexes[sha]
        found = index.nearest(request_text(m["messages"]))
        if found is None:
            return None
        i, sim = found
        run_id, item_id, msgs = stored[i]
        return NearStored(
            prompt=shown_prompt(msgs),
            similarity=sim,
            why=f"{sim:.0%} alike: run {run_id}, item {item_id}",
            run_id=run_id,
            item_id=item_id,
        )

    rows = [
        MissedRequest(
            key=m["key"],
            model_sha256=m["model_sha256"],
            messages=m["messages"],
            params=m["params"],
            count=m["count"],
            first_at=m["first_at"],
            last_at=m["last_at"],
            near=near(m),
            template_sha256=m.get("template_sha256") or "",
        )
        for m in missed
    ]
    unlike = [r for r in rows if r.near is None]
    return DriftReport(
        by=by,
        since=since,
        model_sha256=model_sha256,
        threshold=threshold,
        buckets=buckets,
        top=tuple(rows[:top]),
        open_misses=len(rows),
        missed_requests=sum(r.count for r in rows),
        unlike=len(unlike),
        unlike_requests=sum(r.count for r in unlike),
    )


def miss_line(
    key: str,
    messages: Any,
    params: dict[str, Any],
    model_sha256: str,
    template_sha256: str | None,
    count: int,
) -> dict[str, Any]:
    """One missed request as a batch input line: every part of its key (messages,
    parameters, model, template), so a batch makes exactly the prediction that answers
    it. `store misses -o` and the drift view's export both write these."""
    line: dict[str, Any] = {"id": key[:16], "messages": messages, **params}
    line["model_sha256"] = model_sha256
    if template_sha256:  # (misses recorded before the template was kept have none)
        line["template_sha256"] = template_sha256
    line["misses"] = count
    return line


def batch_lines(report: DriftReport) -> list[dict[str, Any]]:
    """The top misses as the next batch's input lines (see miss_line)."""
    return [
        miss_line(m.key, m.messages, m.params, m.model_sha256, m.template_sha256, m.count)
        for m in report.top
    ]


__all__ = [
    "BY",
    "DriftBucket",
    "DriftReport",
    "MissedRequest",
    "NearStored",
    "NearestPrompts",
    "batch_lines",
    "miss_line",
    "bucket_starts",
    "drift",
    "similarity",
    "trigrams",
]
