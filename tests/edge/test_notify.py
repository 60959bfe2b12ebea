"""sd_notify over a real datagram socket, as systemd receives it, and the frame-fed watchdog."""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid

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
