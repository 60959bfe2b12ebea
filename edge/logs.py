"""Logging set-up that reads well both in a terminal and in the systemd journal."""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities, as journald reads them from a "<N>" line prefix (sd-daemon(3))
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stream_is_journal(stream, environ=os.environ) -> bool:
    """True when ``stream`` is the journal's socket, as systemd announces in $JOURNAL_STREAM."""
    expected = environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; journald adds the time and strips the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def configure(verbosity: int = 0, stream=None) -> None:
    """Log to ``stream`` (stderr): journal prefixes under systemd, times on a terminal, else plain."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream):
        handler.setFormatter(JournalFormatter())
    elif stream.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity == 1 else logging.WARNING)
    logging.getLogger("edge").setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logging.getLogger("convert").setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
