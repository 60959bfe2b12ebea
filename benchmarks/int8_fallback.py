"""The real-image CNN in int8, 16x8 and float16: per-layer int8 error, held-out label agreement, LiteRT latency.

    .venv/bin/python benchmarks/int8_fallback.py [--target 0.999]

The model is tests/fixtures/real/texture-xception.h5 (58,423 parameters, 64 x 64 grey, 7 classes),
trained on REAL patches of scikit-image's photographs; calibration patches come from the parts it
trained on, the 420 held-out ones from the parts it never saw. Prints each report as ``cryedge
convert`` does: plain int8 (--int8-fallback off), the automatic choice, and float16 for reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real" / "texture-xception.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.999, help="--agreement-target (plain int8 keeps 99.76%%)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from convert import zoo
    from convert.convert import ConvertOptions, convert

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calibration, _ = zoo.texture_patches(180, seed=3)
        held, held_y = zoo.texture_patches(60, held_out=True, seed=2)
        np.savez(folder / "patches.npz", x=np.concatenate([calibration, held]),
                 y=np.concatenate([np.zeros(len(calibration), int), held_y]))
        for title, scheme, fallback in (("plain int8", "int8", "off"), ("int8, --int8-fallback auto", "int8", "auto"),
                                        ("float16 (reference)", "float16", "off")):
            report = convert(ConvertOptions(model=FIXTURE, output=folder / f"{scheme}-{fallback}.tflite", quantize=scheme,
                                            calibration=str(folder / "patches.npz"), int8_fallback=fallback,
                                            agreement_target=args.target))
            print(f"===== {title}\n{report.table()}\n", flush=True)


if __name__ == "__main__":
    main()
