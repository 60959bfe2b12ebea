"""What the live view costs the pipeline: frame rate and peak memory of `cryedge run` with viewers watching.

    .venv/bin/python benchmarks/live.py [--runs 3] [--viewers 2] [--fast]

Each run is a fresh `cryedge run` on the bundled demo clip (SYNTHETIC, 330 frames, 640x480, 15 fps) under
`/usr/bin/time -v`, in real time as a camera gives frames (does the pipeline keep up with the camera?) or
with ``--fast`` as fast as it decodes (what the viewers cost in CPU, on a busy machine). Three modes,
interleaved so that the machine's drift falls on all of them:

- ``off``: `[live]` off (today's daemon);
- ``idle``: `[live]` on, nobody watching (only a reference handed over per frame);
- ``watched``: `[live]` on and ``--viewers`` MJPEG clients reading `/live/stream.mjpeg` for the whole run
  (from this process, not the daemon's).

The frame rate is the median of the daemon's own `/stats` fps (its last 100 frames), read twice a second
while it runs; peak memory is `Maximum resident set size` of the whole daemon process. Prints the
medians over ``--runs`` and each mode's ratio to ``off``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TOKEN = "benchmark-live-token-0123456789"
MODES = ("off", "idle", "watched")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def watch(port: int, stop: threading.Event, frames: list[int]) -> None:
    """An MJPEG viewer (as Home Assistant's camera reads it) until ``stop``; counts the parts it received."""
    auth = base64.b64encode(f"viewer:{TOKEN}".encode()).decode()
    while not stop.is_set():
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/live/stream.mjpeg", headers={"Authorization": f"Basic {auth}"})
            response = connection.getresponse()
            if response.status != 200:
                connection.close()
                time.sleep(0.2)
                continue
            while not stop.is_set():
                line = response.readline()
                if not line:
                    break
                if line.lower().startswith(b"content-length:"):
                    response.readline()
                    response.read(int(line.split(b":")[1]))
                    frames.append(1)
            connection.close()
        except OSError:
            time.sleep(0.2)


def run(mode: str, viewers: int, folder: Path, fast: bool) -> tuple[float, float, int]:
    """(median fps, peak RSS MiB, MJPEG frames the viewers received) of one daemon run."""
    port = free_port()
    token = folder / "token"
    token.write_text(TOKEN)
    config = folder / f"{mode}.toml"
    config.write_text(f'[health]\nport = {port}\n[outbox]\npath = "{folder / "outbox.sqlite3"}"\n'
                      + (f'[live]\nenabled = true\ntoken_file = "{token}"\n' if mode != "off" else ""))
    process = subprocess.Popen(["/usr/bin/time", "-v", sys.executable, "-m", "edge.cli", "run", *(["--fast"] if fast else []),
                                "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, received, threads, fps = threading.Event(), [], [], []
    try:
        while process.poll() is None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/stats")
                stats = json.loads(connection.getresponse().read())
                connection.close()
            except (OSError, ValueError):
                time.sleep(0.1)
                continue
            if mode == "watched" and not threads and stats.get("frames", 0) > 0:
                for _ in range(viewers):
                    threads.append(threading.Thread(target=watch, args=(port, stop, received), daemon=True))
                    threads[-1].start()
            if stats.get("frames", 0) >= 100 and stats.get("fps"):  # a full rolling window of frames
                fps.append(stats["fps"])
            time.sleep(0.5)
    finally:
        stop.set()
        _, stderr = process.communicate(timeout=120)
    if process.returncode != 0:
        raise SystemExit(f"cryedge run ({mode}) failed:\n{stderr[-2000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return statistics.median(fps) if fps else float("nan"), peak_kib / 1024, len(received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--viewers", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="as fast as the clip decodes, not in real time")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.runs):
            for mode in MODES:
                results[mode].append(run(mode, args.viewers, Path(folder), args.fast))
                fps, rss, frames = results[mode][-1]
                print(f"run {index + 1} {mode:8s} {fps:6.1f} fps  {rss:6.1f} MiB  viewer frames {frames}", flush=True)
    base_fps = statistics.median(r[0] for r in results["off"])
    base_rss = statistics.median(r[1] for r in results["off"])
    pace = "--fast" if args.fast else "real time"
    print(f"\nmedians of {args.runs} runs (demo clip, {pace}; {args.viewers} MJPEG viewers in 'watched'):")
    for mode in MODES:
        fps = statistics.median(r[0] for r in results[mode])
        rss = statistics.median(r[1] for r in results[mode])
        print(f"{mode:8s} {fps:6.1f} fps ({fps / base_fps:.3f} of off)  peak RSS {rss:6.1f} MiB "
              f"({rss - base_rss:+.1f} MiB)")


if __name__ == "__main__":
    main()
