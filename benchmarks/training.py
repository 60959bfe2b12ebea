"""What turning TensorFlow's oneDNN kernels off costs ``cryedge train``: median whole-process seconds, off / on.

    .venv/bin/python benchmarks/training.py [--arch conv1d conv2d ...] [--runs 3] [--epochs 5]

``cryedge train`` runs with TensorFlow's default (oneDNN on, on x86) unless the user sets
``TF_ENABLE_ONEDNN_OPTS``; the README says when to turn it off and why. Here each architecture trains ``--runs`` times with it 0 and 1 in turn, on SYNTHETIC windows
(``convert.zoo.synthetic_windows``; sound-window shapes for audio-cnn), a fixed number of epochs (no
early stopping). On a shared machine compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {"audio-cnn": (96, 64)}  # (window, features) of an architecture; others: 10 x 156 landmark windows


def dataset(path: Path, window: int, features: int, groups: int = 16, per_group: int = 100) -> Path:
    import numpy as np

    from convert import zoo

    x, y = zoo.synthetic_windows(groups * per_group, window=window, features=features, seed=3)
    np.savez(path, x=x, y=y, groups=np.repeat([f"subject-{i}" for i in range(groups)], per_group),
             labels=np.array(["not_crying", "crying"]))
    return path


def train_seconds(arch: str, data: Path, output: Path, epochs: int, onednn: str) -> float:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "edge.cli", "train", "--arch", arch, "--data", str(data), "--output", str(output),
               "--epochs", str(epochs), "--patience", str(epochs)]
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["conv1d", "lstm2", "audio-cnn"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'arch':<12}{'oneDNN on s':>12}{'off s':>8}{'off/on':>8}  (median of {args.runs}, {args.epochs} epochs)")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            data = dataset(Path(tmp) / f"{arch}.npz", *SHAPES.get(arch, (10, 156)))
            times: dict[str, list[float]] = {"1": [], "0": []}
            for _ in range(args.runs):
                for onednn in ("1", "0"):  # alternated, so the machine's load drifts over both alike
                    times[onednn].append(train_seconds(arch, data, Path(tmp) / "m.keras", args.epochs, onednn))
            on, off = statistics.median(times["1"]), statistics.median(times["0"])
            print(f"{arch:<12}{on:12.1f}{off:8.1f}{off / on:8.2f}", flush=True)


if __name__ == "__main__":
    main()
