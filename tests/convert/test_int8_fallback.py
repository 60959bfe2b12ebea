"""int8 that loses labels on a real-image CNN: the layers that lose them, and the graph that keeps them.

The model is ``tests/fixtures/real/texture-xception.h5``: the related emotion work's small Xception
CNN (64 x 64 grey, 7 classes, 58,423 parameters), saved by the Keras 2 API (tf-keras) and trained on
REAL photographs shipped with scikit-image (``convert/fixtures/make_texture_fixture.py``). It is
calibrated and measured on patches from the parts of each photograph it never trained on.

Measured: plain int8 keeps 419 of 420 held-out labels (99.76%); every layer's int8 error is near
pure rounding (0.29-0.31 quantization steps RMSE), so no layer stands out and leaving the worst
ones in float does not recover the label; int16 activations (16x8) keep all 420, at about 100 times
the latency (reference kernels). The tests ask for 99.9% (``--agreement-target 0.999``), which
plain int8 misses on this model, as the real emotion CNN misses 99%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from convert import zoo
from convert.convert import ConvertOptions, check_graph, convert
from convert.int8_fallback import Candidate, choose
from convert.report import LiteRTRunner, float_islands, inspect_graph
from edge.card import load_card
from edge.errors import DataError
from edge.model import TFLiteModel

pytestmark = [pytest.mark.tensorflow]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "texture-xception.h5"
TARGET = 0.999


@pytest.fixture(scope="module")
def real_patches(tmp_path_factory) -> Path:
    """npz of REAL patches: 1,260 from the trained part of each photograph (300 calibrate), then 420 held out.

    The converter holds out the last quarter: the 420 patches of the right quarters, never trained on.
    """
    folder = tmp_path_factory.mktemp("patches")
    calibration, _ = zoo.texture_patches(180, seed=3)
    held, held_y = zoo.texture_patches(60, held_out=True, seed=2)
    path = folder / "patches.npz"
    np.savez(path, x=np.concatenate([calibration, held]), y=np.concatenate([np.zeros(len(calibration), int), held_y]))
    return path


@pytest.fixture(scope="module")
def plain(real_patches, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "plain.tflite"
    return out, convert(ConvertOptions(model=FIXTURE, output=out, calibration=str(real_patches), int8_fallback="off",
                                       agreement_target=TARGET))


@pytest.fixture(scope="module")
def auto(real_patches, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "auto.tflite"
    return out, convert(ConvertOptions(model=FIXTURE, output=out, calibration=str(real_patches), agreement_target=TARGET))


@pytest.mark.slow
def test_plain_int8_of_the_real_image_cnn_loses_labels_and_says_so(plain):
    """The problem as users meet it: all-int8, below the target, with a warning (a tf-keras .h5 with SeparableConv2D loads)."""
    path, report = plain
    assert report.fidelity["samples"] == 420
    assert 0.99 <= report.fidelity["label_agreement"] < TARGET
    assert any("label agreement 99.76% < 99.9%" in warning for warning in report.warnings)
    assert report.int8_fallback is None
    assert check_graph(inspect_graph(path.read_bytes()), "int8") == []


@pytest.mark.slow
def test_auto_fallback_reaches_the_target_and_reports_layers_tried_graphs_and_costs(plain, auto):
    path, report = auto
    fallback = report.int8_fallback
    assert report.fidelity["label_agreement"] >= TARGET, fallback
    assert fallback["mode"] in ("int8+float-layers", "int16x8") and report.quantization == fallback["mode"]
    assert fallback["edgetpu_compatible"] is False
    layers = fallback["layers_worst_first"]
    assert len(layers) >= 10 and layers[0]["rmse_per_scale"] >= layers[-1]["rmse_per_scale"] >= 0
    assert 0.2 < layers[0]["rmse_per_scale"] < 1.0  # near rounding alone (0.29): no layer stands out
    tried = fallback["tried"]
    assert tried[0]["mode"] == "int8" and tried[0]["label_agreement"] == plain[1].fidelity["label_agreement"]
    kept = [t for t in tried if t["mode"] == fallback["mode"] and t.get("float_layers", []) == fallback["float_layers"]]
    reaching = [t for t in tried[1:] if t["label_agreement"] >= TARGET]
    assert kept and kept[0]["latency_us_median"] == min(t["latency_us_median"] for t in reaching), "the fastest that reaches it"
    assert all(t["latency_us_median"] > 0 for t in tried)
    assert any(w.startswith("int8 fallback:") and "EdgeTPU" in w for w in report.warnings)
    if fallback["mode"] == "int16x8":
        assert "for comparison float16 (--quantize float16) keeps" in fallback["note"]
    assert "worst int8 layers" in report.table() and "int8 fallback kept" in report.table()
    graph = inspect_graph(path.read_bytes())
    if fallback["mode"] == "int16x8":
        assert graph.input_types == ("INT16",) and check_graph(graph, "int16x8") == []
    else:
        assert graph.input_types == ("INT8",) and 0 < len(float_islands(graph)) <= 2 * len(fallback["float_layers"]) + 2


@pytest.mark.slow
def test_card_says_the_mode_and_float_layers_and_the_device_runs_the_graph(auto, real_patches):
    path, report = auto
    card = load_card(path)
    fallback = report.int8_fallback
    assert card.quantization.scheme == ("int16x8" if fallback["mode"] == "int16x8" else "int8")
    assert list(card.quantization.float_layers) == fallback["float_layers"]
    assert card.quantization.edgetpu_compatible is False and "int8 fallback" in card.description
    held = np.load(real_patches)["x"][-420:]
    expected = np.stack([LiteRTRunner(path.read_bytes())(x) for x in held[:40]])
    with TFLiteModel(path, card=card) as model:  # the device runtime: int16 or int8 I/O, float layers inside
        scores = np.stack([model.probabilities(x) for x in held[:40]])
    assert np.abs(scores - expected).max() < 0.02
    assert len(set(scores.argmax(axis=1))) >= 3


@pytest.mark.slow
def test_edgetpu_keeps_plain_int8_and_says_what_a_fallback_would_reach(real_patches, tmp_path):
    report = convert(ConvertOptions(model=FIXTURE, output=tmp_path / "tpu.tflite", calibration=str(real_patches),
                                    edgetpu=True, int8_fallback="auto", agreement_target=TARGET))
    assert report.quantization == "int8" and report.int8_fallback["mode"] == "int8"
    assert report.fidelity["label_agreement"] < TARGET
    assert any("kept plain int8 for the EdgeTPU" in w for w in report.warnings)
    assert load_card(tmp_path / "tpu.tflite").quantization.edgetpu_compatible is True


def _candidate(mode: str, agreement: float, latency: float, layers: tuple[str, ...] = ()) -> Candidate:
    return Candidate(mode, b"", agreement, latency, layers)


class _Analysis:
    layers = []

    def with_float_layers(self, tensors, io_type):
        return f"float:{len(tensors)}".encode()


def test_choice_keeps_the_fastest_graph_that_reaches_the_target():
    measured = {b"float:1": (0.985, 300.0), b"float:2": (0.995, 320.0), b"16x8": (0.998, 900.0)}
    analysis = _Analysis()
    analysis.layers = [type("L", (), {"tensor": f"t{i}"})() for i in range(6)]
    choice = choose("auto", plain=_candidate("int8", 0.97, 250.0), target=0.99, edgetpu=False,
                    analysis_factory=lambda: analysis, int16x8_factory=lambda: b"16x8", measure=measured.__getitem__)
    assert choice.chosen.mode == "int8+float-layers" and choice.chosen.float_layers == ("t0", "t1")
    assert [c.mode for c in choice.tried] == ["int8", "int8+float-layers", "int8+float-layers", "int16x8"]
    only_16x8 = choose("16x8", plain=_candidate("int8", 0.97, 250.0), target=0.99, edgetpu=False,
                       analysis_factory=lambda: analysis, int16x8_factory=lambda: b"16x8", measure=measured.__getitem__)
    assert only_16x8.chosen.mode == "int16x8"
    tpu = choose("auto", plain=_candidate("int8", 0.97, 250.0), target=0.99, edgetpu=True,
                 analysis_factory=lambda: analysis, int16x8_factory=lambda: b"16x8", measure=measured.__getitem__)
    assert tpu.chosen.mode == "int8" and "EdgeTPU" in tpu.note and "--int8-fallback 16x8" in tpu.note
    off = choose("off", plain=_candidate("int8", 0.97, 250.0), target=0.99, edgetpu=False,
                 analysis_factory=lambda: pytest.fail("off analyses nothing"), int16x8_factory=None, measure=None)
    assert off.chosen.mode == "int8" and off.tried == [off.chosen]


def test_none_reaching_the_target_keeps_plain_int8_and_says_the_best():
    analysis = _Analysis()
    analysis.layers = [type("L", (), {"tensor": "t0"})()]
    choice = choose("auto", plain=_candidate("int8", 0.95, 250.0), target=0.99, edgetpu=False,
                    analysis_factory=lambda: analysis, int16x8_factory=lambda: b"16x8",
                    measure={b"float:1": (0.96, 300.0), b"16x8": (0.97, 900.0)}.__getitem__)
    assert choice.chosen.mode == "int8" and "best int16x8 97.00%" in choice.note


def test_wrong_labels_fail_before_any_conversion(monkeypatch, tmp_path):
    """A wrong --labels is a one-line error in seconds, not after minutes of conversion."""
    import convert.convert as module

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "keras2" / "conv1d.h5"
    monkeypatch.setattr(module, "to_tflite", lambda *a, **k: pytest.fail("converted before checking --labels"))
    with pytest.raises(DataError, match="--labels: the model has 1 output"):
        convert(ConvertOptions(model=fixture, output=tmp_path / "o.tflite", quantize="float32",
                               labels=("a", "b", "c")))


def test_cli_refuses_an_unknown_fallback_and_a_target_out_of_range(tmp_path):
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "keras2" / "conv1d.h5"
    with pytest.raises(DataError, match="--agreement-target"):
        convert(ConvertOptions(model=fixture, output=tmp_path / "o.tflite", quantize="float32", agreement_target=1.5))
    with pytest.raises(DataError, match="--int8-fallback"):
        convert(ConvertOptions(model=fixture, output=tmp_path / "o.tflite", quantize="float32", int8_fallback="maybe"))


def test_tf_keras_separable_conv_keys_that_keras3_refuses_are_dropped():
    """tf.keras 2.3+ writes groups and kernel_* into SeparableConv2D configs; Keras 3 refused the whole file."""
    from convert.keras_io import legacy_h5_config

    separable = {"class_name": "SeparableConv2D", "config": {"name": "s", "filters": 16, "kernel_size": [3, 3], "groups": 1,
                                                             "kernel_initializer": {"class_name": "GlorotUniform"},
                                                             "kernel_regularizer": None, "kernel_constraint": None,
                                                             "depthwise_initializer": {"class_name": "GlorotUniform"}}}
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [separable]}}
    fixed = legacy_h5_config(config)["config"]["layers"][0]["config"]
    assert set(fixed) == {"name", "filters", "kernel_size", "depthwise_initializer"}
    assert "groups" in config["config"]["layers"][0]["config"]  # the input is left as it was
