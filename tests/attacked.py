"""`cryedge run` on the demo clip in real time, publishing to a real broker, while something hostile hits its HTTP port.

The attack starts the moment the port opens and stops once the cry's end reached a subscriber (or the time is up);
what comes back is what a parent's phone would see (each event and how long after its own time it arrived) and what
the journal would hold (the daemon's stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mqtt import Broker, Subscriber, free_port

REPO = Path(__file__).resolve().parents[1]
LIVE_TOKEN = "attacked-live-token-0123456789"


@dataclass(frozen=True)
class Attacked:
    events: list[dict]  # the event payloads as the subscriber received them, in order
    late_s: dict[str, float]  # event_type -> seconds from the event's own time to its arrival
    stderr: str
    returncode: int


def health_answers(port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # 503 while starting: it answers
    except (OSError, urllib.error.URLError):
        return False


def run_attacked(folder: Path, broker: Broker, attack: Callable[[int, threading.Event], None], *, clients: int = 1,
                 config: str = "", timeout: float = 120.0) -> Attacked:
    """``attack(port, stop)`` on ``clients`` threads against a daemon with ``[live]`` on (token ``LIVE_TOKEN``)."""
    port = free_port()
    path = folder / "cryedge.toml"
    path.write_text(f'[device]\nid = "nursery"\n[health]\nport = {port}\n[live]\nenabled = true\n'
                    f'[outbox]\npath = "{folder / "outbox.sqlite3"}"\n{config}')
    environ = {**os.environ, "CRYEDGE_LIVE_TOKEN": LIVE_TOKEN}
    stop = threading.Event()
    attackers = [threading.Thread(target=attack, args=(port, stop), daemon=True) for _ in range(clients)]
    with Subscriber(broker, topics=("cryedge/nursery/event",)) as subscriber:
        process = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(path),
                                    "--broker", f"mqtt://127.0.0.1:{broker.port}"], cwd=REPO, env=environ,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + timeout
            while not health_answers(port):  # models load, then the port opens
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
                time.sleep(0.2)
            for attacker in attackers:
                attacker.start()
            while time.monotonic() < deadline and process.poll() is None:
                if any(b"cry_end" in m.payload for m in subscriber.on("cryedge/nursery/event")):
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join(30)
            process.terminate()
            try:
                _, stderr = process.communicate(timeout=60)
            finally:
                process.kill()
        messages = subscriber.on("cryedge/nursery/event")
    events, late = [], {}
    for message in messages:
        event = json.loads(message.payload)
        events.append(event)
        received = time.time() - (time.monotonic() - message.timestamp)  # paho stamps it with the monotonic clock
        late.setdefault(event["event_type"], received - event["timestamp"])
    return Attacked(events, late, stderr, process.returncode)
