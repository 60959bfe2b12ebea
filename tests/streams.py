"""Real network cameras on loopback: an HTTP multipart-MJPEG server (what many IP and baby cameras serve)
written here on the standard library, and an RTSP camera made of Debian's rtsp-server-perl fed by ffmpeg."""

from __future__ import annotations

import base64
import http.server
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
    password does (401 until the client sends them; ``refused`` counts the refusals).
    """

    def __init__(self, frames: list[np.ndarray], fps: float = 15.0, credentials: tuple[str, str] | None = None):
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

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


RTSP_SERVER = shutil.which("rtsp-server-perl") or "/usr/bin/rtsp-server-perl"
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


class RtspCamera:
    """A real RTSP server on loopback (Debian's rtsp-server-perl) fed by ``ffmpeg`` re-encoding ``clip``
    to H.264 in real time, looped: ``rtsp://127.0.0.1:PORT/live``, RTP over UDP (the server has no TCP).

    ``stop()`` ends server and encoder, as a camera that reboots; ``start()`` brings both back on the
    same ports. (The server cannot take a second feed once the first has gone, so a reboot is both.)
    """

    def __init__(self, clip: Path, workdir: Path, sound: bool = False):
        self.clip, self.workdir = Path(clip), Path(workdir)
        self.sound = sound  # also send the clip's sound track (AAC), as a camera with a microphone does
        self.client_port, self.source_port = free_port(), free_port()
        self.url = f"rtsp://127.0.0.1:{self.client_port}/live"
        self._server: subprocess.Popen | None = None
        self._feed: subprocess.Popen | None = None

    def start(self) -> RtspCamera:
        with open(self.workdir / "rtsp-server.log", "ab") as log:
            self._server = subprocess.Popen(
                [RTSP_SERVER, "--clientport", str(self.client_port), "--serverport", str(self.source_port),
                 "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1", "--loglevel", "2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # the source port first: the encoder connects there
        wait_until_listening(self._server, self.source_port, self.workdir / "rtsp-server.log", "rtsp-server-perl")
        with open(self.workdir / "ffmpeg.log", "ab") as log:
            self._feed = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
                 *(["-c:a", "aac", "-ar", "16000", "-ac", "1"] if self.sound else ["-an"]), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15",
                 "-f", "rtsp", f"rtsp://127.0.0.1:{self.source_port}/live"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self.wait_until_live()
        except BaseException:
            self.stop()  # no server left behind on its fixed UDP ports for the next test to trip over
            raise
        return self

    def wait_until_live(self, timeout: float = 20.0) -> None:
        """Until the server answers DESCRIBE with 200: the encoder has announced the stream."""
        deadline = time.monotonic() + timeout
        request = f"DESCRIBE {self.url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=1) as connection:
                    connection.sendall(request)
                    if b" 200 " in connection.recv(4096).split(b"\r\n", 1)[0] + b" ":
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the RTSP stream did not come up: {(self.workdir / 'ffmpeg.log').read_text()}")

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
