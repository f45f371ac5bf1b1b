"""Messages the chat screen's workers post. Past tense: each says what happened.

Workers run in threads and never touch widgets; they post these (post_message is
thread-safe) and the screen's handlers, on the UI thread, update the widgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from tui_infer.core.inference.types import Message as ChatMessage

if TYPE_CHECKING:
    from tui_infer.core.inference.memory import MemorySnapshot
    from tui_infer.core.inference.types import ChatEngine, GenerationStats, KvCacheUsage, TokenChunk


class ModelLoaded(Message):
    def __init__(self, engine: ChatEngine, path: Path, load_s: float, kv: KvCacheUsage) -> None:
        super().__init__()
        self.engine = engine
        self.path = path
        self.load_s = load_s
        self.kv = kv


class ModelLoadFailed(Message):
    def __init__(self, path: Path | None, error: str) -> None:
        super().__init__()
        self.path = path
        self.error = error


class PromptAccepted(Message):
    """The conversation fits the context window; generation starts now."""

    def __init__(
        self,
        text: str,
        turns: list[ChatMessage],
        prompt_tokens: int,
        n_ctx: int,
        dropped_turns: int,
        warning: str | None,
        fork_at: int | None = None,
    ) -> None:
        super().__init__()
        self.fork_at = fork_at  # an edit or a regenerate: history from here is replaced
        self.text = text
        self.turns = turns  # the user/assistant turns sent, the new user turn last
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.dropped_turns = dropped_turns
        self.warning = warning


class PromptOverflowed(Message):
    """Nothing was sent: the conversation does not fit, and the user is to choose."""

    def __init__(self, text: str, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__()
        self.text = text
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class ContextCounted(Message):
    """The conversation's tokens, counted in a worker (shown on the context gauge)."""

    def __init__(self, tokens: int, n_ctx: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.n_ctx = n_ctx


class TemplateFailed(Message):
    """The model's chat template failed or ran past a bound: nothing was sent."""

    def __init__(self, text: str, error: str) -> None:
        super().__init__()
        self.text = text
        self.error = error


class PromptRefused(Message):
    """Nothing was sent: the prompt does not fit (or there is no model)."""

    def __init__(self, text: str, error: str) -> None:
        super().__init__()
        self.text = text
        self.error = error


class TokensStreamed(Message):
    """Text decoded since the previous TokensStreamed (the worker buffers ~50 ms of it)."""

    def __init__(self, text: str, last: TokenChunk) -> None:
        super().__init__()
        self.text = text
        self.last = last


class GenerationFinished(Message):
    def __init__(self, stats: GenerationStats, text: str) -> None:
        super().__init__()
        self.stats = stats
        self.text = text


class GenerationFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ConversationReset(Message):
    def __init__(self, kv: KvCacheUsage | None) -> None:
        super().__init__()
        self.kv = kv


class MemorySampled(Message):
    def __init__(self, snapshot: MemorySnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        # Only the newest sample matters: an older one still queued is dropped.
        return isinstance(message, MemorySampled)


class WorkerFailed(Message):
    """A worker raised something unexpected; the app turns it into a notification."""

    def __init__(self, worker_name: str, error: BaseException | None) -> None:
        super().__init__()
        self.worker_name = worker_name
        self.error = error
