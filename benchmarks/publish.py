"""What publishing costs the frame loop, and how fast an event reaches a subscriber, on a loopback mosquitto.

Run: ``.venv/bin/python benchmarks/publish.py`` (needs /usr/sbin/mosquitto). Prints medians.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge.alarm import AlarmState
from edge.config import load_config
from edge.outbox import Outbox
from edge.publish import make_publisher
from edge.records import AlarmEvent

# after edge is imported: tests/edge (no __init__.py) must not shadow it
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from mqtt import Broker  # (tests/mqtt.py: the loopback broker the tests use)


def subscriber(broker: Broker, topic: str, arrivals: dict):
    import json

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    ready = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: arrivals.__setitem__(json.loads(m.payload)["id"], time.perf_counter())
    client.connect(broker.host, broker.port)
    client.loop_start()
    ready.wait(5)
    return client


def main() -> None:
    n = 300
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        config = load_config(None, {"device": {"id": "bench"}, "mqtt": {"host": broker.host, "port": broker.port,
                                    "state_interval": 1.0}, "outbox": {"path": f"{tmp}/outbox.sqlite3"}}, environ={})
        arrivals: dict[str, float] = {}
        sub = subscriber(broker, "cryedge/bench/event", arrivals)
        publisher = make_publisher(config, "bench")
        publisher.start()
        sent: dict[str, float] = {}
        call_us, state_us = [], []
        for i in range(n):
            state = AlarmState(False, None, None, 0.1)
            t0 = time.perf_counter()
            publisher.publish_state(state)
            state_us.append((time.perf_counter() - t0) * 1e6)
            event = AlarmEvent("start" if i % 2 == 0 else "end", f"ep{i // 2}-{i}", float(i), time.time(), 0.9)
            t0 = time.perf_counter()
            publisher.publish_event(event)
            call_us.append((time.perf_counter() - t0) * 1e6)
            sent[event.event_id] = t0
            time.sleep(0.005)  # events are rare; do not measure a queue pile-up
        deadline = time.monotonic() + 20
        while len(arrivals) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        publisher.close()
        sub.disconnect()
        sub.loop_stop()
        delays = [(arrivals[k] - sent[k]) * 1000 for k in sent if k in arrivals]
        print(f"publish_event() on the caller's thread: median {statistics.median(call_us):.1f} us")
        print(f"publish_state() on the caller's thread: median {statistics.median(state_us):.1f} us")
        print(f"event delivered to a subscriber (loopback, incl. outbox fsync): median "
              f"{statistics.median(delays):.2f} ms, p90 {statistics.quantiles(delays, n=10)[-1]:.2f} ms, "
              f"{len(delays)}/{n} arrived")
        with Outbox(Path(tmp) / "fsync.sqlite3") as outbox:
            add_ms = []
            for i in range(100):
                t0 = time.perf_counter()
                seq = outbox.add(f"ep{i}", "start", "{}")
                outbox.remove(seq)
                add_ms.append((time.perf_counter() - t0) * 1000)
        print(f"outbox add+remove (fsync'd, {tmp}): median {statistics.median(add_ms):.2f} ms")


if __name__ == "__main__":
    main()
