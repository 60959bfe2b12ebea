"""What a sense's status flapping costs on the state topic, and whether it holds up a cry start.

Run: ``.venv/bin/python benchmarks/status_flap.py [--rate 100] [--seconds 10] [--runs 3]`` (needs mosquitto).
A publisher is handed a state whose audio status flips between ``model_error`` and ``ok`` ``--rate`` times a
second (a model failing on every other window, far worse than a real one), with a cry start in the middle.
Prints, per run and as medians: the states the broker delivered per second of flapping (a new trouble is said
at once, then held while the status flickers: edge.publish.HeldStatus, STATUS_HOLD), and the cry start's delay from
``publish_event()`` to a subscriber, without and during the flapping.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge.alarm import AlarmState
from edge.config import load_config
from edge.publish import make_publisher

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from mqtt import Broker  # (tests/mqtt.py: the loopback broker the tests use)
from mqtt_flood import Watcher  # (benchmarks/mqtt_flood.py: cry start delays, here counting the states)


def state(status: str) -> AlarmState:
    return AlarmState(False, None, None, 0.1, senses={"audio": {"probability": None, "status": status}})


def one_run(rate: float, seconds: float, run: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        device = f"flap{run}"
        config = load_config(None, {"device": {"id": device}, "mqtt": {"host": broker.host, "port": broker.port},
                                    "outbox": {"path": f"{tmp}/outbox.sqlite3"}}, environ={})
        watcher = Watcher(broker, device, counted="cryedge/{device}/state")
        publisher = make_publisher(config, "bench")
        publisher.start()
        deadline = time.monotonic() + 10
        while watcher.counted < 1 and time.monotonic() < deadline:  # the one on connect
            time.sleep(0.01)
        quiet = watcher.delay(publisher, "quiet")
        time.sleep(1.5)
        before, begun, flips = watcher.counted, time.monotonic(), 0
        while time.monotonic() - begun < seconds:
            publisher.publish_state(state("model_error" if flips % 2 == 0 else "ok"))
            flips += 1
            if flips == int(rate * seconds / 2):
                during = watcher.delay(publisher, "flapping")  # the states flap again once it has arrived
            time.sleep(1 / rate)
        flapped = time.monotonic() - begun
        time.sleep(1.5)  # the held-back last status goes out within a second
        per_second = (watcher.counted - before) / flapped
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
