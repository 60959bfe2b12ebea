"""An unexpected error in one of the daemon's other threads ends the run as an error of its frame loop does: the
running episode ends (cry_end with reason "error", the retained state OFF), the command says so in one line that
names the thread, with no traceback, and exits with 70 (systemd restarts it).

Before, such a thread printed a traceback and was dead while the daemon looked alive, or went on without what it
was doing: a cry_start lost, every alert after it never sent (paho's network thread, stdout's writer), a monitor
that no longer heard.

No real input was found that makes one of these threads raise: each test injects one fault into `cryedge run`
(a subprocess, the bundled demo clip and models, a real mosquitto) by replacing one function that runs on the
thread with one that raises once, when ``WHEN`` holds (FAULT below). Everything else is real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_daemon_faults import assert_episode_ended_by_the_error

from edge.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "edge" / "data" / "demo.mp4"  # synthetic: a photo animated, crying from 5 s to 14 s, with sound

# argv: MODULE:CLASS.METHOD WHEN cryedge-arguments...; the method raises the first time WHEN (a Python expression
# of ``self``, ``args`` and ``calls``, the number of calls so far) is true
FAULT = """
import importlib, os, sys
from edge.cli import main

target, when = sys.argv[1], sys.argv[2]
module, _, qualified = target.partition(":")
owner_name, _, method = qualified.rpartition(".")
owner = getattr(importlib.import_module(module), owner_name)
original = getattr(owner, method)
calls, raised = 0, False

def failing(self, *args, **kwargs):
    global calls, raised
    calls += 1
    if not raised and eval(when):
        raised = True
        raise RuntimeError(os.environ.get("FAULT_MESSAGE") or f"a fault in {qualified}\\nits cause, on a second line")
    return original(self, *args, **kwargs)

setattr(owner, method, failing)
sys.exit(main(sys.argv[3:]))
"""


def run_with_fault(target: str, when: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAULT, target, when, "run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


# MediaPipe's way: a first line that says little, its cause on the next, then kilobytes; a camera's URL in it whose
# password the 400-character cut falls inside (a cut made before masking would leave "rtsp://viewer:hunter2-th...")
LONG_FAULT = ("CalculatorGraph::Run() failed in Run: \n" + "x" * 330
              + " rtsp://viewer:hunter2-the-long-secret@cam.lan/live\n" + "y" * 5000)


def assert_the_long_fault_is_one_masked_line(stderr: str, start: str) -> None:
    """What the journal holds of LONG_FAULT: one line, masked, its message cut to at most 400 characters."""
    assert "Traceback" not in stderr and "hunter2" not in stderr and "yyy" not in stderr, stderr
    said = [line for line in stderr.splitlines() if "RuntimeError" in line or "xxx" in line]
    assert len(said) == 1 and said[0].startswith(start), stderr
    message = said[0].split(": RuntimeError: ", 1)[1]
    masked = "CalculatorGraph::Run() failed in Run: " + "x" * 330 + " rtsp://viewer:********@"
    assert message.startswith(masked), message
    assert len(message) <= 400, len(message)


def config_file(folder: Path) -> Path:
    path = folder / "cryedge.toml"
    path.write_text(f'[device]\nid = "nursery"\n[health]\nenabled = false\n[outbox]\npath = "{folder / "outbox.sqlite3"}"\n')
    return path


def assert_one_line_and_exit_70(out: subprocess.CompletedProcess, thread: str, method: str) -> None:
    assert out.returncode == 70, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("cryedge: ")]
    assert len(said) == 1, out.stderr
    assert f"unexpected error in thread {thread} at edge/" in said[0], said
    # the message's lines joined: the cause is on its second line
    assert f"RuntimeError: a fault in {method} its cause, on a second line" in said[0], said


def test_a_fault_on_the_publishers_thread_mid_cry_ends_the_episode_and_exits_70(mosquitto, tmp_path):
    """The publisher's thread raising on the first crying state it handles. Before: a traceback in the journal, the
    run went on to the clip's end and exited 0 (what the handler was doing lost: had it been the cry_start, the alert
    was never sent)."""
    from mqtt import Subscriber

    with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
        out = run_with_fault("edge.publish:MqttPublisher._handle_state", "args[0].crying", "--fast", "--config",
                             str(config_file(tmp_path)), "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
        assert_episode_ended_by_the_error(subscriber, tmp_path)
    assert_one_line_and_exit_70(out, "cryedge-publisher", "MqttPublisher._handle_state")


def test_a_fault_on_the_publishers_thread_handling_the_cry_start_still_delivers_it_before_its_end(mosquitto, tmp_path):
    """The publisher's thread raising as it takes the cry_start. Before: the start was neither sent nor stored, so
    Home Assistant got the cry_end (reason "error") and the OFF with no ON before them, and the parent no alert."""
    from mqtt import Subscriber

    with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
        out = run_with_fault("edge.publish:MqttPublisher._handle_event", "args[0].kind == 'start'", "--fast",
                             "--config", str(config_file(tmp_path)), "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
        assert_episode_ended_by_the_error(subscriber, tmp_path)
    events = [(p["event_type"], p.get("reason")) for p in subscriber.json("cryedge/nursery/event")]
    assert events == [("cry_start", None), ("cry_end", "error")], events
    assert_one_line_and_exit_70(out, "cryedge-publisher", "MqttPublisher._handle_event")


def test_a_fault_in_a_paho_callback_mid_cry_ends_the_episode_and_its_end_still_reaches_the_broker(mosquitto, tmp_path):
    """paho's network thread, raising in our on_message when Home Assistant says "online" during a cry. Before: paho
    re-raised it, its network thread died with a traceback, and from then on nothing was sent, acknowledged or
    reconnected while the daemon ran on: the cry_end stayed in the outbox, the retained state ON, exit 0."""
    from mqtt import Subscriber

    process = subprocess.Popen(
        [sys.executable, "-c", FAULT, "edge.publish:MqttPublisher._on_message", "args[2].topic == 'homeassistant/status'",
         "run", "--config", str(config_file(tmp_path)), "--broker", f"mqtt://127.0.0.1:{mosquitto.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
            subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_start" in m.payload, timeout=60)
            subscriber.publish("homeassistant/status", "online")  # real time: the cry goes on for 9 s of the clip
            stdout, stderr = process.communicate(timeout=60)
            assert_episode_ended_by_the_error(subscriber, tmp_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_one_line_and_exit_70(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
                                "paho-mqtt-client-cryedge-nursery", "MqttPublisher._on_message")


def test_a_fault_on_the_stdout_writer_mid_cry_loses_only_its_line_and_exits_70(tmp_path):
    """No broker: stdout's writer raising on the cry_start's line. Before: the writer died with a traceback and every
    line after it was lost (the cry_end, the OFF), exit 0."""
    out = run_with_fault("edge.publish:StdoutPublisher._emit", "b'cry_start' in args[0]", "--fast", "--config",
                         str(config_file(tmp_path)))
    assert_one_line_and_exit_70(out, "cryedge-stdout", "StdoutPublisher._emit")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    events = [(line["event_type"], line.get("reason")) for line in lines if line["type"] == "event"]
    assert events == [("cry_end", "error")], out.stdout  # its start was the line lost, which the exit line says
    assert lines[-1]["type"] == "state" and lines[-1]["crying"] == "OFF"


def test_a_fault_on_the_hearing_thread_mid_cry_with_no_camera_ends_the_episode_and_exits_70(mosquitto, tmp_path):
    """No camera; the thread reading the microphone's samples (the sound file's, here) raising 10 s into the sound,
    mid-cry. Before: a traceback, and the monitor heard nothing more until its stall timer reopened the sound."""
    from mqtt import Subscriber

    with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
        out = run_with_fault("edge.audio_source:SoundPipe._deliver", "calls == 100", "--fast", "--source", "none",
                             "--audio-source", str(DEMO), "--config", str(config_file(tmp_path)),
                             "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
        assert_episode_ended_by_the_error(subscriber, tmp_path)
    assert_one_line_and_exit_70(out, "cryedge-audio", "SoundPipe._deliver")


def test_the_fault_of_a_thread_is_told_by_its_own_type_and_place_and_the_threads_name():
    import threading

    from edge.cli import unexpected_error_line
    from edge.errors import ThreadFault

    caught = []
    thread = threading.Thread(target=lambda: caught.append(_raising()), name="cryedge-example")
    previous = threading.excepthook
    threading.excepthook = lambda args: caught.append(args.exc_value)
    try:
        thread.start()
        thread.join()
    finally:
        threading.excepthook = previous
    line = unexpected_error_line(ThreadFault("cryedge-example", caught[0]))
    assert line.startswith("unexpected error in thread cryedge-example at edge/errors.py:"), line
    assert ": TypeError: " in line and "\n" not in line


def _raising():
    from edge.errors import mask_password

    return mask_password(None)  # raises TypeError in re, called from edge/errors.py


def test_the_daemon_watches_the_threads_only_while_it_is_open(tmp_path):
    """threading.excepthook is the daemon's between open() and close(), and as it was before and after."""
    import threading

    from edge.config import load_config
    from edge.daemon import Daemon

    before = threading.excepthook
    config = load_config(config_file(tmp_path), {"source": {"type": "none"}, "audio": {"source": {"type": "file",
                                                                                                  "path": str(DEMO)}}})
    with Daemon(config) as daemon:
        assert threading.excepthook == daemon._thread_ended
    assert threading.excepthook is before


# ----------------------------------------------------------------------------- threads that recover by design


@pytest.fixture
def logged(caplog):
    """The lines cryedge's log (edge.logs.configure, below -vv: OneLineErrors) makes of what is logged, INFO and up."""
    import logging

    from edge.logs import OneLineErrors

    caplog.handler.setFormatter(OneLineErrors(logging.Formatter("%(levelname)s %(name)s: %(message)s")))
    caplog.set_level(logging.INFO)
    return lambda: caplog.text.splitlines()


def test_a_health_page_that_fails_is_a_500_and_one_line_without_a_traceback(logged):
    """A fault of one page must not stop the monitor (exit 70 would restart it at every probe); before, it was said
    with its traceback."""
    import urllib.error
    import urllib.request

    from edge.health import HealthServer

    def broken():
        raise RuntimeError("a fault of the page\nits cause")

    with HealthServer(broken, port=0) as server:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10)
    assert answer.value.code == 500
    said = [line for line in logged() if not line.startswith("INFO")]
    assert said == ["ERROR edge.health: health: /health failed: RuntimeError: a fault of the page its cause"], said


def test_a_snapshot_that_cannot_be_made_is_one_line_and_the_next_one_is_made(logged):
    import time

    import numpy as np

    from edge.config import SnapshotConfig
    from edge.pictures import SnapshotWorker
    from edge.records import AlarmEvent

    delivered = []

    def deliver(jpeg: bytes, event: AlarmEvent) -> None:
        if not delivered:
            delivered.append(None)
            raise RuntimeError("a fault of the picture\nits cause")
        delivered.append(event.event_id)

    worker = SnapshotWorker(SnapshotConfig(enabled=True), deliver)
    frame = np.full((480, 640, 3), 90, np.uint8)
    for event_id in ("ep1", "ep2"):
        worker.offer(frame, None, AlarmEvent("start", event_id, t=1.0, wall_time=time.time(), probability=0.9))
    worker.close(timeout=10)
    assert delivered == [None, "ep2"]
    said = [line for line in logged() if not line.startswith("INFO")]
    assert said == ["ERROR edge.pictures: snapshot of start ep1 failed: RuntimeError: a fault of the picture its cause"], \
        said


def test_a_long_multi_line_snapshot_fault_with_a_password_is_one_masked_journal_line(mosquitto, tmp_path):
    """`cryedge run` under systemd (its stderr the journal's stream, as $JOURNAL_STREAM says), the picture of the
    demo's cry failing with LONG_FAULT. Before, the line was cut at 400 characters but never masked: the camera's
    password went into the journal."""
    config = config_file(tmp_path)
    config.write_text(config.read_text() + "[snapshot]\nenabled = true\n")
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        env = {**os.environ, "PYTHONPATH": str(REPO), "FAULT_MESSAGE": LONG_FAULT,
               "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        out = subprocess.run([sys.executable, "-c", FAULT, "edge.publish:MqttPublisher.publish_snapshot", "True", "run",
                              "--fast", "--config", str(config), "--broker", f"mqtt://127.0.0.1:{mosquitto.port}"],
                             stdout=subprocess.DEVNULL, stderr=journal, timeout=120, cwd=REPO, env=env)
        journal.seek(0)
        stderr = journal.read()
    assert out.returncode == 0, stderr  # a picture that fails does not stop the monitor
    assert_the_long_fault_is_one_masked_line(stderr, "<3>edge.pictures: snapshot of start ")


def test_a_long_multi_line_health_page_fault_with_a_password_is_one_masked_line(tmp_path):
    """`cryedge run` in a terminal's place (stderr a pipe), /health failing with LONG_FAULT while the demo plays:
    a 500, and one line. Before, that line was not masked either."""
    import signal
    import time
    import urllib.error
    import urllib.request

    from mqtt import free_port

    port = free_port()
    config = config_file(tmp_path)
    config.write_text(config.read_text().replace("[health]\nenabled = false\n", f"[health]\nport = {port}\n"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAULT_MESSAGE": LONG_FAULT}
    process = subprocess.Popen([sys.executable, "-c", FAULT, "edge.health:HealthApp.answer", "True", "run", "--config",
                                str(config)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    status, deadline = None, time.monotonic() + 60
    try:
        while status is None and process.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                status = 200
            except urllib.error.HTTPError as error:
                status = error.code
            except OSError:
                time.sleep(0.2)  # not listening yet
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert status == 500 and process.returncode == 0, stderr
    assert_the_long_fault_is_one_masked_line(stderr, "ERROR edge.health: health: /health failed: RuntimeError: ")


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that ended a thread: under the daemon, each stops it (exit 70); before, a traceback."""
    import threading

    caught = []
    monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(args.exc_value))
    return caught


def test_a_sound_pipe_closed_under_its_reader_is_its_end_not_a_dead_thread(thread_errors):
    """A camera's session closed while its sound was being read (close() waits 2 s for the reader, then closes the
    pipe): the reader died of EBADF, which under the daemon would now stop it; it is the end of that sound."""
    import time

    from edge.audio_source import SoundPipe

    read, write = os.pipe()
    pipe = SoundPipe(os.fdopen(read, "rb", buffering=0, closefd=False), 16000, live=True, block=160,
                     buffer_blocks=10, start=time.monotonic(), on_overrun=lambda: None)
    os.close(read)  # under the reader, blocked in read() or not yet started
    try:
        os.write(write, bytes(320))  # wakes a reader blocked in read(): its next read() finds the descriptor closed
    except BrokenPipeError:
        pass  # it had not started: no reader holds the pipe
    os.close(write)
    deadline = time.monotonic() + 10
    while not pipe.drained and time.monotonic() < deadline:
        pipe.read(timeout=0.1)
    pipe.stop()
    assert pipe.drained and thread_errors == []


def test_a_tools_stderr_closed_under_its_reader_is_its_end_not_a_dead_thread(thread_errors):
    import io

    from edge.audio_source import ToolErrors

    stderr = io.BufferedReader(io.BytesIO(b"first words\n"))
    stderr.close()
    errors = ToolErrors("ffmpeg")
    errors.watch(stderr)
    errors.join(5)
    assert errors.lines == [] and thread_errors == []


def test_a_fault_as_the_publisher_closes_after_a_stop_mid_cry_still_ends_what_home_assistant_shows(mosquitto,
                                                                                                    tmp_path):
    """SIGTERM mid-cry, and the publisher's thread raising as it closes (making the final OFF). Before: the close
    stopped at the fault: no OFF and no offline from cryedge (the retained state stayed ON, under the last will, until
    the next run, and for ever with none), the cry_end's acknowledgement left untaken. Now the fault is the exit
    line and the close goes on."""
    from mqtt import Subscriber

    process = subprocess.Popen(
        [sys.executable, "-c", FAULT, "edge.publish:MqttPublisher._final_state", "True", "run", "--config",
         str(config_file(tmp_path)), "--broker", f"mqtt://127.0.0.1:{mosquitto.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
            subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_start" in m.payload, timeout=60)
            process.send_signal(signal.SIGTERM)  # real time: the clip's cry goes on for 9 s
            stdout, stderr = process.communicate(timeout=60)
            subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_end" in m.payload, timeout=5)
            subscriber.wait_for("cryedge/nursery/availability", lambda m: m.payload == b"offline", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_one_line_and_exit_70(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
                                "cryedge-publisher", "MqttPublisher._final_state")
    events = [(p["event_type"], p.get("reason")) for p in subscriber.json("cryedge/nursery/event")]
    assert events == [("cry_start", None), ("cry_end", "shutdown")], events
    assert subscriber.json("cryedge/nursery/state")[-1]["crying"] == "OFF"
    assert subscriber.payloads("cryedge/nursery/availability")[-1] == "offline"
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:  # acknowledged, not sent again by the next run
        assert len(outbox) == 0 and list(outbox.open_episodes()) == []
