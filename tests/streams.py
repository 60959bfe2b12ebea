"""Real network cameras on loopback: an HTTP multipart-MJPEG server (what many IP and baby cameras serve)
written here on the standard library, and an RTSP camera made of Debian's rtsp-server-perl fed by ffmpeg."""

from __future__ import annotations

import base64
import http.server
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from mqtt import free_port, wait_until_listening

BOUNDARY = "cryedgeframe"


class MjpegServer:
    """Serves ``frames`` (RGB arrays, looped) at ``fps`` as ``http://127.0.0.1:PORT/stream.mjpg``.

    ``stall()`` keeps the connections open but stops sending, as a camera whose encoder hangs;
    ``resume()`` sends again. ``served`` counts the connections, so a test sees a client reconnect.
    With ``credentials=(user, password)`` it asks for HTTP basic authentication, as a camera with a
    password does (401 until the client sends them; ``refused`` counts the refusals). ``port``: a given one, so
    that a camera switched off (``__exit__``) comes back where it was, as another server on the same port.
    """

    def __init__(self, frames: list[np.ndarray], fps: float = 15.0, credentials: tuple[str, str] | None = None,
                 port: int = 0):
        self.jpegs = [cv2.imencode(".jpg", frame[:, :, ::-1])[1].tobytes() for frame in frames]
        self.fps = fps
        self.sending = threading.Event()
        self.sending.set()
        self.closed = threading.Event()
        self.served = 0
        self.refused = 0
        expected = None
        if credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                if expected is not None and self.headers.get("Authorization") != expected:
                    server.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.served += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                index = 0
                try:
                    while not server.closed.is_set():
                        if not server.sending.wait(0.1):
                            continue
                        jpeg = server.jpegs[index % len(server.jpegs)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        index += 1
                        time.sleep(1 / server.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def stall(self) -> None:
        self.sending.clear()

    def resume(self) -> None:
        self.sending.set()

    def __enter__(self) -> MjpegServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# Debian's rtsp-server-perl takes clients from its first moment: once its feed has ANNOUNCEd the stream, a
# client's DESCRIBE gets 200 and its SETUP takes (and binds) the next RTP ports from the counter the feed's own
# SETUPs take theirs from, while the feed has not yet set up all its streams nor RECORDed (its RTP listeners are
# bound only then: a port taken by then fails the RECORD, 404). A client reconnecting through the camera's reboot
# raced the feed so. A camera serves no one before its stream is up: this main opens the client port only once
# the feed has recorded (its mount is "mounted": every RTP listener bound). Its first argument is the first RTP
# port: the server goes back to this package variable whenever it has no stream, so it is set too.
RTSP_SERVER_MAIN = """$| = 1;
use AnyEvent;
use RTSP::Server;
$RTSP::Server::RTP_START_PORT = shift @ARGV;
my $server = RTSP::Server->new_with_options;
$server->start_source_server;
my $gate;
$gate = AnyEvent->timer(after => 0.02, interval => 0.02, cb => sub {
    return unless grep { $_->mounted } values %{ $server->mounts };
    $server->start_client_server;
    undef $gate;
});
AnyEvent->condvar->recv;
"""
# Each RtspCamera takes its RTP/RTCP UDP ports from a range of its own, chosen free at each start (the server's
# own default, 20000 up, may be another server's): RTP_PORTS from the feed's up (2 a stream, then 2 a stream of
# each client's SETUP). The range lies above the ports the kernel gives outgoing sockets and above those where
# ffmpeg's RTSP clients and feeds bind theirs (a random even port from 5000 to 35000, then up while taken):
# a feed's port taken by one of those between the choice and the feed's RECORD was a camera that never came up.
RTP_PORTS = 200
FFMPEG_RTP_PORTS = (5000, 35000)  # libavformat's rtsp.c: min_port 5000, a random start in the lower half of 5000-65000


def rtp_port_span(count: int = RTP_PORTS) -> tuple[int, int]:
    """Where test cameras' RTP ports go: ``(first, end)``, clear of the ephemeral ports
    (/proc/sys/net/ipv4/ip_local_port_range) and of ffmpeg's, above both if there is room, else between them."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    above = max(high + 1, FFMPEG_RTP_PORTS[1])
    if 65536 - above >= count:
        return above, 65536
    if low - FFMPEG_RTP_PORTS[1] >= count:
        return FFMPEG_RTP_PORTS[1], low
    raise RuntimeError(f"no {count} UDP ports clear of the ephemeral ports ({low}-{high}) and of ffmpeg's "
                       f"({FFMPEG_RTP_PORTS[0]}-{FFMPEG_RTP_PORTS[1]}) for an RTSP server")


def free_rtp_ports(count: int = RTP_PORTS) -> int:
    """An even UDP port on loopback from which ``count`` ports are free now, in ``rtp_port_span``."""
    first, end = rtp_port_span(count)
    for _ in range(100):
        start = random.randrange(first + first % 2, end - count + 1, 2)
        sockets = []
        try:
            for port in range(start, start + count):
                sockets.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sockets[-1].bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for held in sockets:
                held.close()
        return start
    raise RuntimeError(f"no {count} free UDP ports on loopback for an RTSP server")


def udp_ports_of(pid: int) -> set[int]:
    """The local ports of the UDP sockets process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def command_lines() -> list[str]:
    """Every process's command line, as ``ps`` and /proc/PID/cmdline show them to every user."""
    lines = []
    for entry in Path("/proc").iterdir():
        try:
            lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    return lines


FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


class RtspCamera:
    """A real RTSP server on loopback (Debian's rtsp-server-perl) fed by ``ffmpeg`` re-encoding ``clip``
    to H.264 in real time, looped: ``rtsp://127.0.0.1:PORT/live``, RTP over UDP (the server has no TCP).

    As a camera, it takes no client before its stream is up: connections are refused until the encoder has
    set up and recorded every stream (``RTSP_SERVER_MAIN``). ``stop()`` ends server and encoder, as a camera
    that reboots; ``start()`` brings both back on the same RTSP port. (The server cannot take a second feed
    once the first has gone, so a reboot is both.)
    """

    def __init__(self, clip: Path, workdir: Path, sound: bool = False):
        self.clip, self.workdir = Path(clip), Path(workdir)
        self.sound = sound  # also send the clip's sound track (AAC), as a camera with a microphone does
        self.client_port, self.source_port = free_port(), free_port()
        self.rtp_port = 0  # the feed's RTP/RTCP ports: rtp_port .. +3 with sound, then the clients'; chosen at each start
        self.url = f"rtsp://127.0.0.1:{self.client_port}/live"
        self._server: subprocess.Popen | None = None
        self._feed: subprocess.Popen | None = None

    def start(self) -> RtspCamera:
        self.rtp_port = free_rtp_ports()
        with open(self.workdir / "rtsp-server.log", "ab") as log:
            self._server = subprocess.Popen(
                ["perl", "-e", RTSP_SERVER_MAIN, str(self.rtp_port),
                 "--rtp_start_port", str(self.rtp_port), "--clientport", str(self.client_port), "--serverport", str(self.source_port),
                 "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1", "--loglevel", "2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # the source port first: the encoder connects there
        wait_until_listening(self._server, self.source_port, self.workdir / "rtsp-server.log", "rtsp-server-perl")
        with open(self.workdir / "ffmpeg.log", "ab") as log:
            self._feed = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
                 *(["-c:a", "aac", "-ar", "16000", "-ac", "1"] if self.sound else ["-an"]), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15",
                 "-max_interleave_delta", "100000", "-f", "rtsp", f"rtsp://127.0.0.1:{self.source_port}/live"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self.wait_until_live()
        except BaseException:
            self.stop()  # no server left behind on its UDP ports for the next test to trip over
            raise
        return self

    def wait_until_live(self, timeout: float = 20.0) -> None:
        """Until the server answers DESCRIBE with 200 on the client port (open once the encoder has recorded) and
        holds the UDP ports its feed's RTP comes to (the first ones of its range: no client came before the feed).
        A RuntimeError with both logs at once if the server or the encoder exits, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        request = f"DESCRIBE {self.url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
        feed_ports = set(range(self.rtp_port, self.rtp_port + (4 if self.sound else 2)))
        held: set[int] = set()
        failure = "did not come up"
        while time.monotonic() < deadline:
            exited = [name for name, process in (("rtsp-server-perl", self._server), ("ffmpeg", self._feed))
                      if process.poll() is not None]
            if exited:
                failure = f"did not come up: {' and '.join(exited)} exited"
                held = udp_ports_of(self._server.pid) if self._server.poll() is None else set()
                break
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=1) as connection:
                    connection.sendall(request)
                    if b" 200 " in connection.recv(4096).split(b"\r\n", 1)[0] + b" ":
                        held = udp_ports_of(self._server.pid)
                        if feed_ports <= held:
                            return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the RTSP stream {failure} (the server holds UDP ports {sorted(held)}, its feed "
                           f"needs {sorted(feed_ports)}): {(self.workdir / 'ffmpeg.log').read_text()}"
                           f"{(self.workdir / 'rtsp-server.log').read_text()[-2000:]}")

    def sessions(self) -> int:
        """RTSP clients connected now: established TCP connections to the client port (each session keeps one
        open, also with RTP over UDP; the server's log does not name its clients)."""
        local = f":{self.client_port:04X}"
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                count += fields[1].endswith(local) and fields[3] == "01"  # 01: ESTABLISHED
        return count

    def stop(self) -> None:
        for process in (self._feed, self._server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        self._feed = self._server = None

    def __enter__(self) -> RtspCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
