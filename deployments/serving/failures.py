"""What a failure may say outside the process: to a client, in ``/health``.

Exceptions carry file paths (``[Errno 13] Permission denied: '/app/var/feedback.sqlite'``),
addresses and bytes from elsewhere; those go to the log where the failure is caught, and answers
say only the kind of failure (issue 19: ``/health`` showed paths and raw error strings).
"""

from __future__ import annotations

import re
import sqlite3

__all__ = ["failure_text", "without_paths"]

# An absolute path of three or more parts: only its last two (a model's directory and file) stay.
_PATH = re.compile(r"(?:/[^/\s'\"]+)+(/[^/\s'\"]+/[^/\s'\"]+)")


def failure_text(exc: BaseException) -> str:
    """The exception's kind; for SQLite also its own fixed message (``database is locked``,
    ``database or disk is full``), which names no file and says what an operator must fix."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        return f"{name}: {exc}"
    return type(exc).__name__


def without_paths(text: str) -> str:
    """``text`` with absolute paths cut to their last two parts (``models/ranker.txt``)."""
    return _PATH.sub(lambda m: m.group(1).lstrip("/"), text)
