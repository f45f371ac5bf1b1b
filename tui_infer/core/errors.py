"""Errors meant for the user: one line that names the problem and the way out."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What `tui-infer` exits with (documented in the README)."""

    OK = 0
    FAILURE = 1  # failed while running (the model, the disk, an internal error)
    USAGE = 2  # usage or bad input: a flag, a file, a config value
    NOT_PRECOMPUTED = 3  # --serve store and the store has no answer
    NOT_FOUND = 4  # the model or the run named does not exist
    REJECTED_LINES = 5  # the batch finished, some input lines were rejected
    INTERRUPTED = 130  # Ctrl+C


class TuiInferError(Exception):
    """Base for errors whose message is shown to the user as it is."""

    exit_code: ExitCode = ExitCode.USAGE


class NotFoundError(TuiInferError):
    """A model, run or other named thing that does not exist."""

    exit_code = ExitCode.NOT_FOUND


class RunTimeFailure(TuiInferError):
    """The input was fine; running it failed (decoding, a full disk, ...)."""

    exit_code = ExitCode.FAILURE


class ConfigError(TuiInferError):
    pass


class ModelFileError(TuiInferError):
    """A model file that cannot be used: missing, not a GGUF, truncated, hostile."""


class ModelNotFoundError(NotFoundError):
    pass


class ContextOverflowError(TuiInferError):
    """The prompt would not fit the context window; nothing was truncated."""

    def __init__(self, message: str, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
