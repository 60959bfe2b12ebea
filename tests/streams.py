"""A real HTTP camera on loopback: multipart MJPEG (what many IP and baby cameras serve), paced in real time."""

from __future__ import annotations

import http.server
import threading
import time

import cv2
import numpy as np

BOUNDARY = "cryedgeframe"


class MjpegServer:
    """Serves ``frames`` (RGB arrays, looped) at ``fps`` as ``http://127.0.0.1:PORT/stream.mjpg``.

    ``stall()`` keeps the connections open but stops sending, as a camera whose encoder hangs;
    ``resume()`` sends again. ``served`` counts the connections, so a test sees a client reconnect.
    """

    def __init__(self, frames: list[np.ndarray], fps: float = 15.0):
        self.jpegs = [cv2.imencode(".jpg", frame[:, :, ::-1])[1].tobytes() for frame in frames]
        self.fps = fps
        self.sending = threading.Event()
        self.sending.set()
        self.closed = threading.Event()
        self.served = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path != "/stream.mjpg":
                    self.send_error(404)
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
