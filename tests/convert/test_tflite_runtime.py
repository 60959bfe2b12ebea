"""Converted models load and run in tflite-runtime 2.14 (the older runtime on many Pis), as in LiteRT.

tflite-runtime 2.14 needs numpy < 2, so it lives in a venv of its own: ``.venv-tflite-runtime`` in
the repository root, as ``setup.sh`` makes it from ``requirements/tflite-runtime.txt`` (its ``tflite_runtime_venv``,
which these tests run too: made when missing, taken to the lock when it changed). The runs there are a subprocess;
outputs are compared with ai-edge-litert's on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from convert.convert import ConvertOptions, convert
from convert.report import LiteRTRunner
from edge.card import load_card

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "keras2"
VENV = REPO / ".venv-tflite-runtime"

# Runs under tflite-runtime with numpy < 2: no cryedge imports (pydantic is not there).
RUNNER = r"""
import json, sys
import numpy as np
from tflite_runtime.interpreter import Interpreter
jobs = json.loads(sys.argv[1])
results = {}
for job in jobs:
    try:
        interpreter = Interpreter(model_path=job["model"], num_threads=1)
        interpreter.allocate_tensors()
    except Exception as error:
        results[job["model"]] = {"error": str(error).strip().splitlines()[0] if str(error).strip() else repr(error)}
        continue
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.load(job["inputs"])["x"].astype(np.float32)
    rows = []
    for sample in x:
        sample = sample.reshape(i["shape"])
        if i["dtype"] in (np.int8, np.uint8):
            scale, zero = i["quantization"]
            info = np.iinfo(i["dtype"])
            sample = np.clip(np.round(sample / scale) + zero, info.min, info.max)
        if job["stateful"]:
            interpreter.reset_all_variables()
        interpreter.set_tensor(i["index"], sample.astype(i["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(o["index"]).astype(np.float32).reshape(-1)
        if o["dtype"] in (np.int8, np.uint8):
            scale, zero = o["quantization"]
            y = (y - zero) * scale
        rows.append(y.tolist())
    results[job["model"]] = {"outputs": rows, "version": __import__("tflite_runtime").__version__}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def tflite_runtime_python() -> Path:
    """The venv's Python, the venv as setup.sh keeps it: a venv made before a lock change ran the old versions here
    (it was made once, unpinned, and then used as found)."""
    result = subprocess.run(["bash", "-c", f'source setup.sh && tflite_runtime_venv "{VENV}" "{sys.executable}"'],
                            cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "CRYEDGE_SETUP_FUNCTIONS_ONLY": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return VENV / "bin" / "python"


CASES = [(name, scheme) for name in ("conv1d", "dense-lstm", "emotion-cnn") for scheme in ("float32", "float16", "int8")]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflrt")
    models = {}
    for name, scheme in CASES + [("conv1d", "dynamic")]:
        path = out / f"{name}-{scheme}.tflite"
        report = convert(ConvertOptions(model=FIXTURES / f"{name}.h5", output=path, quantize=scheme,
                                        calibration=str(FIXTURES / f"{name}.heldout.npz")))
        models[(name, scheme)] = (path, report)
    path = out / "dense-lstm-fused.tflite"
    models[("dense-lstm", "fused")] = (path, convert(ConvertOptions(
        model=FIXTURES / "dense-lstm.h5", output=path, lstm="fused", calibration=str(FIXTURES / "dense-lstm.heldout.npz"))))
    return models


@pytest.fixture(scope="module")
def runtime_results(tflite_runtime_python, converted, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("inputs")
    jobs = []
    for (name, _scheme), (path, _) in converted.items():
        x = np.load(FIXTURES / f"{name}.heldout.npz")["x"][-20:].astype(np.float32)
        np.savez(inputs / f"{name}.npz", x=x)
        jobs.append({"model": str(path), "inputs": str(inputs / f"{name}.npz"), "stateful": load_card(path).stateful})
    result = subprocess.run([str(tflite_runtime_python), "-c", RUNNER, json.dumps(jobs)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _litert_outputs(path: Path, name: str) -> np.ndarray:
    x = np.load(FIXTURES / f"{name}.heldout.npz")["x"][-20:].astype(np.float32)
    return LiteRTRunner(path.read_bytes(), stateful=load_card(path).stateful).predict(x)


@pytest.mark.parametrize(("name", "scheme"), CASES + [("dense-lstm", "fused")])
def test_model_runs_in_tflite_runtime_214_as_in_litert(converted, runtime_results, name, scheme):
    path, _ = converted[(name, scheme)]
    result = runtime_results[str(path)]
    assert "error" not in result, result
    assert result["version"] == "2.14.0"
    theirs = np.array(result["outputs"], dtype=np.float32)
    ours = _litert_outputs(path, name)
    scale = load_card(path).quantization.output.scale
    tolerance = {"float32": 1e-5, "float16": 1e-3}.get(scheme, 1.01 * scale)  # int8: at most one output step
    assert np.abs(theirs - ours).max() <= tolerance


def test_dynamic_range_model_is_refused_by_tflite_runtime_214_and_the_report_warned(converted, runtime_results):
    path, report = converted[("conv1d", "dynamic")]
    assert "FULLY_CONNECTED" in runtime_results[str(path)]["error"]
    assert any("FULLY_CONNECTED v12" in warning and "tflite-runtime 2.14" in warning for warning in report.warnings)
    assert "tflite-runtime 2.14" in load_card(path).description
