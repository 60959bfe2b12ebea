"""``cryedge convert`` on genuine Keras-2 files: all-int8 graphs that agree with Keras, cards, one-line errors.

The fixtures in tests/fixtures/keras2 were written by Keras 2.3.1 / TensorFlow 2.1 (Python 3.7) from
SYNTHETIC separable data (convert/fixtures/make_keras2_fixtures.py); each has a held-out .npz.
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

from isolated import run_python  # tests/ is on sys.path (rootdir conftest)

from convert.convert import (
    ConvertOptions,
    Samples,
    check_graph,
    convert,
    heldout_labels,
    infer_kind,
    split_samples,
)
from convert.keras_io import legacy_h5_config
from convert.report import LiteRTRunner, float_islands, inspect_graph
from edge import tflite_file
from edge.card import load_card, parse_card, read_embedded_card
from edge.errors import DataError
from edge.model import TFLiteModel

pytestmark = [pytest.mark.tensorflow]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras2"
KERAS2_MODELS = ("dense-lstm", "dense-lstm-functional", "lstm2", "conv1d", "conv2d", "lstm3", "emotion-cnn", "smile-cnn")
CRYEDGE = Path(sys.executable).with_name("cryedge")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([str(CRYEDGE), "convert", *args], capture_output=True, text=True, timeout=300, env=env,
                          check=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each Keras-2 fixture converted to int8, calibrated and measured on its held-out .npz."""
    out = tmp_path_factory.mktemp("int8")
    results = {}
    for name in KERAS2_MODELS:
        report = convert(ConvertOptions(model=FIXTURES / f"{name}.h5", output=out / f"{name}.tflite", quantize="int8",
                                        calibration=str(FIXTURES / f"{name}.heldout.npz")))
        results[name] = (out / f"{name}.tflite", report)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", KERAS2_MODELS)
def test_keras2_h5_converts_to_an_all_int8_graph_agreeing_with_keras(converted, name):
    path, report = converted[name]
    graph = inspect_graph(path.read_bytes())
    assert graph.subgraphs == 1 and not graph.dynamic_shapes
    assert check_graph(graph, "int8") == [] and float_islands(graph) == []
    assert graph.input_types == ("INT8",) and graph.output_types == ("INT8",)
    assert report.input["shape"][0] == 1
    assert report.fidelity["label_agreement"] >= 0.99, report.fidelity
    assert report.fidelity["samples"] >= 25
    assert report.latency_us_median > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", KERAS2_MODELS)
def test_card_is_embedded_and_beside_the_model_and_the_device_runtime_accepts_it(converted, name):
    path, _ = converted[name]
    embedded = parse_card(read_embedded_card(path.read_bytes()), "embedded")
    sidecar = load_card(path)
    assert embedded == sidecar
    assert tflite_file.misaligned_buffers(path.read_bytes()) == [], "embedding the card keeps buffers aligned"
    assert embedded.source.sha256 and len(embedded.source.sha256) == 64
    assert embedded.tools["tensorflow"].startswith("2.")
    assert embedded.quantization.scheme == "int8" and embedded.quantization.input.dtype == "int8"
    assert embedded.quantization.input.scale > 0
    held = np.load(FIXTURES / f"{name}.heldout.npz")
    with TFLiteModel(path, card=embedded) as model:
        probabilities = model.probabilities(held["x"][0].astype(np.float32))
    assert probabilities.shape == (len(embedded.labels),)
    assert probabilities.sum() == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_face_crop_cnn_with_seven_classes_gets_a_softmax_face_crop_card(converted):
    card = load_card(converted["emotion-cnn"][0])
    assert card.kind == "face-crop" and card.output == "softmax"
    assert len(card.labels) == 7 and card.labels[0] == "angry"
    assert (card.face_crop.height, card.face_crop.width, card.face_crop.channels) == (48, 48, 1)


@pytest.mark.slow
def test_conv2d_window_model_takes_the_window_reshaped_to_40x39x1(converted):
    """The device hands the (10, 156) window; the graph takes 40 x 39 x 1 holding the same values."""
    path, _ = converted["conv2d"]
    card = load_card(path)
    assert card.kind == "landmark-window" and card.window == 10 and card.features.spec == "openpose-face70-body8"
    assert tuple(card.input_shape) == (1, 40, 39, 1)
    held = np.load(FIXTURES / "conv2d.heldout.npz")
    image = held["x"][3].astype(np.float32)
    runner = LiteRTRunner(path.read_bytes())
    with TFLiteModel(path) as model:
        assert model.invoke(image.reshape(10, 156)) == pytest.approx(runner(image), abs=1e-6)


@pytest.mark.slow
def test_cli_prints_the_report_and_writes_card_report_json_and_plot(tmp_path):
    out = tmp_path / "conv1d.tflite"
    result = run_cli(str(FIXTURES / "conv1d.h5"), "--quantize", "int8", "--calibration",
                     str(FIXTURES / "conv1d.heldout.npz"), "--output", str(out), "--report", str(tmp_path / "r.json"),
                     "--labels", "calm,crying", "--threshold", "0.6")
    assert result.returncode == 0, result.stderr
    assert "label agreement" in result.stdout and "latency (LiteRT, 1 thread)" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fidelity"]["label_agreement"] >= 0.99
    assert "CONV_2D v3" in report["ops"] and report["size_bytes"] == out.stat().st_size
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["labels"] == ["calm", "crying"] and card["positive_label"] == "crying" and card["threshold"] == 0.6


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["float32", "float16", "dynamic"])
def test_float_and_dynamic_schemes_match_keras_closely(tmp_path, scheme):
    report = convert(ConvertOptions(model=FIXTURES / "lstm2.h5", output=tmp_path / "m.tflite", quantize=scheme,
                                    calibration=str(FIXTURES / "lstm2.heldout.npz")))
    assert report.fidelity["label_agreement"] == 1.0
    assert report.fidelity["max_abs_diff"] < {"float32": 1e-4, "float16": 5e-3, "dynamic": 5e-2}[scheme]
    assert load_card(tmp_path / "m.tflite").quantization.scheme == scheme
    if scheme == "dynamic":
        assert any("tflite-runtime 2.14" in warning for warning in report.warnings)


@pytest.mark.slow
def test_keras3_file_and_savedmodel_folder_convert(tmp_path):
    # trained in a child (tests/isolated.py): a Keras fit is where a busy machine's task limit aborts TensorFlow
    run_python(f"""
import keras, numpy as np, tf_keras
from pathlib import Path
from convert import zoo
out = Path({str(tmp_path)!r})
keras.utils.set_random_seed(5)  # training is short: unseeded, a few windows near 0.5 could flip in int8
x, y = zoo.synthetic_windows(320, seed=5)
np.savez(out / "data.npz", x=x[160:], y=y[160:])
model = zoo.build("conv1d")
model.compile("adam", "binary_crossentropy")
model.fit(x[:160], y[:160], epochs=10, verbose=0)
model.save(out / "m.keras")
legacy = tf_keras.Sequential([tf_keras.layers.Conv1D(16, 2, activation="relu", input_shape=(10, 156)),
                              tf_keras.layers.Flatten(), tf_keras.layers.Dense(1, activation="sigmoid")])
legacy.compile("adam", "binary_crossentropy")
legacy.fit(x[:160], y[:160], epochs=10, verbose=0)
legacy.save(out / "saved", save_format="tf")
assert keras.__version__.startswith("3")
""")
    report = convert(ConvertOptions(model=tmp_path / "m.keras", output=tmp_path / "k3.tflite",
                                    calibration=str(tmp_path / "data.npz")))
    assert report.fidelity["label_agreement"] >= 0.99
    report = convert(ConvertOptions(model=tmp_path / "saved", output=tmp_path / "sm.tflite",
                                    calibration=str(tmp_path / "data.npz")))
    assert report.fidelity["label_agreement"] >= 0.99


def _one_line_error(result: subprocess.CompletedProcess, code: int, words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cryedge: ") and words in lines[0], lines[0]


def test_missing_model_is_one_line_model_error(tmp_path):
    _one_line_error(run_cli(str(tmp_path / "nope.h5"), "--calibration", "synthetic", "-o", str(tmp_path / "o.tflite")),
                    4, "model not found")


def test_int8_without_calibration_data_is_refused(tmp_path):
    _one_line_error(run_cli(str(FIXTURES / "conv1d.h5"), "-o", str(tmp_path / "o.tflite")), 7, "--calibration")


def test_a_positive_label_that_is_not_a_label_is_refused_before_the_conversion(tmp_path):
    """It went through the whole conversion, then the card's own check said so as a bug: 'unexpected error ...
    ValidationError' and exit code 70, with no model written."""
    result = run_cli(str(FIXTURES / "conv1d.h5"), "--quantize", "float32", "--positive", "crying",
                     "-o", str(tmp_path / "o.tflite"))
    _one_line_error(result, 7, "--positive crying: not one of the labels (no-cry, cry); give --labels too")
    assert list(tmp_path.iterdir()) == []


def test_calibration_data_with_nan_is_refused_before_the_conversion(tmp_path):
    """The converter said it after the conversion, as a model error (exit 4): 'Max and min for dynamic tensors
    should be recorded during calibration'."""
    arrays = dict(np.load(FIXTURES / "conv1d.heldout.npz"))
    arrays["x"] = arrays["x"].astype(np.float32)
    arrays["x"][[3, 20]] = np.inf
    np.savez(tmp_path / "held.npz", **arrays)
    result = run_cli(str(FIXTURES / "conv1d.h5"), "--calibration", str(tmp_path / "held.npz"), "-o", str(tmp_path / "o.tflite"))
    _one_line_error(result, 7, f"calibration data {tmp_path / 'held.npz'}: 2 of {len(arrays['x'])} samples hold NaN or "
                               "infinite values (the first: sample 3)")
    assert not (tmp_path / "o.tflite").exists()


def test_calibration_data_cut_short_or_not_an_npz_is_one_line(tmp_path):
    """A calibration .npz cut short (a copy that stopped) was BadZipFile, exit 70 ("a bug"); a file that is no .npz
    drew numpy's advice on loading pickles unsafely."""
    (tmp_path / "cut.npz").write_bytes((FIXTURES / "conv1d.heldout.npz").read_bytes()[:3000])
    (tmp_path / "notes.npz").write_text("not samples\n")
    for name, why in (("cut.npz", "File is not a zip file"), ("notes.npz", "not an .npz file")):
        result = run_cli(str(FIXTURES / "conv1d.h5"), "--calibration", str(tmp_path / name), "-o", str(tmp_path / "o.tflite"))
        assert (result.returncode, result.stderr.splitlines()) == (
            7, [f"cryedge: cannot read calibration data {tmp_path / name}: {why}"]), result.stderr


@pytest.mark.slow
def test_calibration_data_of_the_wrong_shape_is_refused(tmp_path):
    _one_line_error(run_cli(str(FIXTURES / "conv1d.h5"), "--calibration", str(FIXTURES / "emotion-cnn.heldout.npz"),
                            "-o", str(tmp_path / "o.tflite")), 7, "x has shape [100, 48, 48, 1]")


@pytest.mark.slow
def test_too_few_calibration_samples_are_refused(tmp_path):
    held = np.load(FIXTURES / "conv1d.heldout.npz")
    np.savez(tmp_path / "few.npz", x=held["x"][:5])
    _one_line_error(run_cli(str(FIXTURES / "conv1d.h5"), "--calibration", str(tmp_path / "few.npz"),
                            "-o", str(tmp_path / "o.tflite")), 7, "5 samples")


@pytest.mark.slow
def test_model_whose_input_fits_no_kind_is_refused(tmp_path):
    import keras

    model = keras.Sequential([keras.layers.InputLayer(shape=(10, 50)), keras.layers.LSTM(4), keras.layers.Dense(1)])
    model.save(tmp_path / "odd.keras")
    _one_line_error(run_cli(str(tmp_path / "odd.keras"), "--calibration", "synthetic", "-o", str(tmp_path / "o.tflite")),
                    7, "fits no feature spec")


def test_weights_only_h5_and_unknown_format_are_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\0")
    _one_line_error(run_cli(str(tmp_path / "model.onnx"), "--calibration", "synthetic", "-o", str(tmp_path / "o.tflite")),
                    4, "unknown model format")


def test_an_h5_whose_model_config_lies_and_metrics_that_are_no_object_are_one_line(tmp_path):
    """An .h5 whose model_config is no JSON was JSONDecodeError, one holding a JSON list AttributeError, and --metrics
    holding a list the card's ValidationError after the whole conversion: each exit 70, "a bug"."""
    import h5py

    for name, config in (("garbled", b"not json"), ("listed", b"[1, 2]")):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f.attrs["model_config"] = config
    (tmp_path / "metrics.json").write_text("[0.9, 0.8]\n")
    for args, code, line in (
        ([tmp_path / "garbled.h5"], 4, f"{tmp_path / 'garbled.h5'}: its model_config is not JSON (Expecting value: "
                                       "line 1 column 1 (char 0)): not a Keras model file"),
        ([tmp_path / "listed.h5"], 4, f"{tmp_path / 'listed.h5'}: its model_config is a JSON list, not a Keras model "
                                      "config"),
        ([FIXTURES / "conv1d.h5", "--metrics", tmp_path / "metrics.json"], 7,
         f"--metrics {tmp_path / 'metrics.json'}: a JSON list, not an object of metrics (as 'cryedge train' writes)"),
    ):
        result = run_cli(*map(str, args), "--quantize", "float32", "-o", str(tmp_path / "o.tflite"))
        assert (result.returncode, result.stderr.splitlines()) == (code, [f"cryedge: {line}"]), result.stderr
    assert not (tmp_path / "o.tflite").exists()


def test_inferred_kinds():
    assert infer_kind((None, 10, 156)).kind == "landmark-window"
    assert infer_kind((None, 10, 156)).features.spec == "openpose-face70-body8"
    assert infer_kind((None, 20, 190)).features.spec == "openpose-face70-body25"
    reshaped = infer_kind((None, 40, 39, 1))
    assert (reshaped.kind, reshaped.window) == ("landmark-window", 10)
    crop = infer_kind((None, 48, 48, 1))
    assert crop.kind == "face-crop" and crop.face_crop.channels == 1
    assert infer_kind((None, 64, 64, 3)).face_crop.channels == 3
    with pytest.raises(DataError, match="fits no known kind"):
        infer_kind((None, 8, 8, 5))
    with pytest.raises(DataError, match="fits no feature spec"):
        infer_kind((None, 10, 57))
    # the zoo's audio-cnn (96 frames x 64 mel bands) converted without its dataset: the message spoke of
    # landmark specs only, and not of what a sound model needs
    with pytest.raises(DataError, match=r"a sound model's front end comes from the data it was trained on: give it "
                                        r"as --calibration DATA.npz \(cryedge dataset build --audio\)"):
        infer_kind((None, 96, 64))


def test_the_card_says_which_version_of_the_features_the_model_was_converted_for(monkeypatch):
    """The card carried version 1 whatever the spec's version: once a spec changes, the device (which refuses a
    card of another version than it computes) would refuse every model converted for it."""
    from dataclasses import replace

    import convert.convert as converting

    newer = {name: replace(spec, version=2) for name, spec in converting.SPECS.items()}
    monkeypatch.setattr(converting, "SPECS", newer)
    assert infer_kind((None, 10, 156)).features.version == 2
    assert infer_kind((None, 40, 39, 1)).features.version == 2

def test_legacy_sequential_config_gets_an_explicit_input_layer():
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 3, "dtype": "float32", "batch_input_shape": [None, 10, 156]}},
        {"class_name": "Dense", "config": {"name": "e", "units": 1}}]}}
    fixed = legacy_h5_config(config)
    layers = fixed["config"]["layers"]
    assert layers[0]["class_name"] == "InputLayer" and layers[0]["config"]["batch_input_shape"] == [None, 10, 156]
    assert "batch_input_shape" not in layers[1]["config"]
    assert "batch_input_shape" in config["config"]["layers"][0]["config"]  # the input is left as it was


@pytest.mark.slow
def test_float_io_boundary_is_allowed_but_a_float_graph_is_not_int8(tmp_path):
    """QUANTIZE in and DEQUANTIZE out around an int8 graph are its I/O; float ops inside are islands."""
    float_io = convert(ConvertOptions(model=FIXTURES / "emotion-cnn.h5", output=tmp_path / "f.tflite", io_type="float32",
                                      calibration=str(FIXTURES / "emotion-cnn.heldout.npz")))
    graph = inspect_graph((tmp_path / "f.tflite").read_bytes())
    assert graph.input_types == ("FLOAT32",) and "QUANTIZE v1" in float_io.ops
    assert float_islands(graph) == []
    convert(ConvertOptions(model=FIXTURES / "emotion-cnn.h5", output=tmp_path / "h.tflite", quantize="float16",
                           calibration=str(FIXTURES / "emotion-cnn.heldout.npz")))
    half = inspect_graph((tmp_path / "h.tflite").read_bytes())
    assert any(island.startswith("CONV_2D") for island in float_islands(half))
    assert "float ops in an int8 graph" in check_graph(half, "int8")[0]


@pytest.mark.slow
def test_image_folder_calibrates_a_face_crop_model(tmp_path):
    import cv2

    held = np.load(FIXTURES / "smile-cnn.heldout.npz")
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, image in enumerate(held["x"].astype(np.float32)):
        big = cv2.resize((image[..., 0] * 255).round().astype(np.uint8), (128, 128), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))  # colour, larger: converted
    report = convert(ConvertOptions(model=FIXTURES / "smile-cnn.h5", output=tmp_path / "s.tflite", calibration=str(folder)))
    assert "100 images" in report.calibration
    assert report.fidelity["label_agreement"] >= 0.99


def test_an_image_whose_header_claims_too_many_pixels_is_skipped_like_any_unreadable_one(tmp_path):
    """OpenCV raised cv2.error (its pixel limit) where it returns None for other unreadable files: exit 70."""
    import cv2

    from convert.convert import load_samples

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((64, 64, 3), 60 * i, np.uint8))
    (tmp_path / "huge.ppm").write_bytes(b"P6\n99999 99999\n255\n")
    samples = load_samples(str(tmp_path), (1, 48, 48, 1))
    assert samples.x.shape == (3, 48, 48, 1) and samples.source == f"{tmp_path} (3 images, /255)"


def test_groups_are_held_out_whole():
    x = np.zeros((80, 10, 156), dtype=np.float32)
    groups = np.repeat(np.array(["ann", "ben", "cat", "dan"]), 20)
    calibration, heldout, how = split_samples(Samples(x, None, groups, "data.npz"))
    assert len(heldout) == 20 and len(calibration) == 60
    assert "1 of 4 groups" in how


def test_calibration_and_fidelity_samples_span_the_whole_dataset_not_its_first_videos():
    """A dataset lists its windows video by video: the first 300 are one quiet clip's opening seconds.

    Calibrated on those alone, int8 ranges cut off what later clips reach (the default model lost a
    held-out face's cries to a saturated convolution); both samples must reach the last videos too.
    """
    videos = 20
    x = np.repeat(np.arange(videos, dtype=np.float32), 100)[:, None, None] * np.ones((1, 10, 140), np.float32) / videos
    groups = np.repeat(np.array([f"video{i:02d}" for i in range(videos)]), 100)
    y = np.repeat(np.arange(videos) % 2, 100)
    calibration, heldout, _ = split_samples(Samples(x, y, groups, "data.npz"))
    calibrated_videos = {round(float(v) * videos) for v in calibration[:, 0, 0]}
    assert len(calibration) == 300 and len(calibrated_videos) == 15  # every video not held out, not 3 of them
    held_videos = {round(float(v) * videos) for v in heldout[:, 0, 0]}
    assert len(held_videos) == 5  # 500 held-out windows: all of them, from all 5 held-out videos
    labels = heldout_labels(Samples(x, y, groups, "data.npz"))
    assert np.array_equal(labels, np.array([int(round(float(v) * videos)) % 2 for v in heldout[:, 0, 0]]))


@pytest.mark.slow
def test_dataset_file_gives_the_card_its_labels_and_normalization_and_the_report_accuracy(tmp_path):
    """A 'cryedge dataset build' file (x, y, groups, labels, spec, normalization) calibrates and names the classes."""
    from convert import zoo

    x, y = zoo.synthetic_windows(240, seed=1)  # the distribution conv1d.h5 was trained on
    groups = np.repeat(np.array([f"video{i}" for i in range(8)]), 30)
    np.savez(tmp_path / "dataset.npz", x=x, y=y, groups=groups, labels=np.array(["calm", "crying"]),
             spec=np.array("openpose-face70-body8"), normalization=np.array("face-box"))
    report = convert(ConvertOptions(model=FIXTURES / "conv1d.h5", output=tmp_path / "d.tflite",
                                    calibration=str(tmp_path / "dataset.npz")))
    card = load_card(tmp_path / "d.tflite")
    assert card.labels == ("calm", "crying") and card.positive_label == "crying"
    assert card.features.normalization == "face-box"
    assert report.fidelity["samples"] == 60 and "2 of 8 groups" in report.fidelity["data"]
    assert report.fidelity["tflite_accuracy"] >= 0.95 and report.fidelity["keras_accuracy"] >= 0.95


def test_card_carries_the_training_normalization_and_metrics(tmp_path):
    """A model trained on face-box features must say so, or the device would feed it minmax ones."""
    model = tmp_path / "conv1d.h5"
    model.write_bytes((FIXTURES / "conv1d.h5").read_bytes())
    model.with_suffix(".metrics.json").write_text(json.dumps({"f1": 0.63, "held_out_groups": ["grace-hopper"]}))
    out = tmp_path / "m.tflite"
    convert(ConvertOptions(model=model, output=out, quantize="float32", normalization="face-box"))
    card = load_card(out)
    assert card.features.normalization == "face-box"
    assert card.training == {"f1": 0.63, "held_out_groups": ["grace-hopper"]}
    result = run_cli(str(model), "--quantize", "float32", "--output", str(tmp_path / "n.tflite"),
                     "--metrics", str(tmp_path / "none.json"))
    assert result.returncode == 7 and "--metrics" in result.stderr


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_mid_conversion_stops_it_at_once_and_leaves_no_work_folder(tmp_path, stop):
    """Ctrl-C reached TensorFlow's weakref callbacks ("Exception ignored ... KeyboardInterrupt") and the conversion
    went on to exit 0 (2 of 8 tries), or stopped 1 to 3 s later; SIGTERM left /tmp/cryedge-convert-* (and
    TensorFlow's __autograph_generated_file*.py) behind. SIGINT goes to the process group, as a terminal sends it."""
    import signal
    import time

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    output = tmp_path / "out.tflite"
    process = subprocess.Popen(
        [str(CRYEDGE), "convert", str(FIXTURES / "lstm2.h5"), "--calibration", str(FIXTURES / "lstm2.heldout.npz"),
         "-o", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TMPDIR=str(temporary)))
    try:
        deadline = time.monotonic() + 120
        while not list(temporary.glob("cryedge-convert-*/saved_model/saved_model.pb")):  # converting from now on
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        if stop == "SIGINT":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert took < 2.0, f"{took:.1f} s"
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert list(temporary.iterdir()) == []  # the work folder, TensorFlow's files in it
    assert not output.exists() and out == ""


def test_the_conversion_dies_with_a_killed_cryedge_convert_and_its_work_folder_is_removed(tmp_path):
    """`cryedge convert` killed outright (SIGKILL, the out-of-memory killer, a closed terminal's kill) left its child
    converting on (minutes for a large model) and /tmp/cryedge-convert-* behind: the parent that removes them on
    Ctrl-C was gone. Now the child dies with it and the folder is removed by the process left to do it."""
    import signal
    import time

    def children(pid: int) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    converting: list[int] = []
    process = subprocess.Popen(
        [str(CRYEDGE), "convert", str(FIXTURES / "lstm2.h5"), "--calibration", str(FIXTURES / "lstm2.heldout.npz"),
         "-o", str(tmp_path / "out.tflite")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TMPDIR=str(temporary)))
    try:
        deadline = time.monotonic() + 120
        while not list(temporary.glob("cryedge-convert-*/saved_model/saved_model.pb")):  # converting from now on
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        converting += [pid for pid in children(process.pid) if "converting_child" in
                       Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
        assert len(converting) == 1
        process.kill()
        process.wait()
        deadline = time.monotonic() + 5
        while (running(converting[0]) or list(temporary.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(converting[0]), "the conversion went on without its parent"
        assert list(temporary.iterdir()) == []
    finally:
        process.kill()
        for pid in converting:  # the old code's, left converting
            if running(pid):
                os.kill(pid, signal.SIGKILL)
