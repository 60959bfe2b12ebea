"""Convert every genuine Keras-2 fixture and print size, LiteRT latency (1 thread, median) and fidelity.

    .venv/bin/python benchmarks/conversion.py [--quantize int8] [--lstm unroll|fused]

The fixtures were trained on SYNTHETIC data; fidelity is against Keras on their held-out .npz.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras2"
NAMES = ("dense-lstm", "dense-lstm-functional", "lstm2", "conv1d", "conv2d", "lstm3", "emotion-cnn", "smile-cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int8", choices=("float32", "float16", "dynamic", "int8"))
    parser.add_argument("--lstm", default="unroll", choices=("unroll", "fused"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from convert.convert import ConvertOptions, convert

    print(f"{'model':<24}{'size KiB':>10}{'latency us':>12}{'agree %':>9}{'max diff':>10}{'convert s':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            lstm = args.lstm if name != "dense-lstm-functional" else "unroll"
            start = time.perf_counter()
            report = convert(ConvertOptions(model=FIXTURES / f"{name}.h5", output=Path(tmp) / f"{name}.tflite",
                                            quantize=args.quantize, lstm=lstm,
                                            calibration=str(FIXTURES / f"{name}.heldout.npz")))
            seconds = time.perf_counter() - start
            fidelity = report.fidelity
            print(f"{name:<24}{report.size_bytes / 1024:>10.1f}{report.latency_us_median:>12.1f}"
                  f"{100 * fidelity['label_agreement']:>9.1f}{fidelity['max_abs_diff']:>10.4f}{seconds:>11.1f}")


if __name__ == "__main__":
    main()
