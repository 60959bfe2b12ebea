"""When plain int8 loses labels: find the layers that lose them, and choose a graph that keeps them.

A model whose held-out label agreement with Keras falls below the target (99%) in plain int8 is
analysed layer by layer with TFLite's QuantizationDebugger: each quantized op's output is compared
with the float op given the same (dequantized) input, and the error is reported in units of that
output's quantization step (RMSE / scale; uniform rounding alone gives about 0.29). Then the
fallbacks are tried, each measured on the same held-out samples:

- ``float-layers``: the worst layers (by RMSE / scale) left in float, one more at a time, up to
  ``MAX_FLOAT_LAYERS``; the rest of the graph stays int8 (XNNPACK runs it);
- ``16x8``: int16 activations with int8 weights (TFLite's 16x8 mode) for the whole graph; LiteRT
  runs it with reference kernels, so it is slower.

``auto`` keeps, of those that reach the target, the one with the lowest LiteRT latency; when none
does, plain int8 stays (with a warning). Neither fallback runs on an EdgeTPU (float ops and int16
tensors fall back to the CPU): with ``--edgetpu``, ``auto`` keeps plain int8 and says what the
fallbacks would have reached.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import ModelError

log = logging.getLogger(__name__)

FALLBACKS = ("auto", "16x8", "float-layers", "off")
AGREEMENT_TARGET = 0.99
MAX_FLOAT_LAYERS = 4
DEBUG_SAMPLES = 100  # samples the per-layer analysis runs (the debugger runs the TF interpreter, slowly)
LATENCY_BUDGET_S = 1.0  # per candidate


@dataclass(frozen=True)
class LayerError:
    """One quantized op's output against the float op on the same input (QuantizationDebugger, layer-wise)."""

    tensor: str  # the op's output tensor name: what selective quantization denylists
    op: str
    rmse_per_scale: float  # RMSE in quantization steps: ~0.29 is rounding alone, >1 loses information
    max_abs_error: float
    scale: float

    def as_dict(self) -> dict:
        return {"tensor": self.tensor, "op": self.op, "rmse_per_scale": round(self.rmse_per_scale, 4),
                "max_abs_error": float(f"{self.max_abs_error:.4g}"), "scale": float(f"{self.scale:.4g}")}


@dataclass
class Candidate:
    """A graph tried for the int8 request, with what it measured."""

    mode: str  # "int8", "int8+float-layers", "int16x8"
    flatbuffer: bytes
    agreement: float
    latency_us: float
    float_layers: tuple[str, ...] = ()

    @property
    def edgetpu_compatible(self) -> bool:
        return self.mode == "int8"

    def as_dict(self) -> dict:
        data = {"mode": self.mode, "label_agreement": self.agreement, "latency_us_median": round(self.latency_us, 1),
                "edgetpu_compatible": self.edgetpu_compatible}
        if self.float_layers:
            data["float_layers"] = list(self.float_layers)
        return data


@dataclass
class Choice:
    """What ``--int8-fallback`` decided, for the report and the card."""

    fallback: str
    target: float
    chosen: Candidate
    tried: list[Candidate] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict:
        return {"fallback": self.fallback, "target": self.target, "mode": self.chosen.mode,
                "float_layers": list(self.chosen.float_layers), "edgetpu_compatible": self.chosen.edgetpu_compatible,
                "note": self.note, "tried": [c.as_dict() for c in self.tried],
                "layers_worst_first": [layer.as_dict() for layer in self.layers]}


def _tf_converter(saved_model: Path, calibration: np.ndarray):
    """A converter calibrated on ``calibration`` that may keep ops in float (what selective quantization needs)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None].astype(np.float32)] for sample in calibration)
    return converter


class LayerAnalysis:
    """The calibrated model, its per-layer errors, and graphs with chosen layers left in float."""

    def __init__(self, saved_model: Path, calibration: np.ndarray, debug_samples: np.ndarray):
        import tensorflow as tf

        debug = debug_samples[:DEBUG_SAMPLES]
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_debug_metrics={"mean_abs_error": lambda diff: float(np.mean(np.abs(diff)))})
        try:
            self._debugger = tf.lite.experimental.QuantizationDebugger(
                converter=_tf_converter(saved_model, calibration),
                debug_dataset=lambda: ([sample[None].astype(np.float32)] for sample in debug),
                debug_options=options)
            self._debugger.run()
        except Exception as error:  # noqa: BLE001 - the debugger raises many kinds; the user needs the first line
            raise ModelError(f"per-layer int8 analysis failed: {str(error).strip().splitlines()[0][:300]}") from None
        self.layers = self._worst_first()

    def _worst_first(self) -> list[LayerError]:
        dump = io.StringIO()
        self._debugger.layer_statistics_dump(dump)
        layers = []
        for row in csv.DictReader(io.StringIO(dump.getvalue())):
            scale = float(row.get("scale") or 0.0)
            mse = float(row.get("mean_squared_error") or "nan")
            if scale <= 0 or not math.isfinite(mse):
                continue
            layers.append(LayerError(tensor=row["tensor_name"], op=row.get("op_name", "?"),
                                     rmse_per_scale=math.sqrt(mse) / scale,
                                     max_abs_error=float(row.get("max_abs_error") or "nan"), scale=scale))
        return sorted(layers, key=lambda layer: layer.rmse_per_scale, reverse=True)

    def with_float_layers(self, tensors: tuple[str, ...], io_type: str) -> bytes:
        """The int8 graph with the ops writing ``tensors`` left in float; I/O as ``io_type`` (int8 or float32)."""
        import tensorflow as tf

        self._debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(tensors), fully_quantize=io_type != "float32")
        return self._debugger.get_nondebug_quantized_model()


def choose(fallback: str, *, plain: Candidate, target: float, edgetpu: bool, analysis_factory, int16x8_factory,
           measure) -> Choice:
    """The graph to keep for an int8 request whose plain int8 agreement is ``plain.agreement``.

    ``analysis_factory()`` gives a LayerAnalysis, ``int16x8_factory()`` the 16x8 flatbuffer, and
    ``measure(flatbuffer)`` its (agreement, latency_us) on the held-out samples.
    """
    if fallback == "off" or plain.agreement >= target:
        return Choice(fallback, target, plain, [plain])
    analysis = analysis_factory()
    tried = [plain]
    if fallback in ("auto", "float-layers"):
        for count in range(1, min(MAX_FLOAT_LAYERS, len(analysis.layers)) + 1):
            tensors = tuple(layer.tensor for layer in analysis.layers[:count])
            flatbuffer = analysis.with_float_layers(tensors, "int8")
            agreement, latency = measure(flatbuffer)
            tried.append(Candidate("int8+float-layers", flatbuffer, agreement, latency, tensors))
            if agreement >= target:
                break
    if fallback in ("auto", "16x8"):
        flatbuffer = int16x8_factory()
        agreement, latency = measure(flatbuffer)
        tried.append(Candidate("int16x8", flatbuffer, agreement, latency))
    reaching = [c for c in tried[1:] if c.agreement >= target]
    if edgetpu and fallback == "auto":
        best = max(tried[1:], key=lambda c: c.agreement)
        note = (f"kept plain int8 for the EdgeTPU: {best.mode} would reach {100 * best.agreement:.2f}% but does not run "
                f"on it (float ops and int16 tensors fall back to the CPU); --int8-fallback {_option(best)} chooses it anyway")
        return Choice(fallback, target, plain, tried, analysis.layers, note)
    if not reaching:
        best = max(tried[1:], key=lambda c: c.agreement)
        note = (f"no fallback reached {100 * target:.4g}% (best {best.mode} {100 * best.agreement:.2f}%); kept plain int8: "
                f"consider --quantize float16")
        return Choice(fallback, target, plain, tried, analysis.layers, note)
    chosen = min(reaching, key=lambda c: c.latency_us)
    note = (f"plain int8 kept {100 * plain.agreement:.2f}% of labels; {chosen.mode} keeps {100 * chosen.agreement:.2f}% "
            f"at {chosen.latency_us / max(plain.latency_us, 1e-9):.2f}x the plain int8 latency; not EdgeTPU-compatible")
    return Choice(fallback, target, chosen, tried, analysis.layers, note)


def _option(candidate: Candidate) -> str:
    return "16x8" if candidate.mode == "int16x8" else "float-layers"
