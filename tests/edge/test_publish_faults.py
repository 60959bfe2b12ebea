"""Faults around the publisher, on a real mosquitto: what Home Assistant shows when the broker and the daemon
come and go in the wrong order, and what messages on the topics cryedge subscribes to cost it."""

import json

import pytest
from mqtt import Broker, Subscriber

from edge.alarm import AlarmState
from edge.config import load_config
from edge.outbox import Outbox
from edge.publish import MqttPublisher, make_publisher
from edge.records import AlarmEvent

DEVICE = "nursery"
PREFIX = f"cryedge/{DEVICE}"
pytestmark = pytest.mark.timeout(60)


def publisher_for(broker, tmp_path, **mqtt) -> MqttPublisher:
    config = load_config(None, {
        "device": {"id": DEVICE, "name": "Nursery"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 0.5,
                 "connect_timeout": 5} | mqtt,
        "outbox": {"path": str(tmp_path / "state" / "outbox.sqlite3")}}, environ={})
    return make_publisher(config, "cry-demo-int8")


def wait_until(condition, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


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
