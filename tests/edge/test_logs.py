"""Logs carry syslog priority prefixes when stdout/stderr is the journal, and no colour or times otherwise."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from edge import logs


def journal_stream_of(file) -> str:
    st = os.fstat(file.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_the_stream_systemd_names_in_journal_stream_is_the_journal(tmp_path):
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "other", "w") as other:
        environ = {"JOURNAL_STREAM": journal_stream_of(journal)}
        assert logs.stream_is_journal(journal, environ)
        assert not logs.stream_is_journal(other, environ)  # e.g. stderr redirected by the user
        assert not logs.stream_is_journal(journal, {})  # not under systemd
        assert not logs.stream_is_journal(io.StringIO(), environ)  # no file descriptor


def test_journal_lines_carry_priority_prefixes_for_every_line():
    formatter = logs.JournalFormatter()

    def line(level: int, message: str) -> str:
        return formatter.format(logging.LogRecord("edge.source", level, __file__, 1, message, (), None))

    assert line(logging.INFO, "camera opened") == "<6>edge.source: camera opened"
    assert line(logging.WARNING, "no frame for 5 s") == "<4>edge.source: no frame for 5 s"
    assert line(logging.ERROR, "reopen failed") == "<3>edge.source: reopen failed"
    assert line(logging.DEBUG, "a\nb") == "<7>edge.source: a\n<7>b"  # journald reads each line on its own


@pytest.mark.parametrize("under_journal", [True, False])
def test_a_process_whose_stderr_is_the_journal_writes_prefixes(tmp_path, under_journal):
    """A real child process whose stderr is a file, with $JOURNAL_STREAM naming that file or not."""
    path = tmp_path / "stderr"
    script = "import logging; from edge import logs; logs.configure(1); logging.getLogger('edge.daemon').warning('hi')"
    with open(path, "w") as stderr:
        environ = dict(os.environ)
        environ.pop("JOURNAL_STREAM", None)
        if under_journal:
            environ["JOURNAL_STREAM"] = journal_stream_of(stderr)
        subprocess.run([sys.executable, "-c", script], stderr=stderr, env=environ, check=True, timeout=60)
    text = path.read_text()
    if under_journal:
        assert text == "<4>edge.daemon: hi\n"
    else:
        assert text == "WARNING edge.daemon: hi\n"  # not a terminal: no times, no colour
        assert "\x1b[" not in text


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_still_reach_stderr_after_the_stream_logging_was_set_up_with_is_closed(capsys, root_logging):
    """cryedge's CLI run inside pytest set up logging on that test's capture stream; once pytest closed it,
    every later line (the stdout writer's among them) was "--- Logging error --- I/O operation on closed file"."""
    stream_at_setup, sys.stderr = sys.stderr, io.StringIO()
    try:
        logs.configure(0)
        replaced = sys.stderr
    finally:
        sys.stderr = stream_at_setup
    replaced.close()
    logging.getLogger("edge.publish").warning("stdout was closed by its reader")
    err = capsys.readouterr().err
    assert err == "WARNING edge.publish: stdout was closed by its reader\n"


def test_logging_with_no_stderr_at_all_is_silent(root_logging):
    """``cryedge run 2>&-``: Python has no sys.stderr; logging set-up and log lines must not raise."""
    script = "import logging; from edge import logs; logs.configure(1); logging.getLogger('edge.daemon').warning('hi')"
    run = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-c", script], timeout=60)
    assert run.returncode == 0


@pytest.mark.parametrize("verbosity", [0, 2])
def test_an_error_a_library_logs_from_its_thread_is_one_line_and_its_traceback_only_with_vv(root_logging, verbosity):
    """waitress, serving a live viewer whose stream failed (a real server and request), logged "Exception while
    serving /live" and its traceback: many lines in the journal for one fault, and a URL's password in them."""
    import http.client
    import urllib.request

    from edge.health import HttpServer

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"x"
            raise RuntimeError("cannot read rtsp://viewer:hunter2@cam.lan/live\nits cause")

        return body()

    stream = io.StringIO()
    logs.configure(verbosity, stream)
    with HttpServer(app, port=0) as server:
        with pytest.raises(http.client.IncompleteRead):  # the response ends early
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/live", timeout=10).read()
    said = stream.getvalue()
    if verbosity:
        assert "Traceback" in said
    else:
        assert said.splitlines() == ["ERROR waitress: Exception while serving /live: RuntimeError: cannot read "
                                     "rtsp://viewer:********@cam.lan/live its cause"], said
