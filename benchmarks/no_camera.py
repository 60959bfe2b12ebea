"""What a monitor with no camera saves: whole-process peak RSS of `cryedge run` listening only, against the demo.

    .venv/bin/python benchmarks/no_camera.py [--runs 3]

Both read the bundled demo clip with ``--fast --no-health``, events to stdout: once as the README's first
command does (picture and sound: the vision model, MediaPipe's face landmarker, the audio path), once with
``--source none --audio-source demo.mp4`` (the sound track alone: the audio path, no vision model, no
landmarker). Peak RSS is ``/usr/bin/time -v``'s "Maximum resident set size" of the whole process; the
capture helper (ffmpeg) is another process and not counted in either. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge" / "data" / "demo.mp4"


def peak_rss_mib(*args: str) -> float:
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "edge.cli", "run", "--fast", "--no-health",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=900)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    line = next(line for line in done.stderr.splitlines() if "Maximum resident set size" in line)
    return int(line.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    both = [peak_rss_mib() for _ in range(runs)]
    listening = [peak_rss_mib("--source", "none", "--audio-source", str(DEMO)) for _ in range(runs)]
    seen, heard = statistics.median(both), statistics.median(listening)
    print(f"peak RSS, median of {runs}: camera and sound {seen:.1f} MiB, sound only (no camera) {heard:.1f} MiB, "
          f"saved {seen - heard:.1f} MiB ({(seen - heard) / seen:.0%})")


if __name__ == "__main__":
    main()
