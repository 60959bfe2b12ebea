"""The EdgeTPU compatibility report on real converted graphs, and the compiler log parser."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from convert.convert import ConvertOptions, convert
from convert.edgetpu import parse_compiler_log, static_report
from convert.report import Graph, Op, inspect_graph
from edge.card import load_card

pytestmark = [pytest.mark.tensorflow]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras2"


def _convert(tmp_path, name: str, **options):
    output = tmp_path / f"{name}.tflite"
    report = convert(ConvertOptions(model=FIXTURES / f"{name}.h5", output=output, edgetpu=True,
                                    calibration=str(FIXTURES / f"{name}.heldout.npz"), **options))
    return report, inspect_graph(output.read_bytes()), output


@pytest.mark.slow
def test_conv1d_int8_graph_maps_entirely_to_the_tpu(tmp_path):
    report, graph, _ = _convert(tmp_path, "conv1d")
    assert report.edgetpu["first_unsupported"] is None
    assert report.edgetpu["tpu_ops"] == report.edgetpu["total_ops"] == len(graph.ops)
    assert report.edgetpu["compiler"]  # the compiler's log, or a note that it is not installed


@pytest.mark.slow
def test_unrolled_lstm_stops_at_unpack_and_everything_after_runs_on_the_cpu(tmp_path):
    report, _, _ = _convert(tmp_path, "dense-lstm")
    first = report.edgetpu["first_unsupported"]
    assert first.startswith("UNPACK#")
    index = int(first.split("#")[1])
    assert report.edgetpu["tpu_ops"] == index
    assert all(entry["device"] == "cpu" for entry in report.edgetpu["per_op"][index:])
    assert report.edgetpu["tpu_ops"] < 0.05 * report.edgetpu["total_ops"]
    assert any("--lstm fused" in advice for advice in report.edgetpu["advice"])


@pytest.mark.slow
def test_fused_lstm_route_is_stateful_and_maps_to_the_tpu(tmp_path):
    report, graph, output = _convert(tmp_path, "dense-lstm", lstm="fused")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in graph.op_names
    assert report.edgetpu["first_unsupported"] is None
    assert load_card(output).stateful is True
    # state is reset before each window, so the same window scores the same every time
    assert report.fidelity["label_agreement"] >= 0.99


def test_float_tensors_and_too_many_large_dimensions_are_not_mapped():
    ops = (
        Op("CONV_2D", 3, ("INT8", "INT8", "INT32"), ("INT8",), ((1, 8, 8, 1),), ((1, 8, 8, 4),)),
        Op("FULLY_CONNECTED", 1, ("FLOAT32", "FLOAT32"), ("FLOAT32",), ((1, 4),), ((1, 2),)),
        Op("RESHAPE", 1, ("INT8",), ("INT8",), ((2, 3, 4, 5),), ((120,),)),
    )
    graph = Graph(1, ops, ("INT8",), ("INT8",), ((1, 8, 8, 1),), False)
    report = static_report(graph)
    assert report.first_unsupported == "FULLY_CONNECTED#1"
    assert "FLOAT32" in report.per_op[1]["problem"]
    assert "more than 3 dimensions" in report.per_op[2]["problem"]
    assert report.tpu_ops == 1


def test_compiler_summary_log_is_parsed_into_tpu_and_cpu_ops():
    # the operator table edgetpu_compiler -s prints (format of compiler 16)
    log = """Edge TPU Compiler version 16.0.384591198
Input: model.tflite
Output: model_edgetpu.tflite

Operator                       Count      Status

FULLY_CONNECTED                1          Mapped to Edge TPU
UNPACK                         1          Operation not supported
FULLY_CONNECTED                40         More than one subgraph is not supported
TANH                           20         More than one subgraph is not supported
"""
    parsed = parse_compiler_log(log)
    assert parsed["tpu"] == {"FULLY_CONNECTED": 1}
    assert parsed["cpu"] == {"UNPACK": 1, "FULLY_CONNECTED": 40, "TANH": 20}
    assert parsed["summary"] == "1 ops on the TPU, 61 on the CPU"
