"""Frame sources on real video files decoded by OpenCV, real network cameras on loopback
(``tests/streams.py``: HTTP MJPEG, and RTSP from Debian's rtsp-server-perl fed by ffmpeg), and
picamera2 through a stand-in.

picamera2 needs a Pi's camera stack, so ``FakePicamera2`` below follows picamera2's documented API
(``Picamera2(n)``, ``create_video_configuration``, ``configure``, ``start``, ``capture_array``,
``stop``, ``close``) and its documented memory layout (``BGR888`` is R, G, B bytes).
"""

import itertools
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from streams import MjpegServer, RtspCamera

from edge.config import source_config
from edge.errors import SourceError
from edge.source import (
    FileSource,
    OpenCVSource,
    Picamera2Source,
    SupervisedSource,
    backoff_delays,
    open_backend,
)


def write_numbered_clip(path, frames=30, fps=15.0, size=(160, 120)):
    """A clip whose frame n is a flat grey of level 8n, so a reader can tell which frame it got."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for n in range(frames):
        image = np.full((size[1], size[0], 3), 8 * n, np.uint8)
        image[:10, :10] = (0, 0, 255)  # a red corner in BGR, to check the RGB conversion
        writer.write(image)
    writer.release()
    return path


def frame_number(frame):
    return int(round(frame.image[60:, 60:, 1].mean() / 8))


SECRET = "s3cret-Pa55"  # a camera password that must never show


@pytest.fixture
def clip(tmp_path):
    return write_numbered_clip(tmp_path / "clip.avi")


@pytest.mark.parametrize(("uri", "backend", "name"), [
    ("picamera2", Picamera2Source, "picamera2:0"),
    ("picamera2:lores", Picamera2Source, "picamera2:0:lores"),  # was taken for a file named "picamera2:lores"
    ("/dev/video0", OpenCVSource, "device:/dev/video0"),
    ("0", OpenCVSource, "device:0"),
    ("rtsp://cam.local/stream", OpenCVSource, "stream:rtsp://cam.local/stream"),
    ("http://cam.local/video.mjpg", OpenCVSource, "stream:http://cam.local/video.mjpg"),
    ("clip.mp4", FileSource, "file:clip.mp4"),
])
def test_each_source_type_gets_its_backend(uri, backend, name):
    made = open_backend(source_config(uri))
    assert isinstance(made, backend) and made.name == name


def test_the_backend_reads_the_types_own_options():
    camera = open_backend(source_config("picamera2", stream="lores", camera=1, width=320, height=240, fps=10))
    assert (camera.stream, camera.camera_num, camera.width, camera.height, camera.fps) == ("lores", 1, 320, 240, 10)
    rtsp = open_backend(source_config("rtsp://cam.lan/live", transport="udp", stall_seconds=2))
    assert (rtsp.rtsp_transport, rtsp.timeout_seconds) == ("udp", 2)
    clip = open_backend(source_config("clip.mp4", realtime=False, fps=5))
    assert (clip.realtime, clip.target_fps) == (False, 5)


def test_file_frames_are_rgb_and_carry_the_video_timeline(clip):
    source = FileSource(clip, realtime=False)
    source.open()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    assert len(frames) == 30
    assert [frame_number(f) for f in frames] == list(range(30))
    assert tuple(int(v) for v in frames[0].image[2, 2]) == pytest.approx((255, 0, 0), abs=40)  # red stays red in RGB
    steps = np.diff([f.t for f in frames])
    np.testing.assert_allclose(steps, 1 / 15, atol=1e-6)  # video time, not decode time


def test_a_lower_target_fps_skips_frames_evenly(clip):
    source = FileSource(clip, fps=5, realtime=False)
    source.open()
    numbers = []
    while (frame := source.read()) is not None:
        numbers.append(frame_number(frame))
    assert numbers == list(range(0, 30, 3))


def test_realtime_file_is_paced_at_its_frame_rate(clip):
    source = FileSource(clip, realtime=True)
    source.open()
    start = time.monotonic()
    for _ in range(16):
        source.read()
    elapsed = time.monotonic() - start
    source.close()
    assert 0.9 <= elapsed <= 1.6  # 15 frame intervals at 15 fps = 1 s


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="video file not found"):
        FileSource(tmp_path / "none.mp4").open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 1000)
    with pytest.raises(SourceError, match="cannot decode"):
        FileSource(junk).open()


def test_missing_camera_is_a_source_error():
    with pytest.raises(SourceError, match="cannot open device /dev/video97"):
        OpenCVSource("/dev/video97").open()


def test_live_source_hands_out_the_newest_frame_and_drops_stale_ones():
    """A live camera keeps sending while the pipeline is busy; a slow consumer must skip, not queue.

    (A camera that never ends, not a file: a short file could be decoded to its end before the first
    read on a busy machine, and then there is nothing newer to hand out.)
    """
    numbered = [np.full((120, 160, 3), 8 * n, np.uint8) for n in range(30)]
    with MjpegServer(numbered, fps=30) as camera:
        source = OpenCVSource(camera.url)
        source.open()
        try:
            first = source.read(timeout=5)
            time.sleep(0.5)  # the pipeline is busy; the reader keeps reading
            later = source.read(timeout=5)
        finally:
            source.close()
    assert first is not None and later is not None
    assert later.index == first.index + 1  # delivered one after the other...
    assert (frame_number(later) - frame_number(first)) % 30 > 2  # ...but the frames sent in between were dropped


def test_supervised_file_ends_without_reopening(clip):
    supervised = SupervisedSource(lambda: FileSource(clip, realtime=False))
    with supervised:
        count = sum(1 for _ in supervised.frames())
    assert count == 30
    assert supervised.status.reconnects == 0 and supervised.status.state == "closed"


def test_a_file_that_opens_but_gives_not_one_frame_is_a_source_error_not_an_empty_run(tmp_path):
    """Text named .jpg opens (OpenCV's image demuxer) and decodes nothing: `cryedge run --source` said "running",
    processed nothing and exited 0, as if the video had been watched to its end."""
    fake = tmp_path / "photo.jpg"
    fake.write_text("not an image")
    supervised = SupervisedSource(lambda: FileSource(fake, realtime=False))
    with supervised, pytest.raises(SourceError) as failed:
        list(supervised.frames())
    assert str(failed.value) == "file:photo.jpg: not one frame could be decoded (not a video, or an empty one)"
    assert failed.value.exit_code == 5

def test_a_live_source_that_stops_is_reopened_with_back_off(tmp_path):
    """A stream that ends (as a camera unplugged) is reopened; frames flow again after it."""
    clip = write_numbered_clip(tmp_path / "short.avi", frames=5)
    supervised = SupervisedSource(lambda: OpenCVSource(str(clip)), stall_seconds=1.0, backoff_first=0.05, backoff_limit=0.1)
    got = []
    with supervised:
        for frame in supervised.frames():
            got.append(frame)
            if supervised.status.reconnects >= 2 and len(got) >= 3:
                supervised.stop()
    assert supervised.status.reconnects >= 2
    assert "stopped delivering frames" in supervised.status.last_error


def colour_frames() -> list[np.ndarray]:
    """Flat red, green and blue RGB frames, so a reader can tell them apart and check the channel order."""
    return [np.full((120, 160, 3), colour, np.uint8) for colour in ((220, 20, 20), (20, 220, 20), (20, 20, 220))]


def first_frames(source, count: int, timeout: float = 5.0) -> list:
    """Open ``source``, read ``count`` frames (None where none came in ``timeout``), close it."""
    source.open()
    try:
        return [source.read(timeout=timeout) for _ in range(count)]
    finally:
        source.close()


def numbered_colour_frames(count: int = 24) -> list[np.ndarray]:
    """Red, green, blue in turn, frame k with a white bar at columns 6k..6k+5: a reader tells each frame's
    number and its channel order apart, even where it skipped frames."""
    frames = []
    for k, frame in enumerate(colour_frames() * (count // 3)):
        frame = frame.copy()
        frame[:, 6 * k:6 * k + 6] = 255
        frames.append(frame)
    return frames


def test_an_http_mjpeg_camera_gives_rgb_frames_in_its_order():
    """Frames come in the camera's order, as RGB. A live camera's reader keeps only the newest frame, so a
    slow consumer (a loaded machine) may skip some: the order is checked by number, not as consecutive."""
    count = 24
    with MjpegServer(numbered_colour_frames(count), fps=30) as camera:
        frames = first_frames(OpenCVSource(camera.url), 6)
    assert all(frame is not None and frame.image.shape == (120, 160, 3) for frame in frames)
    numbers = [int(np.argmax(frame.image.astype(int).sum(axis=(0, 2)))) // 6 for frame in frames]
    colour_part = [np.delete(frame.image, np.s_[6 * k:6 * k + 6], axis=1) for frame, k in zip(frames, numbers, strict=True)]
    brightest = [int(np.argmax(part.reshape(-1, 3).mean(axis=0))) for part in colour_part]
    assert brightest == [k % 3 for k in numbers], (numbers, brightest)  # RGB, not OpenCV's BGR
    # forward around the loop (the server repeats its 24 frames): never back, never the same frame twice
    assert all(0 < (later - earlier) % count <= count // 2 for earlier, later in itertools.pairwise(numbers)), numbers


def test_a_network_camera_that_stalls_is_reopened_within_its_timeout_and_frames_come_back(caplog):
    """The camera keeps the connection open but sends nothing (a hung encoder), then recovers.

    FFmpeg alone would wait 30 s in a read; the source gives up after ``stall_seconds`` and reconnects.
    The camera has a password: the reconnect's log lines show it masked.
    """
    with MjpegServer(colour_frames(), fps=20, credentials=("viewer", SECRET)) as camera:
        url = camera.url.replace("http://", f"http://viewer:{SECRET}@")
        supervised = SupervisedSource.from_config(
            source_config(url, stall_seconds=1.0, reopen_min_seconds=0.2, reopen_max_seconds=0.5))
        arrivals = []
        with supervised:
            for _ in supervised.frames():
                arrivals.append(time.monotonic())
                if len(arrivals) == 5:
                    camera.stall()
                    threading.Timer(4.0, camera.resume).start()
                if len(arrivals) == 10:
                    break
    gap = arrivals[5] - arrivals[4]
    assert 3.5 < gap < 7.0, f"frames came back {gap:.1f} s after the stall began"
    assert supervised.status.reconnects >= 1 and camera.served >= 2
    assert "abandoning" not in caplog.text, "the reader was still stuck in a read: a thread and a connection leak"
    assert "viewer:********@127.0.0.1" in caplog.text and SECRET not in caplog.text + supervised.status.last_error


def test_a_network_camera_that_accepts_but_never_answers_is_a_source_error_within_the_timeout():
    import socket

    with socket.socket() as silent:  # the kernel completes the connection; nobody ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        source = OpenCVSource(f"http://127.0.0.1:{silent.getsockname()[1]}/stream.mjpg", timeout_seconds=1.0)
        began = time.monotonic()
        with pytest.raises(SourceError, match="cannot open stream"):
            source.open()
    assert time.monotonic() - began < 5


DEMO_CLIP = Path(__file__).resolve().parents[2] / "edge" / "data" / "demo.mp4"


@pytest.fixture
def rtsp_camera(tmp_path):
    with RtspCamera(DEMO_CLIP, tmp_path) as camera:
        yield camera


def test_an_rtsp_camera_gives_the_newest_rgb_frames(rtsp_camera):
    frames = first_frames(OpenCVSource(rtsp_camera.url, timeout_seconds=10, rtsp_transport="udp"), 10, timeout=10)
    assert all(frame is not None and frame.image.shape == (480, 640, 3) for frame in frames)
    [original] = first_frames(FileSource(DEMO_CLIP, realtime=False), 1)
    by_channel = [np.argsort(frame.image.reshape(-1, 3).mean(axis=0)) for frame in (original, frames[-1])]
    assert list(by_channel[0]) == list(by_channel[1]), "channels in the file's order: RGB, not BGR"
    assert all(later.t > earlier.t for earlier, later in itertools.pairwise(frames))


def test_rtp_over_tcp_from_a_udp_only_camera_is_a_source_error_that_names_the_setting(rtsp_camera):
    source = OpenCVSource(rtsp_camera.url, timeout_seconds=5, rtsp_transport="tcp")
    with pytest.raises(SourceError, match=r"RTP over tcp; some cameras only offer udp: \[source\] transport"):
        source.open()


def test_an_rtsp_camera_that_reboots_is_reopened_and_frames_come_back(rtsp_camera):
    supervised = SupervisedSource.from_config(
        source_config(rtsp_camera.url, transport="udp", stall_seconds=2.0, reopen_min_seconds=0.5, reopen_max_seconds=1.0))
    give_up = threading.Timer(40.0, supervised.stop)  # a bound, should the frames never come back
    give_up.start()
    reboot = threading.Timer(4.0, rtsp_camera.start)
    stopped_at = None
    after_reboot = []
    try:
        with supervised:
            for count, frame in enumerate(supervised.frames()):
                if count == 5:
                    stopped_at = time.monotonic()
                    rtsp_camera.stop()
                    reboot.start()
                if stopped_at is not None and frame.t > stopped_at + 4.0:
                    after_reboot.append(time.monotonic())
                    if len(after_reboot) == 5:
                        supervised.stop()
    finally:
        give_up.cancel()
        if stopped_at is not None:
            reboot.join()
    assert len(after_reboot) == 5, "no frames after the camera came back"
    assert after_reboot[0] - stopped_at < 20.0, f"frames came back {after_reboot[0] - stopped_at:.1f} s after the reboot began"
    assert supervised.status.reconnects >= 1


def test_back_off_doubles_up_to_its_limit():
    delays = backoff_delays(1.0, 10.0)
    assert [next(delays) for _ in range(6)] == [1, 2, 4, 8, 10, 10]


class FakePicamera2:
    """Stand-in for picamera2.Picamera2 following its documented API and pixel layouts."""

    instances = []

    def __init__(self, camera_num=0):
        self.camera_num, self.started, self.closed, self.config = camera_num, False, False, None
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main=None, lores=None, controls=None, buffer_count=None, **_):
        return {"main": main, "lores": lores, "controls": controls, "buffer_count": buffer_count}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self, name="main"):
        assert self.started
        stream = self.config[name]
        w, h = stream["size"]
        if stream["format"] == "BGR888":  # documented: pixels ordered [R, G, B]
            image = np.zeros((h, w, 3), np.uint8)
            image[..., 0] = 200
            return image
        if stream["format"] == "YUV420":  # documented: (h*3/2, w) planar I420
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[..., 0] = 200
            return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        raise AssertionError(stream["format"])

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


class FakePicamera2Module:
    Picamera2 = FakePicamera2


@pytest.mark.parametrize("stream", ["main", "lores"])
def test_picamera2_frames_are_rgb_at_the_configured_size(stream):
    source = Picamera2Source(320, 240, fps=15, stream=stream, picamera2_module=FakePicamera2Module)
    source.open()
    camera = FakePicamera2.instances[-1]
    assert camera.config["controls"] == {"FrameRate": 15.0}
    frame = source.read()
    source.close()
    assert frame.image.shape == (240, 320, 3)
    red, green, blue = frame.image[120, 160]
    assert red > 150 and green < 60 and blue < 60
    assert camera.closed and not camera.started


def test_picamera2_missing_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        Picamera2Source().open()


# ----------------------------------------------------------------------------- a camera's password

REPO = Path(__file__).resolve().parents[2]


def camera_config(tmp_path, health_port: int | None = None) -> Path:
    path = tmp_path / "cryedge.toml"
    health = f"[health]\nport = {health_port}\n" if health_port else "[health]\nenabled = false\n"
    path.write_text(f'[landmarks]\npose = false\n{health}[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    return path


def notifications(notify, until=None, timeout: float = 20.0) -> list[str]:
    """The sd_notify datagrams received, reading until one contains ``until`` (or ``timeout``)."""
    messages, give_up = [], time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            messages.append(notify.recv(4096).decode())
        except TimeoutError:
            if until is None:
                break
            continue
        if until is not None and until in messages[-1]:
            break
    return messages


def test_a_camera_password_never_shows_in_the_log_the_service_status_or_stats(tmp_path):
    """A real camera that asks for the password: it gets it, and nothing the daemon shows holds it."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from mqtt import free_port

    health_port = free_port()
    notify_path = tmp_path / "notify.sock"
    with MjpegServer(colour_frames(), fps=15, credentials=("viewer", SECRET)) as camera, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        url = camera.url.replace("http://", f"http://viewer:{SECRET}@")
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "-v", "run", "--config", str(camera_config(tmp_path, health_port)),
             "--source", url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)})
        try:
            messages = notifications(notify, until="fps", timeout=60)  # READY, then the first report
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/stats", timeout=5) as answer:
                stats_text = answer.read().decode()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
        messages += notifications(notify)
    shown = url.replace(SECRET, "********")
    assert process.returncode == 0, err
    assert camera.refused >= 1 and camera.served >= 1, "the camera asked for the password and got it"
    assert json.loads(stats_text)["source"] == f"stream:{shown}" and json.loads(stats_text)["frames"] > 0
    assert any(f"STATUS=running: stream:{shown}" in message for message in messages), messages
    assert f"running: stream:{shown}" in err
    assert err.count("--source: the camera password in the URL is visible to every local user") == 1
    assert "$CRYEDGE_CAMERA_PASSWORD or [source] password_file" in err
    for text in (stats_text, err, out, *messages):
        assert SECRET not in text


def test_with_the_password_in_the_environment_no_process_listing_shows_it(tmp_path):
    """``--source http://viewer@host/...`` and $CRYEDGE_CAMERA_PASSWORD: the camera gets the password, while
    /proc/PID/cmdline (what ps shows every local user) holds none, and nothing warns."""
    import os
    import signal
    import subprocess
    import sys

    with MjpegServer(colour_frames(), fps=15, credentials=("viewer", SECRET)) as camera:
        url = camera.url.replace("http://", "http://viewer@")
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "-v", "run", "--config", str(camera_config(tmp_path)), "--source", url],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CRYEDGE_CAMERA_PASSWORD": SECRET})
        try:
            deadline = time.monotonic() + 60
            while camera.served < 1 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert camera.served >= 1, err
    assert process.returncode == 0, err
    assert url in cmdline.split("\0") and SECRET not in cmdline
    assert "--source: the camera password" not in err and SECRET not in err + out


@pytest.mark.parametrize("wrong", ["the camera refuses it", "nothing listens"])
def test_a_camera_that_cannot_be_opened_is_logged_with_the_password_masked(tmp_path, wrong):
    """A network camera missing at start is reconnected (issue 10 item 7); its open error is in the log."""
    import signal
    import subprocess
    import sys

    from mqtt import free_port

    with MjpegServer(colour_frames(), credentials=("viewer", "the-right-one")) as camera:
        port = camera.url.split(":")[2].split("/")[0] if wrong == "the camera refuses it" else str(free_port())
        url = f"http://viewer:{SECRET}@127.0.0.1:{port}/stream.mjpg"
        process = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(camera_config(tmp_path)),
                                    "--source", url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        try:
            for line in process.stderr:  # until the failed open is logged
                lines.append(line)
                if "will keep trying" in line:
                    break
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()
    stderr = "".join(lines) + err
    why = ("no such camera or stream, or no access" if wrong == "the camera refuses it" else
           f"connection refused at 127.0.0.1:{port} (the camera is off, or serves no stream on that port)")
    assert f"cannot open stream http://viewer:********@127.0.0.1:{port}/stream.mjpg: {why}; will keep trying" in stderr
    assert SECRET not in stderr + out and "Traceback" not in stderr


@pytest.mark.parametrize("where", ["environment", "password_file", "systemd credential", "config"])
def test_the_camera_password_can_come_from_a_file_a_credential_or_the_environment(tmp_path, where):
    from edge.config import load_config

    (tmp_path / "camera_password").write_text(f"{SECRET}\n")
    password_line = {"password_file": f'password_file = "{tmp_path / "camera_password"}"\n',
                     "config": f'password = "{SECRET}"\n'}.get(where, "")
    environ = {"environment": {"CRYEDGE_CAMERA_PASSWORD": SECRET},
               "systemd credential": {"CREDENTIALS_DIRECTORY": str(tmp_path)}}.get(where, {})
    with MjpegServer(colour_frames(), credentials=("viewer", SECRET)) as camera:
        config_path = tmp_path / "cryedge.toml"
        config_path.write_text(f'[source]\ntype = "http"\nurl = "{camera.url}"\nusername = "viewer"\n{password_line}')
        config = load_config(config_path, environ=environ)
        backend = open_backend(config.source)
        frames = first_frames(backend, 2)
    assert all(frame is not None for frame in frames) and camera.served >= 1
    assert SECRET not in backend.name and SECRET not in repr(config)


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        # what apt's simplejpeg says when the venv's numpy is 2.x and it was built against 1.24
        ('raise ValueError("numpy.dtype size changed, may indicate binary incompatibility. '
         'Expected 96 from C header, got 88 from PyObject")', "numpy.dtype size changed"),
        ('raise OSError("libcamera.so.0.3: cannot open shared object file: No such file or directory")',
         "libcamera.so.0.3"),
        ("import simplejpeg_that_is_not_there", "simplejpeg_that_is_not_there"),
    ],
)
def test_picamera2_that_fails_to_import_is_one_source_error_line(tmp_path, monkeypatch, body, shown):
    """A stand-in picamera2 package on sys.path whose import fails as apt's does inside a bad venv."""
    import sys

    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    with pytest.raises(SourceError, match="picamera2 cannot be imported") as raised:
        Picamera2Source().open()
    message = str(raised.value)
    assert shown in message and "\n" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_picamera2_night_settings_reach_the_camera_as_libcamera_controls():
    """A NoIR camera at night: grey from the ISP, frames up to 1/5 s long, a fixed gain (stand-in of picamera2's API)."""
    from edge.config import load_config

    config = load_config(None, {"source": {"type": "picamera2", "fps": 15, "greyscale": True, "min_fps": 5,
                                           "analogue_gain": 8.0}})
    source = Picamera2Source.from_config(config.source, picamera2_module=FakePicamera2Module)
    source.open()
    controls = FakePicamera2.instances[-1].config["controls"]
    source.close()
    assert controls == {"FrameDurationLimits": (66667, 200000), "Saturation": 0.0, "AnalogueGain": 8.0}


def test_picamera2_min_fps_above_fps_is_a_config_error():
    from edge.config import load_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="min_fps"):
        load_config(None, {"source": {"type": "picamera2", "fps": 10, "min_fps": 15}})


@pytest.mark.parametrize("device", ["/dev/video63", 63])
def test_a_usb_camera_that_is_gone_fills_the_journal_with_its_own_lines_only(tmp_path, device):
    """An unplugged USB camera: at every reopen OpenCV tried each backend it has and each wrote its failure to stderr
    (V4L2's warnings, FFmpeg's 'Cannot open video device', its exception text over 6 lines, the Orbbec backend's
    error): 11 lines a reopen, for as long as the camera is away. cryedge's own line says it once."""
    import json
    import signal
    import subprocess
    import sys

    config = tmp_path / "cryedge.toml"
    config.write_text(f'[source]\ntype = "v4l2"\ndevice = {json.dumps(device)}\nreopen_min_seconds = 0.2\n'
                      'reopen_max_seconds = 0.4\n[audio]\nenabled = false\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    repo = Path(__file__).resolve().parents[2]
    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--no-health"],
                              cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)  # a dozen reopens
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    assert f"cannot open device {device}: no such camera" in stderr
    assert [line for line in stderr.splitlines() if not line.startswith(("INFO edge.", "WARNING edge."))] == []


def test_a_stream_that_cannot_be_opened_is_told_refused_from_one_that_answers():
    """What FFmpeg's own line said (now quiet: OpenCVSource.open), said in ours; an answer leaves it to the stream."""
    import socket

    from mqtt import free_port

    from edge.source import stream_unreachable

    port = free_port()
    assert stream_unreachable(f"rtsp://user:pw@127.0.0.1:{port}/cam", 1.0) == (
        f"connection refused at 127.0.0.1:{port} (the camera is off, or serves no stream on that port)")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert stream_unreachable(f"http://127.0.0.1:{listening.getsockname()[1]}/x", 1.0) is None
    assert stream_unreachable("http://127.0.0.1:notaport/x", 1.0) is None  # FFmpeg's failure to say
