"""Stop strings (OpenAI's `stop`): the reply ends at the first occurrence of any of them,
and neither the stop string nor anything after it is handed out.

`StopScanner.feed` takes each piece of decoded text and returns what may be released now:
text that can no longer turn out to be part of a stop string. It holds back the longest tail
of what it has seen that is the start of some stop string (so a stream never emits text that
the next token shows to be a stop) and releases it as soon as a later piece rules that out.
"""

from __future__ import annotations

MAX_STOPS = 4  # OpenAI's limit


class StopScanner:
    """Feed decoded text piece by piece; see the module docstring. `hit` once a stop string
    was found: everything from it on is dropped, and `feed` returns "" from then on."""

    __slots__ = ("_held", "_longest", "_stops", "hit")

    def __init__(self, stops: tuple[str, ...]) -> None:
        if not stops or any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = stops
        self._longest = max(len(s) for s in stops)
        self._held = ""
        self.hit = False

    def feed(self, text: str) -> tuple[str, bool]:
        """(the text that may be released now, whether a stop string was found)."""
        if self.hit:
            return "", True
        if not text:
            return "", False
        buf = self._held + text
        cut = -1
        for s in self._stops:
            i = buf.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.hit = True
            self._held = ""
            return buf[:cut], True
        keep = self._partial(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """At the end of the reply: what was held back (no stop string followed)."""
        held, self._held = self._held, ""
        return "" if self.hit else held

    def _partial(self, buf: str) -> int:
        """The length of the longest tail of buf that is a proper prefix of a stop string."""
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
