"""Landmark stage cost: median ms a frame at 640x480 in VIDEO mode on one core, and peak RSS.

Usage: python benchmarks/landmarks.py [--frames N] [--core K]

Each configuration (face, pose, both, both with pose every 3rd frame) runs in its own process, so
the peak RSS (ru_maxrss) is that configuration's alone. MediaPipe Tasks has no thread-count option:
the process is pinned to one core with sched_setaffinity, as ``taskset -c K`` would. Frames are a
real photo (scikit-image's astronaut) shifted a few pixels each frame, so the trackers work as on
a camera. Needs the bundles (``cryedge models fetch``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "face": {"face": True, "pose": False},
    "pose": {"face": False, "pose": True},
    "both": {"face": True, "pose": True},
    "both, pose every 3rd": {"face": True, "pose": True, "pose_every": 3},
}


def frames(count: int):
    import cv2
    import numpy as np
    import skimage.data

    from edge.records import Frame

    scene = np.zeros((480, 640, 3), np.uint8)
    scene[:, :] = cv2.resize(skimage.data.coffee(), (640, 480))
    scene[0:480, 80:560] = cv2.resize(skimage.data.astronaut(), (480, 480))
    start = time.monotonic()
    for i in range(count):
        yield Frame(np.ascontiguousarray(np.roll(scene, (i % 20) - 10, axis=1)), t=start + i / 30, index=i)


def measure(name: str, count: int, core: int) -> dict:
    os.sched_setaffinity(0, {core})
    from edge.landmarks import LandmarkExtractor

    times = []
    with LandmarkExtractor(**CONFIGS[name]) as extractor:
        for frame in frames(count + 5):
            begin = time.perf_counter()
            landmarks = extractor.extract(frame)
            times.append((time.perf_counter() - begin) * 1000)
            assert landmarks.has_face or not CONFIGS[name]["face"]
    times = times[5:]  # the first frames run the detectors and warm up XNNPACK
    return {
        "config": name,
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),  # with pose every k-th frame the median hides the pose frames
        "p90_ms": sorted(times)[int(0.9 * len(times))],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one configuration (child process)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.frames, args.core)))
        return 0
    print(f"640x480, VIDEO mode, 1 core (cpu {args.core}), {args.frames} frames after 5 warm-up frames")
    print(f"{'configuration':24s} {'median ms':>10s} {'mean ms':>8s} {'p90 ms':>8s} {'peak RSS MiB':>12s}")
    for name in CONFIGS:
        result = subprocess.run(
            [sys.executable, __file__, "--one", name, "--frames", str(args.frames), "--core", str(args.core)],
            capture_output=True, text=True, check=True,
        )
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{name:24s} {row['median_ms']:10.1f} {row['mean_ms']:8.1f} {row['p90_ms']:8.1f} {row['peak_rss_mb']:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
