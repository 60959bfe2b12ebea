"""How long a cry start takes to reach a subscriber after a flood of "online" on homeassistant/status.

Run: ``.venv/bin/python benchmarks/mqtt_flood.py [--messages 50000] [--runs 3]`` (needs /usr/sbin/mosquitto).
Prints, per run and as medians: the delay from ``publish_event()`` to the subscriber without a flood and
right after one, and how many discovery documents the flood made cryedge send.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge.config import load_config
from edge.publish import make_publisher
from edge.records import AlarmEvent

# after edge is imported: tests/edge (no __init__.py) must not shadow it
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from mqtt import Broker, flood  # (tests/mqtt.py: the loopback broker and the flood the tests use)


class Watcher:
    """Records when each event id arrives, and counts the messages on another topic (the discovery document's)."""

    def __init__(self, broker: Broker, device: str, counted: str = "homeassistant/device/{device}/config"):
        import json

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.events: dict[str, float] = {}
        self.counted = 0
        event_topic, counted_topic = f"cryedge/{device}/event", counted.format(device=device)

        def on_message(client, userdata, message):
            if message.topic == event_topic:
                self.events.setdefault(json.loads(message.payload)["id"], time.perf_counter())
            else:
                self.counted += 1

        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watcher-{device}")
        self.client.on_connect = lambda c, *a: c.subscribe([(event_topic, 1), (counted_topic, 1)])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        ready.wait(5)

    def delay(self, publisher, event_id: str, timeout: float = 120) -> float:
        sent = time.perf_counter()
        publisher.publish_event(AlarmEvent("start", event_id, 0.0, time.time(), 0.9))
        deadline = time.monotonic() + timeout
        while event_id not in self.events and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.events.get(event_id, float("inf")) - sent

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def one_run(messages: int, run: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        device = f"bench{run}"
        config = load_config(None, {"device": {"id": device}, "mqtt": {"host": broker.host, "port": broker.port},
                                    "outbox": {"path": f"{tmp}/outbox.sqlite3"}}, environ={})
        watcher = Watcher(broker, device)
        publisher = make_publisher(config, "bench")
        publisher.start()
        deadline = time.monotonic() + 10
        while watcher.counted < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        quiet = watcher.delay(publisher, "quiet")
        before = watcher.counted
        flood(broker, "homeassistant/status", "online", messages)
        flooded = watcher.delay(publisher, "flooded")
        time.sleep(6.0)  # longer than the debounce period: the trailing re-send counts too
        resent = watcher.counted - before
        publisher.close(timeout=30)
        watcher.close()
        return quiet, flooded, resent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        quiet, flooded, resent = one_run(args.messages, run)
        results.append((quiet, flooded, resent))
        print(f"run {run + 1}: cry start delay {quiet * 1000:.1f} ms without a flood, {flooded * 1000:.1f} ms after "
              f"{args.messages} 'online'; discovery re-sent {resent} times", flush=True)
    print(f"median: {statistics.median(r[0] for r in results) * 1000:.1f} ms without, "
          f"{statistics.median(r[1] for r in results) * 1000:.1f} ms after the flood, "
          f"{statistics.median(r[2] for r in results):.0f} discovery re-sends")


if __name__ == "__main__":
    main()
