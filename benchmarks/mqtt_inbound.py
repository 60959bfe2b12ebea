"""What a huge message on homeassistant/status costs `cryedge run`: peak RSS, and how late a cry start arrives.

Run: ``.venv/bin/python benchmarks/mqtt_inbound.py [--retained-mb 200] [--stream-mb 0] [--protocol 3.1.1] [--runs 3]``
(needs /usr/sbin/mosquitto and /usr/bin/time). Each run starts a loopback mosquitto, puts a retained message of
``--retained-mb`` MiB on homeassistant/status (0: none), runs the README's ``cryedge run`` (the demo clip, in real
time, the default model) against it and, with ``--stream-mb``, publishes messages of that size there one after
another until the cry has started. Prints, per run and as medians: the daemon's peak RSS (``/usr/bin/time -v``),
and how long after the moment the scores crossed the threshold (the event's ``timestamp``) the cry start
reached a subscriber, which includes the alarm's ``min_on_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
from mqtt import Broker, Subscriber, _mqtt_packet, _mqtt_string, flood  # noqa: E402 (tests/mqtt.py)


def one_run(retained_mb: float, stream_mb: float, protocol: str) -> tuple[float, float, list[str]]:
    folder = Path(tempfile.mkdtemp(prefix="cryedge-inbound-"))
    broker = Broker(folder / "broker").start()
    stop = threading.Event()
    try:
        if retained_mb:
            publish_retained(broker, "homeassistant/status", b"x" * int(retained_mb * 2**20))
        config = folder / "cryedge.toml"
        config.write_text(f'[device]\nid = "bench"\n[health]\nenabled = false\n[outbox]\npath = "{folder}/outbox.sqlite3"\n'
                          f'[mqtt]\nprotocol = "{protocol}"\n')
        with Subscriber(broker, topics=("cryedge/bench/event",)) as subscriber:
            process = subprocess.Popen(["/usr/bin/time", "-v", sys.executable, "-m", "edge.cli", "run", "--config",
                                        str(config), "--broker", f"mqtt://127.0.0.1:{broker.port}"], cwd=REPO,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "PYTHONPATH": str(REPO)})
            if stream_mb:
                message = "y" * int(stream_mb * 2**20)

                def stream():
                    while not stop.is_set():
                        flood(broker, "homeassistant/status", message, 1)

                threading.Thread(target=stream, daemon=True).start()
            start = subscriber.wait_for("cryedge/bench/event", lambda m: b"cry_start" in m.payload, timeout=180)
            late = time.time() - json.loads(start.payload)["timestamp"]
            stop.set()
            daemon = int(subprocess.check_output(["pgrep", "-P", str(process.pid)]).split()[0])
            os.kill(daemon, signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        peak = next(int(line.split()[-1]) for line in stderr.splitlines() if "Maximum resident" in line) / 1024
        warnings = [line for line in stderr.splitlines() if "WARNING" in line or "ERROR" in line]
        return peak, late, warnings
    finally:
        stop.set()
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


def publish_retained(broker: Broker, topic: str, payload: bytes) -> None:
    """One retained QoS 0 PUBLISH from a raw MQTT 3.1.1 client; returns once the broker has it."""
    with socket.create_connection((broker.host, broker.port), timeout=60) as sock:
        sock.sendall(_mqtt_packet(0x10, _mqtt_string("MQTT") + bytes([4, 0x02, 0, 60]) + _mqtt_string("bench-retain")))
        assert sock.recv(4)[:1] == b"\x20", "no CONNACK"
        sock.sendall(_mqtt_packet(0x31, _mqtt_string(topic) + payload) + b"\xc0\x00")  # then PINGREQ
        answer = b""
        while not answer.endswith(b"\xd0\x00"):  # PINGRESP: the broker has stored it
            answer += sock.recv(64)
        sock.sendall(b"\xe0\x00")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retained-mb", type=float, default=200)
    parser.add_argument("--stream-mb", type=float, default=0)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        peak, late, warnings = one_run(args.retained_mb, args.stream_mb, args.protocol)
        results.append((peak, late))
        print(f"run {run + 1}: peak RSS {peak:.0f} MiB, cry start at the subscriber {late:.2f} s after the scores "
              f"crossed; {warnings[0] if warnings else 'no warning'}", flush=True)
    print(f"median ({args.retained_mb:g} MiB retained, {args.stream_mb:g} MiB stream, MQTT {args.protocol}): "
          f"peak RSS {statistics.median(r[0] for r in results):.0f} MiB, "
          f"cry start {statistics.median(r[1] for r in results):.2f} s")


if __name__ == "__main__":
    main()
