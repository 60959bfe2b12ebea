"""A card that lies about its graph is refused at load: one line naming both sides, exit code 4.

Each lie sits beside a copy of the real shipped default model (int8 in, int8 out, one sigmoid
value); before, most of them loaded and then failed in the frame loop (IndexError, exit 1) or
scored nonsense. No TensorFlow needed. The face-crop shape check is in test_model.py (it needs a
face-crop graph, converted there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import paths
from edge.audio_features import audio_features
from edge.card import AudioSpec, load_card
from edge.errors import ModelError
from edge.model import TFLiteModel

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = paths.default_model()


def lying_model(folder: Path, base: Path = DEFAULT_MODEL, **changes) -> Path:
    """A copy of the ``base`` model with its card beside it, ``changes`` applied to the card's JSON."""
    card = json.loads(load_card(base).to_json())
    for key, value in changes.items():
        if "__" in key:
            outer, inner = key.split("__", 1)
            card[outer][inner] = {**card[outer][inner], **value} if isinstance(value, dict) else value
        else:
            card[key] = value
    model = folder / "lying.tflite"
    model.write_bytes(base.read_bytes())
    model.with_suffix(".json").write_text(json.dumps(card))
    return model


def test_the_shipped_default_model_and_card_agree():
    with TFLiteModel(DEFAULT_MODEL) as model:
        size = int(np.prod(model.card.input_shape))  # 10 frames x 140 face values
        assert model.probabilities([0.0] * size).shape == (2,)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output": "softmax", "labels": ["calm", "fussing", "crying"]},
         "the graph outputs 1 value, but its card's softmax over 3 labels needs 3"),
        ({"output": "softmax"}, "the graph outputs 1 value, but its card's softmax over 2 labels needs 2"),
        ({"quantization__output": {"dtype": "float32"}}, "the graph's output is int8, but its card's quantization says float32"),
        ({"quantization__input": {"dtype": "uint8"}}, "the graph's input is int8, but its card's quantization says uint8"),
    ],
)
def test_a_card_disagreeing_with_the_graph_output_or_tensor_types_is_refused_at_load(tmp_path, changes, message):
    with pytest.raises(ModelError) as refused:
        TFLiteModel(lying_model(tmp_path, **changes))
    assert str(refused.value) == f"model lying.tflite: {message}"
    assert refused.value.exit_code == 4


def test_a_positive_label_that_is_not_a_label_is_refused_however_the_card_was_made(tmp_path):
    with pytest.raises(ModelError, match="positive_label 'laughing' is not one of labels"):
        TFLiteModel(lying_model(tmp_path, positive_label="laughing"))
    # A card changed in code skips pydantic's validation; the model stage checks again.
    card = load_card(DEFAULT_MODEL).model_copy(update={"positive_label": "laughing"})
    with pytest.raises(ModelError, match=r"positive label 'laughing' is not one of its labels \['not_crying', 'crying'\]"):
        TFLiteModel(DEFAULT_MODEL, card=card)


def test_cryedge_run_refuses_the_lying_card_in_one_line_with_exit_code_4(tmp_path):
    model = lying_model(tmp_path, output="softmax", labels=["calm", "fussing", "crying"])
    config = tmp_path / "cryedge.toml"
    config.write_text(f'[model]\npath = "{model}"\n[health]\nenabled = false\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--fast", "--config", str(config)],
                         capture_output=True, text=True, timeout=180, cwd=REPO, env={**os.environ})
    errors = [line for line in out.stderr.splitlines() if line.startswith("cryedge: ")]
    assert out.returncode == 4, out.stderr
    assert errors == ["cryedge: model lying.tflite: the graph outputs 1 value, but its card's softmax over 3 labels needs 3"]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("field", "value"), [("mean", float("nan")), ("std", float("inf"))])
def test_an_audio_card_with_a_number_that_is_not_one_is_refused_at_load(tmp_path, field, value):
    """JSON written by Python spells NaN and Infinity, and a card took them: with its mean NaN the bundled audio
    model turned every sound into NaN features and scored 0.13 whatever it heard (the demo's cry too), deaf
    without a word."""
    model = lying_model(tmp_path, paths.bundled("models", "cry-audio-default.tflite"), **{f"audio__{field}": value})
    with pytest.raises(ModelError) as refused:
        TFLiteModel(model)
    assert str(refused.value) == f"model card {model.with_suffix('.json')}: audio.{field}: Input should be a finite number"


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_a_card_threshold_of_0_or_1_is_refused_at_load(tmp_path, threshold):
    """At 0 every score is at or above ON and none below OFF: an alarm from the first window that never ended; at
    1 the int8 model's top score (0.996) never reaches ON. [alarm] on_threshold refuses both; a card took them."""
    with pytest.raises(ModelError, match=r"threshold: Input should be (greater|less) than"):
        TFLiteModel(lying_model(tmp_path, threshold=threshold))


AUDIO_MODEL = paths.bundled("models", "cry-audio-default.tflite")  # 96 frames x 64 log-mel bands


@pytest.mark.parametrize(("audio", "message"), [
    ({"n_fft": 2 ** 40}, "audio.n_fft: Input should be less than or equal to 65536"),
    ({"features": "mfcc", "n_mfcc": 64, "mel_bands": 10 ** 7}, "audio.mel_bands: Input should be less than or equal to 1024"),
    ({"window_samples": 10 ** 10, "hop_length": (10 ** 10 - 400) // 95},
     "audio: window_samples 10000000000 at 16000 Hz is 625000 s; a score sees at most 60 s"),
    ({"hop_seconds": 1e-5}, "audio.hop_seconds: Input should be greater than or equal to 0.01"),
    ({"rate": 10 ** 9, "hop_seconds": 0.01, "window_samples": 10 ** 7, "hop_length": (10 ** 7 - 400) // 95},
     "audio.rate: Input should be less than or equal to 384000"),
])
def test_an_audio_card_whose_numbers_the_device_cannot_afford_is_refused_at_load(tmp_path, audio, message):
    """Each keeps the graph's 96 x 64 input, so the card loaded; then every window failed on the audio thread (a
    MemoryError: a 2**40-point FFT, a filterbank of 10 million bands), the monitor waited a week for its first
    window while its buffer grew, or invoked the model on every sample and fell behind the sound: deaf either way."""
    with pytest.raises(ModelError) as refused:
        TFLiteModel(lying_model(tmp_path, AUDIO_MODEL, **{f"audio__{key}": value for key, value in audio.items()}))
    assert str(refused.value) == f"model card {tmp_path / 'lying.json'}: {message}"
    assert refused.value.exit_code == 4


@pytest.mark.parametrize(("features", "message"), [
    ({"version": 2}, "its card's features are openpose-face70 version 2, this cryedge computes version 1 (a model made "
                     "for another cryedge: update cryedge on the device, or use a model made for this one)"),
    ({"spec": "openpose-face68"}, "its card's features are openpose-face68, which this cryedge does not compute "
                                  "(it knows openpose-face70-body8, openpose-face70, openpose-face70-body25)"),
])
def test_a_card_whose_landmark_features_this_cryedge_does_not_compute_is_refused_at_load(tmp_path, features, message):
    """A card's features.version was never read: a model trained on another version of the keypoints loaded and
    scored what this version computes, nonsense without a word. An unknown spec said 'unknown feature spec'
    without naming the model, as a config error (exit 3)."""
    with pytest.raises(ModelError) as refused:
        TFLiteModel(lying_model(tmp_path, features=features | {"spec": features.get("spec", "openpose-face70"),
                                                               "normalization": "face-box"}))
    assert str(refused.value) == f"model lying.tflite: {message}"
    assert refused.value.exit_code == 4


@pytest.mark.parametrize(("audio", "message"), [
    ({"mean": 1e300}, "audio.mean: 1e+300 is past float32's range (±3.4e+38), in which the features are computed"),
    ({"std": 1e300}, "audio.std: 1e+300 is outside float32's range (1.2e-38 to 3.4e+38), in which the features are computed"),
    ({"std": 1e-300}, "audio.std: 1e-300 is outside float32's range (1.2e-38 to 3.4e+38), in which the features are computed"),
    ({"amin": 1e-300}, "audio.amin: 1e-300 is outside float32's range (1.2e-38 to 3.4e+38), in which the features are computed"),
    ({"log": "ln-offset", "log_offset": 1e300},
     "audio.log_offset: 1e+300 is outside float32's range (1.2e-38 to 3.4e+38), in which the features are computed"),
    ({"mean": 1e36, "std": 0.001}, "audio: normalization 'fixed' with mean 1e+36 and std 0.001 takes features past "
                                   "float32's range (±3.4e+38), in which they are computed"),
])
def test_an_audio_card_number_past_float32_is_refused_at_load(tmp_path, audio, message):
    """Finite as Python floats, these loaded; the front end computes in float32, where each became inf or 0: the
    bundled audio model then saw inf or NaN features for every sound (amin 1e-300: -inf dB at every silent
    frame), or 0 for every sound (std 1e300), deaf without a word."""
    model = lying_model(tmp_path, AUDIO_MODEL, **{f"audio__{key}": value for key, value in audio.items()})
    card = json.loads(model.with_suffix(".json").read_text())["audio"]
    spec = AudioSpec.model_construct(**card)  # what the old card check let through, computed as the device does
    sound = np.r_[np.zeros(8000), 0.5 * np.sin(np.arange(7600) * 0.2)].astype(np.float32)
    with np.errstate(all="ignore"):
        features = audio_features(sound, spec)
    assert not np.isfinite(features).all() or not features.any()
    with pytest.raises(ModelError) as refused:
        TFLiteModel(model)
    assert str(refused.value) == f"model card {model.with_suffix('.json')}: {message}"
    assert refused.value.exit_code == 4


def test_cryedge_run_refuses_an_audio_card_past_float32_in_one_line_with_exit_code_4(tmp_path):
    model = lying_model(tmp_path, AUDIO_MODEL, audio__mean=1e300)
    config = tmp_path / "cryedge.toml"
    config.write_text(f'[audio]\nmodel = "{model}"\n[health]\nenabled = false\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--fast", "--config", str(config), "--source", "none",
                          "--audio-source", str(paths.data_file("demo.mp4"))],
                         capture_output=True, text=True, timeout=180, cwd=REPO, env={**os.environ})
    assert out.returncode == 4, out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("cryedge: ")] == [
        f"cryedge: model card {model.with_suffix('.json')}: audio.mean: 1e+300 is past float32's range (±3.4e+38), "
        f"in which the features are computed"]
    assert "Traceback" not in out.stderr
