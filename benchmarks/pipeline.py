"""End-to-end pipeline figures on a 640x480 clip, pinned to one core.

Prints, for pose every k-th frame (k = 1, 2, 3) and for face only: frames a second end to end, the
median ms of each stage, the CPU time a frame, and peak RSS (each configuration in its own process,
so RSS is not inherited). Then, with a real mosquitto on loopback if one is installed, the delay from
the first crying frame of the demo clip to the cry_start event arriving at a subscriber, in real time.

    .venv/bin/python benchmarks/pipeline.py [--clip FILE] [--model FILE] [--frames N]

Defaults: the bundled demo clip and the default model. Figures are medians; the machine is shared,
so compare ratios between rows rather than absolute numbers from different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def measure(clip: str, model: str, pose: bool, pose_every: int, frames: int) -> dict:
    """One configuration, in this process: run the pipeline over ``frames`` frames as fast as possible."""
    import numpy as np

    from edge.config import load_config
    from edge.daemon import Daemon, limit_malloc_arenas

    limit_malloc_arenas()  # as `cryedge run` does
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    overrides = {"source": {"uri": clip, "realtime": False}, "model": {"path": model},
                 "landmarks": {"pose": pose, "pose_every": pose_every}, "health": {"enabled": False},
                 "outbox": {"path": str(Path(tempfile.mkdtemp()) / "outbox.sqlite3")}}
    config = load_config(None, overrides)
    daemon = Daemon(config)
    stage_ms: dict[str, list[float]] = {}
    with daemon:
        daemon.publisher._write = lambda *args: None  # keep stdout for the figures
        cpu0, wall0 = time.process_time(), time.perf_counter()
        count = 0
        for frame in daemon.source.frames():
            result = daemon.pipeline.process(frame)
            mark = time.perf_counter()
            if result.score is not None:
                daemon.publisher.publish_state(daemon.alarm.state)
            result.stage_ms["publish"] = (time.perf_counter() - mark) * 1000
            for name, ms in result.stage_ms.items():
                stage_ms.setdefault(name, []).append(ms)
            count += 1
            if count >= frames:
                break
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    medians = {name: float(np.median(values)) for name, values in stage_ms.items()}
    total = sum(medians.values())
    return {
        "pose": pose, "pose_every": pose_every, "frames": count, "fps": count / wall,
        "stage_ms": medians, "non_mediapipe_share": (total - medians["landmarks"]) / total,
        "cpu_ms_per_frame": 1000 * cpu / count,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def pose_every_cost(clip: str, model: str, every: int) -> dict:
    """What running pose on every k-th frame costs: body features and scores against k = 1, same frames."""
    import numpy as np

    from edge.config import load_config
    from edge.daemon import Daemon

    runs = {}
    for k in (1, every):
        config = load_config(None, {"source": {"uri": clip, "realtime": False}, "model": {"path": model},
                                    "landmarks": {"pose_every": k}, "health": {"enabled": False},
                                    "outbox": {"path": str(Path(tempfile.mkdtemp()) / "outbox.sqlite3")}})
        daemon = Daemon(config)
        body, scores, events = [], [], []
        with daemon:
            daemon.publisher._write = lambda *args: None
            origin = None
            for frame in daemon.source.frames():
                origin = frame.t if origin is None else origin
                result = daemon.pipeline.process(frame)
                body.append(daemon.pipeline.window.array()[-1, 140:].copy())
                if result.score is not None:
                    scores.append(result.score.probability)
                events += [(e.kind, round(e.t - origin, 2)) for e in result.events]
        runs[k] = (np.array(body), np.array(scores), events)
    (body1, scores1, events1), (body_k, scores_k, events_k) = runs[1], runs[every]
    return {"body_feature_mad": float(np.abs(body1 - body_k).mean()), "score_mad": float(np.abs(scores1 - scores_k).mean()),
            "score_max_diff": float(np.abs(scores1 - scores_k).max()), "events_k1": events1, f"events_k{every}": events_k}


def alert_delay(clip: str, model: str) -> dict | None:
    """Seconds from the clip's first crying frame to the cry_start event at a subscriber, in real time."""
    truth_file = Path(clip).with_suffix(".json")
    if not Path("/usr/sbin/mosquitto").exists() or not truth_file.is_file():
        return None
    import threading

    from mqtt import Broker, Subscriber

    from edge.alarm import wall_clock_now
    from edge.config import load_config
    from edge.daemon import Daemon

    truth = json.loads(truth_file.read_text())["crying"][0]
    with tempfile.TemporaryDirectory() as folder, Broker(Path(folder) / "broker") as broker, \
            Subscriber(broker, topics=("cryedge/#",)) as subscriber:
        config = load_config(None, {"device": {"id": "bench"}, "health": {"enabled": False},
                                    "source": {"uri": clip}, "model": {"path": model},
                                    "mqtt": {"host": "127.0.0.1", "port": broker.port},
                                    "outbox": {"path": f"{folder}/outbox.sqlite3"}})
        daemon = Daemon(config)
        with daemon:
            runner = threading.Thread(target=daemon.run, daemon=True)
            runner.start()
            message = subscriber.wait_for("cryedge/bench/event", lambda m: b"cry_start" in m.payload,
                                          timeout=truth["start_s"] + 60)
            arrived = time.time()
            origin_wall = wall_clock_now(daemon.source.status.first_frame_t)
            daemon.stop()
            runner.join(30)
    event = json.loads(message.payload)
    first_crying_frame = origin_wall + truth["start_s"]
    return {"delay_s": arrived - first_crying_frame, "event_dated_s": event["timestamp"] - origin_wall,
            "truth_start_s": truth["start_s"]}


def service_peak_rss(clip: str, model: str, runs: int = 3) -> list[float] | None:
    """Peak RSS (MiB) of ``cryedge run --fast`` as the service runs it: a broker, the health server, one core."""
    if not Path("/usr/sbin/mosquitto").exists():
        return None
    from mqtt import Broker, free_port

    cryedge = Path(sys.executable).with_name("cryedge")
    peaks = []
    with tempfile.TemporaryDirectory() as folder, Broker(Path(folder) / "broker") as broker:
        config = Path(folder) / "cryedge.toml"
        config.write_text(f'[source]\nuri = "{clip}"\nrealtime = false\n[model]\npath = "{model}"\n'
                          f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                          f'[outbox]\npath = "{folder}/outbox.sqlite3"\n[health]\nport = {free_port()}\n')
        core = min(os.sched_getaffinity(0))
        for _ in range(runs):
            child = subprocess.Popen([str(cryedge), "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
            _, status, usage = os.wait4(child.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                return None
            peaks.append(usage.ru_maxrss / 1024)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(REPO / "edge" / "data" / "demo.mp4"))
    parser.add_argument("--model", default=str(REPO / "edge" / "data" / "models" / "cry-default.tflite"))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--skip-delay", action="store_true", help="skip the real-time alert delay measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration as JSON
    args = parser.parse_args()
    if args.one:
        pose, every = args.one.split(",")
        print(json.dumps(measure(args.clip, args.model, pose == "1", int(every), args.frames)))
        return

    print(f"clip {args.clip}, model {args.model}, {args.frames} frames, 1 core, as fast as possible\n")
    header = f"{'landmarks':<16}{'fps':>7}{'cpu ms/f':>10}{'RSS MiB':>8}  {'median ms: landmarks features model alarm publish':<50}{'non-MP':>8}"
    print(header)
    for pose, every in ((True, 1), (True, 2), (True, 3), (False, 1)):
        out = subprocess.run([sys.executable, __file__, "--clip", args.clip, "--model", args.model, "--frames",
                              str(args.frames), "--one", f"{int(pose)},{every}"], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = f"face+pose/{every}" if pose else "face only"
        stages = " ".join(f"{r['stage_ms'].get(s, 0):.3f}" for s in ("landmarks", "features", "model", "alarm", "publish"))
        print(f"{name:<16}{r['fps']:>7.1f}{r['cpu_ms_per_frame']:>10.1f}{r['peak_rss_mb']:>8.0f}  {stages:<50}"
              f"{100 * r['non_mediapipe_share']:>7.1f}%")
    for every in (2, 3):
        cost = pose_every_cost(args.clip, args.model, every)
        print(f"\npose every {every}: body features differ from every-frame pose by {cost['body_feature_mad']:.4f} "
              f"(mean abs), scores by {cost['score_mad']:.4f} (max {cost['score_max_diff']:.3f}); events "
              f"{cost[f'events_k{every}']} vs {cost['events_k1']}")
    peaks = service_peak_rss(args.clip, args.model)
    if peaks:
        print(f"\ncryedge run --fast with mosquitto and the health server, 1 core: peak RSS "
              f"{', '.join(f'{peak:.1f}' for peak in peaks)} MiB")
    delay = None if args.skip_delay else alert_delay(args.clip, args.model)
    if delay:
        print(f"\nreal time with mosquitto: cry_start arrived at the subscriber {delay['delay_s']:.2f} s after the first "
              f"crying frame (truth {delay['truth_start_s']} s); the event dates the start at {delay['event_dated_s']:.2f} s")


if __name__ == "__main__":
    main()
