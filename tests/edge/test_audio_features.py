"""The audio front end: the numbers a model sees, and that the card decides them."""

from __future__ import annotations

import numpy as np
import pytest
from audio_models import tone

from edge.audio_features import audio_features, hz_to_mel, log_mel, mel_to_hz
from edge.card import AudioSpec, card_from_dict
from edge.errors import ModelError

RNG = np.random.default_rng(7)
NOISE = (0.1 * RNG.standard_normal(15600)).astype(np.float32)


def test_a_window_gives_the_frames_the_card_promises():
    spec = AudioSpec()
    assert spec.frames == 96  # YAMNet's patch: 15,600 samples, 25 ms frames every 10 ms
    assert audio_features(NOISE, spec).shape == (96, 64)
    assert audio_features(NOISE, AudioSpec(features="mfcc", n_mfcc=13)).shape == (96, 13)


@pytest.mark.parametrize("hz", [300.0, 1000.0, 4000.0])
def test_a_tone_lights_the_band_that_holds_it(hz):
    spec = AudioSpec(fmin=0, fmax=8000)
    bands = log_mel(tone(0.975, hz), spec).mean(axis=0)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0, "slaney"), hz_to_mel(8000.0, "slaney"), 66), "slaney")
    peak = int(np.argmax(bands))
    assert edges[peak] <= hz <= edges[peak + 2]  # band k spans edges k .. k + 2
    assert bands.max() - np.median(bands) > 30  # dB above the rest


def test_silence_sits_on_the_floor_the_card_names():
    silence = np.zeros(15600, np.float32)
    assert np.allclose(log_mel(silence, AudioSpec()), -100.0)  # amin 1e-10 -> -100 dB
    assert np.allclose(log_mel(silence, AudioSpec(log="ln-offset", log_offset=0.01)), np.log(0.01))


def test_every_card_parameter_changes_the_features():
    base = audio_features(NOISE, AudioSpec())
    for change in ({"mel_scale": "htk"}, {"fmin": 60.0}, {"fmax": 7000.0}, {"amin": 1e-3}, {"n_fft": 1024},
                   {"log": "ln-offset"}, {"normalization": "fixed", "mean": -30.0, "std": 20.0}):
        other = audio_features(NOISE, AudioSpec(**change))
        assert other.shape != base.shape or not np.allclose(other, base), change


def test_normalization_fixed_uses_the_training_statistics():
    raw = audio_features(NOISE, AudioSpec())
    fixed = audio_features(NOISE, AudioSpec(normalization="fixed", mean=-40.0, std=10.0))
    np.testing.assert_allclose(fixed, (raw + 40.0) / 10.0, rtol=1e-5, atol=1e-5)
    patch = audio_features(NOISE, AudioSpec(normalization="patch"))
    assert abs(patch.mean()) < 1e-4 and abs(patch.std() - 1) < 1e-3


@pytest.mark.parametrize("audio, message", [
    ({"fmax": 9000.0}, "Nyquist"),
    ({"fmin": 8000.0, "fmax": 7000.0}, "fmin must be below fmax"),
    ({"win_length": 600}, "win_length must not exceed n_fft"),
    ({"features": "mfcc", "n_mfcc": 80}, "n_mfcc"),
])
def test_an_impossible_front_end_is_refused_with_the_reason(audio, message):
    card = {"name": "a", "kind": "audio-window", "input_shape": [1, 96, 64, 1], "labels": ["no", "yes"],
            "positive_label": "yes", "output": "sigmoid", "audio": audio}
    with pytest.raises(ModelError, match=message):
        card_from_dict(card)


@pytest.mark.parametrize("spec", [
    AudioSpec(),
    AudioSpec(mel_scale="htk", mel_bands=40, fmin=0.0, fmax=8000.0),
    AudioSpec(features="mfcc", n_mfcc=20),
    AudioSpec(rate=22050, window_samples=22050, win_length=512, hop_length=256, n_fft=1024, mel_bands=128,
              fmin=0.0, fmax=11025.0),
])
def test_features_agree_with_librosa(spec):
    """The device's numpy front end against librosa (dev extra only; never on the device).

    librosa frames n_fft samples and windows their middle; ours frames win_length samples. Padding
    librosa's input by (n_fft - win_length) / 2 each side lines the frames up.
    """
    librosa = pytest.importorskip("librosa")
    x = (0.1 * np.random.default_rng(1).standard_normal(spec.window_samples)).astype(np.float32)
    pad = (spec.n_fft - spec.win_length) // 2
    power = librosa.feature.melspectrogram(
        y=np.pad(x, (pad, spec.n_fft - spec.win_length - pad)), sr=spec.rate, n_fft=spec.n_fft,
        hop_length=spec.hop_length, win_length=spec.win_length, window="hann", center=False, power=2.0,
        n_mels=spec.mel_bands, fmin=spec.fmin, fmax=spec.fmax, htk=spec.mel_scale == "htk",
        norm="slaney" if spec.mel_scale == "slaney" else None)
    expected = librosa.power_to_db(power, ref=1.0, amin=spec.amin, top_db=None)
    if spec.features == "mfcc":
        expected = librosa.feature.mfcc(S=expected, n_mfcc=spec.n_mfcc)
    ours = audio_features(x, spec)
    assert ours.shape == expected.T.shape
    np.testing.assert_allclose(ours, expected.T, atol=1e-3)
