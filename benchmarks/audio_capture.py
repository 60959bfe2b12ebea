"""Capture candidates compared: CPU and memory of reading 16 kHz mono s16 in 100 ms blocks.

    .venv/bin/python benchmarks/audio_capture.py [--seconds 15] [--runs 3]

Candidates: ``arecord`` (alsa-utils) and ``ffmpeg`` as helper processes writing to a pipe, ``sounddevice``
(PortAudio through cffi) and ``pyalsaaudio`` (a C extension) in the process. Each runs in a fresh
process; printed: CPU seconds (the process and its helper) above a baseline process that only sleeps,
as a share of one core, and the peak RSS added to the Python process plus the helper's own peak RSS.

This machine has no sound card and no snd-aloop: ALSA capture reads a stand-in PCM (ALSA's ``file``
plugin over ``null``, 48 kHz stereo from a raw file, behind a ``plug`` that resamples), which is not
paced, so the reader paces itself at 100 ms. ``ffmpeg`` decodes an AAC file in real time (``-re``): a
camera stream's or the demo clip's sound track. A candidate that is not installed is skipped.
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
import time
from pathlib import Path

import numpy as np

BLOCK = 1600  # 100 ms at 16 kHz


def capture(kind: str, device: str, seconds: float, tool_log: str) -> dict:
    """In a child process: read ``seconds`` of sound with ``kind``; CPU and RSS figures."""
    n, start, got = int(seconds * 10), time.monotonic(), 0

    def pace(i):
        time.sleep(max(0.0, start + (i + 1) * 0.1 - time.monotonic()))

    if kind in ("arecord", "ffmpeg"):
        if kind == "arecord":
            command = ["arecord", "-q", "-D", device, "-r", "16000", "-c", "1", "-f", "S16_LE", "-t", "raw",
                       "--buffer-time=500000"]
        else:
            command = ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-re", "-i", device, "-vn", "-ac", "1", "-ar",
                       "16000", "-f", "s16le", "pipe:1"]
        process = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", tool_log, *command], stdout=subprocess.PIPE)
        for i in range(n):
            data = process.stdout.read(BLOCK * 2)
            got += np.frombuffer(data, np.int16).size
            if kind == "arecord":
                pace(i)
        process.stdout.close()
        process.wait()
    elif kind == "sounddevice":
        import sounddevice

        with sounddevice.InputStream(device=device, samplerate=16000, channels=1, dtype="int16", blocksize=BLOCK) as s:
            for i in range(n):
                got += len(s.read(BLOCK)[0])
                pace(i)
    elif kind == "pyalsaaudio":
        import alsaaudio

        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, device=device, channels=1, rate=16000,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=BLOCK)
        for i in range(n):
            got += max(0, pcm.read()[0])
            pace(i)
        pcm.close()
    else:  # baseline
        for i in range(n):
            pace(i)
    own, helpers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    helper_rss = float(Path(tool_log).read_text().split()[-1]) / 1024 if Path(tool_log).stat().st_size else 0.0
    return {"samples": got, "cpu": own.ru_utime + own.ru_stime + helpers.ru_utime + helpers.ru_stime,
            "rss": own.ru_maxrss / 1024, "helper_rss": helper_rss}


def stand_ins(folder: Path) -> tuple[dict, Path]:
    raw, conf, clip = folder / "mic.raw", folder / "alsa.conf", folder / "clip.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=300",
                    "-ac", "2", "-f", "s16le", str(raw)], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=300",
                    "-ac", "2", "-c:a", "aac", str(clip)], check=True)
    conf.write_text(Path("/usr/share/alsa/alsa.conf").read_text() + f"""
pcm.micfile {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; format "raw" }}
pcm.mic {{ type plug; slave {{ pcm "micfile"; rate 48000; channels 2; format S16_LE }} }}
""")
    return dict(os.environ, ALSA_CONFIG_PATH=str(conf)), clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, device, tool_log = args.child
        print(json.dumps(capture(kind, device, args.seconds, tool_log)))
        return
    with tempfile.TemporaryDirectory() as folder:
        environ, clip = stand_ins(Path(folder))
        results: dict[str, list[dict]] = {}
        for _ in range(args.runs):
            for kind in ("baseline", "arecord", "sounddevice", "pyalsaaudio", "ffmpeg"):
                device = str(clip) if kind == "ffmpeg" else "mic"
                tool_log = str(Path(folder) / f"{kind}.time")
                Path(tool_log).write_text("")
                run = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child", kind, device,
                                      tool_log], env=environ, capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"{kind}: skipped ({run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode})")
                    continue
                results.setdefault(kind, []).append(json.loads(run.stdout))
    base = results["baseline"]
    base_cpu, base_rss = statistics.median(r["cpu"] for r in base), statistics.median(r["rss"] for r in base)
    print(f"{args.seconds:g} s of 16 kHz mono in 100 ms blocks, medians of {args.runs} runs")
    print(f"{'candidate':<12} {'CPU % of a core':>16} {'RSS added MiB':>14} {'helper RSS MiB':>15}")
    for kind, runs in results.items():
        if kind == "baseline":
            continue
        cpu = statistics.median(r["cpu"] for r in runs) - base_cpu
        rss = statistics.median(r["rss"] for r in runs) - base_rss
        helper = statistics.median(r["helper_rss"] for r in runs)
        print(f"{kind:<12} {100 * cpu / args.seconds:>16.2f} {rss:>14.1f} {helper:>15.1f}")


if __name__ == "__main__":
    main()
