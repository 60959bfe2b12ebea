"""Logging set-up that reads well both in a terminal and in the systemd journal."""

from __future__ import annotations

import logging
import os
import sys

from edge.errors import error_in_one_line

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


class CurrentStderrHandler(logging.StreamHandler):
    """Writes each record to whatever ``sys.stderr`` is at that moment, not to the one set up with.

    A handler holding the stream object it was made with writes into a closed file once that object
    is closed or replaced (pytest's capture after a test, the native log filter's stream after a run):
    every later line became "--- Logging error --- ValueError: I/O operation on closed file".
    """

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    def setStream(self, stream):  # noqa: N802 - logging's name; it follows sys.stderr instead
        return None


class OneLineErrors(logging.Formatter):
    """``formatter``'s lines, a record's exception in the same line (``error_in_one_line``) instead of a traceback.

    Every logged exception is told this way: cryedge's own (``log.exception``, ``exc_info=``), and the libraries'
    errors of their threads (waitress: "Exception while serving /live", for a viewer's stream that failed), each a
    traceback in the journal before, many lines for one fault. -vv keeps the traceback."""

    def __init__(self, formatter: logging.Formatter):
        super().__init__()
        self.formatter = formatter

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record = logging.makeLogRecord(record.__dict__)  # a copy: other handlers see the record as it was
            record.msg, record.args = f"{record.getMessage()}: {error_in_one_line(error)}", ()
            record.exc_info = record.exc_text = None
        return self.formatter.format(record)


def configure(verbosity: int = 0, stream=None) -> None:
    """Log to ``stream`` (default: the current stderr): journal prefixes under systemd, times on a terminal, else plain.

    Below -vv, a logged exception is one line (``OneLineErrors``)."""
    handler = logging.StreamHandler(stream) if stream is not None else CurrentStderrHandler()
    stream = stream or sys.stderr
    if stream_is_journal(stream):
        formatter = JournalFormatter()
    elif stream is not None and stream.isatty():
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    else:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter if verbosity > 1 else OneLineErrors(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity == 1 else logging.WARNING)
    logging.getLogger("edge").setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logging.getLogger("convert").setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
