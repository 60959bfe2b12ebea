"""``cryedge convert``: a user's Keras model to a batch-1 ``.tflite`` with its card and a fidelity report.

Steps: load (Keras-2 ``.h5``, ``.keras``, SavedModel), rebuild with batch 1 and unrolled recurrent
layers (dynamic-batch LSTMs do not convert, and a WHILE-loop LSTM crashes int8 calibration),
export a SavedModel and convert it (``from_concrete_functions`` can silently drop the weights),
check the graph (one subgraph, static shapes, no Flex ops; int8: no float islands, retried once
with the other quantizer before failing), compare every output with Keras on held-out data,
embed the card as metadata ``cryedge_card`` and write it beside the model.

Calibration data (int8) and held-out data (fidelity) come from ``--calibration``: the samples are
split by ``groups`` when present (whole groups held out), else the last quarter is held out; at
most 300 samples calibrate. ``--calibration synthetic`` uses uniform random inputs in [0, 1] and
says so in the report and the card; there is no silent fallback to random data.

int8 below ``--agreement-target`` (99%) on the held-out samples is analysed layer by layer and,
with ``--int8-fallback auto``, replaced by the fastest graph that reaches the target: the worst
layers left in float, or int16 activations (``convert.int8_fallback``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import signal
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge import files
from edge.card import (
    AudioSpec,
    FaceCropSpec,
    FeatureSpecRef,
    ModelCard,
    Quantization,
    SourceModel,
    TensorQuantization,
)
from edge.errors import DataError, ModelError, mask_password
from edge.features import NORMALIZATIONS, SPECS, get_spec

log = logging.getLogger(__name__)

SCHEMES = ("float32", "float16", "dynamic", "int8", "int16x8")
IO_TYPES = ("int8", "uint8", "float32")
MIN_CALIBRATION_SAMPLES = 20
MAX_CALIBRATION_SAMPLES = 300
MAX_FIDELITY_SAMPLES = 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp")
WORK_PREFIX = "cryedge-convert-"  # the work folder's, in $TMPDIR


@dataclass
class Kind:
    """What the model's input means: the card's kind and its feature or image description."""

    kind: str
    window: int
    features: FeatureSpecRef | None = None
    face_crop: FaceCropSpec | None = None
    audio: AudioSpec | None = None


def audio_kind(shape: tuple, audio: AudioSpec) -> Kind:
    """An audio-window model fed by the front end ``audio`` describes (from a 'cryedge dataset build --audio' file)."""
    dims = tuple(int(d) for d in shape[1:])
    expected = audio.frames * audio.feature_size
    if int(np.prod(dims)) != expected:
        raise DataError(f"model input {list(dims)} does not hold the dataset's {audio.frames} frames x "
                        f"{audio.feature_size} {audio.features} values")
    return Kind("audio-window", 1, audio=audio)


def infer_kind(shape: tuple, *, kind: str | None = None, spec: str | None = None, window: int | None = None) -> Kind:
    """The kind of a model from its input ``shape`` (batch first); a DataError when it fits none.

    ``(T, F)`` with F the size of a known spec is a landmark window. An image-shaped input
    ``(H, W, C)`` holding ``window`` x spec-size values is a window reshaped to an image (the
    Conv2D model's 40 x 39 x 1 for 10 x 156); with C of 1 or 3 otherwise it is a face crop.
    """
    dims = tuple(int(d) for d in shape[1:])
    specs = {spec: get_spec(spec)} if spec else dict(SPECS)
    sizes = ", ".join(f"{name} = {s.size}" for name, s in specs.items())
    if kind in (None, "landmark-window") and len(dims) == 2:
        for name, feature_spec in specs.items():
            if dims[1] == feature_spec.size:
                if window and window != dims[0]:
                    raise DataError(f"model input {list(dims)} has a window of {dims[0]} frames, not --window {window}")
                return Kind("landmark-window", dims[0], features=FeatureSpecRef(spec=name, version=feature_spec.version))
        raise DataError(f"model input {list(dims)}: {dims[1]} features a frame fits no feature spec ({sizes}); "
                        "a sound model's front end comes from the data it was trained on: give it as --calibration "
                        "DATA.npz (cryedge dataset build --audio)")
    if len(dims) == 3:
        values = int(np.prod(dims))
        if kind in (None, "landmark-window"):
            for name, feature_spec in specs.items():
                frames = window or 10
                if values == frames * feature_spec.size:
                    return Kind("landmark-window", frames, features=FeatureSpecRef(spec=name, version=feature_spec.version))
            if kind == "landmark-window":
                raise DataError(f"model input {list(dims)} holds {values} values, not {window or 10} frames of any spec ({sizes})")
        if dims[2] in (1, 3):
            return Kind("face-crop", window or 10, face_crop=FaceCropSpec(height=dims[0], width=dims[1], channels=dims[2]))
    raise DataError(f"model input {list(dims)} fits no known kind: landmark-window (T, F) with F one of ({sizes}), "
                    f"or a face crop (H, W, 1|3)")


# --- calibration data -----------------------------------------------------------------------------

@dataclass
class Samples:
    x: np.ndarray
    y: np.ndarray | None
    groups: np.ndarray | None
    source: str
    labels: tuple[str, ...] | None = None  # a 'cryedge dataset build' file says its labels,
    spec: str | None = None  # feature spec
    normalization: str | None = None  # and normalization; the card takes them from it
    audio: AudioSpec | None = None  # a sound dataset's front end; the card takes it from it


def load_samples(source: str, input_shape: tuple, seed: int = 0) -> Samples:
    """Samples shaped like the model input from ``source`` (.npz, an image folder, or 'synthetic')."""
    from convert.dataset import NPZ_ERRORS, non_finite_windows, npz_error

    sample_shape = tuple(int(d) for d in input_shape[1:])
    if source == "synthetic":
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.0, 1.0, size=(200, *sample_shape)).astype(np.float32)
        return Samples(x, None, None, "SYNTHETIC uniform random inputs in [0, 1] (not real data)")
    path = Path(source)
    if path.is_dir():
        return _load_images(path, sample_shape)
    if not path.is_file():
        raise DataError(f"calibration data not found: {path}")
    if path.suffix != ".npz":
        raise DataError(f"calibration data {path}: give a .npz with 'x', a folder of images, or 'synthetic'")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise DataError(f"calibration data {path} has no array 'x' (has: {', '.join(data.files)})")
            x = data["x"].astype(np.float32)
            y = data.get("y")
            groups = data.get("groups")
            labels = tuple(str(label) for label in data["labels"]) if "labels" in data else None
            spec = str(data["spec"]) if "spec" in data else None
            normalization = str(data["normalization"]) if "normalization" in data else None
            audio = AudioSpec.model_validate_json(str(data["audio"])) if "audio" in data else None
    except NPZ_ERRORS as error:
        raise DataError(f"cannot read calibration data {path}: {npz_error(error)}") from None
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != int(np.prod(sample_shape)) or (
        x.shape[1:] != sample_shape and x.shape[1:] != _window_shape(x, sample_shape)
    ):
        raise DataError(f"calibration data {path}: x has shape {list(x.shape)}, the model takes {list(sample_shape)} a sample")
    bad = non_finite_windows(x)
    if len(bad):  # the converter said it only after the conversion, as 'Max and min ... should be recorded'
        raise DataError(f"calibration data {path}: {len(bad)} of {len(x)} samples hold NaN or infinite values "
                        f"(the first: sample {bad[0]})")
    return Samples(x.reshape((len(x), *sample_shape)), y, groups, str(path), labels, spec, normalization, audio)


def _window_shape(x: np.ndarray, sample_shape: tuple) -> tuple:
    """A (T, F) dataset window is accepted for a model taking it reshaped (the 40 x 39 x 1 Conv2D)."""
    return x.shape[1:] if x.ndim == 3 and len(sample_shape) == 3 else ()


def _load_images(folder: Path, sample_shape: tuple) -> Samples:
    import cv2

    if len(sample_shape) != 3 or sample_shape[2] not in (1, 3):
        raise DataError(f"an image folder calibrates image models only; this model takes {list(sample_shape)}")
    height, width, channels = sample_shape
    images = []
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        # read by Python, decoded by OpenCV: imread crashed the process on a name that is not UTF-8
        try:
            image = cv2.imdecode(np.fromfile(file, np.uint8), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
        except cv2.error:  # a header claiming more pixels than OpenCV decodes: skipped as any unreadable file is
            image = None
        if image is None:
            continue
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        if channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        images.append(image.reshape(height, width, channels).astype(np.float32) / 255.0)
    if not images:
        raise DataError(f"calibration folder {folder} has no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return Samples(np.stack(images), None, None, f"{folder} ({len(images)} images, /255)")


def _held_out(samples: Samples, seed: int = 0) -> tuple[np.ndarray, str]:
    """Mask of held-out samples and how they were chosen: whole groups when there are groups, else the last quarter."""
    n = len(samples.x)
    if samples.groups is not None and len(np.unique(samples.groups)) >= 2:
        names = np.unique(samples.groups)
        held_groups = np.random.default_rng(seed).permutation(names)[: max(1, len(names) // 4)]
        held = np.isin(samples.groups, held_groups)
        return held, f"held out {held.sum()} samples of {len(held_groups)} of {len(names)} groups; calibrated on the others"
    held = np.zeros(n, dtype=bool)
    held[n - n // 4:] = True
    return held, f"held out the last {held.sum()} of {n} samples; calibrated on the first {n - held.sum()}"


def spread(rows: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` of ``rows``, evenly spaced over all of them (in order).

    Not the first ``most``: a dataset lists its windows video by video, so its first few hundred are the
    opening seconds of one or two clips. Calibrated on those, int8 ranges cut off what the rest of the
    data (another face, another expression) drives higher: the shipped default model's convolution
    saturated at 4.0 where a held-out crying face reached 4.9, and that face's cries were lost.
    """
    if len(rows) <= most:
        return rows
    return rows[np.linspace(0, len(rows) - 1, most).round().astype(int)]


def split_samples(samples: Samples, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration, held-out, how); at most 300 samples calibrate and 1000 measure fidelity, spread over the data."""
    if len(samples.x) < MIN_CALIBRATION_SAMPLES:
        raise DataError(f"calibration data {samples.source}: {len(samples.x)} samples, need at least {MIN_CALIBRATION_SAMPLES}")
    held, how = _held_out(samples, seed)
    calibration = spread(np.flatnonzero(~held), MAX_CALIBRATION_SAMPLES)
    return samples.x[calibration], samples.x[spread(np.flatnonzero(held), MAX_FIDELITY_SAMPLES)], how


def heldout_labels(samples: Samples, seed: int = 0) -> np.ndarray | None:
    """``y`` of the held-out samples of ``split_samples``, if the data has labels."""
    if samples.y is None:
        return None
    held, _ = _held_out(samples, seed)
    return np.asarray(samples.y)[spread(np.flatnonzero(held), MAX_FIDELITY_SAMPLES)]


# --- conversion, one function a step ---------------------------------------------------------------
#
# convert() reads top to bottom: check the options, load the model, split the representative data,
# convert with the scheme's converter settings, measure fidelity, choose labels, make the card,
# write the model and its card, write the report. A new quantization mode is one entry in
# CONVERTER_SETTINGS (and a field of QuantizationSettings if it needs one).

@dataclass
class ConvertOptions:
    model: Path
    output: Path
    quantize: str = "int8"
    calibration: str | None = None
    io_type: str = "int8"
    edgetpu: bool = False
    report: Path | None = None
    kind: str | None = None
    spec: str | None = None
    window: int | None = None
    labels: tuple[str, ...] | None = None
    positive: str | None = None
    threshold: float = 0.5
    lstm: str = "unroll"
    name: str | None = None
    normalization: str | None = None  # overrides the calibration dataset's
    metrics: Path | None = None  # training metrics JSON for the card (default: MODEL.metrics.json if there)
    int8_fallback: str = "auto"  # what int8 does below the agreement target (convert.int8_fallback)
    agreement_target: float = 0.99


@dataclass
class Source:
    """The user's Keras model as loaded, and what its input means."""

    loaded: object  # keras_io.LoadedModel
    input_shape: tuple
    outputs: int  # values of the (first) output
    kind: Kind
    samples: Samples | None  # from --calibration
    training: dict  # for the card

    @property
    def model(self):
        return self.loaded.model


@dataclass
class RepresentativeData:
    """Samples that calibrate int8 and the held-out ones that measure fidelity (None without data)."""

    calibration: np.ndarray | None
    heldout: np.ndarray | None
    split: str  # how they were chosen, for the report


@dataclass
class Measured:
    """Keras against TFLite on the held-out samples (or 20 synthetic ones)."""

    x: np.ndarray
    keras_scores: np.ndarray
    tflite_scores: np.ndarray
    fidelity: object  # convert.report.Fidelity
    runner: object  # convert.report.LiteRTRunner of the graph as converted
    stateful: bool


def convert(options: ConvertOptions, work: Path | None = None):
    """Convert, check, measure; writes OUT.tflite, OUT.json (card), and the report. Returns the Report.

    ``work``: the folder for the SavedModel (the caller removes it); None: a temporary one, removed here."""
    check_options(options)
    source = load_source(options)
    labels, positive = choose_labels(options, source)  # a wrong --labels fails before minutes of conversion
    data = representative_data(source.samples)
    with contextlib.nullcontext(work) if work is not None else tempfile.TemporaryDirectory(prefix=WORK_PREFIX) as tmp:
        saved = export_model(options, source, Path(tmp))
        flatbuffer, graph = to_tflite(options, saved, data.calibration)
        measured = measure_fidelity(options, source, data, flatbuffer, graph)
        flatbuffer, graph, measured, fallback = recover_int8(options, source, data, saved, flatbuffer, graph, measured)
    warnings = conversion_warnings(options, source, graph, measured, fallback)
    card = make_card(options, source, measured, labels, positive, warnings, fallback)
    flatbuffer = write_model(options.output, flatbuffer, card)
    return write_report(options, source, flatbuffer, graph, measured, warnings, fallback)


def check_options(options: ConvertOptions) -> None:
    if options.quantize not in SCHEMES:
        raise DataError(f"--quantize must be one of {', '.join(SCHEMES)}")
    if options.quantize in ("int8", "int16x8") and not options.calibration:
        raise DataError(f"{options.quantize} needs --calibration DATA (.npz, dataset, image folder), or '--calibration synthetic' to calibrate on random inputs")
    from convert.int8_fallback import FALLBACKS

    if options.int8_fallback not in FALLBACKS:
        raise DataError(f"--int8-fallback must be one of {', '.join(FALLBACKS)}")
    if not 0.0 < options.agreement_target <= 1.0:
        raise DataError(f"--agreement-target {options.agreement_target}: must be above 0 and at most 1")


def load_source(options: ConvertOptions) -> Source:
    """The Keras model, the --calibration samples, and the kind, spec and normalization they imply."""
    from convert import keras_io

    loaded = keras_io.load(options.model)
    shape = keras_io.input_shape(loaded.model)
    samples = load_samples(options.calibration, shape) if options.calibration else None
    spec = options.spec or (samples.spec if samples is not None and samples.spec in SPECS else None)
    if samples is not None and samples.audio is not None and options.kind in (None, "audio-window"):
        kind = audio_kind(shape, samples.audio)
    elif options.kind == "audio-window":
        raise DataError("an audio-window model needs --calibration with a 'cryedge dataset build --audio' file: "
                        "its front end goes on the card")
    else:
        kind = infer_kind(shape, kind=options.kind, spec=spec, window=options.window)
    normalization = options.normalization or (samples.normalization if samples is not None else None)
    if kind.features is not None and normalization:
        kind.features = FeatureSpecRef(spec=kind.features.spec, normalization=normalization, version=kind.features.version)
    training = _training_metrics(options)
    return Source(loaded, shape, int(loaded.model.outputs[0].shape[-1]), kind, samples, training)


def _training_metrics(options: ConvertOptions) -> dict:
    """What ``cryedge train`` measured, for the card: --metrics, else MODEL.metrics.json beside the model."""
    path = options.metrics or Path(options.model).with_suffix(".metrics.json")
    if not path.is_file():
        if options.metrics is not None:
            raise DataError(f"--metrics {path}: no such file")
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"--metrics {path}: not a JSON file ({error})") from None
    if not isinstance(metrics, dict):  # the card's check said it after the conversion, as a bug (exit 70)
        raise DataError(f"--metrics {path}: a JSON {type(metrics).__name__}, not an object of metrics "
                        "(as 'cryedge train' writes)")
    return metrics


def representative_data(samples: Samples | None) -> RepresentativeData:
    if samples is None:
        return RepresentativeData(None, None, "none")
    return RepresentativeData(*split_samples(samples))


def export_model(options: ConvertOptions, source: Source, folder: Path) -> Path:
    """The model rebuilt with batch 1 (recurrent layers unrolled, or fused with --lstm fused), as a SavedModel in ``folder``."""
    from convert import keras_io

    if options.lstm == "fused" and keras_io.has_recurrent_layers(source.model):
        static, framework = _fused_lstm_model(source.loaded), "tf_keras"
    else:
        static, framework = keras_io.static_batch1(source.model, unroll=True), source.loaded.framework
    return keras_io.export_saved_model(static, framework, folder / "saved_model")


def to_tflite(options: ConvertOptions, saved: Path, calibration: np.ndarray | None = None, scheme: str | None = None):
    """The checked flatbuffer and its Graph: conversion of the SavedModel, device checks.

    An int8 graph with problems (float islands) is converted once more with the other quantizer.
    """
    from convert.report import inspect_graph

    scheme = scheme or options.quantize
    settings = QuantizationSettings(scheme, options.io_type, calibration)
    flatbuffer = convert_saved_model(saved, settings)
    graph = inspect_graph(flatbuffer)
    problems = check_graph(graph, scheme)
    if problems and scheme in ("int8", "int16x8"):
        log.warning("%s graph has %s; retrying with the other quantizer", scheme, "; ".join(problems))
        flatbuffer = convert_saved_model(saved, replace(settings, new_quantizer=False))
        graph = inspect_graph(flatbuffer)
        problems = check_graph(graph, scheme)
    if problems:
        raise ModelError(f"converted {options.model.name} is not usable on the device: {'; '.join(problems)}")
    return flatbuffer, graph


@dataclass(frozen=True)
class QuantizationSettings:
    """What the TFLite converter is told: the scheme, and for int8 the I/O type and calibration samples."""

    scheme: str
    io_type: str = "int8"
    calibration: np.ndarray | None = None
    new_quantizer: bool = True  # int8: the MLIR quantizer; the old one is the fallback


def convert_saved_model(saved_model: Path, settings: QuantizationSettings) -> bytes:
    """TFLite flatbuffer of ``saved_model`` quantized as ``settings`` say."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    CONVERTER_SETTINGS[settings.scheme](converter, tf, settings)
    try:
        return converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter's errors are long MLIR dumps; the first line says what
        text = str(error).strip().splitlines()
        raise ModelError(f"TFLite conversion ({settings.scheme}) failed: {text[0][:300] if text else type(error).__name__}") from None


def _float32_settings(converter, tf, settings: QuantizationSettings) -> None:
    """No optimization: the graph keeps Keras's float32 weights and arithmetic."""


def _float16_settings(converter, tf, settings: QuantizationSettings) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_settings(converter, tf, settings: QuantizationSettings) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8_settings(converter, tf, settings: QuantizationSettings) -> None:
    calibration = settings.calibration
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None].astype(np.float32)] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[settings.io_type]
    converter.inference_output_type = converter.inference_input_type
    converter.experimental_new_quantizer = settings.new_quantizer


def _int16x8_settings(converter, tf, settings: QuantizationSettings) -> None:
    """int16 activations, int8 weights (TFLite's 16x8 mode): 256 times finer activations, reference kernels.

    I/O is int16 where int8 or uint8 was asked (the 16x8 kernels take no 8-bit tensors), else float32.
    """
    calibration = settings.calibration
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None].astype(np.float32)] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = tf.float32 if settings.io_type == "float32" else tf.int16
    converter.inference_output_type = converter.inference_input_type
    converter.experimental_new_quantizer = settings.new_quantizer


CONVERTER_SETTINGS = {
    "float32": _float32_settings,
    "float16": _float16_settings,
    "dynamic": _dynamic_settings,
    "int8": _int8_settings,
    "int16x8": _int16x8_settings,
}


def check_graph(graph, scheme: str) -> list[str]:
    """Problems that make the graph unusable on the device (empty when it is fine)."""
    from convert.report import flex_ops, float_islands

    problems = []
    if graph.subgraphs != 1:
        problems.append(f"{graph.subgraphs} subgraphs (a WHILE loop?), expected 1")
    if graph.dynamic_shapes:
        problems.append("dynamic tensor shapes")
    if flex_ops(graph):
        problems.append(f"custom/Flex ops {flex_ops(graph)}")
    if scheme in ("int8", "int16x8"):
        islands = float_islands(graph)
        if islands:
            problems.append(f"float ops in an {scheme} graph: {', '.join(islands[:6])}")
    return problems


def measure_fidelity(options: ConvertOptions, source: Source, data: RepresentativeData, flatbuffer: bytes, graph) -> Measured:
    """Keras and TFLite scores on the held-out samples; a float graph that strays too far is refused."""
    from convert.report import LiteRTRunner, fidelity, is_stateful, labels_of

    stateful = is_stateful(graph)
    runner = LiteRTRunner(flatbuffer, num_threads=1, stateful=stateful)
    heldout = data.heldout
    check_x = heldout if heldout is not None and len(heldout) else load_samples("synthetic", source.input_shape).x[:20]
    keras_scores = np.asarray(source.model.predict(check_x, verbose=0, batch_size=64), dtype=np.float32).reshape(len(check_x), -1)
    tflite_scores = runner.predict(check_x)
    if options.quantize in ("float32", "float16", "dynamic"):
        worst = float(np.abs(keras_scores - tflite_scores).max())
        limit = {"float32": 1e-3, "float16": 2e-2, "dynamic": 0.1}[options.quantize]
        if worst > limit:
            raise ModelError(f"converted {options.model.name} disagrees with Keras (max |diff| {worst:.3g} > {limit}): weights lost in conversion?")

    samples = source.samples
    fid = fidelity(keras_scores, tflite_scores, options.threshold,
                   data=(f"{samples.source}: {data.split}" if samples else "SYNTHETIC uniform random (no --calibration)"))
    truth = heldout_labels(samples) if samples is not None and check_x is heldout else None
    if truth is not None and len(truth) == len(check_x):
        fid.keras_accuracy = float((labels_of(keras_scores, options.threshold) == truth).mean())
        fid.tflite_accuracy = float((labels_of(tflite_scores, options.threshold) == truth).mean())
    return Measured(check_x, keras_scores, tflite_scores, fid, runner, stateful)


def recover_int8(options: ConvertOptions, source: Source, data: RepresentativeData, saved: Path, flatbuffer: bytes,
                 graph, measured: Measured):
    """An int8 graph below the agreement target: per-layer errors, and the fallback ``--int8-fallback`` chooses.

    Returns (flatbuffer, graph, measured, Choice or None); None when int8 was not asked, or no
    fallback was needed or allowed.
    """
    from convert import int8_fallback
    from convert.report import LiteRTRunner, inspect_graph, labels_of

    below = measured.fidelity.label_agreement < options.agreement_target
    if options.quantize != "int8" or not below or options.int8_fallback == "off" or data.calibration is None:
        return flatbuffer, graph, measured, None
    keras_labels = labels_of(measured.keras_scores, options.threshold)

    def measure(candidate: bytes) -> tuple[float, float]:
        runner = LiteRTRunner(candidate, num_threads=1, stateful=measured.stateful)
        agreement = float((labels_of(runner.predict(measured.x), options.threshold) == keras_labels).mean())
        return agreement, runner.median_latency_us(measured.x, budget_s=int8_fallback.LATENCY_BUDGET_S)

    log.warning("int8 keeps %.2f%% of labels (< %.0f%%): analysing layers and trying --int8-fallback %s",
                100 * measured.fidelity.label_agreement, 100 * options.agreement_target, options.int8_fallback)
    plain = int8_fallback.Candidate("int8", flatbuffer, measured.fidelity.label_agreement, measure(flatbuffer)[1])
    choice = int8_fallback.choose(
        options.int8_fallback, plain=plain, target=options.agreement_target, edgetpu=options.edgetpu,
        analysis_factory=lambda: int8_fallback.LayerAnalysis(saved, data.calibration, data.calibration),
        int16x8_factory=lambda: to_tflite(options, saved, data.calibration, scheme="int16x8")[0],
        measure=measure)
    if choice.chosen.mode == "int16x8" or choice.chosen is plain and len(choice.tried) > 1:
        # 16x8 runs on reference kernels (XNNPACK has none): say what float16, the other way to keep labels, costs
        agreement, latency = measure(to_tflite(options, saved, scheme="float16")[0])
        choice.note += (f"; for comparison float16 (--quantize float16) keeps {100 * agreement:.2f}% at "
                        f"{latency:.0f} us against int8's {plain.latency_us:.0f} us")
    if choice.chosen is plain:
        return flatbuffer, graph, measured, choice
    chosen = choice.chosen.flatbuffer
    new_graph = inspect_graph(chosen)
    scheme = "int16x8" if choice.chosen.mode == "int16x8" else "int8+float-layers"
    problems = check_graph(new_graph, scheme)
    if problems:
        raise ModelError(f"{scheme} graph of {options.model.name} is not usable on the device: {'; '.join(problems)}")
    return chosen, new_graph, measure_fidelity(options, source, data, chosen, new_graph), choice


def choose_labels(options: ConvertOptions, source: Source) -> tuple[tuple[str, ...], str]:
    """Labels and the positive one: --labels, else the dataset's, else defaults for the output size."""
    outputs, samples = source.outputs, source.samples
    labels, positive = default_labels(outputs, source.kind.kind)
    if samples is not None and samples.labels and not options.labels and len(samples.labels) == max(2, outputs):
        labels, positive = samples.labels, options.positive or samples.labels[-1]
    if options.labels:
        labels = tuple(options.labels)
        positive = options.positive or labels[-1]
    elif options.positive:
        positive = options.positive
    if outputs == 1 and len(labels) != 2 or outputs > 1 and len(labels) != outputs:
        raise DataError(f"--labels: the model has {outputs} output(s), which needs {2 if outputs == 1 else outputs} labels, got {len(labels)}")
    if positive not in labels:  # said by the card's check after the whole conversion, as a bug (exit 70)
        raise DataError(f"--positive {positive}: not one of the labels ({', '.join(labels)}); give --labels too")
    return labels, positive


def default_labels(outputs: int, kind: str) -> tuple[tuple[str, ...], str]:
    from convert.zoo import EMOTION_LABELS

    if outputs == 1 and kind == "audio-window":
        return ("not_crying", "crying"), "crying"
    if outputs == 1:
        return (("no-cry", "cry") if kind == "landmark-window" else ("negative", "positive")), ("cry" if kind == "landmark-window" else "positive")
    if outputs == 7 and kind == "face-crop":
        return EMOTION_LABELS, "sad"
    return tuple(f"class{i}" for i in range(outputs)), f"class{outputs - 1}"


def conversion_warnings(options: ConvertOptions, source: Source, graph, measured: Measured, fallback=None) -> list[str]:
    from convert.report import tflite_runtime_214_problems

    warnings = []
    if options.quantize == "int8" and measured.fidelity.label_agreement < options.agreement_target:
        warnings.append(f"label agreement {100 * measured.fidelity.label_agreement:.2f}% < "
                        f"{100 * options.agreement_target:.4g}% on held-out data")
    if fallback is not None and fallback.note:
        warnings.append(f"int8 fallback: {fallback.note}")
    if tflite_runtime_214_problems(graph):
        warnings.append(f"{', '.join(tflite_runtime_214_problems(graph))} cannot be loaded by tflite-runtime 2.14 "
                        f"(use ai-edge-litert, or --quantize int8/float16)")
    if source.samples is not None and options.calibration == "synthetic":
        warnings.append("calibrated and measured on SYNTHETIC random inputs: fidelity figures say little about real data")
    if measured.stateful:
        warnings.append("stateful graph (fused LSTM): the runtime must reset state before each window (card stateful=true)")
    return warnings


def make_card(options: ConvertOptions, source: Source, measured: Measured, labels: tuple[str, ...], positive: str,
              warnings: list[str], fallback=None) -> ModelCard:
    """The card: what the device needs to feed the graph and read it, and where it came from."""
    runner, kind = measured.runner, source.kind
    scheme = "int16x8" if fallback is not None and fallback.chosen.mode == "int16x8" else options.quantize
    float_layers = tuple(fallback.chosen.float_layers) if fallback is not None else ()
    in_dtype, in_scale, in_zp = runner.quantization("input")
    out_dtype, out_scale, out_zp = runner.quantization("output")
    return ModelCard(
        name=options.name or options.output.stem,
        kind=kind.kind,
        description=(f"converted by cryedge from {source.loaded.source_format} {options.model.name}"
                     + "".join(f"; {w}" for w in warnings if "tflite-runtime" in w or "SYNTHETIC" in w
                               or w.startswith("int8 fallback"))),
        input_shape=runner.input_shape,
        window=kind.window,
        features=kind.features,
        face_crop=kind.face_crop,
        audio=kind.audio,
        labels=labels,
        positive_label=positive,
        output="sigmoid" if source.outputs == 1 else "softmax",
        threshold=options.threshold,
        quantization=Quantization(
            scheme=scheme,
            input=TensorQuantization(dtype=in_dtype, scale=in_scale, zero_point=in_zp),
            output=TensorQuantization(dtype=out_dtype, scale=out_scale, zero_point=out_zp),
            float_layers=float_layers,
            edgetpu_compatible=scheme == "int8" and not float_layers,
        ),
        stateful=measured.stateful,
        source=SourceModel(path=options.model.name, sha256=source.loaded.sha256),
        tools=tool_versions(),
        training=source.training,
    )


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tools = {"python": platform.python_version()}
    for package in ("cryedge", "tensorflow", "keras", "tf-keras", "ai-edge-litert"):
        try:
            tools[package] = version(package)
        except PackageNotFoundError:
            pass
    return tools


def write_model(output: Path, flatbuffer: bytes, card: ModelCard) -> bytes:
    """Write OUT.tflite with the card embedded, and the card beside it as OUT.json; the bytes written."""
    from convert.report import embed_card

    flatbuffer = embed_card(flatbuffer, card.to_json())
    output.parent.mkdir(parents=True, exist_ok=True)
    # both or neither: a new model beside the old card (or the reverse) would be a model whose card lies
    with files.replacing(output, output.with_suffix(".json")) as (model, card_file):
        model.write_bytes(flatbuffer)
        card_file.write_text(card.to_json() + "\n")
    return flatbuffer


def write_report(options: ConvertOptions, source: Source, flatbuffer: bytes, graph, measured: Measured,
                 warnings: list[str], fallback=None):
    """The Report of the written model: latency, Keras-vs-TFLite plot, EdgeTPU check; JSON with --report."""
    from convert.edgetpu import run_compiler, static_report
    from convert.report import LiteRTRunner, Report, plot_scores

    runner = LiteRTRunner(flatbuffer, num_threads=1, stateful=measured.stateful)
    latency = runner.median_latency_us(measured.x)
    report_base = options.report or options.output.with_suffix(".report.json")
    plot = plot_scores(measured.keras_scores, measured.tflite_scores, report_base.with_suffix(".png"),
                       f"{options.model.name} -> {options.quantize}: Keras vs TFLite")
    edgetpu = None
    if options.edgetpu:
        edgetpu_report = static_report(graph)
        if options.quantize != "int8":
            edgetpu_report.problems.append(f"{options.quantize} graph: the EdgeTPU runs int8/uint8 graphs only")
        elif fallback is not None and fallback.chosen.mode != "int8":
            edgetpu_report.problems.append(f"{fallback.chosen.mode} graph (--int8-fallback {fallback.fallback}): "
                                           f"float ops and int16 tensors do not run on the EdgeTPU")
        edgetpu_report.compiler = run_compiler(options.output, options.output.parent)
        if edgetpu_report.compiler is None:
            edgetpu_report.compiler = {"summary": "edgetpu_compiler not on PATH (x86-64 only); static report only"}
        edgetpu = edgetpu_report.as_dict()
        warnings = warnings + edgetpu_report.advice
    in_dtype, in_scale, in_zp = measured.runner.quantization("input")
    out_dtype, out_scale, out_zp = measured.runner.quantization("output")
    report = Report(
        model=str(options.model), output=str(options.output),
        quantization=fallback.chosen.mode if fallback is not None else options.quantize,
        size_bytes=len(flatbuffer), ops=graph.op_list(), subgraphs=graph.subgraphs,
        input={"shape": list(measured.runner.input_shape), "dtype": in_dtype, "scale": in_scale, "zero_point": in_zp},
        output_tensor={"shape": [1, source.outputs], "dtype": out_dtype, "scale": out_scale, "zero_point": out_zp},
        latency_us_median=latency, fidelity=measured.fidelity.as_dict(),
        calibration=(source.samples.source if source.samples else "none"),
        warnings=warnings, plot=str(plot), edgetpu=edgetpu,
        int8_fallback=fallback.as_dict() if fallback is not None else None,
    )
    if options.report:
        files.write_text(options.report, json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def _fused_lstm_model(loaded):
    """The model rebuilt in tf-keras with batch 1 and recurrent layers left rolled.

    TFLite fuses a tf-keras LSTM into UNIDIRECTIONAL_SEQUENCE_LSTM (supported by the EdgeTPU),
    which keeps its state between invokes (card ``stateful``). Keras 3 configs carry keys that
    tf-keras does not know, so each layer is rebuilt from the arguments its tf-keras class
    takes; initializers and regularizers are left out, as the weights are copied afterwards.
    """
    import inspect

    import tf_keras

    from convert import keras_io

    model = loaded.model
    if type(model).__name__ != "Sequential":
        raise ModelError(f"--lstm fused rebuilds Sequential models only; {loaded.path.name} is {type(model).__name__}: use --lstm unroll")
    shape = (1, *tuple(model.inputs[0].shape)[1:])
    layers = [tf_keras.layers.InputLayer(batch_input_shape=shape)]
    for layer in model.layers:
        cls = getattr(tf_keras.layers, type(layer).__name__, None)
        if cls is None:
            raise ModelError(f"--lstm fused: tf-keras has no layer {type(layer).__name__}; use --lstm unroll")
        accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable"}
        config = {key: value for key, value in layer.get_config().items()
                  if key in accepted and not key.endswith(("_initializer", "_regularizer", "_constraint"))}
        if type(layer).__name__ in keras_io.RECURRENT_LAYERS:
            config["unroll"] = False
        try:
            layers.append(cls(**config))
        except Exception as error:  # noqa: BLE001 - Keras raises many kinds; the user needs the first line
            raise ModelError(f"--lstm fused: cannot rebuild layer {layer.name} in tf-keras: {keras_io._first_line(error)}") from None
    rebuilt = tf_keras.Sequential(layers)
    try:
        rebuilt.set_weights(model.get_weights())
    except ValueError as error:
        raise ModelError(f"--lstm fused: weights of {loaded.path.name} do not fit the tf-keras rebuild: {keras_io._first_line(error)}") from None
    return rebuilt


# --- command line ---------------------------------------------------------------------------------

def add_commands(subparsers) -> None:
    from convert.arguments import fraction, share, whole

    parser = subparsers.add_parser(
        "convert", help="convert a Keras model (.h5, .keras, SavedModel) to a .tflite with its model card",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="Keras-2 .h5, Keras-3 .keras, or a SavedModel folder")
    parser.add_argument("--quantize", choices=SCHEMES, default="int8")
    parser.add_argument("--calibration", metavar="DATA",
                        help="npz with x (and y, groups), a 'cryedge dataset build' npz, an image folder, or 'synthetic'")
    parser.add_argument("--io-type", choices=IO_TYPES, default="int8", help="int8 graphs: type of input and output")
    parser.add_argument("--int8-fallback", choices=("auto", "16x8", "float-layers", "off"), default="auto",
                        help="int8 below --agreement-target on held-out data: try int16 activations (16x8) and/or the "
                             "worst layers in float, keep the fastest that reaches it (auto; with --edgetpu plain int8 "
                             "stays), or keep plain int8 (off)")
    parser.add_argument("--agreement-target", type=share, default=0.99,
                        help="held-out label agreement with Keras that int8 must keep (default 0.99)")
    parser.add_argument("--edgetpu", action="store_true", help="EdgeTPU compatibility report (and compile if edgetpu_compiler is installed)")
    parser.add_argument("--lstm", choices=("unroll", "fused"), default="unroll",
                        help="recurrent layers: unrolled (all-int8, CPU) or fused UNIDIRECTIONAL_SEQUENCE_LSTM (EdgeTPU, stateful)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="OUT.tflite (the card goes to OUT.json)")
    parser.add_argument("--report", type=Path, help="write the report as JSON here (the plot beside it)")
    parser.add_argument("--kind", choices=("landmark-window", "face-crop", "audio-window"),
                        help="override the inferred model kind")
    parser.add_argument("--spec", choices=tuple(SPECS), help="feature spec of a landmark-window model")
    parser.add_argument("--window", type=whole(1), help="frames a window (for an image-shaped window model)")
    parser.add_argument("--labels", type=lambda s: tuple(x.strip() for x in s.split(",")), help="class labels, comma separated")
    parser.add_argument("--positive", help="the label that raises the alarm (default: the last)")
    parser.add_argument("--threshold", type=fraction, default=0.5, help="default alarm threshold in the card")
    parser.add_argument("--name", help="model name in the card (default: the output file's stem)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS,
                        help="feature normalization the model was trained with (default: the dataset's, else minmax)")
    parser.add_argument("--metrics", type=Path, help="training metrics JSON for the card (default: MODEL.metrics.json beside MODEL)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from convert import keras_io

    if args.output.suffix != ".tflite":
        raise DataError(f"--output {args.output}: give a .tflite path")
    args.output.parent.mkdir(parents=True, exist_ok=True)  # fails now, not after the conversion
    options = ConvertOptions(
        model=args.model, output=args.output, quantize=args.quantize, calibration=args.calibration,
        io_type=args.io_type, edgetpu=args.edgetpu, report=args.report, kind=args.kind, spec=args.spec,
        window=args.window, labels=args.labels, positive=args.positive, threshold=args.threshold,
        lstm=args.lstm, name=args.name, normalization=args.normalization, metrics=args.metrics,
        int8_fallback=args.int8_fallback, agreement_target=args.agreement_target)
    check_options(options)
    keras_io.check_installed()
    kind, answer = convert_in_child(options, args.verbose)
    if kind == "error":
        raise answer  # a CryedgeError or an OSError of the child's: main says it as its own
    if kind == "line":  # an install that does not import, or a bug: its line and exit code as main gives them
        line, code = answer
        print(f"cryedge: {mask_password(line)}", file=sys.stderr)
        return code
    print(answer)
    return 0


def convert_in_child(options: ConvertOptions, verbosity: int) -> tuple[str, object]:
    """``convert`` in a process of its own, in a work folder this one owns: ("table", the report's table),
    ("error", a CryedgeError or OSError to raise) or ("line", (what went wrong, exit code)).

    TensorFlow lost Ctrl-C: the KeyboardInterrupt landed in one of its weakref callbacks, was printed as "Exception
    ignored" and the conversion went on to exit 0 (2 of 8 tries). And SIGTERM or SIGHUP, unhandled, left the work
    folder in /tmp. This process only waits: Ctrl-C, SIGTERM or SIGHUP stop the child (a session of its own, which
    the terminal's Ctrl-C does not reach) at once, the folder (TensorFlow's temporary files in it) is removed and
    ``main`` exits 130. A subprocess, not multiprocessing: its resource tracker held stderr's pipe open, and the
    native log filter waited 5 s for it at every exit.

    This process killed outright (SIGKILL, the out-of-memory killer) left the child converting for minutes and its
    folder in $TMPDIR. On Linux the child now dies with this process (``PR_SET_PDEATHSIG``, set first thing in it),
    and a sweeper (a bare Python waiting on a pipe both hold open) removes the folder once neither is left.
    """
    import os
    import pickle
    import subprocess

    alive_read, alive_write = os.pipe()  # held by this process and the child: the sweeper reads its end, then sweeps
    sweeper = None
    try:
        with tempfile.TemporaryDirectory(prefix=WORK_PREFIX) as work, \
                _stopped_as_by_ctrl_c(signal.SIGTERM, signal.SIGHUP):
            try:
                # its own session: a terminal's Ctrl-C or hang-up reaches neither it nor the child
                sweeper = subprocess.Popen([sys.executable, "-I", "-S", "-c", SWEEPER_CODE, work], stdin=alive_read,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
            finally:
                os.close(alive_read)
            read_end, write_end = os.pipe()
            try:
                child = subprocess.Popen([sys.executable, "-c", CHILD_CODE, str(write_end), str(os.getpid()),
                                          str(alive_write)], stdin=subprocess.PIPE, pass_fds=(write_end, alive_write),
                                         start_new_session=True,
                                         env={**os.environ, "TMPDIR": work})  # TensorFlow's temporary files go with it
            finally:
                os.close(write_end)
            with os.fdopen(read_end, "rb") as answer:
                try:
                    pickle.dump(sys.path, child.stdin)
                    pickle.dump((options, Path(work), verbosity), child.stdin)
                    child.stdin.close()
                    try:
                        result = pickle.load(answer)
                    except EOFError:  # it died without a word: killed (out of memory?) or crashed in native code
                        code = child.wait()
                        why = f"signal {-code}" if code < 0 else f"exit code {code}"
                        return "line", (f"the conversion's process ended without a result ({why})", 1)
                    child.wait()
                    return result
                finally:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
    finally:
        os.close(alive_write)  # the folder is gone by now: the sweeper finds nothing to remove and ends
        if sweeper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sweeper.wait(5)


# What the child runs. First it dies with its parent (PR_SET_PDEATHSIG, Linux; a parent already gone before that is
# checked for, the race), then sys.path (the parent's, so that it imports what the parent imported), then the rest.
# The parent's end of the sweeper's pipe stays open in it, and goes to none of its own children.
CHILD_CODE = """\
import os, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except (OSError, AttributeError):  # not Linux: the sweeper still removes the folder once the child ends
    pass
if os.getppid() != int(sys.argv[2]):
    os._exit(1)
os.set_inheritable(int(sys.argv[3]), False)
import pickle
path = pickle.load(sys.stdin.buffer)
sys.path[:] = path
from convert.convert import converting_child
converting_child(int(sys.argv[1]))
"""

# The sweeper: its stdin ends when both the parent and the child are gone (exited, or killed), then the work folder
# goes (nothing left to remove when the parent could do it). Standard library only, no site: it starts in ~10 ms.
SWEEPER_CODE = """\
import shutil, sys
while sys.stdin.buffer.read(4096):
    pass
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


@contextlib.contextmanager
def _stopped_as_by_ctrl_c(*signals: int):
    """``signals`` raise KeyboardInterrupt while inside, as Ctrl-C does: a ``with`` or ``finally`` then cleans up."""
    before = {number: signal.signal(number, signal.default_int_handler) for number in signals}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def converting_child(answer_fd: int) -> None:
    """The child of ``convert_in_child``: reads its work from stdin, converts, writes what ``run`` says to ``answer_fd``."""
    import os
    import pickle

    from edge import installed, logs
    from edge.cli import UNEXPECTED_ERROR_EXIT_CODE, unexpected_error_line
    from edge.errors import CryedgeError, InstallError

    options, work, verbosity = pickle.load(sys.stdin.buffer)
    logs.configure(verbosity)
    try:
        result = ("table", convert(options, work).table())
    except (CryedgeError, OSError) as error:
        log.debug("%s", error, exc_info=True)
        result = ("error", error)
    except (ImportError, SyntaxError) as error:
        log.debug("import failed", exc_info=True)
        result = ("line", (installed.broken_import_line(error), InstallError.exit_code))
    except Exception as error:  # noqa: BLE001 - a bug: one line (the traceback with -vv), as main says it
        log.debug("unexpected error", exc_info=True)
        result = ("line", (unexpected_error_line(error), UNEXPECTED_ERROR_EXIT_CODE))
    with os.fdopen(answer_fd, "wb") as answer:
        pickle.dump(result, answer)
