"""Tracebacks go to a rotating log file in the state directory, never to the user's
terminal: the user sees one line that says where the details are."""

from __future__ import annotations

import logging
import logging.handlers
import traceback
from pathlib import Path


class _QuietHandler(logging.handlers.RotatingFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        """A log that cannot be written (a full disk) says nothing: the user's one line
        still goes out, and no traceback of the logging module's own."""


def record(exc: BaseException, log_file: Path, context: str = "") -> Path | None:
    """Append the traceback of `exc` to `log_file` (1 MB, 3 old files kept).

    Returns the file, or None when it cannot be written (a read-only or full disk):
    the one-line message must still reach the user.
    """
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _QuietHandler(log_file, maxBytes=1 << 20, backupCount=3, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("tui_infer.crash")
    log.propagate = False
    log.setLevel(logging.ERROR)
    log.addHandler(handler)
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("%s\n%s", context or "internal error", text.rstrip())
    finally:
        log.removeHandler(handler)
        handler.close()
    return log_file


def one_line(exc: BaseException) -> str:
    """`ValueError: message`, the first line of it only."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
