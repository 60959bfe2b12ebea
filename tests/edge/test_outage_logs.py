"""A source gone for the night is said once when it goes and once when it is back, not at every reopen.

Real sources on loopback: a network microphone (test_audio_only's HttpMicrophone: a WAV over HTTP, refusing while
stopped) through the bundled audio model, and an MJPEG camera (tests/streams.py) through OpenCV.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
from test_audio_only import HttpMicrophone

from edge.config import load_config

SECRET = "the-camera's-password"


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def network_microphone(url: str):
    """A config with no camera and a stream microphone at ``url`` quick to give up and to reopen: 2 s, then 0.5-1 s."""
    return load_config(None, {"source": {"type": "none"}, "audio": {"source": {
        "type": "stream", "url": url, "stall_seconds": 2.0, "reopen_min_seconds": 0.5, "reopen_max_seconds": 1.0}}})


def messages(caplog, logger: str) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger and r.levelno >= logging.INFO]


def test_a_network_microphone_that_refuses_is_said_once_gone_and_once_back_not_at_every_reopen(caplog):
    """Before, each reopen (every reopen_max_seconds, here 1 s, all night) logged "listening: ..." again: ffmpeg
    starts before the stream refuses it, so each open looked like the sound back."""
    from edge.audio import open_hearing

    caplog.set_level(logging.INFO, logger="edge.audio")
    microphone = HttpMicrophone()  # not started: its port refuses
    config = network_microphone(microphone.url)
    hearing = open_hearing(config, None)
    monitor = hearing.monitor
    try:
        for _ in range(2):  # missing at start; then gone mid-stream and refusing again
            reconnects = monitor.status.reconnects
            assert wait_for(lambda reconnects=reconnects: monitor.status.reconnects >= reconnects + 4, 30), monitor.status
            chunks = monitor.chunks
            microphone.start()
            assert wait_for(lambda chunks=chunks: monitor.chunks > chunks + 5, 30), monitor.status
            microphone.stop()
    finally:
        hearing.close()
        microphone.stop()
    said = messages(caplog, "edge.audio")
    name = f"stream:{microphone.url}"
    listening = [message for level, message in said if message.startswith("listening:")]
    assert listening[0] == f"listening: {name}"
    assert len(listening) == 3 and all(m.startswith(f"listening: {name} again, after ") for m in listening[1:]), said
    warnings = [message for level, message in said if level == "WARNING"]
    # each outage: its refusal once (and the stream's end, the second time, and at the close), whatever the reopens
    assert 2 <= len(warnings) <= 4 and sum("Connection refused" in w for w in warnings) == 2, said
    assert len(said) <= 3 + 4, said  # at least 8 reopens and 2 outages, said in at most seven lines


def test_a_network_microphone_whose_reopen_is_refused_says_the_reopen_failed_not_that_capture_stopped(caplog):
    """The microphone stops mid-stream and refuses its reopens. Before, the refused reopen read "sound: NAME: capture
    stopped: pipe:3: Connection refused": the capture had stopped once, the line was about a reopen that failed. Now
    as the camera's: the symptom once, then the reopen's reason, naming the address refused, not ffmpeg's pipe."""
    from edge.audio import open_hearing

    caplog.set_level(logging.INFO, logger="edge.audio")
    microphone = HttpMicrophone().start()
    config = network_microphone(microphone.url)
    hearing = open_hearing(config, None)
    monitor = hearing.monitor
    try:
        assert wait_for(lambda: monitor.chunks > 5, 30), monitor.status
        microphone.stop()
        assert wait_for(lambda: monitor.status.reconnects >= 3, 30), monitor.status
    finally:
        hearing.close()
        microphone.stop()
    name = f"stream:{microphone.url}"
    warnings = [message for level, message in messages(caplog, "edge.audio") if level == "WARNING"]
    assert warnings == [
        f"sound: {name}: capture stopped: the stream ended; reopening",
        f"sound: {name}: reopening failed: Connection to tcp://127.0.0.1:{microphone.port} failed: Connection refused; "
        "retrying with back-off up to 1 s",
    ], warnings


def test_a_network_camera_that_stays_gone_is_said_once_gone_and_once_back_not_at_every_reconnect(caplog):
    """Before, every failed reconnect was a warning of its own ("reconnect N failed: ..."), every
    reopen_max_seconds for as long as the camera was gone, and each open an info line though no frame came."""
    import threading

    from streams import MjpegServer

    from edge.source import SupervisedSource

    caplog.set_level(logging.INFO, logger="edge.source")
    with MjpegServer([np.full((120, 160, 3), 80, np.uint8)], fps=10) as camera:
        config = load_config(None, {"source": {"uri": camera.url, "stall_seconds": 1.0, "reopen_min_seconds": 0.2,
                                               "reopen_max_seconds": 0.5}})
        source = SupervisedSource.from_config(config.source)
        source.open()
        frames = source.frames()

        def resume_after_reconnects():
            wait_for(lambda: source.status.reconnects >= 4, 60)
            camera.resume()

        resumer = threading.Thread(target=resume_after_reconnects)
        try:
            next(frames)
            camera.stall()  # connected, sending nothing: the read stalls, each reopen waits for its timeout and fails
            resumer.start()
            while source.status.reconnects < 4:  # frames sent before the stall, then the first after it
                next(frames)
        finally:
            source.close()
            camera.resume()
            if resumer.is_alive() or resumer.ident:
                resumer.join()
    said = messages(caplog, "edge.source")
    assert source.status.reconnects >= 4, said
    back = [message for _, message in said if "frames again" in message]
    assert len(back) == 1 and back[0].startswith(f"{source.status.name}: frames again after "), said
    warnings = [message for level, message in said if level == "WARNING"]
    assert len(warnings) == len(set(warnings)) <= 3, said  # the stall, and each distinct reopen failure once
    assert len(said) <= 4, said


def test_an_outage_says_each_error_once_whatever_pipe_ffmpeg_got_the_url_on_and_ends_once():
    from edge.source import Outage

    outage = Outage()
    assert outage.over(reconnects=0) is None  # no outage: nothing to say
    assert outage.failed("cam: pipe:3: Connection refused", reconnects=0)
    assert not outage.failed("cam: pipe:9: Connection refused", reconnects=1)  # the same refusal, another descriptor
    assert outage.failed("cam: no frame for 5 s", reconnects=2) and outage.ongoing
    seconds, reopens = outage.over(reconnects=4)
    assert reopens == 4 and 0 <= seconds < 5 and not outage.ongoing
    assert outage.failed("cam: pipe:3: Connection refused", reconnects=4)  # a new outage says it again


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_a_network_camera_that_refuses_is_one_line_of_ours_not_ffmpegs_at_every_reopen(tmp_path, scheme):
    """`cryedge run` on a port that refuses: FFmpeg (inside OpenCV) wrote '[tcp @ 0x...] Connection to tcp://...
    failed: Connection refused' at every reopen, for as long as the camera was down, beside our one line. Now the
    journal has our line once, and it says what FFmpeg said: refused."""
    import json
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from mqtt import free_port

    port, health_port = free_port(), free_port()
    url = f"{scheme}://viewer:{SECRET}@127.0.0.1:{port}/cam"
    config = tmp_path / "cryedge.toml"
    config.write_text(f"[source]\nreopen_min_seconds = 0.1\nreopen_max_seconds = 0.2\n[health]\nport = {health_port}\n"
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--source", url],
                               cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)

    def reopens() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/stats", timeout=2) as answer:
                return json.loads(answer.read())["source_reconnects"]
        except OSError:
            return 0

    try:
        assert wait_for(lambda: reopens() >= 6, 60), "the daemon did not reopen the camera"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    ffmpeg = [line for line in lines if re.match(r"\[[\w,]+ @ 0x[0-9a-f]+\]", line) or "Connection to tcp" in line]
    assert ffmpeg == [], err
    shown = f"{scheme}://viewer:********@127.0.0.1:{port}/cam"
    ours = [line for line in lines if "cannot open stream" in line]
    assert ours == [f"WARNING edge.source: cannot open stream {shown}: connection refused at 127.0.0.1:{port} (the "
                    "camera is off, or serves no stream on that port); will keep trying"], err
    assert len(lines) <= 8 and SECRET not in err, err  # the model, the password warning, running, stopping
