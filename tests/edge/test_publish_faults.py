"""Faults around the publisher, on a real mosquitto: what Home Assistant shows when the broker and the daemon
come and go in the wrong order, and what messages on the topics cryedge subscribes to cost it."""

import json
import subprocess
import sys
import time

import pytest
from mqtt import Broker, Subscriber, flood
from test_publish import DEVICE, PREFIX, publisher_for, wait_until

from edge.alarm import AlarmState
from edge.outbox import Outbox
from edge.records import AlarmEvent

pytestmark = pytest.mark.timeout(60)


def shown(messages) -> list[str]:
    """What Home Assistant's "Crying" entity shows after each message on its two topics.

    Home Assistant keeps the availability and the state apart: a state received while the device is unavailable
    is taken in silently and shown the moment ``online`` comes (homeassistant/components/mqtt/binary_sensor.py
    sets its state on every message; ``available`` comes from the availability topic alone).
    """
    available, crying, seen = False, None, []
    for message in messages:
        if message.topic == f"{PREFIX}/availability":
            available = message.payload == b"online"
        elif message.topic == f"{PREFIX}/state":
            crying = json.loads(message.payload)["crying"]
        else:
            continue
        seen.append(crying.lower() if available and crying else "unavailable")
    return seen


def test_a_stop_mid_cry_while_the_broker_is_away_never_shows_crying_when_both_come_back(tmp_path):
    """The broker (Home Assistant's add-on, persistent) restarts during a cry, and cryedge is stopped meanwhile.

    While cryedge is stopped the broker holds its last will (``offline``) over the retained ``ON``: Home
    Assistant shows "unavailable". When cryedge starts again its OFF must come before its ``online``: in the other
    order Home Assistant shows the old ``ON`` for a moment, which fires every "crying turned on" automation, a
    false alarm. The cry's end, stored in the outbox at the stop, then goes out."""
    broker = Broker(tmp_path / "broker", persistent=True).start()
    try:
        first = publisher_for(broker, tmp_path)
        first.start()
        wait_until(lambda: first.connected)
        first.publish_state(AlarmState(True, since=10.0, since_wall=1_800_000_000.25, probability=0.9, event_id="ep1"))
        first.publish_event(AlarmEvent("start", "ep1", 10.0, 1_800_000_000.25, 0.9))
        wait_until(lambda: first.last_event is not None and first.outbox_depth == 0)  # the start was acknowledged
        broker.stop()
        wait_until(lambda: not first.connected)
        first.publish_event(AlarmEvent("end", "ep1", 20.0, 1_800_000_010.25, 0.9, reason="shutdown"))  # SIGTERM
        first.close()
        with Outbox(tmp_path / "state" / "outbox.sqlite3") as outbox:
            assert [(entry.event_id, entry.kind) for entry in outbox.pending()] == [("ep1", "end")]

        broker.start()
        with Subscriber(broker, topics=(f"{PREFIX}/#",)) as home_assistant:
            home_assistant.wait_for(f"{PREFIX}/availability")
            home_assistant.wait_for(f"{PREFIX}/state")
            assert shown(home_assistant.messages) == ["unavailable", "unavailable"]  # the will, the retained ON
            before = len(shown(home_assistant.messages))
            second = publisher_for(broker, tmp_path)
            second.start()
            try:
                end = home_assistant.wait_for(f"{PREFIX}/event")
                home_assistant.wait_for(f"{PREFIX}/availability", lambda m: m.payload == b"online")
            finally:
                second.close()
        assert (json.loads(end.payload)["event_type"], json.loads(end.payload)["reason"]) == ("cry_end", "shutdown")
        after = shown(home_assistant.messages)[before:]
        assert "on" not in after, after
        assert after[-1] == "unavailable" and "off" in after  # OFF while it ran, then its clean stop
    finally:
        broker.stop()


def fired(seen: list[str], to: str, from_: str | None = None) -> int:
    """How often a Home Assistant state trigger (``to``, and ``from`` when given) fires over the states ``seen``:
    on each change of state that matches (homeassistant/components/homeassistant/triggers/state.py)."""
    return sum(1 for old, new in zip([None, *seen], seen, strict=False)
               if old != new and new == to and (from_ is None or old == from_))


def test_a_broker_restart_mid_cry_says_the_start_once_and_no_off_before_the_end(tmp_path):
    """The broker (Home Assistant's add-on, persistent) restarts during a cry while cryedge runs on. Home Assistant
    shows its "Crying" entity on, unavailable, on: every MQTT entity is unavailable while Home Assistant's own
    connection to the broker is down (homeassistant/components/mqtt/entity.py, MqttAvailabilityMixin.available), and
    mosquitto publishes cryedge's last will as it stops. A trigger with only ``to: "on"`` fires twice for that one
    cry; one ``from: "off"`` fires once (docs/mqtt.md). What is cryedge's own, seen by a subscriber across the
    restart: the cry_start once, the state ON again at once, and no OFF before the cry's end."""
    broker = Broker(tmp_path / "broker", persistent=True).start()
    publisher = publisher_for(broker, tmp_path)
    home_assistant = Subscriber(broker, topics=(f"{PREFIX}/#",))  # clean session: it reconnects and resubscribes
    crying = AlarmState(True, since=10.0, since_wall=1_800_000_000.25, probability=0.9, event_id="ep1")
    try:
        publisher.start()
        wait_until(lambda: publisher.connected)
        publisher.publish_state(crying)
        publisher.publish_event(AlarmEvent("start", "ep1", 10.0, 1_800_000_000.25, 0.9))
        home_assistant.wait_for(f"{PREFIX}/event")
        wait_until(lambda: publisher.outbox_depth == 0)  # acknowledged: not sent again on reconnect
        dropped = len(home_assistant.messages)
        broker.stop()
        wait_until(lambda: not publisher.connected)
        publisher.publish_state(AlarmState(True, 10.0, 1_800_000_000.25, 0.95, "ep1"))  # still crying meanwhile
        broker.start()
        wait_until(lambda: publisher.connected)
        home_assistant.wait_for(f"{PREFIX}/state", lambda m: m.retain or home_assistant.messages.index(m) >= dropped)
        time.sleep(1.0)  # whatever the reconnect brings: discovery, state, stats, online
        publisher.publish_event(AlarmEvent("end", "ep1", 40.0, 1_800_000_030.25, 0.1, reason="scores"))
        publisher.publish_state(AlarmState(False, 40.0, 1_800_000_030.25, 0.1))
        home_assistant.wait_for(f"{PREFIX}/event", lambda m: b"cry_end" in m.payload)
        home_assistant.wait_for(f"{PREFIX}/state", lambda m: b'"OFF"' in m.payload and b"0.1" in m.payload)
        messages = list(home_assistant.messages)
    finally:
        publisher.close()
        home_assistant.close()
        broker.stop()
    events = [(p["event_type"], p["id"]) for p in (json.loads(m.payload) for m in messages if m.topic.endswith("/event"))]
    assert events == [("cry_start", "ep1"), ("cry_end", "ep1")]
    states = [json.loads(m.payload)["crying"] for m in messages if m.topic.endswith("/state")]
    first_on, last_on = states.index("ON"), len(states) - 1 - states[::-1].index("ON")
    assert set(states[first_on:last_on + 1]) == {"ON"} and states[last_on + 1:] == ["OFF"], states
    assert [json.loads(m.payload)["crying"] for m in messages[dropped:] if m.topic.endswith("/state")][0] == "ON"
    # mosquitto (2.0.11 here), stopping, sends the will to whoever is still connected
    assert [m.payload for m in messages[dropped:] if m.topic.endswith("/availability")][:1] == [b"offline"]
    # what Home Assistant's "Crying" entity shows: its own connection lost at the restart, then the topics again
    seen = shown(messages[:dropped]) + ["unavailable"] + shown(messages[dropped:])
    seen = [state for n, state in enumerate(seen) if n == 0 or state != seen[n - 1]]
    assert seen[seen.index("on"):] == ["on", "unavailable", "on", "off"], seen
    assert (fired(seen, to="on"), fired(seen, to="on", from_="off")) == (2, 1)


# ----------------------------------------------------------------------------- what comes in on homeassistant/status

PUBLISHER_PROCESS = """
import json, sys, time
from edge.config import load_config
from edge.publish import make_publisher
from edge.records import AlarmEvent

def peak_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

publisher = make_publisher(load_config(None, json.loads(sys.argv[1]), environ={}), "cry-demo-int8")
publisher.discovery_interval = 0  # every "online" answered at once: the test knows when one has been read
publisher.start()
while not publisher.connected:
    time.sleep(0.02)
print(peak_kib(), flush=True)
for line in sys.stdin:
    if line.strip() == "peak":
        print(peak_kib(), flush=True)
    elif line.strip() == "cry":
        publisher.publish_event(AlarmEvent("start", "ep1", 10.0, time.time(), 0.9))
publisher.close()
"""


@pytest.mark.parametrize("protocol, tls", [("3.1.1", False), ("5", False), ("3.1.1", True)])
def test_a_huge_message_on_home_assistants_status_topic_is_not_held_in_memory(tmp_path, protocol, tls):
    """Any client on the broker may publish a huge message on homeassistant/status (retained, it comes back at
    every connect): paho read it whole, about three copies at once (a 200 MiB one took the daemon from 187 to
    788 MiB, more than a Raspberry Pi 3 has: killed, restarted, the same message again). Now its bytes are
    dropped as they stream past (MQTT 3.1.1, also through TLS) or the broker does not send it (MQTT 5, Maximum
    Packet Size); the messages after it are read and a cry still goes out."""
    import copy

    from mqtt import free_port, make_certificates, wait_until_listening

    broker = Broker(tmp_path / "broker", tls=make_certificates(tmp_path / "certs") if tls else None)
    mosquitto = broker  # the plain listener the test's own clients use
    if tls:  # cryedge on the TLS listener, the test's clients on a second, plain one
        mosquitto = copy.copy(broker)
        mosquitto.port = free_port()
        broker.config.write_text(broker.config.read_text() + f"listener {mosquitto.port} 127.0.0.1\n")
    mqtt = {"host": broker.host, "port": broker.port, "protocol": protocol}
    if tls:
        mqtt["tls"] = {"ca_file": str(tmp_path / "certs" / "ca.crt")}
    size = 48 * 2**20
    config = {"device": {"id": DEVICE}, "mqtt": mqtt, "outbox": {"path": str(tmp_path / "outbox.sqlite3")}}
    with broker:
        if tls:  # Broker waits for its own listener only; mosquitto may open the second a moment later
            wait_until_listening(broker.process, mosquitto.port, broker.workdir / "mosquitto.log", "mosquitto")
        with Subscriber(mosquitto, topics=(f"{PREFIX}/#", "homeassistant/device/#")) as home_assistant:
            process = subprocess.Popen([sys.executable, "-c", PUBLISHER_PROCESS, json.dumps(config)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                before = int(process.stdout.readline())
                discovery = f"homeassistant/device/{DEVICE}/config"
                home_assistant.wait_for(discovery)
                flood(mosquitto, "homeassistant/status", "x" * size, 1)
                flood(mosquitto, "homeassistant/status", "online", 1)  # read after the huge one: the stream goes on
                home_assistant.wait_for(discovery, count=2)
                process.stdin.write("peak\ncry\n")
                process.stdin.flush()
                peak = int(process.stdout.readline())
                start = home_assistant.wait_for(f"{PREFIX}/event")
            finally:
                process.communicate(timeout=20)
    assert json.loads(start.payload)["event_type"] == "cry_start"
    grown = (peak - before) / 1024
    assert grown < 16, f"{grown:.0f} MiB more for a {size // 2**20} MiB message"


def test_the_inbound_limit_drops_only_the_long_publish_wherever_the_socket_splits_the_stream():
    """The broker's bytes reach paho unchanged but for a PUBLISH over the limit, however they are cut in reads."""
    import functools
    import socket

    from mqtt import _mqtt_packet, _mqtt_string

    from edge.inbound_limit import InboundLimit

    def publish(payload: bytes) -> bytes:
        return _mqtt_packet(0x30, _mqtt_string("homeassistant/status") + payload)

    long = publish(b"x" * 2000)  # over the limit below, a 2-byte remaining length
    kept = [b"\x20\x02\x00\x00", publish(b"online"), b"\x90\x03\x00\x01\x00", publish(b"y" * 500), b"\xd0\x00"]
    stream = b"".join(kept[:2]) + long + b"".join(kept[2:])
    every_byte = [stream[i:i + 1] for i in range(len(stream))]
    for pieces in [every_byte, *([stream[:cut], stream[cut:]] for cut in range(1, len(stream), 97))]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        skipped: list[int] = []
        limited, got = InboundLimit(ours, limit=1000, on_skipped=functools.partial(skipped.append, 1)), bytearray()
        with ours, theirs:
            for piece in pieces:
                theirs.sendall(piece)
                while True:
                    try:
                        got += limited.recv(3)  # small reads, as paho's (1 byte, the length, then the rest)
                    except BlockingIOError:
                        break
        assert bytes(got) == b"".join(kept), [len(piece) for piece in pieces[:2]]
        assert limited.dropped == 1 and limited.pending() == 0
        # a read of dropped bytes alone still tells paho's keep-alive that the broker talked
        assert skipped or pieces is not every_byte


def test_the_bounded_client_finds_the_paho_internals_it_builds_on():
    """paho has no public hook for a socket or for its keep-alive clock: a paho that renames them fails here."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.inbound_limit import bounded_client_class

    client = bounded_client_class()(CallbackAPIVersion.VERSION2)
    assert callable(paho.Client._create_socket)
    client._last_bytes_received = 0.0
    client._broker_talked()
    assert client._last_bytes_received == pytest.approx(paho.time_func(), abs=5)


def test_garbage_on_home_assistants_status_topic_is_ignored_and_only_online_asks_for_discovery(mosquitto, tmp_path):
    """Empty, binary, not UTF-8, retained or not: nothing stops the publisher, nothing but "online" re-sends."""
    discovery = f"homeassistant/device/{DEVICE}/config"
    garbage = [b"", b"\xff\xfe\x00online", bytes(range(256)) * 200, b"offline", b"ONLINE", "en ligne \u00e9".encode()]
    with Subscriber(mosquitto, topics=(f"{PREFIX}/#", discovery)) as home_assistant:
        mosquitto_client = home_assistant.client
        mosquitto_client.publish("homeassistant/status", b"\x80\x81 retained garbage", qos=1, retain=True).wait_for_publish(5)
        publisher = publisher_for(mosquitto, tmp_path)
        publisher.discovery_interval = 0
        publisher.start()
        try:
            home_assistant.wait_for(discovery)
            for payload in garbage:
                mosquitto_client.publish("homeassistant/status", payload, qos=1).wait_for_publish(5)
            mosquitto_client.publish("homeassistant/status", b" online\n", qos=1).wait_for_publish(5)
            home_assistant.wait_for(discovery, count=2)
            publisher.publish_event(AlarmEvent("start", "ep1", 10.0, 1_800_000_000.25, 0.9))
            start = home_assistant.wait_for(f"{PREFIX}/event")
        finally:
            publisher.close()
    assert json.loads(start.payload)["event_type"] == "cry_start"
    assert len(home_assistant.on(discovery)) == 2  # at connect, and for the one "online"
