"""What a converted ``.tflite`` is and how faithful it is: graph facts, latency, fidelity against Keras.

The graph facts come from the flatbuffer itself (ops in execution order with versions, tensor
types, subgraphs), not from an interpreter, whose delegates would hide the ops.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import tflite_file
from edge.card import CARD_METADATA_NAME
from edge.model import dequantize, quantize

INTEGER_TYPES = ("INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL")
# ops written by FULLY_CONNECTED version >= 12 (dynamic-range quantization, TF >= 2.16) that tflite-runtime 2.14 lacks
TFLITE_RUNTIME_214_MAX_VERSIONS = {"FULLY_CONNECTED": 11}


@dataclass(frozen=True)
class Op:
    name: str
    version: int
    inputs: tuple[str, ...]  # tensor types, "" for an omitted optional input
    outputs: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Graph:
    """The facts of a ``.tflite`` flatbuffer that the converter checks and reports."""

    subgraphs: int
    ops: tuple[Op, ...]
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    dynamic_shapes: bool
    metadata: tuple[str, ...] = ()

    @property
    def op_names(self) -> list[str]:
        return sorted({op.name for op in self.ops})

    def op_list(self) -> list[str]:
        """Distinct ops with versions, e.g. 'FULLY_CONNECTED v9'."""
        return sorted({f"{op.name} v{op.version}" for op in self.ops})


def _names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def inspect_graph(model_bytes: bytes) -> Graph:
    """Parse ``model_bytes`` (the flatbuffer) into a Graph."""
    schema = tflite_file.schema()
    model = tflite_file.root(model_bytes)
    op_names = _names(schema.BuiltinOperator)
    type_names = _names(schema.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = f"CUSTOM:{code.CustomCode().decode()}"
        codes.append((name, code.Version()))
    subgraph = model.Subgraphs(0)

    def tensor_type(index: int) -> str:
        return "" if index < 0 else type_names.get(subgraph.Tensors(index).Type(), "?")

    def tensor_shape(index: int) -> tuple[int, ...]:
        return () if index < 0 else tuple(int(d) for d in subgraph.Tensors(index).ShapeAsNumpy()) if subgraph.Tensors(index).ShapeLength() else ()

    dynamic = False
    for t in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(t)
        if tensor.ShapeSignatureLength() and (tensor.ShapeSignatureAsNumpy() < 0).any():
            dynamic = True
    ops = []
    for i in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(i)
        name, version = codes[operator.OpcodeIndex()]
        ins = [int(j) for j in operator.InputsAsNumpy()] if operator.InputsLength() else []
        outs = [int(j) for j in operator.OutputsAsNumpy()] if operator.OutputsLength() else []
        ops.append(Op(name, version, tuple(tensor_type(j) for j in ins), tuple(tensor_type(j) for j in outs),
                      tuple(tensor_shape(j) for j in ins), tuple(tensor_shape(j) for j in outs)))
    inputs = [int(j) for j in subgraph.InputsAsNumpy()]
    outputs = [int(j) for j in subgraph.OutputsAsNumpy()]
    metadata = tuple(model.Metadata(i).Name().decode() for i in range(model.MetadataLength()))
    return Graph(model.SubgraphsLength(), tuple(ops), tuple(tensor_type(j) for j in inputs),
                 tuple(tensor_type(j) for j in outputs), tuple(tensor_shape(j) for j in inputs), dynamic, metadata)


def float_islands(graph: Graph) -> list[str]:
    """Ops of an int8 graph that compute in float: everything but the I/O QUANTIZE/DEQUANTIZE boundary.

    A QUANTIZE reading a float graph input and a DEQUANTIZE writing a float graph output are the
    float I/O boundary (``--io-type float32``); any other float tensor is an island.
    """
    islands = []
    for i, op in enumerate(graph.ops):
        if op.name == "QUANTIZE" and (op.inputs[0] == "FLOAT32" and i == 0 or op.inputs[0] in INTEGER_TYPES):
            continue
        if op.name == "DEQUANTIZE" and i == len(graph.ops) - 1:
            continue
        if any(t and t not in INTEGER_TYPES for t in op.inputs + op.outputs):
            islands.append(f"{op.name}#{i}")
    return islands


def flex_ops(graph: Graph) -> list[str]:
    return sorted({op.name for op in graph.ops if op.name.startswith("CUSTOM:Flex") or op.name.startswith("CUSTOM")})


def tflite_runtime_214_problems(graph: Graph) -> list[str]:
    """Ops whose version tflite-runtime 2.14 cannot load (measured: FULLY_CONNECTED v12)."""
    return sorted({f"{op.name} v{op.version}" for op in graph.ops
                   if op.version > TFLITE_RUNTIME_214_MAX_VERSIONS.get(op.name, 10**6)})


def is_stateful(graph: Graph) -> bool:
    """A fused LSTM (or any variable op) keeps state between invokes."""
    return any(op.name in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "VAR_HANDLE", "READ_VARIABLE",
                           "ASSIGN_VARIABLE") for op in graph.ops)


class LiteRTRunner:
    """A ``.tflite`` in ai-edge-litert, float in and float out, state reset before each input."""

    def __init__(self, model_bytes: bytes, num_threads: int = 1, stateful: bool = False):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        self.stateful = stateful

    def quantization(self, which: str) -> tuple[str, float, int]:
        detail = self._input if which == "input" else self._output
        scale, zero_point = detail["quantization"]
        return np.dtype(detail["dtype"]).name, float(scale), int(zero_point)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """One sample (any shape with the input's number of values) to the output vector as float32."""
        x = np.asarray(x, dtype=np.float32).reshape(self.input_shape)
        dtype = np.dtype(self._input["dtype"])
        if dtype in (np.int8, np.uint8, np.int16):
            x = quantize(x, dtype, *self._input["quantization"])
        if self.stateful:
            self._interpreter.reset_all_variables()
        self._interpreter.set_tensor(self._input["index"], x.astype(dtype))
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output["index"])
        if np.dtype(self._output["dtype"]) in (np.int8, np.uint8, np.int16):
            return dequantize(y, *self._output["quantization"]).reshape(-1)
        return y.astype(np.float32).reshape(-1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.stack([self(sample) for sample in x])

    def median_latency_us(self, x: np.ndarray, repeats: int = 200, budget_s: float = 3.0) -> float:
        """Median wall time of one set/invoke/get, over up to ``repeats`` runs or ``budget_s`` seconds."""
        times = []
        start = time.perf_counter()
        for i in range(repeats):
            t0 = time.perf_counter()
            self(x[i % len(x)])
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > budget_s and len(times) >= 5:
                break
        return statistics.median(times) * 1e6


def labels_of(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Predicted class per row: sigmoid (one column) by threshold, softmax by argmax."""
    scores = np.asarray(scores)
    if scores.shape[1] == 1:
        return (scores[:, 0] >= threshold).astype(int)
    return scores.argmax(axis=1)


@dataclass
class Fidelity:
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float
    data: str
    keras_accuracy: float | None = None  # against the data's y, when it has one
    tflite_accuracy: float | None = None

    def as_dict(self) -> dict:
        data = {"samples": self.samples, "max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "label_agreement": self.label_agreement, "data": self.data}
        if self.keras_accuracy is not None:
            data.update(keras_accuracy=self.keras_accuracy, tflite_accuracy=self.tflite_accuracy)
        return data


def fidelity(keras_scores: np.ndarray, tflite_scores: np.ndarray, threshold: float, data: str) -> Fidelity:
    diff = np.abs(np.asarray(keras_scores, np.float64) - np.asarray(tflite_scores, np.float64))
    agree = float((labels_of(keras_scores, threshold) == labels_of(tflite_scores, threshold)).mean())
    return Fidelity(len(diff), float(diff.max()), float(diff.mean()), agree, data)


def plot_scores(keras_scores: np.ndarray, tflite_scores: np.ndarray, path: Path, title: str) -> Path:
    """Scatter of Keras against TFLite scores (every output column), the diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for column in range(keras_scores.shape[1]):
        axes.scatter(keras_scores[:, column], tflite_scores[:, column], s=8, alpha=0.6,
                     label=f"output {column}" if keras_scores.shape[1] > 1 else None)
    axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    axes.set_xlabel("Keras score")
    axes.set_ylabel("TFLite score")
    axes.set_title(title, fontsize=9)
    if keras_scores.shape[1] > 1:
        axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


@dataclass
class Report:
    model: str
    output: str
    quantization: str
    size_bytes: int
    ops: list[str]
    subgraphs: int
    input: dict
    output_tensor: dict
    latency_us_median: float | None
    fidelity: dict | None
    calibration: str
    warnings: list[str] = field(default_factory=list)
    plot: str | None = None
    edgetpu: dict | None = None
    int8_fallback: dict | None = None  # convert.int8_fallback.Choice.as_dict(): per-layer errors, what was tried

    def as_dict(self) -> dict:
        data = dict(vars(self))
        data["output_tensor"] = self.output_tensor
        return data

    def table(self) -> str:
        """The report as aligned 'key  value' rows for the terminal."""
        rows = [
            ("model", self.model),
            ("output", self.output),
            ("quantization", self.quantization),
            ("size", f"{self.size_bytes / 1024:.1f} KiB"),
            ("subgraphs", str(self.subgraphs)),
            ("input", f"{self.input['shape']} {self.input['dtype']} scale={self.input['scale']:.6g} zp={self.input['zero_point']}"),
            ("output tensor", f"{self.output_tensor['shape']} {self.output_tensor['dtype']} scale={self.output_tensor['scale']:.6g} zp={self.output_tensor['zero_point']}"),
            ("ops", ", ".join(self.ops)),
            ("latency (LiteRT, 1 thread)", "-" if self.latency_us_median is None else f"{self.latency_us_median:.1f} us median"),
            ("calibration", self.calibration),
        ]
        if self.fidelity:
            f = self.fidelity
            rows += [
                ("fidelity data", f["data"]),
                ("label agreement", f"{100 * f['label_agreement']:.2f}% of {f['samples']}"),
                ("score |diff| max / mean", f"{f['max_abs_diff']:.4f} / {f['mean_abs_diff']:.4f}"),
            ]
            if "keras_accuracy" in f:
                rows.append(("accuracy Keras / TFLite", f"{100 * f['keras_accuracy']:.2f}% / {100 * f['tflite_accuracy']:.2f}%"))
        if self.int8_fallback:
            rows += _fallback_rows(self.int8_fallback)
        if self.plot:
            rows.append(("plot", self.plot))
        if self.edgetpu:
            e = self.edgetpu
            on_tpu = f"{e['tpu_ops']} of {e['total_ops']} ops on the TPU"
            rows.append(("EdgeTPU (static)", f"{on_tpu}; first unsupported: {e['first_unsupported'] or 'none'}"))
            if e.get("compiler"):
                rows.append(("edgetpu_compiler", str(e["compiler"].get("summary", e["compiler"]))))
        rows += [("warning", w) for w in self.warnings]
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _fallback_rows(fallback: dict) -> list[tuple[str, str]]:
    """Terminal rows of the int8 fallback: the worst layers, each graph tried, and the one kept."""
    rows = []
    for i, layer in enumerate(fallback["layers_worst_first"][:5]):
        rows.append(("worst int8 layers" if i == 0 else "",
                     f"{layer['rmse_per_scale']:.2f} steps RMSE  {layer['op']}  {short_tensor_name(layer['tensor'])}"))
    for tried in fallback["tried"]:
        layers = f" ({len(tried['float_layers'])} float layers)" if tried.get("float_layers") else ""
        rows.append(("int8 fallback tried", f"{tried['mode']}{layers}: {100 * tried['label_agreement']:.2f}% agreement, "
                                            f"{tried['latency_us_median']:.0f} us, EdgeTPU "
                                            f"{'yes' if tried['edgetpu_compatible'] else 'no'}"))
    rows.append(("int8 fallback kept", fallback["mode"] + (f": float layers {', '.join(short_tensor_name(t) for t in fallback['float_layers'])}"
                                                          if fallback["float_layers"] else "")))
    return rows


def short_tensor_name(tensor: str) -> str:
    """The Keras layers in a TFLite tensor name ('m/bn_3/add;m/conv2d_5/conv' -> 'conv2d_5+bn_3')."""
    layers = []
    for part in tensor.split(";"):
        pieces = part.split("/")
        name = pieces[1] if len(pieces) > 2 else pieces[0]
        if name not in layers:
            layers.append(name)
    main = [name for name in layers if not name.startswith(("batch_normalization", "activation"))] or layers
    return "+".join(main[:2])


def embed_card(model_bytes: bytes, card_json: str) -> bytes:
    """``model_bytes`` with the card as metadata ``cryedge_card`` (replacing one), buffers 16-byte aligned."""
    return tflite_file.with_metadata(model_bytes, CARD_METADATA_NAME, card_json.encode())
