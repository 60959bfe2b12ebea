"""The model stage: a ``.tflite`` and its card, windows in, class probabilities out.

The runtime is LiteRT (``ai-edge-litert``), else ``tflite-runtime``, else ``tensorflow.lite``.
Quantized inputs and outputs are converted with the tensors' own scale and zero point, so callers
always work in float. Stateful graphs (a fused LSTM keeps its state between invokes) are reset
before each window. The card must agree with the graph (input, output, tensor types), or the model is
refused at load.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from edge.card import ModelCard, load_card
from edge.errors import ModelError
from edge.features import SPECS, get_spec
from edge.installed import check_installed_file
from edge.records import Score

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
# LiteRT's Python error reporter never clears its text: each failed invoke's error is appended to all before it
# (benchmarks/invoke_errors.py: 66 characters a failure, 1.3 million after 20,000). A model failing for a night
# would grow it without end, so past this much the interpreter is made afresh.
INVOKE_ERRORS_KEPT = 64 * 1024
EDGETPU_DEVICES = {"usb": "usb", "pci": "pci"}


@dataclass(frozen=True)
class Runtime:
    """The TFLite runtime found on this machine."""

    name: str
    interpreter_class: type
    load_delegate: object


def find_runtime(preferred: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")) -> Runtime:
    """The first importable runtime of ``preferred``; ModelError when there is none."""
    for name in preferred:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter, load_delegate
            elif name == "tflite_runtime":
                from tflite_runtime.interpreter import Interpreter, load_delegate
            elif name == "tensorflow":
                import tensorflow as tf

                Interpreter, load_delegate = tf.lite.Interpreter, tf.lite.experimental.load_delegate
            else:
                continue
        except ImportError:
            continue
        return Runtime(name, Interpreter, load_delegate)
    raise ModelError("no TFLite runtime installed: pip install ai-edge-litert")


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float values to a quantized tensor's integers (round half away from zero, saturating)."""
    if scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0:
        return q.astype(np.float32)
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def expected_values_per_window(card: ModelCard) -> int:
    """How many numbers one model input holds according to the card."""
    if card.kind == "landmark-window":
        return card.window * get_spec(card.features.spec, card.features.normalization).size
    if card.kind == "audio-window":
        return card.audio.frames * card.audio.feature_size
    if card.kind == "audio-waveform":
        return card.audio.window_samples
    crop = card.face_crop
    return crop.height * crop.width * crop.channels


def check_card_features(card: ModelCard, model_path: Path) -> None:
    """Refuse a landmark-window card whose features (spec and version) this cryedge does not compute."""
    if card.kind != "landmark-window":
        return
    wanted = card.features
    spec = SPECS.get(wanted.spec)
    if spec is None:
        raise ModelError(f"model {model_path.name}: its card's features are {wanted.spec}, which this cryedge does not "
                         f"compute (it knows {', '.join(SPECS)})")
    if wanted.version != spec.version:
        raise ModelError(f"model {model_path.name}: its card's features are {wanted.spec} version {wanted.version}, this "
                         f"cryedge computes version {spec.version} (a model made for another cryedge: update cryedge "
                         f"on the device, or use a model made for this one)")


def check_card_against_input(card: ModelCard, input_shape: tuple[int, ...], model_path: Path) -> None:
    """Refuse a model whose graph input disagrees with its card; the message says how."""
    check_card_features(card, model_path)
    if tuple(card.input_shape) != tuple(input_shape):
        raise ModelError(
            f"model {model_path.name}: input shape {list(input_shape)} disagrees with its card {list(card.input_shape)}"
        )
    # YAMNet's classification graph takes a bare [15600] waveform, with no batch dimension
    batchless = card.kind == "audio-waveform" and len(input_shape) == 1
    if input_shape[0] != 1 and not batchless:
        raise ModelError(f"model {model_path.name}: batch size {input_shape[0]}; cryedge runs batch-1 graphs (convert it with 'cryedge convert')")
    values = int(np.prod(input_shape if batchless else input_shape[1:]))
    expected = expected_values_per_window(card)
    if values != expected:
        if card.kind == "landmark-window":
            what = f"{card.window} frames x {get_spec(card.features.spec).size} '{card.features.spec}' features"
        elif card.kind == "audio-window":
            what = f"{card.audio.frames} frames x {card.audio.feature_size} {card.audio.features} values"
        elif card.kind == "audio-waveform":
            what = f"{card.audio.window_samples} samples at {card.audio.rate} Hz"
        else:
            what = f"a {card.face_crop.height}x{card.face_crop.width}x{card.face_crop.channels} face crop"
        raise ModelError(f"model {model_path.name}: input holds {values} values, but its card describes {what} = {expected}")


def check_card_against_graph(card: ModelCard, input_detail: dict, output_detail: dict, model_path: Path) -> None:
    """Refuse a card whose face crop, labels, output type, tensor types or positive label the graph belies.

    Each would otherwise load and then fail (an IndexError) or score nonsense in the frame loop.
    """
    name = model_path.name
    if card.positive_label not in card.labels:  # a card made in code (model_copy) skips its own validation
        raise ModelError(f"model {name}: its card's positive label {card.positive_label!r} is not one of its labels {list(card.labels)}")
    if card.kind == "face-crop":
        crop = card.face_crop
        described = (crop.height, crop.width, crop.channels)
        takes = tuple(int(d) for d in input_detail["shape"][1:])
        if takes not in (described, described[:2] if crop.channels == 1 else None):
            raise ModelError(f"model {name}: the graph takes {'x'.join(map(str, takes))} face crops, "
                             f"but its card describes {'x'.join(map(str, described))}")
    values = int(np.prod(output_detail["shape"]))
    needed = 1 if card.output == "sigmoid" else len(card.labels)
    if values != needed and card.output != "multilabel":  # multilabel: pick_class_scores checked the classes
        what = "sigmoid output needs 1" if card.output == "sigmoid" else f"softmax over {len(card.labels)} labels needs {needed}"
        raise ModelError(f"model {name}: the graph outputs {values} value{'s' if values != 1 else ''}, but its card's {what}")
    if card.quantization is not None:
        for which, detail, declared in (("input", input_detail, card.quantization.input),
                                        ("output", output_detail, card.quantization.output)):
            actual = np.dtype(detail["dtype"]).name
            if actual != declared.dtype:
                raise ModelError(f"model {name}: the graph's {which} is {actual}, but its card's quantization says {declared.dtype}")


def pick_class_scores(outputs: list[dict], classes: int, model_path: Path) -> dict:
    """The output holding ``classes`` scores a frame (YAMNet's full graph also gives embeddings and a spectrogram)."""
    fitting = [o for o in outputs if len(o["shape"]) >= 1 and int(o["shape"][-1]) == classes]
    if len(fitting) != 1:
        shapes = ", ".join(str([int(d) for d in o["shape"]]) for o in outputs)
        raise ModelError(f"model {model_path.name}: its card expects {classes} class scores (YAMNet: 521), "
                         f"the graph's outputs are {shapes}")
    return fitting[0]


class TFLiteModel:
    """One loaded ``.tflite`` with its card; ``predict`` takes float input, returns class probabilities."""

    def __init__(self, path: str | Path, *, card: ModelCard | None = None, num_threads: int = 1, edgetpu: str = "off",
                 runtime: Runtime | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        check_installed_file(self.path, "model")  # a default model damaged on disk: refused, not run
        self.card = card or load_card(self.path)
        self.runtime = runtime or find_runtime()
        self.delegate_name = "cpu"
        self._options = (num_threads, edgetpu)
        self.reloads = 0  # times the interpreter was made afresh after failing invokes (INVOKE_ERRORS_KEPT)
        self._interpreter = self._load()
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if self.card.kind == "audio-waveform" and len(inputs) == 1:
            outputs = [pick_class_scores(outputs, self.card.audio.classes, self.path)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"model {self.path.name}: cryedge runs models with one input and one output, this has {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        check_card_against_input(self.card, self.input_shape, self.path)
        check_card_against_graph(self.card, self._input, self._output, self.path)
        if self.card.kind == "audio-waveform" and np.dtype(self._input["dtype"]) != np.float32:
            raise ModelError(f"model {self.path.name}: a waveform model takes float32 samples, this one "
                             f"{np.dtype(self._input['dtype']).name}")
        log.info("model %s (%s, %s) on %s via %s", self.card.name, self.card.kind,
                 np.dtype(self._input["dtype"]).name, self.delegate_name, self.runtime.name)

    def _load(self):
        """A new interpreter of the file, tensors allocated; ModelError if it cannot be made."""
        num_threads, edgetpu = self._options
        delegates = self._edgetpu_delegates(edgetpu)
        try:
            interpreter = self.runtime.interpreter_class(
                model_path=str(self.path), num_threads=num_threads, experimental_delegates=delegates or None
            )
            if self.card.kind == "audio-waveform" and len(interpreter.get_input_details()) == 1:
                self._fit_waveform_input(interpreter, interpreter.get_input_details()[0])  # before allocating
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"cannot load model {self.path} with {self.runtime.name}: {first_line}") from None
        return interpreter

    def _fit_waveform_input(self, interpreter, detail: dict) -> None:
        """YAMNet's full graph takes a waveform of any length ([-1]): give it the card's window."""
        signature = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
        if len(signature) == 1 and signature[0] == -1:
            interpreter.resize_tensor_input(detail["index"], [self.card.audio.window_samples])

    def _edgetpu_delegates(self, edgetpu: str) -> list:
        if edgetpu == "off":
            return []
        if edgetpu not in EDGETPU_DEVICES:
            raise ModelError(f"edgetpu must be one of off, usb, pci; got {edgetpu!r}")
        try:
            # Check the library first: LiteRT's Delegate object complains at exit when it failed to load it.
            ctypes.CDLL(EDGETPU_LIBRARY)
            delegate = self.runtime.load_delegate(EDGETPU_LIBRARY, {"device": EDGETPU_DEVICES[edgetpu]})
        except (ValueError, OSError, RuntimeError) as error:
            log.warning("EdgeTPU (%s) not available, running on the CPU: %s", edgetpu, str(error).strip().splitlines()[0] if str(error).strip() else error)
            return []
        self.delegate_name = f"edgetpu-{edgetpu}"
        return [delegate]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Run one input (any shape with the right number of values); the output as float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.size != int(np.prod(self.input_shape)):
            raise ModelError(f"model {self.path.name}: got {x.size} input values, expects shape {list(self.input_shape)}")
        x = x.reshape(self.input_shape)
        if self.input_dtype in (np.int8, np.uint8, np.int16):
            scale, zero_point = self._input["quantization"]
            x = quantize(x, self.input_dtype, scale, zero_point)
        else:
            x = x.astype(self.input_dtype)
        if self.card.stateful:
            self._interpreter.reset_all_variables()
        self._interpreter.set_tensor(self._input["index"], x)
        try:
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as error:  # a kernel that fails on this input; a delegate gone
            text = str(error)
            if len(text) > INVOKE_ERRORS_KEPT:
                self._interpreter = self._load()
                self.reloads += 1
            raise ModelError(f"model {self.card.name} failed: {newest_invoke_error(text) or type(error).__name__}") from None
        y = self._interpreter.get_tensor(self._output["index"])
        if np.dtype(self._output["dtype"]) in (np.int8, np.uint8, np.int16):
            scale, zero_point = self._output["quantization"]
            return dequantize(y, scale, zero_point).reshape(-1)
        return y.astype(np.float32).reshape(-1)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities in the card's label order; ModelError when the model fails on ``x`` (``invoke``) or
        gives scores that are not numbers (NaN compares as neither crying nor calm)."""
        y = self.invoke(x)
        if not np.all(np.isfinite(y)):
            raise ModelError(f"model {self.card.name} gave scores that are not numbers (NaN or infinite)")
        if self.card.output == "sigmoid":
            p = float(np.clip(y[0], 0.0, 1.0))
            return np.array([1.0 - p, p], dtype=np.float32)
        if self.card.output == "multilabel":
            # scores of every patch the graph framed (YAMNet: one for 15,600 samples), class by class
            scores = y.reshape(-1, self.card.audio.classes).max(axis=0)
            p = float(np.clip(scores[list(self.card.audio.cry_classes)].max(), 0.0, 1.0))
            pair = np.full(2, 1.0 - p, dtype=np.float32)
            pair[self.card.positive_index] = p
            return pair
        return y

    def close(self) -> None:
        self._interpreter = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def newest_invoke_error(text: str) -> str:
    """The newest error in LiteRT's text of all the invoke errors so far ("...Node number 5 (GATHER) failed to invoke.")."""
    failures = [part for part in text.strip().split("failed to invoke.") if part.strip()]
    if "failed to invoke." not in text or not failures:
        return text.strip().splitlines()[0] if text.strip() else ""
    return failures[-1].strip() + " failed to invoke."


def vision_status(frames_with_face: np.ndarray, frames_with_body: np.ndarray | None, newest_brightness: float | None,
                  requires: tuple[str, ...], too_dark_below: float = 12.0) -> str:
    """Whether a window lets the model see (``"ok"``) or why not: ``"too_dark"``, ``"no_face"``, ``"no_body"``.

    A required part missing in the newest frame (the face) or in half the window or more is not seen.
    Without a face in a frame darker than ``too_dark_below`` (mean luma 0-255) the reason is the dark.
    """
    from edge.records import NO_BODY, NO_FACE, OK, TOO_DARK

    faces = np.asarray(frames_with_face, bool)
    if "face" in requires and (not faces[-1] or faces.mean() <= 0.5):
        dark = newest_brightness is not None and newest_brightness < too_dark_below
        return TOO_DARK if dark else NO_FACE
    if "body" in requires and frames_with_body is not None and np.asarray(frames_with_body, bool).mean() <= 0.5:
        return NO_BODY
    return OK


class WindowScorer:
    """Turns the feature window into a ``Score`` for the alarm, for either model kind.

    ``landmark-window`` models see the whole (T, F) window at once. ``face-crop`` models score each
    frame's face crop; the window's scores are aggregated by mean or majority vote over the frames
    that had a face.
    """

    def __init__(self, model: TFLiteModel):
        self.model = model
        self.card = model.card
        self.last_inference_ms = 0.0
        self.error: str | None = None  # why the model fails, while it does

    def score(self, window: np.ndarray, t: float, face_seen: bool, frames_with_face: np.ndarray | None = None,
              status: str = "ok") -> Score:
        """The window's ``Score``; when the model fails on it, one with the status ``model_error`` (said once)."""
        from edge.records import MODEL_ERROR

        start = time.perf_counter()
        try:
            if self.card.kind == "landmark-window":
                probabilities = self.model.probabilities(window)
            else:
                probabilities = self._aggregate_crops(window, frames_with_face)
        except ModelError as error:  # the frame loop goes on; the alarm treats it as blind (edge.alarm)
            if self.error != str(error):
                log.warning("%s; the picture is not judged (status %s) until it answers again", error, MODEL_ERROR)
            self.error = str(error)
            return Score(t=t, probability=0.0, face_seen=face_seen, status=MODEL_ERROR)
        if self.error is not None:
            log.info("model %s answers again", self.card.name)
            self.error = None
        self.last_inference_ms = (time.perf_counter() - start) * 1000
        return Score(t=t, probability=float(probabilities[self.card.positive_index]), face_seen=face_seen,
                     probabilities=tuple(float(p) for p in probabilities), status=status)

    def _aggregate_crops(self, crops: np.ndarray, frames_with_face: np.ndarray | None) -> np.ndarray:
        n_classes = len(self.card.labels)
        rows = range(len(crops)) if frames_with_face is None else np.flatnonzero(frames_with_face)
        if len(rows) == 0:
            uniform = np.zeros(n_classes, dtype=np.float32)
            uniform[[i for i in range(n_classes) if i != self.card.positive_index]] = 1.0 / max(1, n_classes - 1)
            return uniform
        scale = 1 / 255.0 if self.card.face_crop.scale == "unit" else 1.0
        per_frame = np.stack([self.model.probabilities(crops[i].astype(np.float32) * scale) for i in rows])
        if self.card.face_crop.aggregate == "mean":
            return per_frame.mean(axis=0)
        votes = np.bincount(per_frame.argmax(axis=1), minlength=n_classes).astype(np.float32)
        return votes / votes.sum()
