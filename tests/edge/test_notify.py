"""sd_notify over a real datagram socket, as systemd receives it, and the frame-fed watchdog."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from edge.notify import Notifier, Watchdog, should_ping


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """A bound AF_UNIX/SOCK_DGRAM socket standing in for systemd's, and its $NOTIFY_SOCKET value."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        server.bind(address)
    else:
        name = f"cryedge-test-{uuid.uuid4().hex}"
        server.bind("\0" + name)
        address = "@" + name
    server.settimeout(5)
    yield server, address
    server.close()


def receive(server: socket.socket) -> dict[str, str]:
    data = server.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def nothing_waiting(server: socket.socket, wait: float = 0.2) -> bool:
    server.settimeout(wait)
    try:
        server.recv(4096)
    except TimeoutError:
        return True
    finally:
        server.settimeout(5)
    return False


def test_ready_status_stopping_arrive_as_systemd_reads_them(notify_socket):
    server, address = notify_socket
    with Notifier.from_environment({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled
        assert notifier.ready("running: 15.0 fps")
        assert receive(server) == {"READY": "1", "STATUS": "running: 15.0 fps"}
        assert notifier.status("reconnecting camera (attempt 2)")
        assert receive(server) == {"STATUS": "reconnecting camera (attempt 2)"}
        assert notifier.stopping()
        assert receive(server) == {"STOPPING": "1"}
        assert notifier.extend_timeout(20)
        assert receive(server) == {"EXTEND_TIMEOUT_USEC": "20000000"}


def test_outside_systemd_every_call_is_a_no_op():
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    watchdog = Watchdog(notifier)
    watchdog.frame_processed()
    assert not watchdog.tick()
    watchdog.start()  # nothing to start
    watchdog.close()


def test_watchdog_interval_is_half_of_watchdog_usec():
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval == 15.0


def test_watchdog_pid_of_another_process_disables_the_watchdog():
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environment(environ).watchdog_interval is None
    environ["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_environment(environ).watchdog_interval == 15.0


@pytest.mark.parametrize("value", ["", "0", "-5", "thirty"])
def test_unusable_watchdog_usec_means_no_watchdog(value):
    assert (
        Notifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": value}).watchdog_interval is None
    )


@pytest.mark.timeout(30)
def test_a_receiver_that_does_not_read_never_blocks_the_sender(notify_socket):
    server, address = notify_socket
    notifier = Notifier(address)
    results = [notifier.status(f"frame {i}") for i in range(200)]  # far beyond the socket's queue
    assert results[0] is True
    assert results[-1] is False  # dropped, not blocked
    assert receive(server) == {"STATUS": "frame 0"}


def test_a_vanished_socket_does_not_raise(tmp_path):
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.ready() is False
    assert notifier.status("still running") is False


# The decision, with plain numbers: interval 15 s (WatchdogSec=30). alive_until is the last frame plus
# stall_after (10 s), or the end of the reopen attempt the source supervisor has promised.
@pytest.mark.parametrize(
    ("now", "alive_until", "last_ping", "due"),
    [
        (100.0, None, None, False),  # no progress yet: start-up is not over
        (100.0, 109.9, None, True),  # frames flow, never pinged
        (100.0, 109.9, 90.0, False),  # pinged 10 s ago, interval 15 s
        (105.0, 114.9, 90.0, True),  # 15 s since the last ping
        (105.0, 104.0, 90.0, False),  # last frame 11 s ago: stalled source, no ping
        (200.0, 110.0, 90.0, False),  # stalled for long: still no ping, systemd will restart us
        (200.0, 231.0, 180.0, True),  # camera gone, the next reopen attempt is promised by 231
        (240.0, 231.0, 225.0, False),  # that attempt hangs past its promise: no ping
    ],
)
def test_ping_is_due_only_while_the_pipeline_makes_progress(now, alive_until, last_ping, due):
    assert should_ping(now, alive_until, last_ping, interval=15.0) is due


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_tick_pings_at_half_of_watchdog_usec_and_stops_when_frames_stall(notify_socket):
    server, address = notify_socket
    clock = FakeClock()
    notifier = Notifier(address, watchdog_usec=30_000_000)
    watchdog = Watchdog(notifier, stall_after=10.0, clock=clock)
    assert not watchdog.tick()  # no frame yet
    sent = []
    for second in range(60):  # 20 fps for a minute, ticking every second
        clock.t = 1000.0 + second
        watchdog.frame_processed()
        if watchdog.tick():
            sent.append(second)
            assert receive(server) == {"WATCHDOG": "1"}
    assert sent == [0, 15, 30, 45]
    # The camera hangs after the frame at 1059. The ping due at 1060 still goes (that frame is
    # 1 s old); after that none, although the interval passes three more times.
    stalled = []
    for second in range(60, 120):
        clock.t = 1000.0 + second
        if watchdog.tick():
            stalled.append(second)
            assert receive(server) == {"WATCHDOG": "1"}
    assert stalled == [60]
    assert nothing_waiting(server)
    # Frames flow again: pings resume at once.
    clock.t = 1120.0
    watchdog.frame_processed()
    assert watchdog.tick()
    assert receive(server) == {"WATCHDOG": "1"}


@pytest.mark.timeout(30)
def test_watchdog_thread_pings_while_frames_flow_and_goes_quiet_on_a_stall(notify_socket):
    """Real time: WATCHDOG_USEC=0.4 s, so a ping every 0.2 s while a loop reports frames."""
    server, address = notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    with Watchdog(notifier, stall_after=0.3) as watchdog:
        watchdog.start()
        pings = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:  # a 50 fps frame loop
            watchdog.frame_processed()
            server.setblocking(False)
            try:
                while True:
                    assert receive(server) == {"WATCHDOG": "1"}
                    pings.append(time.monotonic())
            except BlockingIOError:
                pass
            time.sleep(0.02)
        server.setblocking(True)
        assert 5 <= len(pings) <= 8, pings  # 1.5 s / 0.2 s, allowing for wake-up jitter
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.15 <= gap <= 0.4 for gap in gaps), gaps  # always inside WATCHDOG_USEC
        # The loop stops reporting frames (stalled source): at most one ping still in flight,
        # then silence for far longer than WATCHDOG_USEC.
        time.sleep(0.35)
        while not nothing_waiting(server, 0.01):
            pass
        assert nothing_waiting(server, 1.0)


def test_reopen_attempts_keep_the_pings_going_and_a_hung_one_stops_them(notify_socket):
    """Frames stop at 1000; the supervisor promises each attempt (back-off + 15 s for the open) ..."""
    server, address = notify_socket
    clock = FakeClock()
    watchdog = Watchdog(Notifier(address, watchdog_usec=30_000_000), stall_after=5.0, clock=clock)
    watchdog.frame_processed()
    attempts = {1006.0: 1006.0 + 1 + 15, 1022.0: 1022.0 + 2 + 15, 1039.0: 1039.0 + 30 + 15}
    sent = []
    for second in range(0, 150):
        clock.t = 1000.0 + second
        if clock.t in attempts:
            watchdog.alive_until(attempts[clock.t])
        if watchdog.tick():
            sent.append(second)
            assert receive(server) == {"WATCHDOG": "1"}
    # ... pings every 15 s through the first 84 s (1039 + 45), then none: the third attempt hung.
    assert sent == [0, 15, 30, 45, 60, 75]
    assert nothing_waiting(server)


def test_a_frame_ends_the_first_frames_promise_and_the_next_is_due_stall_after_it():
    """The daemon promises its first frame a minute ahead: once one has come, a loop that hangs starves the watchdog
    stall_after later, not at the end of that minute (its frame loop then is stuck 5 s past this promise)."""
    clock = FakeClock()
    watchdog = Watchdog(Notifier(), stall_after=5.0, clock=clock)
    watchdog.alive_until(1065.0)  # the first frame due by then
    clock.t = 1002.0
    watchdog.frame_processed()
    assert watchdog.promised_until == 1007.0
    watchdog.alive_until(1040.0)  # then the camera goes, and its reopen is promised
    assert watchdog.promised_until == 1040.0


# --- the daemon under a real watchdog while its camera is gone (issue 10 item 7)

REPO = Path(__file__).resolve().parents[2]
DEMO_CLIP = REPO / "edge" / "data" / "demo.mp4"


class Service:
    """``cryedge run`` as systemd runs it: Type=notify with a watchdog, reading what it sends."""

    def __init__(self, tmp_path: Path, source_toml: str, watchdog_usec: int, broker=None):
        from mqtt import free_port

        self.health_port = free_port()
        config = tmp_path / "cryedge.toml"
        config.write_text(f'{source_toml}\n[landmarks]\npose = false\n[device]\nid = "nursery"\n'
                          f'[health]\nport = {self.health_port}\n[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify"))
        self.notify.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        broker_args = ["--broker", f"mqtt://127.0.0.1:{broker.port}"] if broker else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(config), *broker_args], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,  # see terminate
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": str(watchdog_usec)})
        # its stderr drained at all times: a full pipe would block the daemon's logging, and a timeout below
        # can say what the daemon said without waiting for it to exit
        self._stderr: list[str] = []
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()

    def _drain_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)

    def stderr_so_far(self) -> str:
        return "".join(self._stderr)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), dict(line.split("=", 1) for line in data.split("\n"))))

    def health(self) -> tuple[int | None, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/health", timeout=5) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)
        except (urllib.error.URLError, ConnectionError):
            return None, {}

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/stats", timeout=5) as answer:
            return json.load(answer)

    def wait_for_health(self, status: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._stderr_reader.join(timeout=5)
                raise AssertionError(f"cryedge run exited {self.process.returncode}: {self.stderr_so_far()[-3000:]}")
            code, body = self.health()
            if code == status:
                return body
            time.sleep(0.5)
        raise AssertionError(f"/health did not become {status} in {timeout} s: {self.health()}; "
                             f"its stderr: {self.stderr_so_far()[-3000:]}")

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, fields in self.messages if fields.get("WATCHDOG") == "1" and t >= since]

    def terminate(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the daemon and any child it left (its ffmpeg)
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._stderr_reader.join(timeout=10)
            self.process.stderr.close()
            self._stop.set()
            self._reader.join()
            self.notify.close()
        return self.stderr_so_far()


@pytest.mark.timeout(180)
def test_a_camera_missing_at_start_keeps_the_service_up_reconnecting(tmp_path):
    """Started before its USB camera is plugged in: READY, pings while it retries, /health 503 reconnecting."""
    service = Service(tmp_path, '[source]\ntype = "v4l2"\ndevice = "/dev/video97"\n'
                      'reopen_min_seconds = 0.5\nreopen_max_seconds = 1.0\nstall_seconds = 1.0', 2_000_000)
    try:
        body = service.wait_for_health(503, timeout=120)
        assert body["status"] == "reconnecting"
        started = time.monotonic()
        time.sleep(6)
        stats = service.stats()
        assert stats["source_state"] == "reconnecting" and stats["source_reconnects"] >= 3
    finally:
        stderr = service.terminate()
    assert service.process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    ready = next(fields for _, fields in service.messages if fields.get("READY") == "1")
    assert ready["STATUS"].startswith("reconnecting: device:/dev/video97")
    pings = service.pings(since=started)
    assert len(pings) >= 4  # every second (WATCHDOG_USEC 2 s), though no frame ever came
    assert any(fields.get("STATUS", "").startswith("reconnecting device:/dev/video97 (attempt")
               for _, fields in service.messages)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_rtsp_camera_gone_for_two_minutes_keeps_the_service_alive_and_honest(tmp_path, mosquitto):
    """The real two minutes, the default back-off (1 s doubling to 30 s) and a 10 s watchdog.

    The pings never stop, /health says reconnecting (503), MQTT stats say so at once, and frames come
    back when the camera does, in the same process.
    """
    from mqtt import Subscriber
    from streams import RtspCamera

    camera = RtspCamera(DEMO_CLIP, tmp_path).start()
    with Subscriber(mosquitto, topics=("cryedge/nursery/stats",)) as subscriber:
        service = Service(tmp_path, f'[source]\ntype = "rtsp"\nurl = "{camera.url}"\ntransport = "udp"',
                          10_000_000, broker=mosquitto)
        try:
            service.wait_for_health(200, timeout=180)
            pid = service.process.pid
            camera.stop()
            gone = time.monotonic()
            body = service.wait_for_health(503, timeout=30)
            assert body["status"] == "reconnecting"
            frames = service.stats()["frames"]
            while time.monotonic() < gone + 120:
                code, body = service.health()
                assert code == 503 and body["status"] == "reconnecting", (code, body)
                time.sleep(2)
            assert service.stats()["frames"] == frames  # it was really gone
            camera.start()
            back = time.monotonic()
            service.wait_for_health(200, timeout=60)  # the next attempt is at most 30 s away
            time.sleep(2)
            stats = service.stats()
            assert stats["frames"] > frames and stats["source_state"] == "open"
            assert service.process.pid == pid and service.process.poll() is None
        finally:
            stderr = service.terminate()
            camera.stop()
        states = [json.loads(m.payload).get("source_state") for m in subscriber.on("cryedge/nursery/stats")]
    assert service.process.returncode == 0, stderr[-3000:]
    pings = service.pings(since=gone - 5)
    gaps = [b - a for a, b in itertools.pairwise([gone - 5, *pings, back])]
    assert max(gaps) < 10.0, gaps  # never WATCHDOG_USEC without a ping: systemd would have killed it
    assert stats["source_reconnects"] >= 5  # 1, 2, 4, 8, 16, 30, 30, ... s apart
    assert "reconnecting" in states and states[-1] == "open", states


class StuckCamera:
    """A stand-in backend (a driver stuck in native code cannot be made to order): it is gone for two
    opens, then its third open never returns."""

    live = True
    name = "device:/dev/video-stuck"

    def __init__(self):
        self.opens = 0
        self.release = threading.Event()

    def open(self) -> None:
        from edge.errors import SourceError

        self.opens += 1
        if self.opens <= 2:
            raise SourceError("cannot open device /dev/video-stuck")
        self.release.wait(30)
        raise SourceError("released by the test")

    def read(self, timeout: float = 1.0):
        return None

    def close(self) -> None:
        pass


@pytest.mark.timeout(60)
def test_reopen_attempts_feed_the_watchdog_and_a_hung_open_starves_it(notify_socket):
    from edge.source import SupervisedSource

    server, address = notify_socket
    camera = StuckCamera()
    watchdog = Watchdog(Notifier(address, watchdog_usec=200_000), stall_after=0.2)  # a ping every 0.1 s
    source = SupervisedSource(lambda: camera, stall_seconds=0.3, backoff_first=0.2, backoff_limit=0.4,
                              on_progress=watchdog.alive_until)
    source.open()  # the first open fails: no exception, reconnecting
    assert source.status.state == "reconnecting"
    reader = threading.Thread(target=lambda: next(source.frames(), None), daemon=True)
    with watchdog:
        watchdog.start()
        started = time.monotonic()
        reader.start()
        pings = []
        server.settimeout(0.05)
        while time.monotonic() < started + 3.0:
            try:
                if server.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic() - started)
            except TimeoutError:
                pass
        camera.release.set()
        source.stop()
        reader.join(10)
    # the first open failed; reconnects at 0.2 s (fails) and 0.6 s (hangs): promised until 0.6 + 0.9 s,
    # then silence, although the process and its watchdog thread live on
    assert camera.opens == 3 and source.status.reconnects == 2
    assert pings and max(b - a for a, b in itertools.pairwise([0.0, *pings])) < 0.3, pings
    assert 1.3 < pings[-1] < 1.8, pings
