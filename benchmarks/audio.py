"""The audio path's cost and speed: CPU share of one core, memory added, and cry-to-subscriber delay.

    .venv/bin/python benchmarks/audio.py [--model edge/data/models/cry-audio-default.tflite] [--runs 3]

1. CPU: the audio path alone (capture helper, window, front end, model every hop) on 30 s of sound
   played in real time (ffmpeg -re from a 16 kHz WAV, as a microphone delivers it), in a fresh process
   pinned to one core: CPU seconds of the process and of its helper over the wall time.
2. Memory: peak RSS of a process that loads what the daemon loads for vision (numpy, LiteRT, the default
   vision model) and idles, against the same process also running the audio path; the helper's own peak
   RSS is printed apart (it is another process).
3. Delay: the daemon in real time on a clip with no face in sight (an empty room, so the sound alone must
   decide) whose sound track holds a SYNTHETIC cry from 4.0 s, publishing to a real mosquitto on
   loopback; a subscriber's arrival time of ``cry_start`` minus the moment the cry began in the clip.

Medians over ``--runs``; the machine is shared, so read them as such.
"""

from __future__ import annotations

import argparse
import json
import os
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

CRY_AT = 4.0


def child_cpu(model: str, wav: str, seconds: float) -> dict:
    """In a child: the audio path on ``wav`` in real time for ``seconds``."""
    from edge.audio import AudioMonitor, AudioPipeline, AudioScorer
    from edge.audio_source import FfmpegAudioSource
    from edge.model import TFLiteModel

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    pipeline = AudioPipeline(AudioScorer(TFLiteModel(model)))
    monitor = AudioMonitor(lambda: FfmpegAudioSource(wav, 16000, realtime=True), pipeline)
    before = os.times()
    start = time.monotonic()
    monitor.start()
    time.sleep(seconds)
    monitor.close()
    wall = time.monotonic() - start
    after = os.times()
    own = (after.user - before.user) + (after.system - before.system)
    helper = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall": wall, "own": own, "helper": helper, "hop_s": pipeline.scorer.spec.hop_seconds,
            "inference_ms": pipeline.scorer.last_inference_ms}


def child_memory(model: str | None, wav: str, seconds: float) -> dict:
    """In a child: what the daemon loads for vision, plus the audio path when ``model`` is given."""
    import numpy  # noqa: F401 - loaded as the daemon loads it

    from edge import paths
    from edge.model import TFLiteModel

    vision = TFLiteModel(paths.default_model())
    monitor = None
    if model:
        from edge.audio import AudioMonitor, AudioPipeline, AudioScorer
        from edge.audio_source import FfmpegAudioSource

        monitor = AudioMonitor(lambda: FfmpegAudioSource(wav, 16000, realtime=True),
                               AudioPipeline(AudioScorer(TFLiteModel(model))))
        monitor.start()
    time.sleep(seconds)
    if monitor is not None:
        monitor.close()
    vision.close()
    return {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "helper_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_child(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def room_with_a_cry(folder: Path) -> Path:
    """An empty room (no face) 10 s long whose sound track cries from CRY_AT to 8 s (SYNTHETIC)."""
    import cv2
    import numpy as np

    from convert import audio_synth

    video = folder / "room.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for n in range(150):
        writer.write(np.full((480, 640, 3), 40 + n % 3, np.uint8))
    writer.release()
    sound = audio_synth.render([audio_synth.Event("crying", CRY_AT, 8.0)], 10.0, np.random.default_rng(11),
                               room_dbfs=-55.0)
    wav = audio_synth.write_wav(folder / "room.wav", sound)
    clip = folder / "room-cry.avi"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(video), "-i", str(wav), "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "pcm_s16le", str(clip)], check=True)
    return clip


def delay_once(clip: Path, model: Path, folder: Path) -> float | None:
    """Seconds from the cry's start in the clip to the cry_start event at a subscriber; None if none came."""
    from mqtt import Broker, Subscriber

    from edge.config import load_config
    from edge.daemon import Daemon

    with Broker(folder / f"broker-{time.monotonic_ns()}") as broker, Subscriber(broker) as subscriber:
        arrivals = []
        original = subscriber._on_message

        def on_message(client, userdata, message):
            if message.topic.endswith("/event") and b"cry_start" in message.payload:
                arrivals.append(time.monotonic())
            original(client, userdata, message)

        subscriber.client.on_message = on_message
        config = load_config(overrides={
            "source": {"uri": str(clip)}, "audio": {"enabled": True, "model": str(model)},
            "mqtt": {"host": "127.0.0.1", "port": broker.port}, "health": {"enabled": False},
            "outbox": {"path": str(folder / f"outbox-{time.monotonic_ns()}.sqlite3")}})
        daemon = Daemon(config)
        with daemon:
            thread = threading.Thread(target=daemon.run)
            thread.start()
            thread.join()
            origin = daemon.source.status.first_frame_t
        time.sleep(0.5)
    return arrivals[0] - (origin + CRY_AT) if arrivals else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "edge" / "data" / "models" / "cry-audio-default.tflite")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "cpu":
            print(json.dumps(child_cpu(rest[0], rest[1], float(rest[2]))))
        else:
            print(json.dumps(child_memory(rest[0] or None, rest[1], float(rest[2]))))
        return

    import numpy as np

    from convert import audio_synth

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(5)
        sound = audio_synth.render([audio_synth.Event("crying", 5.0, 12.0), audio_synth.Event("speech", 15.0, 25.0)],
                                   args.seconds + 5, rng)
        wav = audio_synth.write_wav(folder / "sound.wav", sound)
        cpu = [run_child("cpu", args.model, wav, args.seconds) for _ in range(args.runs)]
        own = statistics.median(100 * r["own"] / r["wall"] for r in cpu)
        helper = statistics.median(100 * r["helper"] / r["wall"] for r in cpu)
        print(f"audio path, {args.seconds:g} s of 16 kHz sound in real time, one core (median of {args.runs}):")
        print(f"  CPU: {own:.2f}% of a core in the daemon (front end + model every {cpu[0]['hop_s']:g} s; "
              f"{statistics.median(r['inference_ms'] for r in cpu):.2f} ms a window incl. features), "
              f"{helper:.2f}% in the capture helper (ffmpeg), {own + helper:.2f}% together (target <= 3%)")
        without = [run_child("memory", "", wav, 10) for _ in range(args.runs)]
        with_audio = [run_child("memory", args.model, wav, 10) for _ in range(args.runs)]
        added = statistics.median(r["rss_mib"] for r in with_audio) - statistics.median(r["rss_mib"] for r in without)
        helper_rss = statistics.median(r["helper_rss_mib"] for r in with_audio)
        print(f"  memory: +{added:.1f} MiB peak RSS in the daemon (target <= 20 MiB); the capture helper's own peak "
              f"{helper_rss:.1f} MiB (ffmpeg; arecord: 3.3 MiB, benchmarks/audio_capture.py)")
        clip = room_with_a_cry(folder)
        delays = [delay_once(clip, args.model, folder) for _ in range(args.runs)]
        shown = ", ".join("none" if d is None else f"{d:.2f}" for d in delays)
        found = [d for d in delays if d is not None]
        median = f"{statistics.median(found):.2f} s" if found else "n/a"
        print(f"  delay, cry start in the sound track to cry_start at an MQTT subscriber, no face in sight: "
              f"median {median} ({shown}) (target <= 2 s)")


if __name__ == "__main__":
    main()
