"""The chat session's rules, without a screen or a model: what fits the context window,
what is dropped, what is refused, and how edit and regenerate fork a conversation.

Tokens are counted with a stand-in: one per word, plus one per message (its framing), so
each expected count below can be worked out by hand.
"""

from __future__ import annotations

from tui_infer.core.chat.history import ReplyFigures
from tui_infer.core.chat.session import Accepted, ChatSession, MustChoose, Refused
from tui_infer.core.inference.types import Message

FIG = ReplyFigures(0.1, 3, 30.0, 2, 20.0, 0.2, "stop")


def count(messages: list[Message]) -> int:
    return sum(len(m.content.split()) + 1 for m in messages)


def words(n: int, tag: str = "w") -> str:
    return " ".join([tag] * n)


def conversation(*pairs: tuple[str, str]) -> list[Message]:
    out: list[Message] = []
    for user, assistant in pairs:
        out += [Message("user", user), Message("assistant", assistant)]
    return out


def test_it_fits_as_it_is() -> None:
    s = ChatSession("Be terse.")
    history = conversation(("hello there", "hi"))
    result = s.admit(history, "how are you", count, 100, overflow="ask", max_tokens=10)
    assert isinstance(result, Accepted)
    assert result.turns == [*history, Message("user", "how are you")]
    # system 2+1, hello there 2+1, hi 1+1, how are you 3+1
    assert (result.prompt_tokens, result.dropped, result.warning) == (12, 0, None)
    assert s.messages_for(result.turns)[0] == Message("system", "Be terse.")


def test_drop_oldest_drops_the_oldest_turns_first_and_keeps_the_system_prompt() -> None:
    s = ChatSession("Be terse.")  # 3 tokens
    history = conversation(("old " + words(9, "a"), words(9, "b")), ("mid", "reply"))
    # first pair: 11 + 10; second: 2 + 2; the new message: 2; total 3 + 21 + 4 + 2 = 30
    result = s.admit(history, "new", count, 20, overflow="drop-oldest", max_tokens=1)
    assert isinstance(result, Accepted)
    assert result.dropped == 2  # the old user turn and its reply, nothing newer
    assert [m.content for m in result.turns] == ["mid", "reply", "new"]
    assert result.prompt_tokens == 9  # the system prompt's 3 counted: it is still sent
    assert s.messages_for(result.turns)[0] == Message("system", "Be terse.")


def test_fit_never_starts_the_context_with_a_reply() -> None:
    s = ChatSession()
    turns = [
        *conversation((words(5), words(5))),
        Message("user", "q"),
        Message("assistant", "a"),
        Message("user", "now"),
    ]
    kept, n, dropped = s.fit(turns, count, 10)
    assert kept[0].role == "user" and dropped == 2 and n == count(kept) < 10


def test_ask_puts_it_to_the_user_and_the_answer_drops_oldest() -> None:
    s = ChatSession()
    history = conversation((words(20), words(20)))
    asked = s.admit(history, "hi", count, 30, overflow="ask", max_tokens=1)
    assert asked == MustChoose(44, 30)
    answered = s.admit(history, "hi", count, 30, overflow="ask", max_tokens=1, drop_oldest=True)
    assert isinstance(answered, Accepted) and answered.turns == [Message("user", "hi")]


def test_refuse_sends_nothing() -> None:
    s = ChatSession()
    history = conversation((words(20), words(20)))
    result = s.admit(history, "hi", count, 30, overflow="refuse", max_tokens=1)
    assert isinstance(result, Refused)
    assert "not sent" in result.error and "44 tokens" in result.error
    assert "(this message alone)" not in result.error


def test_a_lone_message_too_long_is_refused_whatever_the_policy() -> None:
    s = ChatSession()
    for overflow in ("ask", "drop-oldest", "refuse"):
        result = s.admit([], words(40), count, 30, overflow=overflow, max_tokens=1)
        assert isinstance(result, Refused), overflow
        assert "(this message alone) takes 41 tokens" in result.error
        assert "window holds 30" in result.error


def test_warning_when_the_reply_cannot_reach_max_tokens() -> None:
    s = ChatSession()
    result = s.admit([], words(19), count, 30, overflow="ask", max_tokens=20)
    assert isinstance(result, Accepted) and result.prompt_tokens == 20
    assert result.warning is not None
    assert "can be at most 10 tokens, not max_tokens=20" in result.warning
    roomy = s.admit([], words(19), count, 30, overflow="ask", max_tokens=10)
    assert isinstance(roomy, Accepted) and roomy.warning is None


def test_accepting_a_message_moves_the_context_start() -> None:
    s = ChatSession()
    s.turns = conversation(("a", "b"), ("c", "d"))
    s.add_user_turn("e", turns_sent=3)  # the first pair was dropped to fit
    assert s.turns[-1] == Message("user", "e") and s.context_start == 2
    assert s.pending() == [Message("user", "c"), Message("assistant", "d"), Message("user", "e")]
    assert s.in_context() == s.turns[2:]


def test_editing_forks_and_the_send_truncates() -> None:
    s = ChatSession()
    s.turns = conversation(("first", "one"), ("second", "two"), ("third", "three"))
    s.figures = {1: FIG, 3: FIG, 5: FIG}
    positions = [p for p, _ in s.user_turns()]
    assert positions == [0, 2, 4]
    assert s.edit(2) == 3  # "two", "third", "three" go
    assert s.pending() == conversation(("first", "one"))  # the edit follows these only
    s.truncate(s.fork_at or 0)
    s.add_user_turn("second, edited", turns_sent=3)
    assert [m.content for m in s.turns] == ["first", "one", "second, edited"]
    assert s.figures == {1: FIG} and s.fork_at is None


def test_regenerate_sends_the_last_user_turn_again() -> None:
    s = ChatSession()
    assert s.regenerate() is None  # nothing said yet
    s.turns = conversation(("first", "one"), ("second", "two"))
    assert s.regenerate() == "second"
    assert s.fork_at == 2
    assert s.pending() == conversation(("first", "one"))
    s.truncate(2)
    s.add_user_turn("second", turns_sent=3)
    s.add_reply("two, again", FIG)
    assert [m.content for m in s.turns] == ["first", "one", "second", "two, again"]
    assert s.last_reply() == "two, again" and s.figures == {3: FIG}


def test_pending_ignores_a_context_start_past_a_fork() -> None:
    s = ChatSession()
    s.turns = conversation(("a", "b"), ("c", "d"), ("e", "f"))
    s.context_start = 4
    s.edit(2)  # back before the context start: the whole branch before the fork is sent
    assert s.pending() == conversation(("a", "b"))


def test_start_over_and_restore() -> None:
    s = ChatSession("one")
    s.turns = conversation(("a", "b"))
    s.context_start, s.fork_at = 1, 0
    s.start_over("two")
    assert (s.turns, s.context_start, s.fork_at, s.system_prompt) == ([], 0, None, "two")
    assert s.in_context() == [Message("system", "two")]
    s.restore(conversation(("x", "y")), {1: FIG}, "")
    assert s.in_context() == conversation(("x", "y")) and s.figures == {1: FIG}
