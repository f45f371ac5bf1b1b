"""Errors meant for the user: one line that names the problem and the way out."""

from __future__ import annotations


class TuiInferError(Exception):
    """Base for errors whose message is shown to the user as it is."""


class ConfigError(TuiInferError):
    pass


class ModelFileError(TuiInferError):
    """A model file that cannot be used: missing, not a GGUF, truncated, hostile."""


class ModelNotFoundError(TuiInferError):
    pass


class ContextOverflowError(TuiInferError):
    """The prompt would not fit the context window; nothing was truncated."""

    def __init__(self, message: str, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
