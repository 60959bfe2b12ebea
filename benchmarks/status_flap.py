"""What a sense's status flapping costs on the state topic, and whether it holds up a cry start.

Run: ``.venv/bin/python benchmarks/status_flap.py [--rate 100] [--seconds 10] [--runs 3]`` (needs mosquitto).
A publisher is handed a state whose audio status flips between ``model_error`` and ``ok`` ``--rate`` times a
second (a model failing on every other window, far worse than a real one), with a cry start in the middle.
Prints, per run and as medians: the states the broker delivered per second of flapping (each status change is
published at once, at most once a second: edge.publish.STATUS_INTERVAL), and the cry start's delay from
``publish_event()`` to a subscriber, without and during the flapping.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge.alarm import AlarmState
from edge.config import load_config
from edge.publish import make_publisher
from edge.records import AlarmEvent

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from mqtt import Broker  # (tests/mqtt.py: the loopback broker the tests use)


class Watcher:
    """Counts the states and records when each cry start arrives."""

    def __init__(self, broker: Broker, device: str):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.states = 0
        self.events: dict[str, float] = {}
        state_topic, event_topic = f"cryedge/{device}/state", f"cryedge/{device}/event"

        def on_message(client, userdata, message):
            if message.topic == event_topic:
                self.events.setdefault(json.loads(message.payload)["id"], time.perf_counter())
            else:
                self.states += 1

        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flap-watcher-{device}")
        self.client.on_connect = lambda c, *a: c.subscribe([(state_topic, 1), (event_topic, 1)])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        ready.wait(5)

    def arrival(self, event_id: str, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while event_id not in self.events and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.events.get(event_id, float("inf"))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def state(status: str) -> AlarmState:
    return AlarmState(False, None, None, 0.1, senses={"audio": {"probability": None, "status": status}})


def one_run(rate: float, seconds: float, run: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        device = f"flap{run}"
        config = load_config(None, {"device": {"id": device}, "mqtt": {"host": broker.host, "port": broker.port},
                                    "outbox": {"path": f"{tmp}/outbox.sqlite3"}}, environ={})
        watcher = Watcher(broker, device)
        publisher = make_publisher(config, "bench")
        publisher.start()
        deadline = time.monotonic() + 10
        while watcher.states < 1 and time.monotonic() < deadline:  # the one on connect
            time.sleep(0.01)
        sent = time.perf_counter()
        publisher.publish_event(AlarmEvent("start", "quiet", 0.0, time.time(), 0.9))
        quiet = watcher.arrival("quiet") - sent
        time.sleep(1.5)
        before, begun, flips = watcher.states, time.monotonic(), 0
        while time.monotonic() - begun < seconds:
            publisher.publish_state(state("model_error" if flips % 2 == 0 else "ok"))
            flips += 1
            if flips == int(rate * seconds / 2):
                sent = time.perf_counter()
                publisher.publish_event(AlarmEvent("start", "flapping", 0.0, time.time(), 0.9))
            time.sleep(1 / rate)
        flapped = time.monotonic() - begun
        during = watcher.arrival("flapping") - sent
        time.sleep(1.5)  # the held-back last status goes out within a second
        per_second = (watcher.states - before) / flapped
        publisher.close(timeout=30)
        watcher.close()
        return per_second, quiet, during


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="status flips a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        results.append(one_run(args.rate, args.seconds, run))
        per_second, quiet, during = results[-1]
        print(f"run {run + 1}: {per_second:.2f} states/s delivered for {args.rate:g} status flips/s; cry start "
              f"delay {quiet * 1000:.1f} ms quiet, {during * 1000:.1f} ms while flapping", flush=True)
    print(f"median: {statistics.median(r[0] for r in results):.2f} states/s, cry start "
          f"{statistics.median(r[1] for r in results) * 1000:.1f} ms quiet, "
          f"{statistics.median(r[2] for r in results) * 1000:.1f} ms while flapping")


if __name__ == "__main__":
    main()
