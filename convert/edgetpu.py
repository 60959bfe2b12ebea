"""EdgeTPU: a static compatibility report of an int8 graph, and ``edgetpu_compiler`` when it is installed.

The compiler runs on x86-64 only and is often absent, so the static report always comes first. It
checks the published constraints (coral.ai "TensorFlow models on the Edge TPU"): fully int8 or
uint8 tensors, static shapes, one subgraph, at most 3 dimensions larger than 1 in any tensor, and
supported ops only. The compiler maps ops in order until the first it cannot map; that op and
everything after it run on the CPU. An unrolled LSTM starts with UNPACK, which is unsupported, so
nothing of it maps; the fused UNIDIRECTIONAL_SEQUENCE_LSTM (``--lstm fused``) is supported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from convert.report import INTEGER_TYPES, Graph

# Ops of the coral.ai supported-operations table (compiler 16), in TFLite's builtin names.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "EXPAND_DIMS",
    "FULLY_CONNECTED", "GATHER", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM",
})


@dataclass
class EdgeTPUReport:
    total_ops: int
    tpu_ops: int
    cpu_ops: int
    first_unsupported: str | None
    problems: list[str]
    per_op: list[dict]
    advice: list[str]
    compiler: dict | None = None

    def as_dict(self) -> dict:
        return dict(vars(self))


def _op_problem(op) -> str | None:
    if op.name not in EDGETPU_OPS:
        return f"{op.name} is not supported"
    types = [t for t in op.inputs + op.outputs if t]
    if any(t not in INTEGER_TYPES for t in types):
        return f"{op.name} has {sorted(set(types) - set(INTEGER_TYPES))} tensors (int8/uint8 only)"
    for shape in op.input_shapes + op.output_shapes:
        if sum(1 for d in shape if d > 1) > 3:
            return f"{op.name} has a tensor {list(shape)} with more than 3 dimensions larger than 1"
    return None


def static_report(graph: Graph) -> EdgeTPUReport:
    """Which ops the EdgeTPU compiler would map, by the published constraints, in execution order."""
    problems = []
    if graph.subgraphs != 1:
        problems.append(f"{graph.subgraphs} subgraphs (the EdgeTPU maps one)")
    if graph.dynamic_shapes:
        problems.append("dynamic tensor shapes (the EdgeTPU needs static shapes)")
    per_op = []
    first_unsupported = None
    for i, op in enumerate(graph.ops):
        problem = _op_problem(op)
        if problem and first_unsupported is None:
            first_unsupported = f"{op.name}#{i}"
        on_tpu = first_unsupported is None and not problems
        per_op.append({"index": i, "op": op.name, "device": "tpu" if on_tpu else "cpu", "problem": problem})
    tpu = sum(1 for entry in per_op if entry["device"] == "tpu")
    advice = []
    names = {op.name for op in graph.ops}
    if "UNPACK" in names and first_unsupported and first_unsupported.startswith("UNPACK"):
        advice.append("unrolled LSTM starts with UNPACK, unsupported: convert with '--lstm fused' "
                      "(UNIDIRECTIONAL_SEQUENCE_LSTM, card stateful=true; the runtime resets state before each window)")
    return EdgeTPUReport(len(graph.ops), tpu, len(graph.ops) - tpu, first_unsupported, problems, per_op, advice)


COMPILER_OP_LINE = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]+)\s+(?P<count>\d+)\s+(?P<status>.+)$")


def parse_compiler_log(text: str) -> dict:
    """Ops mapped to the TPU and to the CPU from ``edgetpu_compiler -s`` output.

    The summary table has rows ``Operator  Count  Status``; the status says "Mapped to Edge TPU"
    or why the op runs on the CPU.
    """
    tpu: dict[str, int] = {}
    cpu: dict[str, int] = {}
    for line in text.splitlines():
        match = COMPILER_OP_LINE.match(line.strip())
        if not match:
            continue
        target = tpu if "Mapped to Edge TPU" in match["status"] else cpu
        target[match["op"]] = target.get(match["op"], 0) + int(match["count"])
    summary = f"{sum(tpu.values())} ops on the TPU, {sum(cpu.values())} on the CPU"
    return {"tpu": tpu, "cpu": cpu, "summary": summary}


def run_compiler(model_path: Path, out_dir: Path, timeout_s: float = 300) -> dict | None:
    """Compile with ``edgetpu_compiler`` if it is on PATH: the parsed log and the compiled file, else None."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory(prefix="cryedge-edgetpu-") as tmp:
        result = subprocess.run([compiler, "-s", "-o", tmp, str(model_path)], capture_output=True, text=True,
                                timeout=timeout_s, check=False)
        parsed = parse_compiler_log(result.stdout)
        parsed["returncode"] = result.returncode
        compiled = Path(tmp) / f"{model_path.stem}_edgetpu.tflite"
        if compiled.is_file():
            target = out_dir / compiled.name
            shutil.copyfile(compiled, target)
            parsed["model"] = str(target)
        if result.returncode != 0:
            parsed["error"] = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["failed"]
    return parsed
