"""One conversation's state and rules, without a screen.

The chat screen shows a conversation; this class decides what it is: the turns, the
system prompt, where an edit or a regenerate forks it, which turns are still in the
context window, and whether the next prompt fits (sent as it is, trimmed of its oldest
turns, put to the user, or refused). Nothing here touches llama.cpp: tokens are counted
with the function the caller passes (the engine's `count_tokens`, or a stand-in in tests).

Threads: the screen calls `admit` from its generate worker with a snapshot of the turns;
everything else is called on the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tui_infer.core.chat.history import ReplyFigures
from tui_infer.core.inference.types import Message

TokenCounter = Callable[[list[Message]], int]


@dataclass(frozen=True)
class Accepted:
    """The prompt fits: send `turns` (after the system prompt)."""

    turns: list[Message]  # the user/assistant turns sent, the new user turn last
    prompt_tokens: int
    n_ctx: int
    dropped: int = 0  # oldest turns left out to make it fit
    warning: str | None = None  # the reply cannot reach max_tokens


@dataclass(frozen=True)
class MustChoose:
    """overflow = "ask": the prompt does not fit and the user chooses; nothing is sent."""

    prompt_tokens: int
    n_ctx: int


@dataclass(frozen=True)
class Refused:
    """The prompt cannot fit under the policy in force; `error` says what to do instead."""

    error: str


Admission = Accepted | MustChoose | Refused


class ChatSession:
    """The turns of one conversation and the rules for what the model is sent."""

    def __init__(self, system_prompt: str = "") -> None:
        self.turns: list[Message] = []  # user/assistant turns; the system prompt is apart
        self.figures: dict[int, ReplyFigures] = {}  # turn position -> that reply's figures
        self.system_prompt = system_prompt
        self.context_start = 0  # oldest turns dropped from the context (still shown and kept)
        self.fork_at: int | None = None  # the next send replaces the turns from here

    # ----- starting and restoring ---------------------------------------------------------

    def start_over(self, system_prompt: str) -> None:
        """A new chat: nothing said yet."""
        self.turns = []
        self.figures = {}
        self.context_start = 0
        self.fork_at = None
        self.system_prompt = system_prompt

    def restore(
        self, turns: list[Message], figures: dict[int, ReplyFigures], system_prompt: str
    ) -> None:
        """A saved chat, continued: all its turns are the context again."""
        self.turns = list(turns)
        self.figures = dict(figures)
        self.context_start = 0
        self.fork_at = None
        self.system_prompt = system_prompt

    # ----- what the model is sent ---------------------------------------------------------

    def system_messages(self) -> list[Message]:
        return [Message("system", self.system_prompt)] if self.system_prompt else []

    def messages_for(self, turns: list[Message]) -> list[Message]:
        """The message list the model is sent: the system prompt first, then `turns`."""
        return self.system_messages() + turns

    def in_context(self) -> list[Message]:
        """What the context window holds now (the gauge and the template view show it)."""
        return self.messages_for(self.turns[self.context_start :])

    def pending(self) -> list[Message]:
        """The turns the next message follows: those before a fork, still in the context."""
        turns = self.turns[: self.fork_at if self.fork_at is not None else len(self.turns)]
        start = self.context_start if self.context_start <= len(turns) else 0
        return turns[start:]

    def fit(
        self, turns: list[Message], count_tokens: TokenCounter, n_ctx: int
    ) -> tuple[list[Message], int, int]:
        """Drop the oldest turns until the prompt fits (the 'drop-oldest' policy).

        Returns the turns kept, their tokens with the system prompt, and how many were
        dropped. The system prompt is never dropped, nor the newest turn.
        """
        n = count_tokens(self.messages_for(turns))
        dropped = 0
        while n >= n_ctx and len(turns) > 1:
            turns = turns[1:]
            dropped += 1
            # a conversation starts with a user turn
            while len(turns) > 1 and turns[0].role != "user":
                turns = turns[1:]
                dropped += 1
            n = count_tokens(self.messages_for(turns))
        return turns, n, dropped

    def admit(
        self,
        history: list[Message],
        text: str,
        count_tokens: TokenCounter,
        n_ctx: int,
        *,
        overflow: str,
        max_tokens: int,
        drop_oldest: bool = False,
    ) -> Admission:
        """Whether `text` after `history` goes to the model, trimmed, after asking, or not.

        `overflow` is the setting ("ask", "drop-oldest", "refuse"); `drop_oldest` is the
        user's answer to an earlier MustChoose. A lone message too long for the window is
        refused whatever the policy: there is nothing older to drop.
        """
        turns = [*history, Message("user", text)]
        n = count_tokens(self.messages_for(turns))
        dropped = 0
        if n >= n_ctx:
            if overflow == "ask" and not drop_oldest and len(turns) > 1:
                return MustChoose(n, n_ctx)
            if overflow == "drop-oldest" or drop_oldest:
                turns, n, dropped = self.fit(turns, count_tokens, n_ctx)
            if n >= n_ctx:
                alone = " (this message alone)" if len(turns) == 1 else ""
                return Refused(
                    f"not sent: the conversation{alone} takes {n} tokens and the "
                    f"context window holds {n_ctx}. Start a new chat (Ctrl+N), "
                    'shorten the message, set overflow = "drop-oldest", '
                    "or raise --ctx."
                )
        warning = None
        if n + max_tokens > n_ctx:
            warning = (
                f"the prompt takes {n} of {n_ctx} context tokens: the reply can be at "
                f"most {n_ctx - n} tokens, not max_tokens={max_tokens}"
            )
        return Accepted(turns, n, n_ctx, dropped, warning)

    # ----- what was said ------------------------------------------------------------------

    def add_user_turn(self, text: str, turns_sent: int) -> None:
        """The message was accepted: it joins the turns, and so does the fact that only the
        last `turns_sent` of them (it included) are in the context window."""
        self.fork_at = None
        self.turns.append(Message("user", text))
        self.context_start = len(self.turns) - turns_sent

    def add_reply(self, text: str, figures: ReplyFigures) -> None:
        self.figures[len(self.turns)] = figures
        self.turns.append(Message("assistant", text))

    def truncate(self, keep: int) -> None:
        """Keep turns[:keep]: an edit or a regenerate drops the old branch."""
        self.turns = self.turns[:keep]
        self.figures = {k: v for k, v in self.figures.items() if k < keep}
        self.context_start = min(self.context_start, keep)

    # ----- edit and regenerate ------------------------------------------------------------

    def user_turns(self) -> list[tuple[int, str]]:
        """(position, text) of each of the user's messages: what can be edited."""
        return [(i, m.content) for i, m in enumerate(self.turns) if m.role == "user"]

    def edit(self, position: int) -> int:
        """The next send replaces the user turn at `position` and all after it; returns how
        many turns after it will go."""
        self.fork_at = position
        return len(self.turns) - position - 1

    def regenerate(self) -> str | None:
        """Fork at the last user turn and return its text, to be sent again (None: nothing
        said yet). The old reply is replaced once the new one is accepted."""
        last = max((i for i, m in enumerate(self.turns) if m.role == "user"), default=None)
        if last is None:
            return None
        self.fork_at = last
        return self.turns[last].content

    def last_reply(self) -> str | None:
        return next((m.content for m in reversed(self.turns) if m.role == "assistant"), None)
