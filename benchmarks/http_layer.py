"""What an HTTP layer costs the daemon: import time, resident memory, and sockets under idle connections.

    .venv/bin/python benchmarks/http_layer.py [--idle 200] [--runs 3]

Each candidate runs in a fresh process that first imports what the daemon imports (numpy, OpenCV,
MediaPipe, paho-mqtt, pydantic), so the figures are what the layer adds to the daemon, not to a bare
interpreter. Candidates: the standard library's ThreadingHTTPServer (what cryedge had), waitress (what
it has), aiohttp; one that is not installed is skipped (``pip install --target DIR aiohttp`` and
``PYTHONPATH=DIR`` to measure it without adding it to the venv). Prints medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CANDIDATES = ("stdlib", "waitress", "aiohttp")

PROBE = r"""
import json, os, socket, sys, threading, time, urllib.request

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

which, idle = sys.argv[1], int(sys.argv[2])
import numpy, cv2, ssl, sqlite3, pydantic, paho.mqtt.client, mediapipe  # the daemon's own imports
base = rss_mib()
start = time.perf_counter()
if which == "stdlib":
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import_ms = (time.perf_counter() - start) * 1000
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
elif which == "waitress":
    from edge.health import HealthServer, HealthStats
    import_ms = (time.perf_counter() - start) * 1000
    stats = HealthStats(started=time.monotonic(), last_frame=time.monotonic(), state="running")
    server = HealthServer(lambda: stats, port=0)
    port = server.port
else:
    import asyncio
    from aiohttp import web
    import_ms = (time.perf_counter() - start) * 1000
    ready, box = threading.Event(), {}
    async def health(request):
        return web.json_response({"status": "ok"})
    def serve():
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = runner.addresses[0][1]
        ready.set()
        loop.run_forever()
    threading.Thread(target=serve, daemon=True).start()
    ready.wait()
    port = box["port"]
imported = rss_mib()
for _ in range(20):
    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
serving = rss_mib()
fds_before = len(os.listdir("/proc/self/fd"))
held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(idle)]
time.sleep(1.0)
answer_start = time.perf_counter()
urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read()
answer_ms = (time.perf_counter() - answer_start) * 1000
server_fds = len(os.listdir("/proc/self/fd")) - fds_before - idle  # the server's side of them
print(json.dumps({"import_ms": import_ms, "rss_import": imported - base, "rss_serving": serving - base,
                  "rss_idle": rss_mib() - base, "server_fds": server_fds, "answer_ms": answer_ms}))
"""


def measure(which: str, idle: int) -> dict | None:
    result = subprocess.run([sys.executable, "-c", PROBE, which, str(idle)], capture_output=True, text=True,
                            timeout=300, check=False)
    if result.returncode != 0:
        if "ModuleNotFoundError" in result.stderr:
            return None
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=200, help="idle connections held open (default 200)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'layer':9} {'import ms':>9} {'+RSS import':>11} {'+RSS serving':>12} "
          f"{'+RSS ' + str(args.idle) + ' idle':>14} {'server fds':>10} {'/health ms':>10}")
    for which in CANDIDATES:
        runs = [measure(which, args.idle) for _ in range(args.runs)]
        if runs[0] is None:
            print(f"{which:9} not installed")
            continue
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(f"{which:9} {median['import_ms']:9.1f} {median['rss_import']:9.1f} MiB {median['rss_serving']:10.1f} MiB"
              f" {median['rss_idle']:12.1f} MiB {median['server_fds']:10.0f} {median['answer_ms']:10.1f}")


if __name__ == "__main__":
    main()
