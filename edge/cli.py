"""The ``cryedge`` command line.

Each module that offers commands has ``add_commands(subparsers)`` and keeps its heavy imports
(mediapipe, LiteRT, cv2) inside functions, so ``cryedge --help`` stays fast. Host-side commands
(convert, train, dataset) come from the ``cryedge.commands`` entry-point group, so that ``edge``
never imports ``convert``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from importlib.metadata import entry_points

from edge import __version__, installed, logs, native
from edge.errors import (
    CryedgeError,
    InstallError,
    ThreadFault,
    error_in_one_line,
    innermost_in_cryedge,
    mask_password,
    os_error_line,
)

COMMAND_MODULES = (
    "edge.landmarks_cli",
    "edge.bundles.cli",
    "edge.daemon",
    "edge.config",
    "edge.service",
)

log = logging.getLogger(__name__)

# an error no code path expected (a bug): sysexits.h's EX_SOFTWARE, not one of the codes systemd is told not to
# restart after (RestartPreventExitStatus=3 4 8), since a restart may well get past it
UNEXPECTED_ERROR_EXIT_CODE = 70


def add_commands_of(module_names, subparsers) -> None:
    """Let each named module add its subcommands; a module that is not there is skipped."""
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.add_commands(subparsers)


class Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose usage errors mask passwords: they quote what was typed, and
    ``--brokr mqtt://user:secret@host`` came back whole in "unrecognized arguments", into the journal."""

    def error(self, message: str):
        super().error(mask_password(message))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cryedge", description="Cry detection on the edge.")
    parser.add_argument("--version", action="version", version=f"cryedge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument(
        "--native-log", action="store_true",
        help="let MediaPipe's and LiteRT's own INFO/WARNING lines through to stderr (hidden by default; "
             "also with -vv or CRYEDGE_NATIVE_LOG=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands_of(COMMAND_MODULES, subparsers)
    for entry in entry_points(group="cryedge.commands"):
        try:
            entry.load()(subparsers)
        except ModuleNotFoundError:
            log.debug("commands from %s are not installed", entry.value)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports the command modules, and so pydantic and numpy
    except (ImportError, SyntaxError) as error:
        print(f"cryedge: {installed.broken_import_line(error)}", file=sys.stderr)
        return InstallError.exit_code
    except KeyboardInterrupt:  # Ctrl-C in the first half second drew the traceback of an import
        return 130
    args = parser.parse_args(argv)
    native_log = args.native_log or args.verbose > 1 or os.environ.get("CRYEDGE_NATIVE_LOG") == "1"
    # the native libraries' per-frame lines would flood the journal; fd 2 goes through a filter
    with contextlib.nullcontext() if native_log else native.NativeLogFilter():
        logs.configure(args.verbose)
        try:
            return int(args.handler(args) or 0)
        except CryedgeError as error:
            # a camera's URL given where a file was expected came back with its password in the line
            print(f"cryedge: {mask_password(str(error))}", file=sys.stderr)
            return error.exit_code
        except OSError as error:  # an output that cannot be written (a folder that is a file, read-only, disk full)
            log.debug("%s", error, exc_info=True)
            print(f"cryedge: {mask_password(os_error_line(error))}", file=sys.stderr)
            return CryedgeError.exit_code
        except KeyboardInterrupt:
            return 130
        except (ImportError, SyntaxError) as error:  # the same at every start: the install, not a reason to restart
            log.debug("import failed", exc_info=True)
            print(f"cryedge: {mask_password(installed.broken_import_line(error))}", file=sys.stderr)
            return InstallError.exit_code
        except Exception as error:  # a bug: one line (the traceback with -vv), and a code systemd restarts after
            log.debug("unexpected error", exc_info=True)
            print(f"cryedge: {mask_password(unexpected_error_line(error))}", file=sys.stderr)
            return UNEXPECTED_ERROR_EXIT_CODE


def unexpected_error_line(error: BaseException) -> str:
    """An error no code path expected, in one line: where in cryedge it was raised and ``error_in_one_line``.

    An error of another thread (``ThreadFault``) is told by its own type and place, and the thread's name."""
    import traceback

    thread = ""
    if isinstance(error, ThreadFault):
        thread, error = f" in thread {error.thread}", error.error
    frames = traceback.extract_tb(error.__traceback__)
    ours = innermost_in_cryedge(frames)
    where = ""
    if ours is not None:
        frame, path = ours
        where = f" at {path}:{frame.lineno}"
    elif frames:
        where = f" at {frames[-1].filename}:{frames[-1].lineno}"
    return (f"unexpected error{thread}{where}: {error_in_one_line(error)} (a bug in cryedge: please report it with "
            "the output of -vv)")


if __name__ == "__main__":
    sys.exit(main())
