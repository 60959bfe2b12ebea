"""Small real TFLite audio models built here with TensorFlow, for tests (model hubs are unreachable).

``yamnet_signature_model`` has YAMNet's classification signature (a bare float32 [15600] waveform in,
[1, 521] AudioSet scores out); it is not YAMNet: it scores "Baby cry, infant cry" (index 20) high when a
window holds a loud tone between 300 and 700 Hz, and every other class low. Enough to drive the whole
path (capture, window, model, fusion, alarm) with sound whose answer is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

YAMNET_SAMPLES = 15600
YAMNET_CLASSES = 521
BABY_CRY = 20  # yamnet_class_map.csv: 20 "Baby cry, infant cry" (19 "Crying, sobbing")


def cry_band_basis(samples: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A bank of quadrature tones over 300-700 Hz (the energy in the band whatever the phase), and the one-hot
    row of "Baby cry, infant cry" among ``classes``."""
    freqs = np.arange(300, 701, 25, dtype=np.float32)
    t = np.arange(samples, dtype=np.float32) / 16000.0
    basis = np.concatenate([np.cos(2 * np.pi * freqs[None, :] * t[:, None]),
                            np.sin(2 * np.pi * freqs[None, :] * t[:, None])], axis=1) / samples
    one_hot = np.zeros((1, classes), np.float32)
    one_hot[0, BABY_CRY] = 1.0
    return basis, one_hot


def write_model(path: Path, model, card: dict | None) -> Path:
    """The tf.function ``model`` converted to TFLite at ``path``, with ``card`` beside it; returns ``path``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    Path(path).write_bytes(converter.convert())
    if card is not None:
        Path(path).with_suffix(".json").write_text(json.dumps(card))
    return Path(path)


def yamnet_signature_model(path: Path, samples: int = YAMNET_SAMPLES, classes: int = YAMNET_CLASSES,
                           batchless: bool = True, card: dict | None = None) -> Path:
    """Write the model to ``path`` and, with ``card``, its card beside it; returns ``path``."""
    import tensorflow as tf

    basis, one_hot = cry_band_basis(samples, classes)

    shape = [samples] if batchless else [1, samples]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="waveform")])
    def model(waveform):
        x = tf.reshape(waveform, [1, samples])
        power = tf.reduce_sum(tf.square(tf.matmul(x, basis)), axis=1, keepdims=True)  # [1, 1]
        db = 10.0 * tf.math.log(power + 1e-12) / tf.math.log(10.0)
        cry = tf.sigmoid((db + 40.0) / 3.0)  # a tone above about -40 dB in the band
        return cry * one_hot + (1.0 - one_hot) * 0.01

    return write_model(path, model, card)


def yamnet_full_graph_model(path: Path, card: dict | None = None) -> Path:
    """The shape of YAMNet's full graph: a waveform of any length ([-1]) in; per 0.48 s patch 521 scores,
    1024 embeddings, and a 64-band spectrogram out. Class 20 answers as ``yamnet_signature_model``'s does."""
    import tensorflow as tf

    basis, one_hot = cry_band_basis(YAMNET_SAMPLES, YAMNET_CLASSES)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
    def model(waveform):
        x = tf.reshape(waveform[:YAMNET_SAMPLES], [1, YAMNET_SAMPLES])
        power = tf.reduce_sum(tf.square(tf.matmul(x, basis)), axis=1, keepdims=True)
        cry = tf.sigmoid((10.0 * tf.math.log(power + 1e-12) / tf.math.log(10.0) + 40.0) / 3.0)
        scores = cry * one_hot + (1.0 - one_hot) * 0.01
        return scores, tf.zeros([1, 1024]) + power, tf.zeros([96, 64]) + power

    return write_model(path, model, card)


def yamnet_card(name: str = "yamnet-test", **audio) -> dict:
    return {
        "name": name, "kind": "audio-waveform", "input_shape": [YAMNET_SAMPLES],
        "labels": ["not_crying", "crying"], "positive_label": "crying", "output": "multilabel", "threshold": 0.5,
        "audio": {"rate": 16000, "window_samples": YAMNET_SAMPLES, "hop_seconds": 0.5, "classes": YAMNET_CLASSES,
                  "cry_classes": [BABY_CRY], "cry_class_names": ["Baby cry, infant cry"], **audio},
    }


def tone(seconds: float, hz: float, level: float = 0.3, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)


def alsa_stand_in(tmp_path, monkeypatch, seconds: float = 3.0, hz: float = 440.0):
    """Point ALSA (``$ALSA_CONFIG_PATH``) at a config with a capture PCM named ``mic``: a stand-in microphone.

This machine has no sound card and no snd-aloop module. ALSA's ``file`` PCM over ``null`` reads its
capture data from a raw 48 kHz stereo s16 file (``infile``); a ``plug`` in front converts it as a USB
microphone's ``plughw`` would. Unlike a microphone it is not paced in real time.
"""
    raw = tmp_path / "mic.raw"
    t = np.arange(int(seconds * 48000)) / 48000
    stereo = np.repeat((0.25 * np.sin(2 * np.pi * hz * t))[:, None], 2, axis=1)
    (stereo * 32767).astype("<i2").tofile(raw)
    conf = tmp_path / "alsa.conf"
    conf.write_text(open("/usr/share/alsa/alsa.conf").read() + f"""
pcm.micfile {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; format "raw" }}
pcm.mic {{ type plug; slave {{ pcm "micfile"; rate 48000; channels 2; format S16_LE }} }}
""")
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    return raw


def faulty_model(path: Path, fault: str, card: dict | None = None) -> Path:
    """``yamnet_signature_model`` that fails at run time on a loud window (its peak above 0.5), as a model can on
    the device: ``fault="raise"``: the interpreter's invoke fails (a GATHER index out of bounds, LiteRT's
    RuntimeError); ``fault="nan"``: it returns NaN scores (0/0). Quieter windows score as the working model does."""
    import tensorflow as tf

    basis, one_hot = cry_band_basis(YAMNET_SAMPLES, YAMNET_CLASSES)
    rows = tf.constant(np.ones((1, YAMNET_CLASSES), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([YAMNET_SAMPLES], tf.float32, name="waveform")])
    def model(waveform):
        x = tf.reshape(waveform, [1, YAMNET_SAMPLES])
        power = tf.reduce_sum(tf.square(tf.matmul(x, basis)), axis=1, keepdims=True)
        cry = tf.sigmoid((10.0 * tf.math.log(power + 1e-12) / tf.math.log(10.0) + 40.0) / 3.0)
        scores = cry * one_hot + (1.0 - one_hot) * 0.01
        peak = tf.reduce_max(tf.abs(waveform))
        if fault == "nan":
            return scores * tf.sqrt(0.5 - peak) / tf.sqrt(0.5 - peak)  # NaN above 0.5
        return scores * tf.gather(rows, tf.reshape(tf.cast(peak * 2.0, tf.int32), [1]))  # row 1 of one: out of bounds above 0.5

    return write_model(path, model, card)
