"""The source stage: frames from a camera, a stream or a file, newest first.

Backends behind one small interface (``open``, ``read``, ``close``):
- ``Picamera2Source``: the Pi's CSI camera through picamera2 (from the Pi's apt, never PyPI).
- ``OpenCVSource``: a V4L2 device (``/dev/videoN`` or an index) or an RTSP/HTTP URL. A reader thread
  keeps only the newest frame, so a slow pipeline drops frames instead of queueing stale ones.
- ``FileSource``: a video file, paced in real time or as fast as possible. Its frames carry the
  video's own timeline, so the alarm's seconds mean the same in both modes.

``open_backend(config)`` builds the backend a typed ``[source]`` config (``edge.config.SourceConfig``)
asks for, through ``BACKENDS``: adding a source type is a config class there and a backend here.
``SupervisedSource`` wraps a backend: it reopens one that fails or stalls, with back-off, and
reports its status. A source is shown (logs, status, errors) by its ``name``, passwords masked.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from edge.audio_source import FFMPEG_QUIET, SoundPipe, ToolErrors, start_tool, stop_process, url_on_pipe
from edge.config import (
    FileSourceConfig,
    HttpSourceConfig,
    Picamera2SourceConfig,
    RtspSourceConfig,
    SourceOptions,
    V4l2SourceConfig,
    mask_url,
)
from edge.errors import SourceError, mask_password
from edge.records import Frame

log = logging.getLogger(__name__)

FFMPEG_OPTIONS_VARIABLE = "OPENCV_FFMPEG_CAPTURE_OPTIONS"  # set for rtsp:// sources from [source] transport
# OpenCV sets FFmpeg's log level from this variable when its FFmpeg backend first opens something (OpenCV 5 reads it
# that once; 4.x at each open); -8 is AV_LOG_QUIET. OPENCV_FFMPEG_DEBUG set, or a level of the user's own, is kept.
FFMPEG_LOG_VARIABLES = ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_FFMPEG_DEBUG")
FFMPEG_QUIET_LEVEL = "-8"


def opencv_name(path: Path | str) -> str:
    """``path`` as OpenCV takes a file name; a SourceError for a name that is not UTF-8 text (a file copied
    from an old Windows or Samba share), on which OpenCV crashes the whole process (a segmentation fault)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise SourceError(f"{shown}: its name is not UTF-8 text, which OpenCV cannot open; rename the file") from None
    return text


class FileSource:
    """A video file; ``realtime`` paces frames at the file's rate, else as fast as they decode.

    ``fps`` below the file's rate skips frames to that rate. ``t`` of each frame is the moment on
    the video's timeline, offset to the monotonic clock at open.
    """

    live = False

    def __init__(self, path: str | Path, fps: float | None = None, realtime: bool = True):
        self.path = Path(path)
        self.target_fps = fps
        self.realtime = realtime
        self.name = f"file:{mask_password(self.path.name)}"
        self._capture = None

    @classmethod
    def from_config(cls, config: FileSourceConfig) -> FileSource:
        return cls(config.path, fps=config.fps, realtime=config.realtime)

    def open(self) -> None:
        import cv2

        if self.path.is_dir():  # a folder of clips is not a source: say what one is
            raise SourceError(f"{self.path} is a directory, not a video file: a video source is a video file, a camera "
                              "(/dev/video0, 0, picamera2) or a stream URL (rtsp://..., http://...)")
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        capture = cv2.VideoCapture(opencv_name(self.path))
        if not capture.isOpened():
            raise SourceError(f"cannot decode video file {self.path}")
        self._capture = capture
        self.file_fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        self._step = max(1, round(self.file_fps / self.target_fps)) if self.target_fps else 1
        self._start = time.monotonic()
        self._position = 0  # frames decoded
        self._index = 0  # frames delivered

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The next frame, or None at the end of the file."""
        if self._capture is None:
            raise SourceError(f"{self.name} is not open")
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                return None
            position = self._position
            self._position += 1
            if position % self._step == 0:
                break
        t = self._start + position / self.file_fps
        if self.realtime:
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        frame = Frame(image=bgr[:, :, ::-1].copy(), t=t, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class NewestFrame:
    """The newest frame a reader thread offers, handed over once: older ones are dropped, never queued."""

    def __init__(self):
        self._new_frame = threading.Condition()
        self._latest: tuple[np.ndarray, float] | None = None
        self._failed: str | None = None
        self._index = 0  # frames handed over, across reopens

    def reset(self) -> None:
        with self._new_frame:
            self._latest, self._failed = None, None

    def offer(self, image: np.ndarray, t: float) -> None:
        with self._new_frame:
            self._latest = (image, t)
            self._new_frame.notify_all()

    def fail(self, reason: str) -> None:
        with self._new_frame:
            self._failed = reason
            self._new_frame.notify_all()

    def take(self, timeout: float) -> tuple[np.ndarray, float] | None:
        """The newest (image, t) not yet taken; None if none came within ``timeout``; SourceError once failed."""
        with self._new_frame:
            if self._latest is None and self._failed is None:
                self._new_frame.wait(timeout)
            if self._latest is None:
                if self._failed:
                    raise SourceError(self._failed)
                return None
            latest, self._latest = self._latest, None
            return latest

    def frame(self, timeout: float, convert: Callable[[np.ndarray], np.ndarray] | None = None) -> Frame | None:
        """The newest frame not yet handed over, numbered, its image through ``convert`` (on the reading
        thread: frames dropped unread cost nothing); None if none came within ``timeout``."""
        newest = self.take(timeout)
        if newest is None:
            return None
        image, t = newest
        frame = Frame(image=convert(image) if convert is not None else image, t=t, index=self._index)
        self._index += 1
        return frame


class OpenCVSource:
    """A V4L2 camera or a network stream through OpenCV, always giving the newest frame.

    ``uri`` may carry credentials (it is what OpenCV opens); ``name`` and every message show it masked.
    """

    live = True

    def __init__(self, uri: str | int, width: int | None = None, height: int | None = None, fps: float | None = None,
                 timeout_seconds: float = 5.0, rtsp_transport: str = "tcp"):
        self.uri = str(uri)
        self.width, self.height, self.fps = width, height, fps
        self.timeout_seconds = timeout_seconds
        self.rtsp_transport = rtsp_transport
        self.kind = "stream" if "://" in self.uri else "device"
        self.shown = mask_url(self.uri)
        self.name = f"{self.kind}:{self.shown}"
        self._capture = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._newest = NewestFrame()

    @classmethod
    def from_config(cls, config: V4l2SourceConfig | RtspSourceConfig | HttpSourceConfig) -> OpenCVSource:
        if isinstance(config, V4l2SourceConfig):
            return cls(config.device, config.width, config.height, config.fps, timeout_seconds=config.stall_seconds)
        transport = config.transport if isinstance(config, RtspSourceConfig) else "tcp"
        return cls(config.open_url(), fps=config.fps, timeout_seconds=config.stall_seconds, rtsp_transport=transport)

    def open(self) -> None:
        import cv2

        rtsp = self.uri.lower().startswith("rtsp")
        if self.kind == "stream":
            # FFmpeg wrote its own 'Connection ... failed: Connection refused' line at every reopen of a camera that
            # is down, beside the one line the supervisor says for the whole outage (with the reason: stream_unreachable)
            if not any(name in os.environ for name in FFMPEG_LOG_VARIABLES):
                os.environ[FFMPEG_LOG_VARIABLES[0]] = FFMPEG_QUIET_LEVEL
            if rtsp:
                # OpenCV takes FFmpeg's demuxer options only from this variable, read at each open.
                os.environ[FFMPEG_OPTIONS_VARIABLE] = f"rtsp_transport;{self.rtsp_transport}"
            # Without these FFmpeg waits 30 s for a stalled stream, so the reader outlives a reopen.
            ms = int(self.timeout_seconds * 1000)
            capture = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            # V4L2 only: a camera that is gone made OpenCV try every backend it has at each reopen, FFmpeg's and
            # the Orbbec one's failures to stderr, up to 11 lines a reopen in the journal for as long as it is away
            camera = self.uri.isdigit() or self.uri.startswith("/dev/")
            backend = cv2.CAP_V4L2 if camera and sys.platform.startswith("linux") else cv2.CAP_ANY
            capture = cv2.VideoCapture(int(self.uri) if self.uri.isdigit() else self.uri, backend)
        if not capture.isOpened():
            unreachable = stream_unreachable(self.uri, min(2.0, self.timeout_seconds)) if self.kind == "stream" else None
            if unreachable:
                raise SourceError(f"cannot open {self.kind} {self.shown}: {unreachable}")
            hint = ""
            if rtsp:
                other = "udp" if self.rtsp_transport == "tcp" else "tcp"
                hint = f" (RTP over {self.rtsp_transport}; some cameras only offer {other}: [source] transport)"
            raise SourceError(f"cannot open {self.kind} {self.shown}: no such camera or stream, or no access{hint}")
        if self.width and self.height:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            capture.set(cv2.CAP_PROP_FPS, self.fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ask the driver not to queue old frames
        self._capture = capture
        self._stop.clear()
        self._newest.reset()
        self._thread = threading.Thread(target=self._pump, name="cryedge-source", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            ok, bgr = self._capture.read()
            if not ok:
                self._newest.fail(f"{self.name} stopped delivering frames")
                return
            self._newest.offer(bgr, time.monotonic())

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not yet returned; None if none came within ``timeout`` seconds."""
        return self._newest.frame(timeout, convert=lambda bgr: bgr[:, :, ::-1].copy())

    def close(self) -> None:
        """Stop the reader, then release the device.

        OpenCV's ``release()`` waits for a ``read()`` running in another thread, so the reader must
        finish first. A reader stuck in a hung driver is abandoned (it is a daemon thread) with its
        capture, rather than hanging the daemon's shutdown or reopen.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            if self._thread.is_alive():
                log.warning("%s: the reader is stuck in the driver; abandoning it", self.name)
                self._capture = self._thread = None
                return
        if self._capture is not None:
            self._capture.release()
        self._capture = self._thread = None


def stream_unreachable(url: str, timeout: float) -> str | None:
    """Why nothing answers at a stream URL's host and port ("connection refused at HOST:PORT", the host not found, no
    answer within ``timeout``), or None when something does (then the stream, its path or its access is wrong).

    What FFmpeg said of it (its own log is quiet for streams: OpenCVSource.open), said in the source's one line."""
    import socket
    from urllib.parse import urlsplit

    from edge.config import DEFAULT_PORTS, split_userinfo

    scheme, _, rest = split_userinfo(url)
    try:
        parts = urlsplit(f"{scheme.lower()}://{rest}")
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is no number: FFmpeg's own failure to say
        return None
    if not host or not port:
        return None
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"host {host} not found"
    except ConnectionRefusedError:
        return f"connection refused at {where} (the camera is off, or serves no stream on that port)"
    except TimeoutError:
        return f"no answer from {where} within {timeout:g} s"
    except OSError as error:
        return f"cannot reach {where}: {error.strerror or error}"


class FfmpegStreamSource:
    """A network camera's picture and sound track from one ``ffmpeg`` session: one RTSP/HTTP client, not two.

    Many IP cameras take one or two clients, so reading the picture through OpenCV and the sound through a
    second ``ffmpeg`` would cost the parent's phone app its place (and double the Wi-Fi traffic). One
    ``ffmpeg`` demuxes the stream once and writes RGB frames (PPM, which carries their size) to its stdout
    and mono s16le at ``sound_rate`` to a second pipe, which ``edge.audio_source.CameraSound`` reads. The
    picture is kept newest-first as ``OpenCVSource`` keeps it; the sound is read at all times, so a pipeline
    that falls behind drops sound (counted in ``sound_overruns``) and never stalls the picture.

    The URL, password and all, reaches ``ffmpeg`` through a third pipe (an ``ffconcat`` list of one), never
    its command line, which ``ps`` shows to every user. A camera without a sound track is read for its
    picture alone from the next open on (``has_sound``).
    """

    live = True
    # ffmpeg probes a stream for up to 5 s after it connects (OpenCV does so inside its open, which this
    # open does not wait for): the first frame of a session gets this much more than ``stall_seconds``
    probe_seconds = 6.0

    def __init__(self, url: str, *, rtsp_transport: str = "tcp", timeout_seconds: float = 5.0, sound_rate: int = 16000,
                 buffer_seconds: float = 2.0):
        self.url, self.rtsp_transport, self.timeout_seconds = url, rtsp_transport, timeout_seconds
        self.sound_rate, self.buffer_seconds = sound_rate, buffer_seconds
        self.name = f"stream:{mask_url(url)}"
        self.has_sound = True  # until ffmpeg says the stream has none
        self.sound_overruns = 0
        self.generation = 0  # sessions opened so far: the sound follows the newest
        self._process: subprocess.Popen | None = None
        self._sound = None  # edge.audio_source.SoundPipe of the running session
        self._sound_fd: int | None = None
        self._reader: threading.Thread | None = None
        self._errors = ToolErrors(self.name, url=url)
        self._newest = NewestFrame()
        self._session = threading.Condition()

    @classmethod
    def from_config(cls, config: RtspSourceConfig | HttpSourceConfig, sound_rate: int = 16000) -> FfmpegStreamSource:
        transport = config.transport if isinstance(config, RtspSourceConfig) else "tcp"
        return cls(config.open_url(), rtsp_transport=transport, timeout_seconds=config.stall_seconds,
                   sound_rate=sound_rate)

    def open(self) -> None:
        sound_read, sound_write = os.pipe() if self.has_sound else (None, None)
        output = ["-map", "0:v:0", "-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1"]
        if sound_write is not None:
            output += ["-map", "0:a:0", "-ac", "1", "-ar", str(self.sound_rate), "-f", "s16le", f"pipe:{sound_write}"]
        try:
            with url_on_pipe(self.url, self.rtsp_transport, self.timeout_seconds) as (arguments, playlist):
                process = start_tool([*FFMPEG_QUIET, *arguments, *output], self.name, "ffmpeg",
                                     pass_fds=(playlist,) + ((sound_write,) if sound_write is not None else ()), bufsize=-1)
        except SourceError:
            if sound_read is not None:
                os.close(sound_read)
            raise
        finally:
            if sound_write is not None:
                os.close(sound_write)  # ffmpeg holds the write end now: its exit ends the sound
        self._newest.reset()
        self._process = process
        self._errors.watch(process.stderr)
        self._reader = threading.Thread(target=self._pump, name="cryedge-source", daemon=True)
        self._reader.start()
        with self._session:
            if sound_read is not None:
                block = max(1, self.sound_rate // 10)
                self._sound_fd = sound_read
                self._sound = SoundPipe(os.fdopen(sound_read, "rb", buffering=0, closefd=False), self.sound_rate,
                                        live=True, block=block, buffer_blocks=max(2, int(self.buffer_seconds * 10)),
                                        start=time.monotonic(), on_overrun=self._sound_overrun)
            self.generation += 1
            self._session.notify_all()

    def _sound_overrun(self) -> None:
        self.sound_overruns += 1

    def _pump(self) -> None:
        stdout = self._process.stdout
        while True:
            try:
                image = read_ppm(stdout)
            except (ValueError, OSError):
                image = None
            if image is None:
                self._newest.fail(f"{self.name} stopped delivering frames{self._stopped_because()}")
                return
            self._newest.offer(image, time.monotonic())

    def _stopped_because(self) -> str:
        """``: <why>`` from ffmpeg's last words, once it has exited; empty if it has not said."""
        process = self._process
        if process is None:
            return ""
        try:
            process.wait(2)
        except subprocess.TimeoutExpired:
            return ""
        self._errors.join(timeout=1.0)
        errors = self._errors.lines
        if any("matches no streams" in line and "0:a:0" in line for line in errors):
            self.has_sound = False
            log.warning("%s has no sound track: reading its picture alone from now on", self.name)
            return ": it has no sound track (its picture is read alone from the next open)"
        return f": {errors[-1]}" if errors else ""

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not yet returned; None if none came within ``timeout`` seconds."""
        return self._newest.frame(timeout)

    def sound(self):
        """The running session: (its ``generation``, its ``SoundPipe``); SourceError without one or without sound."""
        with self._session:
            if not self.has_sound:
                raise SourceError(f"{self.name}: capture stopped: it has no sound track")
            if self._sound is None:
                raise SourceError(f"{self.name}: the camera is not connected")
            return self.generation, self._sound

    def wait_session(self, after: int, timeout: float) -> bool:
        """Whether a session newer than ``after`` (a ``generation``) is running, waiting up to ``timeout``."""
        with self._session:
            if self.generation <= after or self._sound is None:
                self._session.wait(timeout)
            return self.generation > after and self._sound is not None

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process)
        self._reader.join(timeout=2)
        self._errors.join(timeout=2)
        with self._session:
            sound, self._sound = self._sound, None
            self._session.notify_all()
        if sound is not None:
            sound.stop()
            os.close(self._sound_fd)
        for stream in (process.stdout, process.stderr):
            stream.close()


def read_ppm(stream) -> np.ndarray | None:
    """The next binary PPM image (``P6``, 8 bits) from ``stream`` as an (h, w, 3) array; None at its end."""
    magic = stream.readline()
    if not magic:
        return None
    if magic.strip() != b"P6":
        raise ValueError(f"not a PPM image: {magic[:20]!r}")
    width, height = (int(value) for value in stream.readline().split())
    if int(stream.readline()) != 255:
        raise ValueError("not an 8-bit PPM image")
    image = bytearray(width * height * 3)
    view, got = memoryview(image), 0
    while got < len(image):
        n = stream.readinto(view[got:])
        if not n:
            return None
        got += n
    return np.frombuffer(image, dtype=np.uint8).reshape(height, width, 3)


def picamera2_controls(fps: float, greyscale: bool = False, min_fps: float | None = None,
                       analogue_gain: float | None = None) -> dict:
    """libcamera controls for picamera2 (pure): the frame rate, and the night settings of docs/night.md.

    ``min_fps`` lets auto-exposure lengthen a frame up to ``1/min_fps`` s in the dark (``FrameDurationLimits``
    in microseconds, instead of a fixed ``FrameRate``); ``greyscale`` sets the ISP's ``Saturation`` to 0;
    ``analogue_gain`` fixes the sensor gain (auto-exposure then varies the exposure time only).
    """
    controls: dict = {}
    if min_fps is not None:
        controls["FrameDurationLimits"] = (int(round(1e6 / fps)), int(round(1e6 / min_fps)))
    else:
        controls["FrameRate"] = float(fps)
    if greyscale:
        controls["Saturation"] = 0.0
    if analogue_gain is not None:
        controls["AnalogueGain"] = float(analogue_gain)
    return controls


class Picamera2Source:
    """The Pi's CSI camera through picamera2's video configuration.

    ``stream="main"`` asks for ``BGR888``, which picamera2 lays out as R, G, B bytes, so frames need
    no conversion; ``stream="lores"`` (YUV420 on a Pi 4) is converted to RGB.
    ``capture_array`` waits for the next completed request, so frames are always fresh.
    """

    live = True

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0, stream: str = "main", camera_num: int = 0,
                 picamera2_module=None, greyscale: bool = False, min_fps: float | None = None,
                 analogue_gain: float | None = None):
        self.width, self.height, self.fps, self.stream, self.camera_num = width, height, fps, stream, camera_num
        self.controls = picamera2_controls(fps, greyscale, min_fps, analogue_gain)
        self.name = f"picamera2:{camera_num}" + (":lores" if stream == "lores" else "")
        self._module = picamera2_module
        self._camera = None
        self._index = 0

    @classmethod
    def from_config(cls, config: Picamera2SourceConfig, picamera2_module=None) -> Picamera2Source:
        return cls(config.width, config.height, config.fps or 30.0, stream=config.stream, camera_num=config.camera,
                   picamera2_module=picamera2_module, greyscale=config.greyscale, min_fps=config.min_fps,
                   analogue_gain=config.analogue_gain)

    def open(self) -> None:
        module = self._module
        if module is None:
            try:
                import picamera2 as module
            except ModuleNotFoundError as error:
                if error.name not in ("picamera2", None):
                    raise SourceError(f"picamera2 cannot be imported: {error}") from None
                raise SourceError(
                    "picamera2 is not installed: on Raspberry Pi OS run 'sudo apt install python3-picamera2', "
                    "then ./setup.sh --runtime (it lets the venv see apt's packages)"
                ) from None
            except Exception as error:  # apt's module fails in many ways inside a venv
                # e.g. "numpy.dtype size changed": apt's simplejpeg is built for Bookworm's numpy 1.24
                # and the venv has numpy 2 (cryedge's aarch64 lock pins 1.26, which apt's modules share)
                raise SourceError(
                    f"picamera2 cannot be imported ({type(error).__name__}: {error}); reinstall from the lock: "
                    "./setup.sh --runtime"
                ) from None
        try:
            camera = module.Picamera2(self.camera_num)
            size = (self.width, self.height)
            if self.stream == "lores":
                config = camera.create_video_configuration(
                    main={"size": size, "format": "BGR888"}, lores={"size": size, "format": "YUV420"},
                    controls=dict(self.controls), buffer_count=4)
            else:
                config = camera.create_video_configuration(
                    main={"size": size, "format": "BGR888"}, controls=dict(self.controls), buffer_count=4)
            camera.configure(config)
            camera.start()
        except (RuntimeError, IndexError, OSError) as error:
            raise SourceError(f"cannot open the Pi camera {self.camera_num}: {error}") from None
        self._camera = camera

    def read(self, timeout: float = 1.0) -> Frame | None:
        try:
            array = self._camera.capture_array(self.stream)
        except (RuntimeError, OSError) as error:
            raise SourceError(f"the Pi camera stopped: {error}") from None
        t = time.monotonic()
        if self.stream == "lores":
            import cv2

            array = cv2.cvtColor(array, cv2.COLOR_YUV2RGB_I420)
        frame = Frame(image=np.ascontiguousarray(array[:, :, :3]), t=t, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
            finally:
                self._camera.close()
                self._camera = None


# a source type (``SourceConfig``'s ``type``) -> the backend made from its config
BACKENDS: dict[str, Callable[[SourceOptions], object]] = {
    "picamera2": Picamera2Source.from_config,
    "v4l2": OpenCVSource.from_config,
    "rtsp": OpenCVSource.from_config,
    "http": OpenCVSource.from_config,
    "file": FileSource.from_config,
}


def open_backend(config: SourceOptions):
    """The backend for a typed source config, not yet opened.

    A network stream gives up opening or reading after ``stall_seconds``.
    """
    return BACKENDS[config.type](config)


@dataclass
class SourceStatus:
    name: str
    state: str = "closed"  # "open", "reconnecting", "ended", "closed"
    reconnects: int = 0
    last_error: str = ""
    last_frame_t: float | None = None
    first_frame_t: float | None = None  # for a file: time 0 of the video on the monotonic clock


class Outage:
    """A source's outage as its log tells it: each distinct error in it once, its end once.

    A camera or a stream microphone gone for the night was said at every reopen, every reopen_max_seconds."""

    def __init__(self):
        self._began: tuple[float, int] | None = None  # (time.monotonic(), reconnects) at its first failure
        self._said: set[str] = set()

    @property
    def ongoing(self) -> bool:
        return self._began is not None

    def failed(self, error: str, reconnects: int) -> bool:
        """A failure (the first one starts the outage): True when ``error`` is new in this outage, to be said."""
        if self._began is None:
            self._began = (time.monotonic(), reconnects)
        # ffmpeg names the pipe a stream's URL came on by its descriptor, which may differ at each reopen
        error = re.sub(r"\bpipe:\d+", "pipe", error)
        new = error not in self._said
        self._said.add(error)
        return new

    def over(self, reconnects: int) -> tuple[float, int] | None:
        """The source delivers again: (seconds, reopens) the outage lasted when one was going on, else None."""
        if self._began is None:
            return None
        began, before = self._began
        self._began, self._said = None, set()
        return time.monotonic() - began, reconnects - before


def backoff_delays(first: float, limit: float) -> Iterator[float]:
    """1, 2, 4, ... seconds up to ``limit``: how long to wait before each reopen."""
    delay = first
    while True:
        yield delay
        delay = min(limit, delay * 2)


class SupervisedSource:
    """Frames from a backend that is reopened with back-off when it fails or stalls.

    A file that ends ends the iteration; a live source that fails is reopened until ``stop()``. A
    camera or stream that is not there at start is reconnected the same way (a service started before
    the camera must not exit); a file that cannot be opened is a SourceError.

    While it reconnects, ``on_progress(deadline)`` is called before each wait and after each attempt
    with the monotonic time by which the next sign of progress is due: the daemon's watchdog keeps
    pinging through a long back-off, and stops when an open hangs past ``attempt_seconds``.

    ``on_idle()`` is called on the iterating thread at least every ``idle_seconds`` while no frame comes
    (a stalled read, a back-off wait): the daemon's alarm then advances on the sound alone, in the same
    thread as it does on frames. An open that hangs (at most ``stall_seconds``) delays it that long.
    """

    def __init__(self, make_backend: Callable[[], object], stall_seconds: float = 5.0, backoff_first: float = 1.0,
                 backoff_limit: float = 30.0, on_progress: Callable[[float], None] | None = None,
                 on_idle: Callable[[], None] | None = None, idle_seconds: float = 0.5):
        self._make_backend = make_backend
        self.stall_seconds = stall_seconds
        self.backoff_first, self.backoff_limit = backoff_first, backoff_limit
        # A network open gives up after stall_seconds (its FFmpeg timeout); three times that and it hangs.
        self.attempt_seconds = 3 * stall_seconds
        self.on_progress = on_progress
        self.on_idle, self.idle_seconds = on_idle, idle_seconds
        self._stopping = threading.Event()
        self._backend = make_backend()
        self.status = SourceStatus(name=self._backend.name)
        self._outage = Outage()  # ended by the first frame, not by an open: a stream may open and send nothing
        # a backend that probes the stream after its open returns (FfmpegStreamSource) gets more for a first frame
        self.probe_seconds = getattr(self._backend, "probe_seconds", 0.0)

    @classmethod
    def from_config(cls, config: SourceOptions, on_progress: Callable[[float], None] | None = None,
                    on_idle: Callable[[], None] | None = None, backend=None) -> SupervisedSource:
        """The source a ``[source]`` config describes, reopened as its stall and back-off settings say.

        ``backend``: one already made for it (the camera session the sound shares), else ``open_backend``'s."""
        return cls(lambda: backend or open_backend(config), stall_seconds=config.stall_seconds,
                   backoff_first=config.reopen_min_seconds, backoff_limit=config.reopen_max_seconds,
                   on_progress=on_progress, on_idle=on_idle)

    def open(self) -> None:
        """Open the backend; a live one that is not there yet is left to ``frames()`` to reconnect."""
        try:
            self._backend.open()
        except SourceError as error:
            if not self._backend.live:
                raise
            self.status.state, self.status.last_error = "reconnecting", str(error)
            self._outage_begins(str(error), "%s; will keep trying")
            return
        self.status.state = "open"

    def _outage_begins(self, error: str, line: str, *args) -> None:
        new = self._outage.failed(error, self.status.reconnects)
        log.log(logging.WARNING if new else logging.DEBUG, line, error, *args)

    def stop(self) -> None:
        """Ask ``frames()`` to finish; safe from a signal handler or another thread."""
        self._stopping.set()

    def frames(self) -> Iterator[Frame]:
        delays = backoff_delays(self.backoff_first, self.backoff_limit)
        if self.status.state == "reconnecting":  # the first open failed
            self._reconnect(delays)
        last_frame, limit = time.monotonic(), self.stall_seconds + self.probe_seconds
        while not self._stopping.is_set():
            try:
                timeout = min(1.0, self.stall_seconds, self.idle_seconds if self.on_idle else 1.0)
                frame = self._backend.read(timeout=timeout)
                if frame is None and not self._backend.live:
                    if self.status.first_frame_t is None:  # it opened, yet nothing in it decodes: not watched, failed
                        raise SourceError(f"{self.status.name}: not one frame could be decoded (not a video, or an "
                                          "empty one)")
                    self.status.state = "ended"
                    return
                if frame is None:
                    self._idle()
                    if time.monotonic() - last_frame < limit:
                        continue
                    raise SourceError(f"{self.status.name}: no frame for {limit:g} s")
            except SourceError as error:
                if not self._backend.live:
                    raise
                self.status.state, self.status.last_error = "reconnecting", str(error)
                self._outage_begins(str(error), "%s; reconnecting")
                self._backend.close()
                self._reconnect(delays)
                last_frame, limit = time.monotonic(), self.stall_seconds + self.probe_seconds
                continue
            last_frame, limit = time.monotonic(), self.stall_seconds
            delays = backoff_delays(self.backoff_first, self.backoff_limit)
            self.status.last_frame_t = frame.t
            if self.status.first_frame_t is None:
                self.status.first_frame_t = frame.t
            if (ended := self._outage.over(self.status.reconnects)) is not None:
                log.info("%s: frames again after %.0f s (%d reconnects)", self.status.name, *ended)
            yield frame

    def _reconnect(self, delays: Iterator[float]) -> None:
        while not self._stopping.is_set():
            delay = next(delays)
            self._progress(delay + self.attempt_seconds)
            if self._wait(delay):
                return
            self.status.reconnects += 1
            try:
                self._backend.open()
            except SourceError as error:
                self.status.last_error = str(error)
                self._outage_begins(str(error), "reconnecting failed: %s; retrying with back-off up to %g s",
                                    self.backoff_limit)
                continue
            self.status.state = "open"
            self._progress(self.stall_seconds + self.probe_seconds + 1.0)  # a frame, or the stall that reconnects
            # not yet the end of the outage: a stream may open and send nothing; the first frame ends it
            log.debug("%s open again (reconnect %d)", self.status.name, self.status.reconnects)
            return

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` (True if stopped meanwhile), calling ``on_idle`` every ``idle_seconds``."""
        if self.on_idle is None:
            return self._stopping.wait(seconds)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping.wait(min(left, self.idle_seconds)):
                return True
            self._idle()
        return self._stopping.is_set()

    def _idle(self) -> None:
        if self.on_idle is not None:
            self.on_idle()

    def _progress(self, within: float) -> None:
        if self.on_progress is not None:
            self.on_progress(time.monotonic() + within)

    def close(self) -> None:
        self._stopping.set()
        self._backend.close()
        self.status.state = "closed"

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
