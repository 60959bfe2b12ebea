"""Every zoo architecture, trained briefly on SYNTHETIC separable data, converts to all-int8 and agrees with Keras.

The data are synthetic (convert.zoo.synthetic_windows / synthetic_faces): the figures say the
conversion is faithful, not that any model detects crying.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from isolated import run_python  # tests/ is on sys.path (rootdir conftest)

from convert import zoo
from convert.convert import ConvertOptions, check_graph, convert
from convert.report import inspect_graph
from edge.card import load_card
from edge.errors import ConfigError

pytestmark = [pytest.mark.tensorflow]


def train_and_save(name: str, folder: Path) -> None:
    """Write FOLDER/NAME.keras and FOLDER/NAME.npz: 240 training samples, 6 epochs; 400 other samples calibrate and test.

    Trained until its scores are confident, as a model worth deploying is: a barely trained model
    scores near 0.5 where one int8 step flips a label, which measures the training, not the conversion.
    """
    import keras

    keras.utils.set_random_seed(7)  # a run is repeatable; the bound must hold for any seed, not a lucky one
    model = zoo.build(name)
    shape = tuple(model.input_shape[1:])
    if name in zoo.FACE_CROP:
        classes = int(model.output_shape[-1]) if model.output_shape[-1] > 1 else 2
        x, y = zoo.synthetic_faces(640, *shape, classes=classes, seed=11)
    else:
        x, y = zoo.synthetic_windows(640, seed=11)
        x = x.reshape((len(x), *shape))
    loss = "sparse_categorical_crossentropy" if model.output_shape[-1] > 1 else "binary_crossentropy"
    model.compile(optimizer="adam", loss=loss)
    model.fit(x[:240], y[:240], epochs=6, batch_size=32, verbose=0)
    model.save(folder / f"{name}.keras")
    np.savez(folder / f"{name}.npz", x=x[240:], y=y[240:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Every zoo architecture trained in one child process (tests/isolated.py): the folder of models and data."""
    folder = tmp_path_factory.mktemp("zoo")
    run_python(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
               f"from pathlib import Path\nfrom test_zoo import train_and_save\n"
               f"for name in {zoo.ARCHITECTURES!r}:\n    train_and_save(name, Path({str(folder)!r}))\n")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.ARCHITECTURES)
def test_zoo_architecture_converts_to_all_int8_with_99_percent_agreement(name, trained, tmp_path):
    model_path, data = trained / f"{name}.keras", trained / f"{name}.npz"
    report = convert(ConvertOptions(model=model_path, output=tmp_path / f"{name}.tflite", calibration=str(data)))
    graph = inspect_graph((tmp_path / f"{name}.tflite").read_bytes())
    assert check_graph(graph, "int8") == []
    assert report.fidelity["samples"] == 100  # the last quarter of 400 held out
    assert report.fidelity["label_agreement"] >= 0.99, report.fidelity
    card = load_card(tmp_path / f"{name}.tflite")
    assert card.kind == ("face-crop" if name in zoo.FACE_CROP else "landmark-window")


def test_builders_take_window_and_feature_sizes():
    for name in zoo.LANDMARK_WINDOW:
        model = zoo.build(name, window=20, features=190)
        values = int(np.prod(model.input_shape[1:]))
        assert values == 20 * 190, name
        assert model.output_shape == (None, 1)
    assert zoo.build("conv2d").input_shape == (None, 40, 39, 1)
    assert zoo.build("emotion-cnn").output_shape == (None, 7)
    assert zoo.build("smile-cnn").input_shape == (None, 64, 64, 1)


def test_original_architectures_have_the_published_layers():
    layers = [type(layer).__name__ for layer in zoo.build("lstm3").layers]
    assert layers == ["Dense", "LSTM", "LSTM", "LSTM", "Dense"]
    units = [layer.units for layer in zoo.build("lstm3").layers]
    assert units == [128, 128, 64, 64, 1]
    conv2d = [type(layer).__name__ for layer in zoo.build("conv2d").layers]
    assert conv2d.count("Conv2D") == 6 and conv2d.count("MaxPooling2D") == 3
    assert [layer.units for layer in zoo.build("conv2d").layers if type(layer).__name__ == "Dense"] == [1024, 1024, 1]


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ConfigError, match="dense-lstm"):
        zoo.build("resnet")


def test_synthetic_data_is_deterministic_and_labelled_balanced():
    x1, y1 = zoo.synthetic_windows(100, seed=3)
    x2, y2 = zoo.synthetic_windows(100, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert y1.sum() == 50 and x1.min() >= 0 and x1.max() <= 1
    faces, labels = zoo.synthetic_faces(70, 48, 48, 1, classes=7)
    assert faces.shape == (70, 48, 48, 1) and np.bincount(labels).tolist() == [10] * 7


def test_audio_cnn_reads_pitch_channels_in_a_branch_of_their_own_and_the_log_mel_as_before():
    """Appended to the log-mel image, the pitch channels were read by the spectrum's own 3x3 filters and
    pooled with it; with ``pitch`` they are cut off into convolutions of their own."""
    import keras

    plain = zoo.build("audio-cnn", window=96, features=64)
    assert isinstance(plain, keras.Sequential) and plain.count_params() == 15137  # the default model's, unchanged
    model = zoo.build("audio-cnn", window=96, features=100, pitch=36)
    assert model.input_shape == (None, 96, 100)
    widths = sorted(layer.output.shape[2] for layer in model.layers if isinstance(layer, keras.layers.Cropping2D))
    assert widths == [36, 64]
    x = np.random.default_rng(0).standard_normal((2, 96, 100)).astype(np.float32)
    changed = x.copy()
    changed[:, :, 64:] += 3.0  # the pitch channels alone
    assert not np.allclose(model.predict(x, verbose=0), model.predict(changed, verbose=0))


def test_audio_cnn_time_head_keeps_the_frequency_bins_and_the_default_head_is_the_default_models():
    """The default head averages the last maps over time and frequency; ``head="time"`` over time only, so the
    dense head sees each of the 8 frequency bins (where in the spectrum energy sits) but not where in the patch."""
    import keras

    plain = zoo.build("audio-cnn", window=96, features=64)
    assert [type(layer).__name__ for layer in plain.layers][-4:] == ["GlobalAveragePooling2D", "Dense", "Dropout", "Dense"]
    assert plain.count_params() == zoo.build("audio-cnn", window=96, features=64, head="global").count_params() == 15137
    model = zoo.build("audio-cnn", window=96, features=64, head="time")
    assert not any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in model.layers)
    pooled = next(layer for layer in model.layers if isinstance(layer, keras.layers.AveragePooling2D))
    assert tuple(pooled.output.shape[1:]) == (1, 8, 32)  # 12 time steps averaged, 8 frequency bins x 32 channels kept
    assert model.count_params() == 15137 + (8 - 1) * 32 * 32
    # what reaches the dense head: a change high in the spectrum (bands 48-63) reaches the time head's low
    # frequency bins (0-3: bands 0-38 with the convolutions' reach) not at all, and every global average
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 96, 64)).astype(np.float32)
    high = x.copy()
    high[:, :, 48:] += rng.standard_normal((2, 96, 16)).astype(np.float32) * 3
    for net, changed_low in ((plain, True), (model, False)):
        pooled = keras.Model(net.inputs, net.layers[-4].output)
        before, after = pooled.predict(x, verbose=0).reshape(2, -1), pooled.predict(high, verbose=0).reshape(2, -1)
        low = slice(0, 4 * 32) if net is model else slice(None)  # (bin, channel) row-major after Flatten
        assert np.allclose(before[:, low], after[:, low]) != changed_low
        assert not np.allclose(before, after)
    with_pitch = zoo.build("audio-cnn", window=96, features=100, pitch=36, head="time")
    assert with_pitch.count_params() > zoo.build("audio-cnn", window=96, features=100, pitch=36).count_params()
    with pytest.raises(ConfigError, match="global, time"):
        zoo.build("audio-cnn", window=96, features=64, head="frequency")
