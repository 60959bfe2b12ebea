"""What a flood of requests on the health port costs `cryedge run`: its cry alerts' delay and its log lines.

Run: ``.venv/bin/python benchmarks/health_flood.py [--clients 16] [--runs 3]`` (needs /usr/sbin/mosquitto).
`cryedge run` plays the bundled demo clip (one cry, synthetic) in real time to a loopback mosquitto, once quiet and
once while ``--clients`` keep-alive clients (another process) ask /metrics as fast as they can. Prints per run and
as medians: the delay from each event's own time to its arrival at a subscriber (the end's includes
``alarm.hold_seconds``), the requests served, and the lines the daemon wrote to stderr (all, and waitress's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
from mqtt import Broker, Subscriber, free_port  # noqa: E402 (tests/mqtt.py: the loopback broker the tests use)

HAMMER = """
import http.client, sys, threading, time
port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
until, served = time.monotonic() + seconds, [0] * clients
def ask(i):
    while time.monotonic() < until:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            while time.monotonic() < until:
                connection.request("GET", "/metrics")
                connection.getresponse().read()
                served[i] += 1
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
print(sum(served))
"""


def one_run(folder: Path, clients: int) -> dict:
    port = free_port()
    config = folder / "demo.toml"
    config.write_text(f'[device]\nid = "nursery"\n[health]\nport = {port}\n'
                      f'[outbox]\npath = "{folder / "outbox.sqlite3"}"\n')
    with Broker(folder / "mosquitto") as broker, Subscriber(broker, topics=("cryedge/nursery/event",)) as events, \
            open(folder / "stderr.log", "w") as stderr:
        daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                                   "--broker", f"mqtt://127.0.0.1:{broker.port}"], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        flood = subprocess.Popen([sys.executable, "-c", HAMMER, str(port), str(clients), "40"], stdout=subprocess.PIPE,
                                 text=True) if clients else None
        try:
            arrived = {}
            for kind in ("cry_start", "cry_end"):
                message = events.wait_for("cryedge/nursery/event", lambda m, k=kind: k.encode() in m.payload, timeout=120)
                arrived[kind] = time.time() - json.loads(message.payload)["timestamp"]
        finally:
            served = int(flood.communicate()[0]) if flood else 0
            daemon.terminate()
            daemon.wait(60)
    lines = (folder / "stderr.log").read_text().splitlines()
    return {"start_s": arrived["cry_start"], "end_s": arrived["cry_end"], "requests": served, "lines": len(lines),
            "waitress_lines": sum("waitress" in line or "HTTP requests wait" in line for line in lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for clients in (0, args.clients):
        results = []
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                results.append(one_run(Path(folder), clients))
            print(f"clients {clients} run {run + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                                  for k, v in results[-1].items()), flush=True)
        print(f"clients {clients} median: " + ", ".join(f"{key} {statistics.median(r[key] for r in results):g}"
                                                         for key in results[0]), flush=True)


if __name__ == "__main__":
    main()
