"""tests/streams.py's RtspCamera: a camera that takes no client before its stream is up, also while a client
keeps reconnecting through its reboots (as the daemon does every 0.5-1 s), and that comes up when another
program has taken its RTP ports while it was down. Real rtsp-server-perl and ffmpeg on loopback; this test's
RTSP client is written here on sockets."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from streams import RtspCamera

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIP = REPO / "edge" / "data" / "demo.mp4"  # 640x480, 15 fps, with a sound track
pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
    pytest.mark.skipif(shutil.which("rtsp-server-perl") is None, reason="needs rtsp-server-perl"),
]


def send_request(connection: socket.socket, method: str, url: str, cseq: int, *headers: str) -> None:
    lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq}", *headers]
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def rtsp_request(connection: socket.socket, method: str, url: str, cseq: int, *headers: str) -> tuple[int, str, bytes]:
    """Sends one request; the reply's status code, header lines and body."""
    send_request(connection, method, url, cseq, *headers)
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = connection.recv(4096)
        if not chunk:
            raise ConnectionError(f"the camera hung up after {method}")
        reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length[1]):
        body += connection.recv(4096)
    status = head.split(b"\r\n", 1)[0].split()
    return int(status[1]), head.decode(errors="replace"), body


def session_header(head: str) -> str:
    session = re.search(r"(?im)^session:\s*([^;\r\n]+)", head)[1]
    return f"Session: {session}"


def describe_and_set_up(connection: socket.socket, url: str, client_ports: list[tuple[int, int]]) -> tuple[str, str]:
    """DESCRIBE, then SETUP every stream of the SDP: ``("", session)`` when all are 200, else what failed."""
    status, _, sdp = rtsp_request(connection, "DESCRIBE", url, 1, "Accept: application/sdp")
    if status != 200:
        return f"DESCRIBE {status}", ""
    controls = re.findall(r"(?m)^a=control:(streamid=\d+)", sdp.decode())
    if not controls:
        return "DESCRIBE 200 without streams", ""
    session = ""
    for cseq, (control, (rtp, rtcp)) in enumerate(zip(controls, client_ports, strict=False), start=2):
        status, head, _ = rtsp_request(connection, "SETUP", f"{url}/{control}", cseq,
                                       f"Transport: RTP/AVP/UDP;unicast;client_port={rtp}-{rtcp}", *([session] if session else []))
        if status != 200:
            return f"SETUP {control} {status}", ""
        session = session_header(head)
    return "", session


def udp_pair(stack: ExitStack) -> tuple[socket.socket, int, int]:
    """An RTP socket and an RTCP socket on loopback: the RTP one and both ports."""
    rtp, rtcp = (stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(2))
    for udp in (rtp, rtcp):
        udp.bind(("127.0.0.1", 0))
    rtp.settimeout(10.0)
    return rtp, rtp.getsockname()[1], rtcp.getsockname()[1]


def play(camera: RtspCamera) -> list[int]:
    """A whole session as a viewer has it: DESCRIBE, SETUP of picture and sound, PLAY; the RTP payload types of
    the first packet that comes on each stream (RTP over UDP, straight from the server)."""
    with ExitStack() as stack:
        pairs = [udp_pair(stack) for _ in range(2)]
        connection = stack.enter_context(socket.create_connection(("127.0.0.1", camera.client_port), timeout=5))
        failed, session = describe_and_set_up(connection, camera.url, [(rtp, rtcp) for _, rtp, rtcp in pairs])
        assert not failed, failed
        assert rtsp_request(connection, "PLAY", camera.url, 9, session)[0] == 200
        payload_types = []
        for udp, _, _ in pairs:
            packet = udp.recv(2048)
            assert packet[0] >> 6 == 2, packet[:12]  # RTP version 2
            payload_types.append(packet[1] & 0x7F)
        send_request(connection, "TEARDOWN", camera.url, 10, session)  # rtsp-server-perl answers no TEARDOWN
        return payload_types


class Reconnecting:
    """A client that connects again and again (every 10 ms), DESCRIBEs and SETs UP every stream, then tears down
    and hangs up, as a viewer that reconnects while the camera reboots. ``outcomes``: "refused" (nothing listens),
    "served" (every request 200), or what failed: a camera that answers before its stream is up."""

    def __init__(self, port: int, url: str):
        self.port, self.url = port, url
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconnecting-rtsp-client")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with ExitStack() as stack:
                    ports = [udp_pair(stack)[1:] for _ in range(2)]  # RTP comes there from a SETUP to its TEARDOWN
                    connection = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=5))
                    failed, session = describe_and_set_up(connection, self.url, ports)
                    if not failed:
                        send_request(connection, "TEARDOWN", self.url, 9, session)  # unanswered: hang up
                    self.outcomes[failed or "served"] += 1
            except ConnectionRefusedError:
                self.outcomes["refused"] += 1
            except OSError as error:
                self.outcomes[f"{type(error).__name__}: {error}"] += 1
            time.sleep(0.01)

    def __enter__(self) -> Reconnecting:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.timeout(120)
def test_a_camera_takes_no_client_before_its_stream_is_up_and_comes_up_at_every_reboot_while_a_client_reconnects(tmp_path):
    """Before: the server took clients from its first moment; one that came between the encoder's ANNOUNCE and
    its RECORD got a stream it could not set up (DESCRIBE 200, SETUP 404), or its SETUP took the RTP ports next
    in line, the feed's second stream took the ones after, and start() failed on a stream that was up (the
    server held other ports than the feed's it checked). Now every connection before the stream is up is
    refused, each boot comes up, and a viewer gets picture and sound."""
    camera = RtspCamera(DEMO_CLIP, tmp_path, sound=True)
    try:
        for boot in range(4):
            with Reconnecting(camera.client_port, camera.url) as client:
                started = time.monotonic()
                camera.start()  # raises if the stream does not come up
                took = time.monotonic() - started
            assert client.outcomes["refused"] >= 5, (boot, client.outcomes)  # it did knock while the camera booted
            assert set(client.outcomes) <= {"refused", "served"}, (boot, took, client.outcomes)
            assert play(camera) == [96, 97], boot  # H.264 and AAC, as ffmpeg's SDP numbers them
            assert wait_for(lambda: camera.sessions() == 0, 5), boot  # hung up: no session left
            camera.stop()
            with pytest.raises(ConnectionRefusedError):  # a rebooting camera takes no connection
                socket.create_connection(("127.0.0.1", camera.client_port), timeout=2).close()
    finally:
        camera.stop()


@pytest.mark.timeout(90)
def test_a_camera_comes_up_when_another_program_took_its_rtp_ports_while_it_was_down(tmp_path):
    """An RTSP client elsewhere on the machine (ffmpeg binds a random port from 5000 to 35000) took the port the
    camera's feed had before its reboot: before, the feed's RECORD failed (404, "Error binding UDP listener to
    port ...: Address already in use", the full run's failure) and the camera never came up. Now it takes free
    ports at each start, above the ephemeral ones and ffmpeg's."""
    camera = RtspCamera(DEMO_CLIP, tmp_path, sound=True).start()
    taken = []
    try:
        first = camera.rtp_port
        assert play(camera) == [96, 97]
        camera.stop()
        for port in range(first, first + 4):
            taken.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            taken[-1].bind(("127.0.0.1", port))
        camera.start()
        assert play(camera) == [96, 97]
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        assert camera.rtp_port >= 35000 and not low <= camera.rtp_port <= high  # where no one binds at random
    finally:
        camera.stop()
        for udp in taken:
            udp.close()


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()
