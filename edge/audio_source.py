"""The audio source stage: mono 16-bit sound at the model's rate from a microphone, a stream or a file.

Capture runs in a helper process writing raw signed 16-bit little-endian mono samples at the model's rate
to a pipe, so the tool (not Python) opens the device, converts channels and resamples:
- ``AlsaAudioSource``: an ALSA capture device (USB microphone, I2S HAT) through ``arecord`` (alsa-utils,
  on every Raspberry Pi OS image); a card index ``N`` means ``plughw:N,0``, whose plug layer resamples.
- ``FfmpegAudioSource``: the audio track of a file or of an RTSP/HTTP stream through ``ffmpeg``.
Why helper processes and not sounddevice or pyalsaaudio: README, "Dependencies" (measured).

A reader thread keeps the newest ``buffer_seconds`` of samples; when the pipeline falls behind, the oldest
are dropped and counted as overruns, as are the overruns ``arecord`` reports. ``SupervisedSource``
(edge.source) reopens a device that fails or disappears, with back-off, like a camera.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.config import mask_url
from edge.errors import SourceError, mask_password

log = logging.getLogger(__name__)

SAMPLE_BYTES = 2  # s16le
FFMPEG_QUIET = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
FULL_SCALE = 32768.0


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """Consecutive mono samples; ``t`` is the monotonic time of the first one."""

    samples: np.ndarray  # (n,) float32 in [-1, 1)
    t: float
    rate: int
    index: int  # position of the first sample since the source opened

    @property
    def duration(self) -> float:
        return self.samples.size / self.rate


def stream_input_options(url: str, rtsp_transport: str, timeout_seconds: float) -> list[tuple[str, str]]:
    """``ffmpeg``'s input options for a network stream: its RTSP transport, and a stream that sends nothing
    for ``timeout_seconds`` failing (so it can be reopened) instead of waiting forever."""
    microseconds = str(int(timeout_seconds * 1_000_000))
    if url.lower().startswith("rtsp"):
        return [("rtsp_transport", rtsp_transport), ("timeout", microseconds)]
    return [("rw_timeout", microseconds)]


# what a URL read through ffmpeg's concat demuxer may use: the pipe that carries the list, and the streams
STREAM_PROTOCOLS = "pipe,rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https,httpproxy,crypto"


def ffconcat_list(url: str, options: list[tuple[str, str]]) -> bytes:
    """``url`` and its demuxer ``options`` as an ``ffconcat`` list of one file."""
    quoted = url.replace("'", "'\\''")
    lines = ["ffconcat version 1.0", f"file '{quoted}'", *(f"option {key} {value}" for key, value in options)]
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def url_on_pipe(url: str, rtsp_transport: str, timeout_seconds: float) -> Iterator[tuple[list[str], int]]:
    """``ffmpeg``'s input arguments that read a network stream's ``url`` from a pipe, and the pipe's end to pass.

    The URL, password and all, goes in an ``ffconcat`` list written to the pipe, never on the command line,
    which ``ps`` and /proc/PID/cmdline show to every user. Start ``ffmpeg`` inside the ``with``, passing the
    fd; the parent's end is closed when it ends.
    """
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "wb") as playlist:  # a few hundred bytes: the pipe holds them
            playlist.write(ffconcat_list(url, stream_input_options(url, rtsp_transport, timeout_seconds)))
        yield ["-f", "concat", "-safe", "0", "-protocol_whitelist", STREAM_PROTOCOLS, "-i", f"pipe:{read_end}"], read_end
    finally:
        os.close(read_end)


def start_tool(command: list[str], name: str, package: str, pass_fds: tuple[int, ...] = (),
               bufsize: int = 0) -> subprocess.Popen:
    """A helper process (``command[0]`` found on PATH) with its stdout and stderr on pipes; SourceError if it cannot start.

    ``bufsize`` of its stdout: unbuffered (0) for sound read in blocks of a known size."""
    executable = shutil.which(command[0])
    if executable is None:
        raise SourceError(f"{name}: '{command[0]}' is not installed (apt install {package})")
    try:
        return subprocess.Popen([executable, *command[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=bufsize, pass_fds=pass_fds)
    except OSError as error:
        raise SourceError(f"{name}: cannot start {command[0]}: {error.strerror}") from None


class ToolErrors:
    """The last lines a helper process writes to stderr, passwords masked, read by a thread of their own.

    ``url``: the stream it reads, shown as ``mask_url`` shows it (ffmpeg names the URL it failed on, query
    tokens and all). ``counted(line)`` True: the line is counted by the caller (an overrun), not kept as an error.
    """

    def __init__(self, name: str, keep: int = 5, counted: Callable[[str], bool] | None = None, url: str | None = None):
        self.name = name
        self._counted = counted
        self._url = url
        self._lines: deque[str] = deque(maxlen=keep)
        self._thread: threading.Thread | None = None

    def watch(self, stderr) -> None:
        """Read ``stderr`` until it ends (the process exits), from now on; earlier lines are forgotten."""
        self._lines.clear()
        self._thread = threading.Thread(target=self._read, args=(stderr,), name="cryedge-tool-log", daemon=True)
        self._thread.start()

    def _read(self, stderr) -> None:
        for raw in lines_until_closed(stderr):
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            if self._url:
                line = line.replace(self._url, mask_url(self._url))
            line = mask_password(line)  # any other URL with a password in it
            if self._counted is None or not self._counted(line):
                self._lines.append(line)
                log.debug("%s: %s", self.name, line)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process's last words."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)


def lines_until_closed(stream):
    """``stream``'s lines until its end, or until it is closed under the reader (a session closed as its tool spoke):
    an end too, not an error that ends the reading thread (the daemon would stop on it: Daemon.thread_fault)."""
    while True:
        try:
            raw = stream.readline()
        except (OSError, ValueError):
            return
        if not raw:
            return
        yield raw


def alsa_device_name(device: str | int) -> str:
    """A card index (``1``) as ``plughw:1,0``; a name (``default``, ``plughw:CARD=Mic,DEV=0``) as it is."""
    text = str(device).strip()
    return f"plughw:{text},0" if text.isdigit() else text


class SoundPipe:
    """Samples a reader thread takes from a pipe of s16le mono in blocks; ``read`` hands them over in order.

    ``live`` sound is stamped with its arrival time, and when the pipeline falls behind the oldest blocks are
    dropped (``on_overrun`` is called for each); a file's runs on its own timeline from ``start`` and loses
    nothing: the reader waits for the pipeline, and with it the decoder.
    """

    def __init__(self, stream, rate: int, *, live: bool, block: int, buffer_blocks: int, start: float,
                 on_overrun: Callable[[], None]):
        self.stream, self.rate, self.live = stream, rate, live
        self.block, self.buffer_blocks, self.start = block, buffer_blocks, start
        self._on_overrun = on_overrun
        self._chunks: deque[AudioChunk] = deque()
        self._arrived = threading.Condition()
        self._ended = False
        self._stopped = False
        self._index = 0
        self._thread = threading.Thread(target=self._pump, name="cryedge-audio", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        wanted = self.block * SAMPLE_BYTES
        while True:
            data = b""
            while len(data) < wanted:
                try:
                    part = self.stream.read(wanted - len(data))
                except (OSError, ValueError):  # the pipe closed under the reader (its session closed): its end,
                    part = b""  # as the picture's reader takes it (edge.source); the monitor reopens as at any end
                if not part:
                    break
                data += part
            usable = len(data) - len(data) % SAMPLE_BYTES
            if usable:
                samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / FULL_SCALE
                self._deliver(samples)
            if len(data) < wanted:
                break
        with self._arrived:
            self._ended = True
            self._arrived.notify_all()

    def _deliver(self, samples: np.ndarray) -> None:
        if self.live:
            t = time.monotonic() - samples.size / self.rate
        else:
            t = self.start + self._index / self.rate
        chunk = AudioChunk(samples, t, self.rate, self._index)
        self._index += samples.size
        with self._arrived:
            if self.live:
                if len(self._chunks) >= self.buffer_blocks:
                    self._chunks.popleft()  # the pipeline fell behind: lose the oldest sound, not the newest
                    self._on_overrun()
            else:
                # a file loses nothing: the decoder waits for the pipeline instead
                while len(self._chunks) >= self.buffer_blocks and not self._stopped:
                    self._arrived.wait(0.5)
            self._chunks.append(chunk)
            self._arrived.notify_all()

    @property
    def heard(self) -> bool:
        """Some sound came through the pipe: a tool that ends now stopped capturing, not failed to open."""
        return self._index > 0

    @property
    def drained(self) -> bool:
        """The pipe has ended and every sample in it has been read."""
        return self._ended and not self._chunks

    def read(self, timeout: float) -> AudioChunk | None:
        """The oldest chunk not yet returned; None after ``timeout`` or once ``drained``."""
        with self._arrived:
            if not self._chunks and not self._ended:
                self._arrived.wait(timeout)
            if not self._chunks:
                return None
            chunk = self._chunks.popleft()
            self._arrived.notify_all()
            return chunk

    def stop(self, timeout: float = 2.0) -> None:
        """Stop waiting for the pipeline and join the reader (its writer must have closed the pipe)."""
        with self._arrived:
            self._stopped = True
            self._arrived.notify_all()
        self._thread.join(timeout)


class SoundBackend(Protocol):
    """What ``edge.audio.AudioMonitor`` reads sound from: a microphone, a stream's or file's sound track, or
    the sound of the camera's own session."""

    name: str
    rate: int
    live: bool  # a device or stream (stamped on arrival), not a file on its own timeline
    # the sound of the camera session the picture reads (CameraSound): it is not reopened with a back-off of its
    # own but waits (wait_ready) for the session the picture's supervisor opens, and sound that stops while the
    # picture goes on is read on. False: a microphone, stream or file with its own back-off.
    in_camera_session: bool

    def open(self) -> None: ...

    def read(self, timeout: float = 1.0) -> AudioChunk | None: ...

    def close(self) -> None: ...


class PipeAudioSource:
    """Samples a helper process writes to its stdout; the shared part of the backends.

    ``live`` sources stamp chunks with their arrival time and drop the oldest when the pipeline falls
    behind; a file runs on its own timeline from the moment it opened (like ``edge.source.FileSource``), so
    seconds mean the same at any speed, and loses nothing: its decoder waits for the pipeline.
    """

    live = True
    in_camera_session = False  # its own process: reopened with its own back-off

    def __init__(self, command: list[str], name: str, rate: int, block_seconds: float = 0.1,
                 buffer_seconds: float = 2.0, url: str | None = None):
        self.command, self.name, self.rate = command, name, rate
        self.block = max(1, int(rate * block_seconds))
        self.buffer_blocks = max(2, int(buffer_seconds / block_seconds))
        self.overruns = 0  # times samples were lost: the device's overruns plus blocks dropped here
        self._process: subprocess.Popen | None = None
        self._sound: SoundPipe | None = None
        self._errors = ToolErrors(name, counted=self._overrun_reported, url=url)

    def _start(self) -> subprocess.Popen:
        """The helper process, started."""
        return start_tool(self.command, self.name, "alsa-utils" if self.command[0] == "arecord" else "ffmpeg")

    def open(self) -> None:
        self._process = self._start()
        self._sound = SoundPipe(self._process.stdout, self.rate, live=self.live, block=self.block,
                                buffer_blocks=self.buffer_blocks, start=time.monotonic(), on_overrun=self._overrun)
        self._errors.watch(self._process.stderr)

    def _overrun(self) -> None:
        self.overruns += 1

    def _overrun_reported(self, line: str) -> bool:
        if "overrun" in line:  # arecord's
            self.overruns += 1
            return True
        return False

    @property
    def finished(self) -> bool:
        """A file's sound has all been read (``read`` then returns None at once)."""
        return self._sound is not None and self._sound.drained and not self.live

    def read(self, timeout: float = 1.0) -> AudioChunk | None:
        """The oldest chunk not yet returned; None after ``timeout``, or at the end of a file (see ``finished``)."""
        if self._process is None:
            raise SourceError(f"{self.name} is not open")
        chunk = self._sound.read(timeout)
        if chunk is not None or not self._sound.drained:
            return chunk
        code = self._process.wait()
        if code == 0 and not self.live:
            return None
        self._errors.join(timeout=1.0)  # the tool's last words
        reason = "the stream ended" if code == 0 else explain_capture_errors(self._errors.lines) or f"exit code {code}"
        if not self._sound.heard:  # it never captured: the open failed (a stream refused, a device missing)
            raise SourceError(f"{self.name}: {'it sent no sound' if code == 0 else reason}")
        raise SourceError(f"{self.name}: capture stopped: {reason}")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process)
        self._sound.stop()
        self._errors.join(timeout=2)
        for stream in (process.stdout, process.stderr):
            stream.close()


# ffmpeg's last word on a stream it could not open names the pipe its URL came on ("pipe:3: Connection refused",
# "pipe:3: Input/output error" for a host not found); its network layer's line before it says what happened
URL_PIPE_FAILED = re.compile(r"^pipe:\d+: ")
NETWORK_LINE = re.compile(r"^\[tcp @ 0x[0-9a-f]+\] ")


def explain_capture_errors(errors: list[str]) -> str:
    """What a capture tool's (``arecord``, ``ffmpeg``) error lines mean, in one line."""
    if any("matches no streams" in line for line in errors):
        return "it has no sound track"
    for line in errors:
        if "audio open error" in line:  # arecord: the device is missing, busy or not a capture device
            return f"cannot open the capture device: {line.split('audio open error:')[-1].strip()} (arecord -L lists them)"
    meaningful = [line for line in errors if "To ignore this" not in line]
    if not meaningful:
        return ""
    if URL_PIPE_FAILED.match(meaningful[-1]):
        network = [NETWORK_LINE.sub("", line) for line in meaningful if NETWORK_LINE.match(line)]
        # "Connection to tcp://HOST:PORT?timeout=N failed: ...": the options ffmpeg was given are no reason
        return re.sub(r"(tcp://\S*?)\?\S*", r"\1", network[-1]) if network else URL_PIPE_FAILED.sub("", meaningful[-1])
    return meaningful[-1]


def stop_process(process: subprocess.Popen, grace: float = 2.0) -> None:
    """Terminate a helper process, killed if it has not ended within ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class AlsaAudioSource(PipeAudioSource):
    """An ALSA capture device through ``arecord``; ALSA's plug layer converts to mono at ``rate``."""

    def __init__(self, device: str | int = "default", rate: int = 16000, buffer_seconds: float = 2.0):
        self.device = alsa_device_name(device)
        # 500 ms of device buffer: a scheduling hiccup on a busy Pi does not lose sound
        command = ["arecord", "-q", "-D", self.device, "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(rate),
                   "--buffer-time=500000"]
        super().__init__(command, f"alsa:{self.device}", rate, buffer_seconds=buffer_seconds)


class FfmpegAudioSource(PipeAudioSource):
    """The audio track of a file or an RTSP/HTTP stream through ``ffmpeg``, resampled to mono ``rate``.

    A file is played at its own pace with ``realtime`` (as a camera's microphone would deliver it), else
    as fast as it decodes; a stream that stops sending for ``timeout_seconds`` fails so it can be reopened.
    """

    def __init__(self, uri: str | Path, rate: int = 16000, realtime: bool = True, timeout_seconds: float = 5.0,
                 rtsp_transport: str = "tcp", buffer_seconds: float = 2.0, name: str | None = None):
        self.uri = str(uri)
        self.realtime = realtime
        self.rtsp_transport, self.timeout_seconds = rtsp_transport, timeout_seconds
        stream = "://" in self.uri
        self.live = stream
        self.output = ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "pipe:1"]
        # a stream's URL is given on a pipe when it starts (_start); a file's path is no secret
        source = [] if stream else [*(["-re"] if realtime else []), "-i", self.uri]
        command = [*FFMPEG_QUIET, *source, *self.output]
        name = name or (f"stream:{mask_url(self.uri)}" if stream else f"file:{mask_password(Path(self.uri).name)}")
        super().__init__(command, name, rate, buffer_seconds=buffer_seconds, url=self.uri if stream else None)

    def open(self) -> None:
        if not self.live and os.path.isdir(self.uri):  # the same sentence as a video source's: say what a source is
            raise SourceError(f"{self.uri} is a directory, not an audio file: an audio source is an audio or video file, "
                              "a microphone (alsa[:DEVICE]), the camera's sound (video) or a stream URL "
                              "(rtsp://..., http://...)")
        if not self.live and not os.path.isfile(self.uri):
            raise SourceError(f"audio file not found: {self.uri}")
        super().open()

    def _start(self) -> subprocess.Popen:
        if not self.live:
            return super()._start()
        with url_on_pipe(self.uri, self.rtsp_transport, self.timeout_seconds) as (arguments, fd):
            return start_tool([*FFMPEG_QUIET, *arguments, *self.output], self.name, "ffmpeg", pass_fds=(fd,))


class CameraSound:
    """The sound track of the camera session whose picture ``edge.source.FfmpegStreamSource`` reads.

    It opens nothing of its own: ``open`` joins the camera's running session and ``read`` gives its sound,
    until that session ends (the camera gone, stalled or reopened); ``wait_ready`` then waits for the
    next one, which the picture's supervisor opens with its back-off. Sound that stops while the session
    goes on is read on (reported ``no_sound``; ``edge.audio.AudioMonitor``): reopening it would cost the
    picture its session. Overruns are the session's.
    """

    live = True
    in_camera_session = True  # waits for the picture's session (wait_ready), never reopens one itself

    def __init__(self, camera):
        self.camera = camera
        self.name, self.rate = camera.name, camera.sound_rate
        self._pipe: SoundPipe | None = None
        self._joined = 0  # the camera's generation last joined
        self._session_ended = True  # the session last joined has ended: wait for the next

    @property
    def overruns(self) -> int:
        return self.camera.sound_overruns

    def wait_ready(self, timeout: float) -> bool:
        """Whether the camera has a session with sound not yet joined, waiting up to ``timeout`` seconds."""
        return self.camera.wait_session(self._joined if self._session_ended else self._joined - 1, timeout)

    def open(self) -> None:
        self._joined, self._pipe = self.camera.sound()

    def read(self, timeout: float = 1.0) -> AudioChunk | None:
        if self._pipe is None:
            raise SourceError(f"{self.name} is not open")
        chunk = self._pipe.read(timeout)
        if chunk is None and self._pipe.drained:
            raise SourceError(f"{self.name}: capture stopped: the camera's stream ended")
        return chunk

    def close(self) -> None:
        if self._pipe is not None:
            self._session_ended = self._pipe.drained
        self._pipe = None  # the session is the camera's to close


def level_dbfs(samples: np.ndarray, floor: float = -120.0) -> float:
    """RMS level relative to full scale: a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS."""
    if samples.size == 0:
        return floor
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(floor, 20.0 * np.log10(rms)) if rms > 0 else floor
