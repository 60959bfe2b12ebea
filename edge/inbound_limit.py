"""Messages from the broker larger than cryedge can want are skipped as they arrive, never held in memory.

cryedge subscribes to one topic, ``homeassistant/status``, whose messages are a few bytes (``online``). Yet any
client allowed on the broker may publish there, retained, up to the broker's limit (mosquitto's default: 256
MiB), and paho reads a message whole, holding about three copies of it at once: a retained 200 MiB message took
the daemon from 187 to 788 MiB at every connect (benchmarks/mqtt_inbound.py), past what a Raspberry Pi 3 has,
and an out-of-memory kill, a restart and the same retained message again would be a crash loop with no alert.

With MQTT 5 the CONNECT says a Maximum Packet Size and the broker itself drops what is larger for this client.
MQTT 3.1.1 has no such field, so ``InboundLimit`` wraps the socket paho reads: it follows the packets' fixed
headers and drops the bytes of every PUBLISH whose length is over the limit while they stream past (in chunks,
so memory stays flat), passing every other byte through unchanged. It does so for both protocols, should a
broker ignore the Maximum Packet Size. A PUBLISH dropped this way is never acknowledged, which is why cryedge
subscribes at QoS 0: the broker then waits for no acknowledgement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# the largest PUBLISH cryedge takes from the broker (its length after the fixed header, bytes): Home Assistant's
# "online" is 6; what is larger is a mistake or an attack, not a request
MAX_INBOUND_PUBLISH = 64 * 1024
CHUNK = 64 * 1024  # read from the socket at a time
# reads of a dropped message's bytes in one recv() before paho gets its turn back (to send, e.g. a cry start)
READS_PER_TURN = 16
PUBLISH = 0x30


class InboundLimit:
    """A socket for paho whose ``recv`` leaves out every PUBLISH longer than ``limit`` bytes.

    Everything else a socket does is the wrapped socket's (TLS included: it wraps the TLS socket).
    ``dropped`` counts the messages left out; the first of each connection is logged. ``on_skipped`` is called
    after bytes were dropped: the broker is talking, which paho's keep-alive would otherwise not know.
    """

    def __init__(self, sock: Any, limit: int = MAX_INBOUND_PUBLISH, on_skipped: Callable[[], None] | None = None):
        self._sock = sock
        self.limit = limit
        self._on_skipped = on_skipped
        self.dropped = 0
        self._ready = bytearray()  # bytes let through that paho has not taken yet
        self._header = bytearray()  # the fixed header being read: the packet type, then its remaining length
        self._left = 0  # bytes of the current packet's body still to come
        self._skipping = False  # ... and they are dropped
        self._passing = False  # a header past MQTT's 5 bytes: not ours to judge, everything goes to paho

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, bufsize: int) -> bytes:
        reads = 0
        while not self._ready:
            data = self._sock.recv(max(bufsize, CHUNK))  # BlockingIOError, TLS's want-read: nothing yet, as usual
            if not data:
                return b""  # the broker closed the connection
            self._take(data)
            reads += 1
            if not self._ready and self._on_skipped is not None:
                self._on_skipped()
            if not self._ready and reads >= READS_PER_TURN:
                raise BlockingIOError  # paho returns to its loop (to send) and comes back: the socket is readable
        out = bytes(self._ready[:bufsize])
        del self._ready[:bufsize]
        return out

    def pending(self) -> int:
        """Bytes readable without waiting: paho selects on the socket only when there are none."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._ready) + inner

    def _take(self, data: bytes) -> None:
        if self._passing:
            self._ready += data
            return
        at, size = 0, len(data)
        while at < size:
            if self._left:
                part = data[at:at + self._left]
                if not self._skipping:
                    self._ready += part
                at += len(part)
                self._left -= len(part)
                continue
            self._header.append(data[at])
            at += 1
            if len(self._header) < 2 or self._header[-1] & 0x80:
                if len(self._header) > 5:  # a malformed length: paho says so and drops the connection
                    self._passing = True
                    self._ready += self._header + data[at:]
                    return
                continue
            self._start_packet()

    def _start_packet(self) -> None:
        """The fixed header is complete: pass it on and its body after it, or drop both."""
        length = sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(self._header[1:]))
        self._skipping = (self._header[0] & 0xF0) == PUBLISH and length > self.limit
        if self._skipping:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("ignored a %.1f MiB message from the broker (cryedge takes at most %d KiB on "
                            "homeassistant/status; a client publishes there what it should not)",
                            length / 2**20, self.limit // 1024)
        else:
            self._ready += self._header
        self._header.clear()
        self._left = length


def bounded_client_class():
    """paho's ``Client`` whose every connection (a reconnect's too) reads through ``InboundLimit``.

    paho has no public hook for either: its socket factory is overridden, and the time of the last bytes
    received is set as paho's own reader sets it, so that a large message dropped over a slow link (200 MiB
    over Wi-Fi takes longer than the keep-alive) does not read as a silent broker and cost the connection.
    """
    import paho.mqtt.client as paho

    class BoundedClient(paho.Client):
        def _create_socket(self):
            return InboundLimit(super()._create_socket(), on_skipped=self._broker_talked)

        def _broker_talked(self) -> None:
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()

    return BoundedClient
