"""A network camera's picture and sound: one session (edge.source.FfmpegStreamSource) against two.

    .venv/bin/python benchmarks/camera_session.py [--seconds 30] [--runs 3] [--clip edge/data/demo.mp4]

A real RTSP camera on loopback (tests/streams.py: rtsp-server-perl fed by ffmpeg, H.264 + AAC, RTP over
UDP) serves ``--clip`` (the demo clip: 640x480 at 15 fps, mono AAC) in real time. Each way of reading
it runs in a fresh child process, under ``/usr/bin/time -v``, for ``--seconds``:

- ``two``: what cryedge did before, two RTSP clients: OpenCV's FFmpeg backend for the picture
  (``OpenCVSource``) and an ``ffmpeg`` process for the sound (``FfmpegAudioSource``);
- ``one``: one ``ffmpeg`` for both (``FfmpegStreamSource`` and ``CameraSound``);
- ``baseline``: the same imports (numpy, cv2, edge), reading nothing.

Each child reads frames newest-first and 16 kHz mono sound as the daemon does (no landmarks, no model).
Printed, medians over ``--runs``: CPU of the child and its helper over the wall time above the baseline,
as % of one core (``/usr/bin/time``'s user + system, which counts the waited-for helpers); peak RSS of
the Python process above the baseline, and the helper's own peak RSS (another process: add them);
frames and seconds of sound received; the RTSP clients the server saw while it ran (TCP connections to
its port). Also whether OpenCV's FFmpeg backend opens the stream with an audio stream asked for
(``CAP_PROP_AUDIO_STREAM``: option A of docs/audio.md). The machine is shared: read medians as such.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def child(kind: str, url: str, seconds: float) -> dict:
    """In a child: read ``url`` the ``kind`` way for ``seconds``; what came and the helper's peak RSS."""
    import cv2  # noqa: F401 - the daemon has it loaded whichever way it reads a camera

    from edge.audio import AudioMonitor
    from edge.audio_source import CameraSound, FfmpegAudioSource
    from edge.source import FfmpegStreamSource, OpenCVSource, SupervisedSource

    class Counting:
        """Stands in for the audio pipeline: counts the samples (capture is what is measured)."""

        def __init__(self):
            self.samples = 0
            self.scorer = type("S", (), {"spec": type("A", (), {"hop_seconds": 0.5})()})()

        def process(self, chunk):
            self.samples += chunk.samples.size
            return []

        def reset(self):
            pass

    frames, sink, monitor, source = 0, Counting(), None, None
    if kind == "two":
        source = SupervisedSource(lambda: OpenCVSource(url, rtsp_transport="udp"))
        monitor = AudioMonitor(lambda: FfmpegAudioSource(url, 16000, rtsp_transport="udp"), sink)
    elif kind == "one":
        camera = FfmpegStreamSource(url, rtsp_transport="udp")
        source = SupervisedSource(lambda: camera)
        monitor = AudioMonitor(lambda: CameraSound(camera), sink)
    end = time.monotonic() + seconds
    if monitor is not None:
        monitor.start()
        source.open()
        for _ in source.frames():
            frames += 1
            if time.monotonic() >= end:
                break
        source.close()
        monitor.close()
    else:
        time.sleep(seconds)
    return {"frames": frames, "sound_s": sink.samples / 16000,
            "helper_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_child(kind: str, url: str, seconds: float, count_sessions) -> dict:
    """``kind`` in a child under ``/usr/bin/time -v``: its figures, whole-process ones included."""
    process = subprocess.Popen(["/usr/bin/time", "-v", sys.executable, __file__, "--child", kind, url, str(seconds)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sessions = []
    while process.poll() is None:
        sessions.append(count_sessions())
        time.sleep(0.5)
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{kind} child failed: {err.strip()[-2000:]}")
    figures = json.loads(out.strip().splitlines()[-1])

    def field(name: str) -> float:  # seconds, kbytes, or h:mm:ss / m:ss
        value = re.search(rf"{re.escape(name)}: ([\d.:]+)", err).group(1)
        return sum(float(part) * 60 ** power for power, part in enumerate(reversed(value.split(":"))))

    figures.update(cpu_s=field("User time (seconds)") + field("System time (seconds)"),
                   wall_s=field("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
                   rss_mib=field("Maximum resident set size (kbytes)") / 1024, sessions=max(sessions, default=0))
    return figures


def opencv_opens_audio(url: str) -> bool:
    """Whether OpenCV's FFmpeg backend opens ``url`` with an audio stream asked for (option A)."""
    import cv2

    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_AUDIO_STREAM, 0, cv2.CAP_PROP_VIDEO_STREAM, 0,
                                                     cv2.CAP_PROP_AUDIO_DATA_DEPTH, cv2.CV_16S])
    opened = capture.isOpened()
    capture.release()
    return opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clip", type=Path, default=REPO / "edge" / "data" / "demo.mp4")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, url, seconds = args.child
        print(json.dumps(child(kind, url, float(seconds))))
        return

    import cv2
    from streams import RtspCamera

    with tempfile.TemporaryDirectory() as folder, RtspCamera(args.clip, Path(folder), sound=True) as camera:
        print(f"OpenCV {cv2.__version__}: its FFmpeg backend opens the RTSP stream with CAP_PROP_AUDIO_STREAM: "
              f"{opencv_opens_audio(camera.url)}")
        results: dict[str, list[dict]] = {}
        for _ in range(args.runs):
            for kind in ("baseline", "two", "one"):
                results.setdefault(kind, []).append(run_child(kind, camera.url, args.seconds, camera.sessions))
                threading.Event().wait(1.0)  # the server lets the last client go

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    base_cpu = statistics.median(r["cpu_s"] / r["wall_s"] for r in results["baseline"])
    print(f"{args.clip.name} over RTSP (UDP), {args.seconds:g} s a run, medians of {args.runs} runs, above a "
          "baseline child that only imports")
    print(f"{'':<5} {'RTSP clients':>12} {'CPU % of a core':>16} {'Python RSS +MiB':>16} {'helper RSS MiB':>15} "
          f"{'frames':>7} {'sound s':>8}")
    for kind, label in (("two", "two"), ("one", "one")):
        cpu = 100 * (statistics.median(r["cpu_s"] / r["wall_s"] for r in results[kind]) - base_cpu)
        rss = median(kind, "rss_mib") - median("baseline", "rss_mib")
        print(f"{label:<5} {median(kind, 'sessions'):>12.0f} {cpu:>16.2f} {rss:>16.1f} {median(kind, 'helper_rss_mib'):>15.1f} "
              f"{median(kind, 'frames'):>7.0f} {median(kind, 'sound_s'):>8.1f}")


if __name__ == "__main__":
    main()
