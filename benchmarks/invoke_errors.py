"""What a model failing on every window costs over a night: LiteRT's error text, and cryedge's bound on it.

    .venv/bin/python benchmarks/invoke_errors.py [--failures 20000]

A real TFLite graph that fails in LiteRT's invoke on a loud window (tests/audio_models.faulty_model, built with
TensorFlow). Printed at checkpoints: the length of the error text LiteRT raises, and the time of one failed call,
first through the interpreter itself (its Python error reporter never clears its text: every failure is appended
to all before it), then through ``edge.model.TFLiteModel`` (the newest error said; the interpreter made afresh
past ``INVOKE_ERRORS_KEPT``). The default audio model scores 4 windows a second: 20,000 failures is ~83 minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", type=int, default=20000)
    args = parser.parse_args()

    from audio_models import faulty_model, tone, yamnet_card

    from edge.errors import ModelError
    from edge.model import INVOKE_ERRORS_KEPT, TFLiteModel

    path = faulty_model(Path(tempfile.mkdtemp()) / "raise.tflite", "raise", card=yamnet_card(name="faulty-raise"))
    loud = tone(0.975, 90.0, level=0.9)
    checkpoints = {1, 10, 100, 1000, 5000, args.failures}
    print(f"INVOKE_ERRORS_KEPT = {INVOKE_ERRORS_KEPT} characters")
    for label in ("LiteRT interpreter", "TFLiteModel"):
        model = TFLiteModel(path)  # each way from a fresh interpreter
        for n in range(1, args.failures + 1):
            start = time.perf_counter()
            try:
                if label == "TFLiteModel":
                    model.probabilities(loud)
                else:
                    raw_invoke(model, loud)
            except (RuntimeError, ModelError) as error:
                length = len(str(error))
            ms = (time.perf_counter() - start) * 1000
            if n in checkpoints:
                print(f"{label:>18}: failure {n:>6}: error text {length:>8} characters, {ms:6.3f} ms"
                      + (f", interpreter made afresh {model.reloads} times" if label == "TFLiteModel" else ""))


def raw_invoke(model, x: np.ndarray) -> None:
    interpreter = model._interpreter
    interpreter.set_tensor(model._input["index"], x.astype(np.float32).reshape(model.input_shape))
    interpreter.invoke()


if __name__ == "__main__":
    main()
