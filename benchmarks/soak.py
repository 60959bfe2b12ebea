"""Does a long-running `cryedge run` grow? Memory, file descriptors, threads and the outbox over real time,
with and without the faults of a night repeated.

    nice -n 10 .venv/bin/python benchmarks/soak.py --minutes 12 [--faults 60] [--camera mjpeg|rtsp] [--no-sound]

A real `cryedge run` (real time, not --fast) on a camera that keeps going: the demo clip looped (one cry every
22 s, so a cry episode starts and ends every 22 s), publishing to a loopback mosquitto (tests/mqtt.py) with Home
Assistant discovery on; /health is polled at every sample. The camera (tests/streams.py):

- ``mjpeg`` (default): an HTTP multipart-MJPEG server (OpenCV's FFmpeg reads it), and, unless ``--no-sound``,
  a microphone of its own: ``[audio.source] type = "stream"`` on an RTSP camera serving the clip with its
  sound (edge/audio_source.py's ffmpeg, with its own back-off);
- ``rtsp``: an RTSP camera with the clip's sound, picture and sound read by one ffmpeg session
  (FfmpegStreamSource + CameraSound).

With ``--faults N`` a cycle of faults every N seconds: the camera goes away for ``--down`` seconds and comes
back (a new server on the same port), then the microphone (``mjpeg``), then mosquitto (stopped, the outbox
fills, started again: the daemon reconnects and drains it), then ``online`` is published on
``homeassistant/status`` (discovery re-sent). Reopen back-off is kept short (0.5 s doubling to 2 s), so an
outage is several reopens. Every ``--every`` seconds it samples the daemon: VmRSS, Pss and Pss_Anon
(/proc/PID/smaps_rollup), open descriptors (/proc/PID/fd), threads (/proc/PID/task), its child processes, and
the outbox's files. It prints the first and last values and a least-squares slope per hour (± its standard
error, and the residuals' standard deviation as the noise) over the samples after ``--warmup`` seconds; with
faults, also over samples taken at the start of each cycle (everything up), since the figures of a camera away
and one delivering differ by some MiB and a few descriptors and threads. ``--csv FILE`` keeps every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
from mqtt import Broker, Subscriber, free_port  # noqa: E402 (tests/mqtt.py: the loopback broker the tests use)
from streams import MjpegServer, RtspCamera  # noqa: E402 (tests/streams.py: the loopback cameras the tests use)

CLIP = REPO / "edge" / "data" / "demo.mp4"
FIGURES = ("rss_mib", "pss_mib", "pss_anon_mib", "fds", "threads", "children", "outbox_kib")


def clip_frames(path: Path) -> list:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(bgr[:, :, ::-1])
    capture.release()
    return frames


class MjpegCamera:
    """MjpegServer switched off and on again on the same port (a camera that reboots)."""

    def __init__(self, frames: list, fps: float):
        self.frames, self.fps, self.port = frames, fps, free_port()
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._server: MjpegServer | None = None

    def start(self) -> None:
        for _ in range(50):  # the old server's port may linger a moment
            try:
                self._server = MjpegServer(self.frames, fps=self.fps, port=self.port).__enter__()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"port {self.port} stayed taken")

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None


def kib(text: str, key: str) -> int:
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(key + ":")), 0)


def sample(pid: int, outbox: Path) -> dict[str, float] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        children = sum(len(Path(f"/proc/{pid}/task/{task}/children").read_text().split())
                       for task in os.listdir(f"/proc/{pid}/task")
                       if Path(f"/proc/{pid}/task/{task}/children").exists())
    except (FileNotFoundError, ProcessLookupError):
        return None
    size = sum(p.stat().st_size for p in outbox.parent.glob(outbox.name + "*") if p.is_file())
    return {"rss_mib": kib(status, "VmRSS") / 1024, "pss_mib": kib(rollup, "Pss") / 1024,
            "pss_anon_mib": kib(rollup, "Pss_Anon") / 1024, "fds": fds, "threads": threads,
            "children": children, "outbox_kib": size / 1024}


def slope_per_hour(times: list[float], values: list[float]) -> tuple[float, float, float]:
    """(slope per hour, its standard error per hour, residuals' standard deviation) of a least-squares line."""
    n = len(times)
    if n < 3:
        return float("nan"), float("nan"), float("nan")
    mean_t, mean_v = sum(times) / n, sum(values) / n
    sxx = sum((t - mean_t) ** 2 for t in times)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / sxx
    residuals = [v - mean_v - slope * (t - mean_t) for t, v in zip(times, values, strict=True)]
    variance = sum(r * r for r in residuals) / (n - 2)
    return slope * 3600, (variance / sxx) ** 0.5 * 3600, variance ** 0.5


def health(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return str(answer.status)
    except urllib.error.HTTPError as error:
        return str(error.code)
    except OSError:
        return "none"


def faults(args, camera, microphone, broker: Broker, subscriber: Subscriber, stop: threading.Event,
           tally: dict[str, int], steady: list, measure) -> None:
    """A cycle every ``args.faults`` s: camera, microphone, broker away ``args.down`` s each; then discovery asked.

    ``measure()`` is appended to ``steady`` at the start of each cycle, everything up: memory differs by some MiB
    between a camera away and one delivering, so samples taken anywhere in a cycle are a sawtooth."""
    steps = [("camera", camera)] + ([("microphone", microphone)] if microphone is not None else []) + [("broker", broker)]
    phase = args.faults / (len(steps) + 1)  # each fault in its own part of the cycle, discovery in the last
    cycle = time.monotonic()
    while True:
        for index, (name, thing) in enumerate(steps, start=1):
            if stop.wait(max(0.0, cycle + index * phase - time.monotonic())):
                return
            if index == 1 and (figures := measure()) is not None:
                steady.append(figures)
            thing.stop()
            stop.wait(min(args.down, phase * 0.8))
            thing.start()
            tally[name] += 1
        if stop.wait(max(0.0, cycle + (len(steps) + 1) * phase - time.monotonic())):
            return
        subscriber.publish("homeassistant/status", "online")
        tally["ha_online"] += 1
        cycle += args.faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12)
    parser.add_argument("--faults", type=float, default=0, help="a cycle of faults every N seconds (0: none)")
    parser.add_argument("--down", type=float, default=8, help="seconds each thing stays away in a cycle")
    parser.add_argument("--camera", choices=("mjpeg", "rtsp"), default="mjpeg")
    parser.add_argument("--no-sound", action="store_true")
    parser.add_argument("--fps", type=float, default=10, help="the MJPEG camera's frame rate")
    parser.add_argument("--every", type=float, default=5, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120, help="seconds left out of the slopes")
    parser.add_argument("--csv", type=Path, help="also write every sample to this file")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="cryedge-soak-"))
    outbox = folder / "outbox.sqlite3"
    port = free_port()
    broker = Broker(folder / "broker").start()
    sound = not args.no_sound
    microphone = None
    if args.camera == "rtsp":
        camera = RtspCamera(CLIP, folder, sound=sound).start()
        source = f'uri = "{camera.url}"\ntransport = "udp"\n'
        audio = f"[audio]\nenabled = {str(sound).lower()}\n[audio.source]\ntype = \"video\"\n"
    else:
        camera = MjpegCamera(clip_frames(CLIP), args.fps)
        camera.start()
        source = f'uri = "{camera.url}"\n'
        audio = "[audio]\nenabled = false\n"
        if sound:
            microphone = RtspCamera(CLIP, folder, sound=True).start()
            audio = (f'[audio]\nenabled = true\n[audio.source]\ntype = "stream"\nurl = "{microphone.url}"\n'
                     'transport = "udp"\nstall_seconds = 3\nreopen_min_seconds = 0.5\nreopen_max_seconds = 2\n')
    config = folder / "cryedge.toml"
    config.write_text(f'[device]\nid = "soak"\n[source]\n{source}stall_seconds = 3\nreopen_min_seconds = 0.5\n'
                      f'reopen_max_seconds = 2\n[health]\nport = {port}\n[outbox]\npath = "{outbox}"\n{audio}')
    stderr = open(folder / "daemon.log", "w")
    subscriber = Subscriber(broker, topics=("cryedge/soak/event", "cryedge/soak/availability"))
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                                "--broker", f"mqtt://127.0.0.1:{broker.port}"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    stop = threading.Event()
    tally = {"camera": 0, "microphone": 0, "broker": 0, "ha_online": 0}
    samples: list[tuple[float, dict[str, float]]] = []
    steady: list[tuple[float, dict[str, float]]] = []

    def measure() -> tuple[float, dict[str, float]] | None:
        figures = sample(process.pid, outbox)
        return None if figures is None else (time.monotonic() - began, figures)

    injector = threading.Thread(target=faults, daemon=True,
                                args=(args, camera, microphone, broker, subscriber, stop, tally, steady, measure))
    answers: dict[str, int] = {}
    began = time.monotonic()
    cycles = f"every {args.faults:g} s ({args.down:g} s down each)" if args.faults else "none"
    print(f"soak: {args.camera} camera{' with sound' if sound else ''}, {args.minutes:g} min, faults {cycles}; "
          f"in {folder}", flush=True)
    try:
        if args.faults:
            injector.start()
        while time.monotonic() - began < args.minutes * 60:
            if process.poll() is not None:
                raise SystemExit(f"cryedge run exited ({process.returncode}); see {folder / 'daemon.log'}")
            answer = health(port)
            answers[answer] = answers.get(answer, 0) + 1
            if (measured := measure()) is not None:
                samples.append(measured)
                figures = measured[1]
                if len(samples) % 12 == 1:
                    print(f"  {samples[-1][0]:6.0f} s  " + "  ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                          flush=True)
            time.sleep(max(0.0, args.every - (time.monotonic() - began) % args.every))
    finally:
        stop.set()
        if injector.is_alive():
            injector.join(30)
        process.terminate()
        try:
            process.wait(60)
        finally:
            process.kill()
        events = [json.loads(m.payload) for m in subscriber.on("cryedge/soak/event")]
        subscriber.close()
        camera.stop()
        if microphone is not None:
            microphone.stop()
        broker.stop()
        stderr.close()

    starts = sum(e.get("event_type") == "cry_start" for e in events)
    ends = sum(e.get("event_type") == "cry_end" for e in events)
    lines = (folder / "daemon.log").read_text().splitlines()
    print(f"ran {samples[-1][0] / 60:.1f} min, {len(samples)} samples; faults injected: "
          + ", ".join(f"{k} {v}" for k, v in tally.items()) + f"; /health answers {answers}; "
          f"cry_start {starts}, cry_end {ends} at the subscriber; daemon stderr {len(lines)} lines; exit {process.returncode}")
    report(f"every {args.every:g} s", samples, args.warmup)
    if steady:
        report("at the start of each fault cycle (everything up)", steady, args.warmup)
    if args.csv:
        with open(args.csv, "w") as table:
            table.write("t_s,at_cycle_start," + ",".join(FIGURES) + "\n")
            for at_start, rows in ((0, samples), (1, steady)):
                for t, figures in rows:
                    table.write(f"{t:.1f},{at_start}," + ",".join(f"{figures[k]:.3f}" for k in FIGURES) + "\n")


def report(what: str, samples: list[tuple[float, dict[str, float]]], warmup: float) -> None:
    kept = [(t, f) for t, f in samples if t >= warmup]
    print(f"sampled {what}: slopes over {len(kept)} samples after {warmup:g} s "
          "(per hour; ± standard error; noise = residual sd):")
    print(f"  {'figure':13} {'start':>9} {'after warm-up':>13} {'end':>9} {'min':>9} {'max':>9} {'slope/h':>10} "
          f"{'± se':>8} {'noise':>8}")
    for key in FIGURES:
        times, values = [t for t, _ in kept], [f[key] for _, f in kept]
        slope, error, noise = slope_per_hour(times, values)
        print(f"  {key:13} {samples[0][1][key]:9.1f} {values[0] if values else float('nan'):13.1f} "
              f"{samples[-1][1][key]:9.1f} {min(values, default=float('nan')):9.1f} "
              f"{max(values, default=float('nan')):9.1f} {slope:10.2f} {error:8.2f} {noise:8.2f}")


if __name__ == "__main__":
    main()
