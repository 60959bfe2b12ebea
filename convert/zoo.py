"""The model zoo: the original work's architectures, each buildable for any window and feature size.

Each builder takes ``(window, features)`` (or ``(height, width, channels)`` for face-crop models)
and returns an uncompiled Keras model. The layer calls used here exist in Keras 2.3 as well as in
Keras 3, and this module keeps to Python 3.7 syntax, so ``convert/fixtures/make_keras2_fixtures.py``
builds the genuine Keras-2 fixtures from these same definitions (pass ``keras=`` the old module).
"""

from __future__ import annotations

import math

import numpy as np

from edge.errors import ConfigError


def _keras(keras):
    if keras is None:
        import keras  # noqa: PLW0621 - Keras 3 by default; the fixture script passes Keras 2.3

    return keras


def _input_layer(keras, shape):
    """Keras 3: an InputLayer for ``shape`` (no batch). Keras 2: nothing, see ``_first``."""
    if int(keras.__version__.split(".")[0]) >= 3:
        return [keras.layers.InputLayer(shape=tuple(shape))]
    return []


def _first(keras, shape):
    """Keyword arguments of a Sequential model's first layer.

    Keras 2 users wrote ``Dense(32, input_shape=...)``, saved as ``batch_input_shape`` in the first
    layer's config (Keras 2.3 drops a Sequential's InputLayer from the saved config altogether).
    """
    if int(keras.__version__.split(".")[0]) >= 3:
        return {}
    return {"input_shape": tuple(shape)}


def image_shape_for(window: int, features: int) -> tuple[int, int]:
    """(H, W) that a window of ``window`` x ``features`` values is reshaped to for the Conv2D model.

    The original reshaped 10 x 156 to 40 x 39; for other sizes, the factor pair nearest to square.
    """
    total = window * features
    if total == 1560:
        return 40, 39
    height = int(math.sqrt(total))
    while total % height:
        height -= 1
    return total // height, height


def dense_lstm(window: int, features: int, keras=None, units: int = 32):
    """Dense(32) + LSTM(32) + sigmoid: the smallest seed model."""
    keras = _keras(keras)
    layers = keras.layers
    return keras.Sequential(
        [
            *_input_layer(keras, (window, features)),
            layers.Dense(units, activation="relu", **_first(keras, (window, features))),
            layers.LSTM(units),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="dense_lstm",
    )


def lstm2(window: int, features: int, keras=None, units: int = 64):
    """Dense(64) + LSTM(64, sequences) + Dropout + LSTM(64) + sigmoid."""
    keras = _keras(keras)
    layers = keras.layers
    return keras.Sequential(
        [
            *_input_layer(keras, (window, features)),
            layers.Dense(units, activation="relu", **_first(keras, (window, features))),
            layers.LSTM(units, return_sequences=True),
            layers.Dropout(0.2),
            layers.LSTM(units),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="lstm2",
    )


def conv1d(window: int, features: int, keras=None, filters: int = 64, dense: int = 50):
    """Conv1D(64, k=2) + MaxPool + Dense(50) + sigmoid."""
    keras = _keras(keras)
    layers = keras.layers
    return keras.Sequential(
        [
            *_input_layer(keras, (window, features)),
            layers.Conv1D(filters, kernel_size=2, activation="relu", **_first(keras, (window, features))),
            layers.MaxPooling1D(pool_size=2),
            layers.Flatten(),
            layers.Dense(dense, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="conv1d",
    )


def conv2d(window: int, features: int, keras=None, filters: int = 32, dense: int = 1024):
    """The window as a one-channel image (10 x 156 -> 40 x 39 x 1), 3 double-Conv2D blocks, Dense(1024) x 2.

    The model's input is the image; the runtime reshapes the (window, features) values to it,
    which is a plain reshape of the same row-major values (the card's input_shape says which).
    """
    keras = _keras(keras)
    layers = keras.layers
    height, width = image_shape_for(window, features)
    stack = [*_input_layer(keras, (height, width, 1))]
    first = _first(keras, (height, width, 1))
    for block in range(3):
        n = filters * 2**block
        stack += [
            layers.Conv2D(n, 3, padding="same", activation="relu", **first),
            layers.Conv2D(n, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
        ]
        first = {}
    stack += [
        layers.Flatten(),
        layers.Dense(dense, activation="relu"),
        layers.Dense(dense, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ]
    return keras.Sequential(stack, name="conv2d")


def lstm3(window: int, features: int, keras=None):
    """The original repository's Dense(128) + LSTM(128) + LSTM(64) + LSTM(64) + sigmoid."""
    keras = _keras(keras)
    layers = keras.layers
    return keras.Sequential(
        [
            *_input_layer(keras, (window, features)),
            layers.Dense(128, activation="relu", **_first(keras, (window, features))),
            layers.LSTM(128, return_sequences=True),
            layers.LSTM(64, return_sequences=True),
            layers.LSTM(64),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="lstm3",
    )


def _face_cnn(height: int, width: int, channels: int, outputs: int, activation: str, name: str, keras, filters: int,
              dense: int):
    keras = _keras(keras)
    layers = keras.layers
    stack = [*_input_layer(keras, (height, width, channels))]
    first = _first(keras, (height, width, channels))
    for block in range(3):
        stack += [layers.Conv2D(filters * 2**block, 3, padding="same", activation="relu", **first), layers.MaxPooling2D(2)]
        first = {}
    stack += [
        layers.Flatten(),
        layers.Dense(dense, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(outputs, activation=activation),
    ]
    return keras.Sequential(stack, name=name)


def emotion_cnn(height: int = 48, width: int = 48, channels: int = 1, keras=None, filters: int = 32, dense: int = 128):
    """A 48 x 48 grey face crop to 7 emotions (FER-2013 order), softmax."""
    return _face_cnn(height, width, channels, 7, "softmax", "emotion_cnn", keras, filters, dense)


def smile_cnn(height: int = 64, width: int = 64, channels: int = 1, keras=None, filters: int = 16, dense: int = 64):
    """A 64 x 64 grey face crop to smiling or not, sigmoid."""
    return _face_cnn(height, width, channels, 1, "sigmoid", "smile_cnn", keras, filters, dense)


def audio_cnn(frames: int = 96, bands: int = 64, keras=None, filters: int = 16, dense: int = 32, pitch: int = 0,
              head: str = "global"):
    """A log-mel (or MFCC) patch, ``frames`` x ``bands``, to crying or not: the related work's sound CNN.

    Three 3x3 convolution blocks with pooling over time and frequency, global average pooling (so the
    model does not learn where in the patch a cry sits) and a small dense head; sigmoid. The input is
    the front end's (frames, bands) matrix; the channel axis is added inside, so the card's input shape is
    (1, frames, bands).

    ``pitch``: the last ``pitch`` of the bands are the front end's pitch channels (card ``audio.pitch_bins``).
    They are not a continuation of the spectrum: a branch of their own reads their time course (a cry's
    rising and falling f0 against a note held or a bark), and the two meet before the dense head.

    ``head``: how the last feature maps reach the dense head. "global" (the default model's) averages them
    over time and frequency. "time" averages over time only and flattens what is left, frequency bins x
    channels (8 x 32 for 64 bands): still blind to where in the patch a cry sits, but no longer to where in
    the spectrum its energy does (a cry's formants and breath noise against singing's plain tilt).
    """
    keras = _keras(keras)
    layers = keras.layers
    if head not in AUDIO_HEADS:
        raise ConfigError(f"audio-cnn head {head!r}; known: {', '.join(AUDIO_HEADS)}")
    if pitch:
        return _audio_cnn_with_pitch(frames, bands, pitch, keras, filters, dense, head)
    stack = [*_input_layer(keras, (frames, bands)),
             layers.Reshape((frames, bands, 1), **_first(keras, (frames, bands)))]
    for block in range(3):
        stack += [layers.Conv2D(filters * 2 ** min(block, 1), 3, padding="same", activation="relu"),
                  layers.MaxPooling2D(2)]
    stack += [*_audio_pooling(layers, frames, head), layers.Dense(dense, activation="relu"), layers.Dropout(0.3),
              layers.Dense(1, activation="sigmoid")]
    return keras.Sequential(stack, name="audio_cnn")


AUDIO_HEADS = ("global", "time")


def _audio_pooling(layers, frames: int, head: str) -> list:
    """The pooling between audio-cnn's three conv blocks and its dense head (see ``audio_cnn``'s ``head``)."""
    if head == "global":
        return [layers.GlobalAveragePooling2D()]
    left = frames // 2 // 2 // 2  # time steps after three 2x2 max poolings ("valid": each floors)
    return [layers.AveragePooling2D((left, 1)), layers.Flatten()]


def _audio_cnn_with_pitch(frames: int, bands: int, pitch: int, keras, filters: int, dense: int, head: str):
    layers = keras.layers
    inputs = keras.Input(shape=(frames, bands))
    image = layers.Reshape((frames, bands, 1))(inputs)
    mel = layers.Cropping2D(((0, 0), (0, pitch)))(image)
    for block in range(3):
        mel = layers.Conv2D(filters * 2 ** min(block, 1), 3, padding="same", activation="relu")(mel)
        mel = layers.MaxPooling2D(2)(mel)
    contour = layers.Cropping2D(((0, 0), (bands - pitch, 0)))(image)
    for _ in range(2):
        contour = layers.Conv2D(filters, (5, 3), padding="same", activation="relu")(contour)
        contour = layers.MaxPooling2D((2, 1))(contour)
    for pooling in _audio_pooling(layers, frames, head):
        mel = pooling(mel)
    joined = layers.Concatenate()([mel, layers.GlobalAveragePooling2D()(contour)])
    x = layers.Dense(dense, activation="relu")(joined)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x), name="audio_cnn")


def mini_xception(height: int = 64, width: int = 64, channels: int = 1, keras=None, classes: int = 7):
    """The small Xception-style CNN of the related emotion work (Arriaga et al. 2017): 64 x 64 grey to 7 classes.

    Two plain 3x3 convolutions, four residual blocks of two depthwise-separable convolutions with
    batch normalization, a 3x3 convolution to one map a class and global average pooling; about
    58k parameters for 7 classes. Written from the paper's description; functional, as it has
    residual adds.
    """
    keras = _keras(keras)
    layers = keras.layers
    inputs = keras.Input(shape=(height, width, channels))
    x = inputs
    for _ in range(2):
        x = layers.Conv2D(8, 3, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    for filters in (16, 32, 64, 128):
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        residual = layers.BatchNormalization()(residual)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Add()([x, residual])
    x = layers.Conv2D(classes, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Activation("softmax")(x)
    return keras.Model(inputs, outputs, name="mini_xception")


EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# name -> (kind, builder). Landmark-window builders take (window, features); face-crop ones (h, w, c).
LANDMARK_WINDOW = {
    "dense-lstm": dense_lstm,
    "lstm2": lstm2,
    "conv1d": conv1d,
    "conv2d": conv2d,
    "lstm3": lstm3,
}
FACE_CROP = {
    "emotion-cnn": emotion_cnn,
    "smile-cnn": smile_cnn,
}
# Audio-window builders take (frames, bands) of the front end's patch.
AUDIO_WINDOW = {
    "audio-cnn": audio_cnn,
}
ARCHITECTURES = tuple(LANDMARK_WINDOW) + tuple(FACE_CROP)


def build(name: str, window: int = 10, features: int = 156, keras=None, **sizes):
    """The zoo model called ``name``; landmark-window ones for ``window`` x ``features`` values a window."""
    if name in LANDMARK_WINDOW:
        return LANDMARK_WINDOW[name](window, features, keras=keras, **sizes)
    if name in FACE_CROP:
        return FACE_CROP[name](keras=keras, **sizes)
    if name in AUDIO_WINDOW:
        return AUDIO_WINDOW[name](window, features, keras=keras, **sizes)
    raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES + tuple(AUDIO_WINDOW))}")


def synthetic_windows(n: int, window: int = 10, features: int = 156, seed: int = 0):
    """SYNTHETIC, separable landmark windows for smoke training: (x (n, window, features) float32, y (n,) int).

    Features look like min-max normalized keypoints (values in [0, 1]); in the positive class a
    fixed fifth of the features drifts upward over the window, as a mouth opening would. Not data
    of any person: only for tests, fixtures and demonstrations that must say so.
    """
    rng = np.random.RandomState(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    x = 0.5 + 0.12 * rng.standard_normal((n, window, features))
    moving = np.random.RandomState(1234).permutation(features)[: max(1, features // 5)]
    ramp = np.linspace(0.1, 0.3, window)[:, None]
    x[np.ix_(y == 1, np.arange(window), moving)] += ramp
    return np.clip(x, 0.0, 1.0).astype(np.float32), y


def synthetic_faces(n: int, height: int, width: int, channels: int = 1, classes: int = 2, seed: int = 0):
    """SYNTHETIC face-crop-like images for smoke training: (x (n, h, w, c) float32 in [0, 1], y (n,) int).

    Class k is a noisy background with a bright bar at a class-specific height (a crude "mouth
    position"); separable by a small CNN in a few epochs. Not faces of anyone.
    """
    rng = np.random.RandomState(seed)
    y = (np.arange(n) % classes).astype(np.int64)
    rng.shuffle(y)
    x = 0.3 + 0.1 * rng.standard_normal((n, height, width, channels))
    bar = max(2, height // (2 * classes + 2))
    for k in range(classes):
        top = (2 * k + 1) * height // (2 * classes + 1)
        x[y == k, top : top + bar, width // 4 : 3 * width // 4, :] += 0.5
    return np.clip(x, 0.0, 1.0).astype(np.float32), y


# Real photographs shipped with scikit-image, one class each: textures and scenes that a grey 64 x 64
# patch must tell apart; several look alike at that scale (grass, gravel; camera, clock), as faces of
# neighbouring emotions do.
TEXTURE_IMAGES = ("brick", "grass", "gravel", "camera", "coins", "moon", "clock")


def texture_patches(per_class: int, size: int = 64, held_out: bool = False, seed: int = 0):
    """REAL grey image patches from scikit-image's sample photographs: (x (n, size, size, 1) in [0, 1], y (n,) int).

    Class k is a patch of ``TEXTURE_IMAGES[k]``, a square of 48-96 pixels at a random place,
    resized to ``size``. Each photograph is cut into four vertical stripes: training patches lie
    inside the first and third, held-out ones (``held_out=True``) inside the second and fourth, so
    no held-out pixel was trained on while both see every part of the scene's height.
    """
    import cv2
    from skimage import data

    rng = np.random.RandomState(seed)
    xs, ys = [], []
    for label, name in enumerate(TEXTURE_IMAGES):
        image = getattr(data, name)()
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        image = image.astype(np.uint8)
        height, width = image.shape
        stripe = width // 4
        for _ in range(per_class):
            side = int(rng.randint(48, min(96, stripe) + 1))
            start = stripe * (2 * int(rng.randint(0, 2)) + int(held_out))
            left = start + int(rng.randint(0, stripe - side + 1))
            top = int(rng.randint(0, height - side + 1))
            patch = cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)
            xs.append(patch)
            ys.append(label)
    order = rng.permutation(len(xs))
    x = np.stack(xs)[order, :, :, None].astype(np.float32) / 255.0
    return x, np.asarray(ys, dtype=np.int64)[order]
