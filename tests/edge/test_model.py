"""The model stage on real TFLite graphs, converted here from small Keras models.

The Keras models are untrained (random weights, seeded): these tests check that the runtime feeds
and reads the graph exactly as Keras would, not what the model has learnt.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from edge.card import ModelCard, load_card
from edge.errors import ModelError
from edge.model import TFLiteModel, WindowScorer, dequantize, quantize

tf = pytest.importorskip("tensorflow")

WINDOW, FEATURES = 10, 156


def card_for(name, input_shape, kind="landmark-window", output="sigmoid", labels=("not_crying", "crying"), **extra):
    data = dict(name=name, kind=kind, input_shape=list(input_shape), labels=list(labels), positive_label=labels[-1],
                output=output, window=WINDOW, **extra)
    if kind == "landmark-window":
        data["features"] = {"spec": "openpose-face70-body8", "normalization": "minmax"}
    return ModelCard.model_validate(data)


def convert(keras_model, path, int8_samples=None):
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if int8_samples is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s[None]] for s in int8_samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def window_models(tmp_path_factory):
    """A Conv1D window model as float32 and full-int8 TFLite, with cards beside them."""
    folder = tmp_path_factory.mktemp("models")
    tf.keras.utils.set_random_seed(1)
    inputs = tf.keras.Input((WINDOW, FEATURES), batch_size=1)
    x = tf.keras.layers.Conv1D(8, 2, activation="relu")(inputs)
    x = tf.keras.layers.GlobalAveragePooling1D()(x)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid")(x)
    keras_model = tf.keras.Model(inputs, outputs)
    samples = np.random.default_rng(0).uniform(0, 1, (64, WINDOW, FEATURES)).astype(np.float32)
    paths = {}
    for name, calibration in (("float32", None), ("int8", samples)):
        path = convert(keras_model, folder / f"conv1d-{name}.tflite", calibration)
        path.with_suffix(".json").write_text(card_for(f"conv1d-{name}", (1, WINDOW, FEATURES)).to_json())
        paths[name] = path
    return keras_model, samples, paths


def test_float_model_scores_like_keras(window_models):
    keras_model, samples, paths = window_models
    with TFLiteModel(paths["float32"]) as model:
        for window in samples[:8]:
            expected = float(keras_model(window[None]).numpy()[0, 0])
            probabilities = model.probabilities(window)
            assert probabilities[1] == pytest.approx(expected, abs=1e-5)
            assert probabilities.sum() == pytest.approx(1.0)


def test_int8_model_is_fed_and_read_through_its_quantization(window_models):
    keras_model, samples, paths = window_models
    with TFLiteModel(paths["int8"]) as model:
        assert model.input_dtype == np.int8
        got = np.array([model.probabilities(w)[1] for w in samples])
    expected = keras_model(samples).numpy()[:, 0]
    assert np.abs(got - expected).max() < 0.05


def test_scorer_returns_the_positive_class_probability_with_its_time(window_models):
    _, samples, paths = window_models
    with TFLiteModel(paths["float32"]) as model:
        score = WindowScorer(model).score(samples[0], t=12.5, face_seen=True)
    assert score.t == 12.5 and score.face_seen
    assert score.probability == pytest.approx(score.probabilities[1])
    assert 0.0 <= score.probability <= 1.0


def test_model_whose_card_disagrees_with_its_input_is_refused(window_models, tmp_path):
    _, _, paths = window_models
    model_path = tmp_path / "m.tflite"
    model_path.write_bytes(paths["float32"].read_bytes())
    model_path.with_suffix(".json").write_text(card_for("m", (1, 20, FEATURES)).to_json())
    with pytest.raises(ModelError, match=r"input shape \[1, 10, 156\] disagrees with its card \[1, 20, 156\]"):
        TFLiteModel(model_path)


def test_card_describing_other_features_than_the_input_holds_is_refused(window_models, tmp_path):
    _, _, paths = window_models
    model_path = tmp_path / "m.tflite"
    model_path.write_bytes(paths["float32"].read_bytes())
    card = json.loads(card_for("m", (1, WINDOW, FEATURES)).to_json())
    card["features"]["spec"] = "openpose-face70-body25"
    model_path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="openpose-face70-body25"):
        TFLiteModel(model_path)


def test_missing_model_or_card_is_a_clear_error(window_models, tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        TFLiteModel(tmp_path / "nothing.tflite")
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(window_models[2]["float32"].read_bytes())
    with pytest.raises(ModelError, match="has no card"):
        load_card(bare)


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a flatbuffer at all" * 10)
    bogus.with_suffix(".json").write_text(card_for("bogus", (1, WINDOW, FEATURES)).to_json())
    with pytest.raises(ModelError, match="cannot load model"):
        TFLiteModel(bogus)


def test_input_of_the_wrong_size_is_refused(window_models):
    with TFLiteModel(window_models[2]["float32"]) as model:
        with pytest.raises(ModelError, match="expects shape"):
            model.probabilities(np.zeros((9, FEATURES), np.float32))


def test_edgetpu_missing_falls_back_to_the_cpu_with_one_log_line(window_models, caplog):
    with TFLiteModel(window_models[2]["int8"], edgetpu="usb") as model:
        assert model.delegate_name == "cpu"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "EdgeTPU" in warnings[0].getMessage()


def test_quantize_saturates_and_round_trips():
    q = quantize(np.array([-10.0, 0.0, 0.5, 10.0]), np.dtype(np.int8), scale=1 / 100, zero_point=-128)
    assert list(q) == [-128, -128, -78, 127]
    np.testing.assert_allclose(dequantize(q, 1 / 100, -128), [0.0, 0.0, 0.5, 2.55])


def test_runs_without_tensorflow(window_models):
    """The device has no TensorFlow: block its import and load the int8 model through LiteRT."""
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import numpy as np\n"
        "from edge.model import TFLiteModel\n"
        f"m = TFLiteModel({str(window_models[2]['int8'])!r})\n"
        "print(m.runtime.name, round(float(m.probabilities(np.zeros((10, 156), np.float32))[1]), 3))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ai_edge_litert ")


@pytest.fixture(scope="module")
def face_crop_model(tmp_path_factory):
    """A 48x48 grey 7-class CNN, as the related emotion work used, converted to float TFLite."""
    folder = tmp_path_factory.mktemp("facecrop")
    tf.keras.utils.set_random_seed(2)
    keras_model = tf.keras.Sequential([
        tf.keras.Input((48, 48, 1), batch_size=1),
        tf.keras.layers.Conv2D(4, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(7, activation="softmax"),
    ])
    path = convert(keras_model, folder / "emotion.tflite")
    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "crying")
    card = card_for("emotion", (1, 48, 48, 1), kind="face-crop", output="softmax", labels=labels,
                    face_crop={"height": 48, "width": 48, "channels": 1, "aggregate": "mean"})
    path.with_suffix(".json").write_text(card.to_json())
    return keras_model, path


def test_face_crop_scores_are_the_mean_over_frames_with_a_face(face_crop_model):
    keras_model, path = face_crop_model
    crops = np.random.default_rng(3).integers(0, 255, (10, 48, 48, 1), dtype=np.uint8)
    with_face = np.array([True] * 6 + [False] * 4)
    with TFLiteModel(path) as model:
        score = WindowScorer(model).score(crops, t=1.0, face_seen=True, frames_with_face=with_face)
    expected = keras_model(crops[:6].astype(np.float32) / 255).numpy().mean(axis=0)
    np.testing.assert_allclose(score.probabilities, expected, atol=1e-5)
    assert score.probability == pytest.approx(expected[6], abs=1e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"face_crop": {"height": 24, "width": 96}}, "the graph takes 48x48x1 face crops, but its card describes 24x96x1"),
        ({"face_crop": {"height": 48, "width": 16, "channels": 3}}, "the graph takes 48x48x1 face crops, but its card describes 48x16x3"),
        ({"output": "sigmoid", "labels": ["calm", "crying"], "positive_label": "crying"},
         "the graph outputs 7 values, but its card's sigmoid output needs 1"),
        ({"labels": ["calm", "crying"], "positive_label": "crying"}, "the graph outputs 7 values, but its card's softmax over 2 labels needs 2"),
    ],
)
def test_a_face_crop_card_disagreeing_with_its_graph_is_refused_at_load(face_crop_model, tmp_path, changes, message):
    """Same number of input values, other crop: before, it loaded and scored reshaped nonsense."""
    _, path = face_crop_model
    card = json.loads(path.with_suffix(".json").read_text())
    for key, value in changes.items():
        card[key] = {**card[key], **value} if isinstance(value, dict) else value
    lying = tmp_path / "lying.tflite"
    lying.write_bytes(path.read_bytes())
    lying.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError) as refused:
        TFLiteModel(lying)
    assert str(refused.value) == f"model lying.tflite: {message}"


def test_vision_status_says_which_required_part_is_missing_from_most_of_the_window():
    from edge.model import vision_status

    faces, bodies = np.ones(10, bool), np.ones(10, bool)
    assert vision_status(faces, bodies, 100.0, ("face", "body")) == "ok"
    no_newest = faces.copy()
    no_newest[-1] = False
    assert vision_status(no_newest, bodies, 100.0, ("face",)) == "no_face"
    mostly_none = np.array([True] * 4 + [False] * 5 + [True])
    assert vision_status(mostly_none, bodies, 100.0, ("face",)) == "no_face"
    assert vision_status(mostly_none, bodies, 5.0, ("face",)) == "too_dark"
    few_bodies = np.array([True] * 3 + [False] * 7)
    assert vision_status(faces, few_bodies, 100.0, ("face", "body")) == "no_body"
    assert vision_status(faces, few_bodies, 100.0, ("face",)) == "ok"  # a model that copes without a body
