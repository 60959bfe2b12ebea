"""The systemd notification protocol (sd_notify) and a watchdog that is fed only while frames flow.

How the daemon uses it::

    notifier = Notifier.from_environment()        # a no-op outside systemd
    watchdog = Watchdog(notifier, stall_after=10.0)
    ...open model, landmarkers and source...
    notifier.ready("running: 0.0 fps")            # READY=1 only once everything is up
    watchdog.start()                              # thread: WATCHDOG=1 every WATCHDOG_USEC / 2 ...
    for frame in source:
        ...process...
        watchdog.frame_processed()                # ... but only while the pipeline makes progress
        notifier.status("running: 14.8 fps, crying OFF")
    notifier.stopping()
    watchdog.close()

Why the watchdog depends on progress: a camera or pipeline that hangs leaves the process alive, so a
timer that pinged unconditionally would hide it. Progress is a processed frame, the daemon's promise of
the first one as its loop starts, or, while the camera is gone, the source supervisor's promise of its
next reopen attempt (:meth:`Watchdog.alive_until`):
a camera that takes minutes to come back is a state to report, not a reason to restart the service,
but a reopen that hangs past its promise stops the pings, and systemd restarts the service after
``WatchdogSec=``.

The protocol (sd_notify(3)): newline-separated ``KEY=value`` fields in one datagram to the
``AF_UNIX``/``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET``; a name starting with ``@`` is in the
abstract namespace. ``$WATCHDOG_USEC`` is the watchdog timeout in microseconds; systemd recommends a
ping at half of it. ``$WATCHDOG_PID``, when set, names the one process meant to ping.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Self

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; every method does nothing when no socket is configured."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None):
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, pid: int | None = None) -> Notifier:
        """Reads ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.

        The watchdog counts as enabled only when ``$WATCHDOG_PID`` is unset or names this process,
        as sd_watchdog_enabled(3) does, so a child started with the parent's environment never pings.
        """
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog_usec = _positive_int(environ.get("WATCHDOG_USEC"))
        watchdog_pid = _positive_int(environ.get("WATCHDOG_PID"))
        if watchdog_pid is not None and watchdog_pid != (os.getpid() if pid is None else pid):
            watchdog_usec = None
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True under systemd with ``Type=notify`` (a notification socket was given)."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), None when there is no watchdog."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2e6

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is finished (model, landmarkers and source are up)."""
        return self.send(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send(STOPPING="1", STATUS=status)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is alive. Use :class:`Watchdog` to send it only while frames flow."""
        return self.send(WATCHDOG="1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=...: start-up or shutdown needs ``seconds`` more (slow model loading)."""
        return self.send(EXTEND_TIMEOUT_USEC=str(int(seconds * 1e6)))

    def send(self, **fields: str | None) -> bool:
        """Sends the fields that are not None as one datagram; True when it was sent.

        Never blocks. Failures (no listener, a full queue) are logged once and otherwise ignored: a
        lost notification must not stop the pipeline (systemd then acts on its own timeouts).
        """
        message = "\n".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        if self.address is None or not message:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    # A receiver that does not read fills its queue (net.unix.max_dgram_qlen, 10 by
                    # default) and a blocking send would then stall the frame loop: drop instead.
                    self._socket.setblocking(False)
                self._socket.sendto(message.encode(), target)
        except OSError as error:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, error)
                self._warned = True
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def should_ping(now: float, alive_until: float | None, last_ping: float | None, interval: float) -> bool:
    """Whether a WATCHDOG=1 is due at ``now`` (all times in seconds on one monotonic clock).

    Due when the last sign of progress still holds at ``now`` (``alive_until``: a recent frame, or a
    reopen attempt the source supervisor has promised by then) and the last ping is at least
    ``interval`` old. No progress yet, or none lately, means no ping: the source or pipeline is stuck.
    """
    if alive_until is None or now > alive_until:
        return False
    return last_ping is None or now - last_ping >= interval


class Watchdog:
    """Feeds systemd's watchdog at half of ``WATCHDOG_USEC``, but only while the pipeline makes progress.

    The frame loop calls :meth:`frame_processed`; the daemon, as its loop starts, calls :meth:`alive_until`
    with the time its first frame is due, and the source supervisor, while it reconnects, with the time by
    which its next attempt will be over. A background thread
    (:meth:`start`) or the loop itself (:meth:`tick`) sends the pings. Without a systemd watchdog every
    method is a no-op.
    """

    def __init__(
        self, notifier: Notifier, stall_after: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self.notifier = notifier
        self.stall_after = stall_after
        self.clock = clock
        self._alive_until: float | None = None
        self._last_ping: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float | None:
        return self.notifier.watchdog_interval

    def frame_processed(self, t: float | None = None) -> None:
        """Records that a frame went through the pipeline at ``t`` (default: now): alive for ``stall_after``.

        A frame is the progress every earlier promise was for (the first frame's, a reopen's): the next is due
        ``stall_after`` after it, not at the end of the minute the first frame was given."""
        deadline = (self.clock() if t is None else t) + self.stall_after
        with self._lock:
            self._alive_until = deadline

    def alive_until(self, deadline: float) -> None:
        """Counts as progress until ``deadline`` (monotonic): the next sign of life is promised by then."""
        with self._lock:
            if self._alive_until is None or deadline > self._alive_until:
                self._alive_until = deadline

    @property
    def promised_until(self) -> float | None:
        """The monotonic time by which the next sign of progress is due (None before the first): past it, no ping."""
        with self._lock:
            return self._alive_until

    def tick(self, now: float | None = None) -> bool:
        """Sends WATCHDOG=1 if one is due; True when it was sent."""
        interval = self.interval
        if interval is None:
            return False
        now = self.clock() if now is None else now
        with self._lock:
            if not should_ping(now, self._alive_until, self._last_ping, interval):
                return False
            self._last_ping = now
        return self.notifier.watchdog()

    def start(self) -> None:
        """Starts the pinging thread (when systemd asked for a watchdog)."""
        interval = self.interval
        if interval is None or self._thread is not None:
            return
        self._stop.clear()
        # Waking at a quarter of the interval keeps the gap between pings under 1.25 intervals,
        # well inside WATCHDOG_USEC (= 2 intervals), even when the first frame arrives late.
        self._thread = threading.Thread(target=self._run, args=(interval / 4,), name="watchdog", daemon=True)
        self._thread.start()

    def _run(self, wake_every: float) -> None:
        while not self._stop.wait(wake_every):
            self.tick()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None
