"""Hostile clients on the health port (and a stalled broker, a 4K camera) against `cryedge run`: do the cry alerts
still arrive, and how late?

    .venv/bin/python benchmarks/http_attacks.py [ATTACK ...] [--runs 1] [--seconds 45]

(runs of several attacks are interleaved; with ``--runs`` above 1 the medians follow.)

Each run is a fresh `cryedge run` on the bundled demo clip (one cry, ~5 s in) in real time, with ``[live]`` on,
publishing to a loopback mosquitto; the attack starts (from another process, so that it does not hold up this
one's subscriber) the moment the health port opens and goes on until the cry's end arrives. Prints per run: the
delay from each event's own time to its arrival at a subscriber (``start_s``, ``end_s``; the end's includes
``alarm.hold_seconds``), the daemon's CPU seconds and peak resident memory (VmHWM), the slowest ``/health`` probe of
this process (one a second), the lines the daemon wrote to stderr, and what the attacker got done. Attacks:

- ``none``: the reference run;
- ``slowloris``: 300 connections sending their headers a byte every half second, reopened when closed;
- ``flood``: 8 keep-alive clients asking ``/health`` and ``/metrics`` as fast as they are answered;
- ``huge``: 4 clients sending 250 KiB of headers, 10 MiB bodies and 100 KiB URLs in turn;
- ``bad_tokens``: 4 clients asking ``/live`` with a wrong token, over and over;
- ``cookie``: 4 clients asking ``/live/data.json`` with no token and a 60 KiB ``Cookie`` of backslashes;
- ``pipelining``: 8 connections sending 2,000 ``GET /metrics`` each without reading an answer;
- ``stalled_mjpeg``: 20 clients opening ``/live/stream.mjpeg`` with the token and never reading;
- ``resets``: 4 clients cutting requests with a TCP reset, half before the headers end, half after;
- ``garbage``: 4 clients sending what is not HTTP (noise, bad request lines, bad chunked bodies, bad lengths);
- ``broker_stall`` / ``broker_stall_snapshot``: mosquitto stopped (SIGSTOP) from 2 s to 14 s after the port opens,
  ``[snapshot]`` off / on; ``start_s`` then counts from the broker's return, not the event;
- ``4k`` / ``4k_snapshot``: the clip scaled to 3840x2160, ``[snapshot]`` off / on at full size (max 4096);
- ``slow_link`` / ``slow_link_snapshot``: the daemon reaches the broker through a loopback link passing 8 KiB/s
  towards it, shared fairly by its connections (tests/mqtt.py ``SlowLink``), ``[snapshot]`` off / on (quality 100,
  ~130 KiB): what waits behind a picture on a slow link.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
from mqtt import Broker, SlowLink, Subscriber, free_port  # noqa: E402 (tests/mqtt.py: the loopback broker the tests use)

TOKEN = "benchmark-live-token-0123456789"
HTTP_ATTACKS = ("slowloris", "flood", "huge", "bad_tokens", "cookie", "pipelining", "stalled_mjpeg", "resets", "garbage")
ATTACKS = ("none", *HTTP_ATTACKS, "broker_stall", "broker_stall_snapshot", "4k", "4k_snapshot", "slow_link",
           "slow_link_snapshot")
SLOW_LINK = 8 * 1024  # bytes a second towards the broker
STALL = (2.0, 14.0)  # seconds after the port opens: SIGSTOP, SIGCONT


# ----------------------------------------------------------------------------- the attacker (its own process)


def _request(port: int, raw: bytes, read: bool = True) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        if read:
            while sock.recv(65536):
                pass


def slowloris(port: int, until: float, tally: list[int]) -> None:
    sockets: list[socket.socket] = []
    while time.monotonic() < until:
        while len(sockets) < 300:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                sockets.append(sock)
                tally[0] += 1
            except OSError:
                break
        for sock in list(sockets):
            try:
                sock.send(b"a")
            except OSError:
                sock.close()
                sockets.remove(sock)
        time.sleep(0.5)
    for sock in sockets:
        sock.close()


def flood(port: int, until: float, tally: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < until:
        try:
            for path in ("/health", "/metrics"):
                connection.request("GET", path)
                connection.getresponse().read()
                tally[0] += 1
        except (OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            time.sleep(0.05)


def huge(port: int, until: float, tally: list[int]) -> None:
    headers = b"".join(b"X-Big-%d: %s\r\n" % (i, b"h" * 8000) for i in range(32))
    body = b"b" * (10 * 1024 * 1024)
    close = b"Host: x\r\nConnection: close\r\n"
    requests = [b"GET /health HTTP/1.1\r\n" + close + headers + b"\r\n",
                b"POST /health HTTP/1.1\r\n" + close + b"Content-Length: %d\r\n\r\n" % len(body) + body,
                b"GET /health?" + b"u" * 100_000 + b" HTTP/1.1\r\n" + close + b"\r\n"]
    while time.monotonic() < until:
        try:
            _request(port, requests[tally[0] % 3])
        except OSError:
            pass
        tally[0] += 1


def bad_tokens(port: int, until: float, tally: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < until:
        try:
            connection.request("GET", "/live", headers={"Authorization": f"Bearer wrong-{tally[0]:020d}"})
            connection.getresponse().read()
            tally[0] += 1
        except (OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def cookie(port: int, until: float, tally: list[int]) -> None:
    raw = b'GET /live/data.json HTTP/1.1\r\nHost: x\r\nCookie: a="' + b'\\"' * 30_000 + b'"\r\nConnection: close\r\n\r\n'
    while time.monotonic() < until:
        try:
            _request(port, raw)
            tally[0] += 1
        except OSError:
            time.sleep(0.1)


def pipelining(port: int, until: float, tally: list[int]) -> None:
    raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    while time.monotonic() < until:
        sockets = []
        for _ in range(8):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(raw)
                sockets.append(sock)
                tally[0] += 2000
            except OSError:
                pass
        time.sleep(10)
        for sock in sockets:
            sock.close()


def resets(port: int, until: float, tally: list[int]) -> None:
    """Requests cut by a TCP reset: before their headers end, and right after a whole one (before its answer)."""
    whole = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    while time.monotonic() < until:
        for raw in (whole[:20], whole):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
                sock.sendall(raw)
                sock.close()
                tally[0] += 1
            except OSError:
                time.sleep(0.01)


def garbage(port: int, until: float, tally: list[int]) -> None:
    """Requests that are not HTTP: binary noise, a bad request line, a bad chunked body, a bad Content-Length."""
    bad = [os.urandom(512) + b"\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
           b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
           b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"GET /health HTTP/1.1\r\nHo st: x\r\n\r\n"]
    while time.monotonic() < until:
        try:
            _request(port, bad[tally[0] % len(bad)].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        except OSError:
            pass
        tally[0] += 1


def stalled_mjpeg(port: int, until: float, tally: list[int]) -> None:
    auth = base64.b64encode(f"viewer:{TOKEN}".encode())
    raw = b"GET /live/stream.mjpeg HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth + b"\r\n\r\n"
    sockets: list[socket.socket] = []
    while time.monotonic() < until:
        while len(sockets) < 20:
            try:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", port))
                sock.sendall(raw)
                sockets.append(sock)
                tally[0] += 1
            except OSError:
                break
        time.sleep(1)
    for sock in sockets:
        sock.close()


def attack(name: str, port: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    clients = {"flood": 8, "huge": 4, "bad_tokens": 4, "cookie": 4, "resets": 4, "garbage": 4}.get(name, 1)
    tallies = [[0] for _ in range(clients)]

    def report(*_) -> None:  # what it got done, also when stopped early (the cry's end came first)
        print(sum(t[0] for t in tallies), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    threads = [threading.Thread(target=globals()[name], args=(port, until, tally), daemon=True) for tally in tallies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report()


# ----------------------------------------------------------------------------- the measurement


def probe(port: int) -> float | None:
    """Seconds /health took, None when it did not answer."""
    start = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        connection.getresponse().read()
        connection.close()
    except (OSError, http.client.HTTPException):
        return None
    return time.monotonic() - start


def proc(pid: int) -> tuple[float, float | None]:
    """(CPU seconds, peak resident MiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    # a process that has just exited (a zombie) has no VmHWM line: the peak read a second before stands
    peak = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM")), None)
    return cpu, peak


def clip_4k(folder: Path) -> Path:
    path = folder / "demo-4k.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(REPO / "edge/data/demo.mp4"), "-vf", "scale=3840:2160",
                    "-c:v", "mpeg4", "-q:v", "5", "-c:a", "copy", str(path)], check=True)
    return path


def one_run(folder: Path, name: str, seconds: float, big_clip: Path | None) -> dict:
    port = free_port()
    config = folder / "demo.toml"
    text = (f'[device]\nid = "nursery"\n[health]\nport = {port}\n[live]\nenabled = true\n'
            f'[outbox]\npath = "{folder / "outbox.sqlite3"}"\n')
    if name.endswith("snapshot"):
        text += "[snapshot]\nenabled = true\nmax_width = 4096\nmax_height = 4096\n"
        if name.startswith("slow_link"):
            text += "quality = 100\n"
    if name.startswith("4k"):
        text += f'[source]\ntype = "file"\npath = "{big_clip}"\n'
    config.write_text(text)
    environ = {**os.environ, "CRYEDGE_LIVE_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    with Broker(folder / "mosquitto") as broker, Subscriber(broker, topics=("cryedge/nursery/#",)) as events, \
            open(folder / "stderr.log", "w") as stderr, contextlib.ExitStack() as links:
        broker_port = broker.port
        if name.startswith("slow_link"):
            broker_port = links.enter_context(SlowLink(broker, SLOW_LINK)).port
        daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                                   "--broker", f"mqtt://127.0.0.1:{broker_port}"], cwd=REPO, env=environ,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        attacker = None
        try:
            deadline = time.monotonic() + 120
            while probe(port) is None:
                assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not open its port"
                time.sleep(0.2)
            opened = time.monotonic()
            if name in HTTP_ATTACKS:
                attacker = subprocess.Popen([sys.executable, __file__, "--attacker", name, str(port), str(seconds)],
                                            stdout=subprocess.PIPE, text=True)
            stopped = resumed = None
            probes, arrived, snapshot, cpu, peak, ended = [], {}, None, None, None, None
            pictured = name.endswith("snapshot")  # then until the picture too, which may come after the end
            while ("cry_end" not in arrived or (pictured and snapshot is None)) and time.monotonic() < opened + 90 \
                    and (ended is None or time.monotonic() < ended + 10):
                now = time.monotonic()
                if name.startswith("broker_stall"):
                    if stopped is None and now >= opened + STALL[0]:
                        broker.process.send_signal(signal.SIGSTOP)
                        stopped = time.time()
                    if resumed is None and now >= opened + STALL[1]:
                        broker.process.send_signal(signal.SIGCONT)
                        resumed = time.time()
                probes.append(probe(port))
                for message in events.on("cryedge/nursery/event"):
                    kind = json.loads(message.payload)["event_type"]
                    if kind not in arrived:
                        origin = resumed if resumed is not None else json.loads(message.payload)["timestamp"]
                        received = time.time() - (time.monotonic() - message.timestamp)  # paho's is monotonic
                        arrived[kind] = received - origin
                if snapshot is None and events.on("cryedge/nursery/snapshot"):
                    snapshot = len(events.on("cryedge/nursery/snapshot")[0].payload)
                if daemon.poll() is None:
                    cpu, now_peak = proc(daemon.pid)
                    peak = now_peak or peak
                elif ended is None:  # the clip's end: what is still on its way may come yet
                    ended = time.monotonic()
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        finally:
            if name.startswith("broker_stall") and broker.process is not None:
                broker.process.send_signal(signal.SIGCONT)
            done = None
            if attacker is not None:
                attacker.terminate()
                done = attacker.communicate()[0].strip() or "killed"
            daemon.terminate()
            daemon.wait(60)
    lines = (folder / "stderr.log").read_text().splitlines()
    if os.environ.get("CRYEDGE_ATTACK_LOGS"):  # a folder to keep each run's stderr in
        Path(os.environ["CRYEDGE_ATTACK_LOGS"], f"{name}.log").write_text("\n".join(lines) + "\n")
    answered = [p for p in probes if p is not None]
    return {"start_s": arrived.get("cry_start"), "end_s": arrived.get("cry_end"), "cpu_s": cpu, "rss_mib": peak,
            "probe_max_s": max(answered) if answered else None, "probes_failed": len(probes) - len(answered),
            "lines": len(lines), "snapshot_bytes": snapshot, "attacker_done": done,
            "last_line": lines[-1][:160] if lines else ""}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--attacker":
        attack(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS, metavar="ATTACK")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=45.0, help="how long an HTTP attack lasts at most")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as shared:
        big_clip = clip_4k(Path(shared)) if any(a.startswith("4k") for a in args.attacks) else None
        results: dict[str, list[dict]] = {name: [] for name in args.attacks}
        for run in range(args.runs):  # interleaved: the machine's drift falls on every attack alike
            for name in args.attacks:
                with tempfile.TemporaryDirectory() as folder:
                    results[name].append(one_run(Path(folder), name, args.seconds, big_clip))
                print(f"{name} run {run + 1}: " + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in results[name][-1].items()),
                    flush=True)
        for name, runs in results.items():
            if len(runs) > 1:
                numbers = [k for k in runs[0] if any(isinstance(r[k], float) for r in runs)]
                print(f"{name} median: " + ", ".join(
                    f"{k} {statistics.median(r[k] for r in runs if r[k] is not None):.2f}" for k in numbers), flush=True)


if __name__ == "__main__":
    main()
