"""One exception family; each kind maps to its own process exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``. systemd's
``RestartPreventExitStatus=`` lists the codes of errors that a restart cannot fix.
"""

import os
import re
from collections.abc import Iterable
from pathlib import Path
from traceback import FrameSummary


class CryedgeError(Exception):
    """Something the user can act on; the message says what and where."""

    exit_code = 1


class ConfigError(CryedgeError):
    """A configuration file or option is invalid (names the key and the file)."""

    exit_code = 3


class ModelError(CryedgeError):
    """A model file is missing, unreadable, or disagrees with its card or the features."""

    exit_code = 4


class SourceError(CryedgeError):
    """The camera, stream or file cannot be opened or stopped delivering frames."""

    exit_code = 5


class BrokerError(CryedgeError):
    """The MQTT broker refused the connection or cannot be reached."""

    exit_code = 6


class DataError(CryedgeError):
    """An input data file (image, video, labels, calibration set) is unusable."""

    exit_code = 7


class InstallError(CryedgeError):
    """The installed software cannot run here: a CPU without the extensions a native build needs, a
    shared library the distribution has not installed. Reinstalling fixes it; restarting does not."""

    exit_code = 8


class ThreadFault(Exception):
    """An unexpected error (a bug) that ended or broke one of the daemon's threads, raised again on the frame loop's
    thread so that it ends the way an error of the loop does: the episode ended, one line, exit code 70.

    Not a ``CryedgeError``: nothing a user can act on. ``error`` is the original exception (also ``__cause__``,
    its traceback the thread's); ``thread`` names the thread."""

    def __init__(self, thread: str, error: BaseException):
        super().__init__(f"in thread {thread}: {type(error).__name__}: {error}")
        self.thread, self.error = thread, error
        self.__cause__ = error


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (CryedgeError, ConfigError, ModelError, SourceError, BrokerError, DataError, InstallError)
}


def file_in_the_way(path: Path) -> Path | None:
    """The file at or above ``path`` that stands where a folder must be, or None if none does."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return None
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def output_through_a_file(error: OSError) -> str | None:
    """"cannot write into X: it is a file" (or "Y is a file") when ``error`` is an output path through a file;
    else None. mkdir on a file says only "File exists", and any path through a file "Not a directory"."""
    if isinstance(error, (FileExistsError, NotADirectoryError)) and isinstance(error.filename, (str, bytes, os.PathLike)):
        wanted = Path(os.fsdecode(error.filename))
        blocking = file_in_the_way(wanted)
        if blocking == wanted:
            return f"cannot write into {wanted}: it is a file"
        if blocking is not None:
            return f"cannot write into {wanted}: {blocking} is a file"
    return None


def os_error_line(error: OSError) -> str:
    """One line for an OSError that reached the command line, naming the path."""
    where = f": {error.filename}" if error.filename is not None else ""
    return output_through_a_file(error) or f"{error.strerror or error}{where}"


# ``user:password@`` at the start of a word or after ``/``, ``:``, a quote, ``=`` or a bracket: whatever the scheme,
# and with none (``file:///u:pw@x`` is shown as the path ``/u:pw@x``, ``file:u:pw@x`` as a source's name); the
# password runs to the last ``@`` before a ``/`` or a space, as FFmpeg splits it
USER_PASSWORD = re.compile(r"(?<![^\s/:'\"=(\[<,])([^\s/:@'\"]*):[^/\s]*@")


def mask_password(text: str) -> str:
    """Every ``user:password@`` in ``text`` (``scheme://user:password@``, any scheme, or a path or a name that
    holds one) with the password masked."""
    return USER_PASSWORD.sub(r"\1:********@", text)


# an error's message in its line, at most (a MediaPipe graph's error runs to kilobytes)
ERROR_MESSAGE_CHARS = 400


def error_in_one_line(error: BaseException) -> str:
    """``Type: message`` (``Type`` alone for an empty message), as an error is told in a log or exit line.

    The message's lines are joined (MediaPipe's first line is often only 'CalculatorGraph::Run() failed in Run: ',
    the cause on the next), its passwords masked (an error may quote a camera's URL), then it is cut to at most
    ``ERROR_MESSAGE_CHARS``: masked first, since a password cut from its '@' would no longer look like one."""
    message = mask_password(" ".join(str(error).split()))
    if len(message) > ERROR_MESSAGE_CHARS:
        message = message[:ERROR_MESSAGE_CHARS - 3] + "..."
    return f"{type(error).__name__}{': ' + message if message else ''}"


def innermost_in_cryedge(frames: Iterable[FrameSummary]) -> tuple[FrameSummary, str] | None:
    """The innermost of ``frames`` (``traceback.extract_tb`` or ``extract_stack``) in cryedge's own code (edge/,
    convert/), with its path from the directory that holds them (``edge/x.py``); None when none is."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packages = tuple(os.path.join(root, name) + os.sep for name in ("edge", "convert"))
    ours = [frame for frame in frames if os.path.abspath(frame.filename).startswith(packages)]
    return (ours[-1], os.path.relpath(ours[-1].filename, root)) if ours else None
