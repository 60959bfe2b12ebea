"""Edits of MediaPipe's ``.tflite`` graphs that make the 0.10.x models work under the 1.2.x Tasks API,
and the face detector work under the 0.10.x Tasks API (the Pi 4's line, ``short_range_layout``).

Each takes and returns a model's bytes, read and written by ``edge.tflite_file`` (constant buffers
16-byte aligned); no TensorFlow is needed.
"""

from __future__ import annotations

import numpy as np

from edge import tflite_file
from edge.errors import ModelError

# The person's eye contours in MediaPipe's 468-point mesh (16 points each, corner to corner round
# the lids). The appended iris points take their depth (z) from the mean of their eye's contour:
# the iris outputs of the attention model are x and y only.
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# Outputs of face_landmark_with_attention.tflite. "left"/"right" in its names are the viewer's: the
# left iris is the one in the image's (crop's) left half, the person's right in an un-mirrored
# frontal view, the eye of mesh points 33-133, so it becomes points 468-472.
ATTENTION_MESH = "output_mesh_identity"
ATTENTION_IRIS_ORDER = ("output_left_iris", "output_right_iris")  # -> 468-472, 473-477
ATTENTION_PRESENCE = "conv_faceflag"
IRIS_POINTS = 5  # centre, then four round the iris edge
# The segmentation-mask output of pose_landmark_full.tflite. cryedge never asks PoseLandmarker for
# masks, yet the mask head (46 operators at 256x256x8) ran on every frame: zeroing it measured 14 MiB
# less memory and 25% less time for the landmark model, its other outputs bit-identical.
POSE_SEGMENTATION = "Identity_2"
MESH_POINTS = 468


def _metadata_schema():
    """The TFLite-metadata schema module (shipped in mediapipe): the input normalization MediaPipe reads."""
    from edge.mediapipe_import import import_mediapipe

    import_mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated

    return metadata_schema_py_generated


def iris_weights() -> np.ndarray:
    """The (30, 1424) matrix taking [mesh 468x3 | iris A 5x2 | iris B 5x2] to 10 points' x, y, z.

    x and y of points 468-472 are iris A's, 473-477 iris B's (the model's own iris estimates, in
    the same crop pixels as the mesh); z is the mean z of that eye's contour in the mesh.
    """
    mesh_values = MESH_POINTS * 3
    weights = np.zeros((2 * IRIS_POINTS * 3, mesh_values + 4 * IRIS_POINTS), dtype=np.float32)
    for block, contour in enumerate((RIGHT_EYE_CONTOUR, LEFT_EYE_CONTOUR)):
        iris = mesh_values + block * 2 * IRIS_POINTS
        for k in range(IRIS_POINTS):
            row = (block * IRIS_POINTS + k) * 3
            weights[row, iris + 2 * k] = 1.0
            weights[row + 1, iris + 2 * k + 1] = 1.0
            weights[row + 2, [3 * point + 2 for point in contour]] = 1.0 / len(contour)
    return weights


def append_iris_points(attention_tflite: bytes) -> bytes:
    """The 0.10.x attention face-landmark model with one output of 478 points, as 1.2.x decodes.

    1.2.x reads the landmarks from output 0 and face presence from output 1. The attention model
    gives the 468-point mesh, refinements for lips and eyes, and the two irises as separate
    outputs. Added (all builtin ops): RESHAPEs to flat rows, CONCATENATION of mesh and irises,
    FULLY_CONNECTED with constant ``iris_weights()`` giving the 10 iris points, CONCATENATION of
    mesh and iris points, RESHAPE to (1, 1, 1, 1434). Outputs become [that, face presence]; the lip
    and eye refinements go unused (measured against dlib, the mesh alone agrees as well).
    """
    schema = tflite_file.schema()
    model = tflite_file.read(attention_tflite)
    graph = model.subgraphs[0]
    by_name = {graph.tensors[int(i)].name.decode(): int(i) for i in graph.outputs}
    wanted = (ATTENTION_MESH, *ATTENTION_IRIS_ORDER, ATTENTION_PRESENCE)
    if any(name not in by_name for name in wanted):
        raise ModelError(f"the face-landmark model's outputs are {sorted(by_name)}; expected {', '.join(wanted)}")
    f32 = schema.TensorType.FLOAT32

    def constant(name: str, shape: list[int], values: np.ndarray) -> int:
        tensor_type = schema.TensorType.INT32 if values.dtype == np.int32 else f32
        return tflite_file.add_tensor(model, graph, name, shape, tensor_type, values.tobytes())

    def reshape(source: int, shape: list[int], name: str) -> int:
        out = tflite_file.add_tensor(model, graph, name, shape, f32)
        options = schema.ReshapeOptionsT()
        options.newShape = np.array(shape, np.int32)
        new_shape = constant(f"{name}/shape", [len(shape)], np.array(shape, np.int32))
        tflite_file.add_operator(model, graph, schema.BuiltinOperator.RESHAPE, [source, new_shape], [out],
                schema.BuiltinOptions.ReshapeOptions, options)
        return out

    def concatenate(sources: list[int], width: int, name: str) -> int:
        out = tflite_file.add_tensor(model, graph, name, [1, width], f32)
        options = schema.ConcatenationOptionsT()
        options.axis = 1
        tflite_file.add_operator(model, graph, schema.BuiltinOperator.CONCATENATION, sources, [out],
                schema.BuiltinOptions.ConcatenationOptions, options)
        return out

    mesh = reshape(by_name[ATTENTION_MESH], [1, MESH_POINTS * 3], "cryedge/mesh")
    irises = [reshape(by_name[name], [1, 2 * IRIS_POINTS], f"cryedge/{name}") for name in ATTENTION_IRIS_ORDER]
    weights = iris_weights()
    joined_in = concatenate([mesh, *irises], weights.shape[1], "cryedge/mesh_and_irises")
    iris_points = tflite_file.add_tensor(model, graph, "cryedge/iris_points", [1, weights.shape[0]], f32)
    tflite_file.add_operator(model, graph, schema.BuiltinOperator.FULLY_CONNECTED,
            [joined_in, constant("cryedge/iris_weights", list(weights.shape), weights), -1], [iris_points],
            schema.BuiltinOptions.FullyConnectedOptions, schema.FullyConnectedOptionsT())
    points = concatenate([mesh, iris_points], (MESH_POINTS + 2 * IRIS_POINTS) * 3, "cryedge/points")
    out = reshape(points, [1, 1, 1, (MESH_POINTS + 2 * IRIS_POINTS) * 3], "cryedge/landmarks")
    graph.outputs = np.array([out, by_name[ATTENTION_PRESENCE]], dtype=np.int32)
    return tflite_file.write(model)


def short_range_layout(full_range_tflite: bytes) -> bytes:
    """The full-range face detector with its 2304 outputs regrouped into the short-range detector's 896.

    mediapipe 0.10.x (the last line whose aarch64 wheels run on the ARMv8.0 cores of a Pi 4, Pi 3
    and Zero 2 W) decodes a FaceLandmarker's detector with the short-range model's anchors: 896
    of them (16x16 cells of stride 8 with 2 anchors, then 8x8 cells of stride 16 with 6), and
    refuses the full-range model's 2304 (48x48 cells of stride 4, 1 anchor). The short-range
    model itself misses faces under a tenth of the frame width. So the full-range network stays,
    at its own 192x192 input, and its outputs are regrouped: each stride-8 cell covers 3x3 cells
    of the full-range grid and takes the best-scoring of their boxes (MAX_POOL_2D of the scores;
    the box where the score equals that maximum, picked by a mask and AVERAGE_POOL_2D), each box
    first re-expressed relative to the stride-8 cell's anchor centre in the short-range model's
    128-pixel units. The cell's second anchor and the 384 stride-16 anchors get a score of -100
    (never a face). Give it ``fold_constant_operators``'s dense model: 0.10.18's aarch64 runtime
    computes the full-range model's sparse float16 weights wrongly (its FaceDetector found the
    bundled photo's face at score 0.30 and a shifted box, against 0.92 on x86 and with dense weights).
    (1.x picks its anchors by the input size, so it needs the unchanged model: the two layouts
    cannot share one file. A 128x128 input resized to 192 inside would suit both, but measured
    fewer small faces: 4 of 12 faces of 6% of the frame width found, against 10 of 12.)
    """
    schema = tflite_file.schema()
    model = tflite_file.read(full_range_tflite)
    graph = model.subgraphs[0]
    if len(graph.outputs) != 2:
        raise ModelError(f"the face detector has {len(graph.outputs)} outputs; expected boxes and scores")
    boxes_in, scores_in = (int(i) for i in graph.outputs)
    full_cells, block, values = 48, 3, 16
    cells = full_cells // block  # 16: the short-range model's stride-8 grid
    if list(graph.tensors[boxes_in].shape) != [1, full_cells * full_cells, values]:
        raise ModelError(f"the face detector's boxes have shape {list(graph.tensors[boxes_in].shape)}; "
                         f"expected the full-range model's [1, {full_cells * full_cells}, {values}]")
    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    unused = 8 * 8 * 6

    def tensor(name: str, shape, tensor_type=f32, data: np.ndarray | None = None) -> int:
        return tflite_file.add_tensor(model, graph, f"cryedge/{name}", shape, tensor_type,
                                      None if data is None else data.tobytes())

    def constant(name: str, values_: np.ndarray) -> int:
        return tensor(name, list(values_.shape), i32 if values_.dtype == np.int32 else f32, values_)

    def op(builtin, inputs, shape, name, options_type=0, options=None, tensor_type=f32) -> int:
        out = tensor(name, shape, tensor_type)
        tflite_file.add_operator(model, graph, builtin, inputs, [out], options_type, options)
        return out

    def reshape(source: int, shape: list[int], name: str) -> int:
        options = schema.ReshapeOptionsT()
        options.newShape = np.array(shape, np.int32)
        return op(schema.BuiltinOperator.RESHAPE, [source, constant(f"{name}/shape", np.array(shape, np.int32))],
                  shape, name, schema.BuiltinOptions.ReshapeOptions, options)

    def pool(builtin, source: int, width: int, name: str) -> int:
        options = schema.Pool2DOptionsT()
        options.padding = schema.Padding.VALID
        options.strideW = options.strideH = options.filterWidth = options.filterHeight = block
        return op(builtin, [source], [1, cells, cells, width], name, schema.BuiltinOptions.Pool2DOptions, options)

    def binary(builtin, a: int, b: int, shape, name: str, options_type, options) -> int:
        return op(builtin, [a, b], shape, name, options_type, options)

    # Box values are in input pixels from the anchor centre: x, y, w, h, then 6 keypoints' x, y.
    # Full-range pixels are 1/192 of the frame, short-range ones 1/128; a full-range cell (x, y)
    # lies ((x % 3) - 1)/48, ((y % 3) - 1)/48 of the frame from its stride-8 cell's centre.
    short_size, full_size = 128.0, 192.0
    ys, xs = np.divmod(np.arange(full_cells * full_cells), full_cells)
    shift = np.zeros((full_cells * full_cells, values), np.float32)
    for value in range(values):
        if value not in (2, 3):
            along = xs if value % 2 == 0 else ys
            shift[:, value] = short_size * (along % block - 1) / full_cells
    grid = [1, full_cells, full_cells]
    scaled = binary(schema.BuiltinOperator.MUL, boxes_in, constant("scale", np.array([short_size / full_size], np.float32)),
                    [1, full_cells * full_cells, values], "scaled", schema.BuiltinOptions.MulOptions, schema.MulOptionsT())
    moved = binary(schema.BuiltinOperator.ADD, scaled, constant("shift", shift[None]), [1, full_cells * full_cells, values],
                   "moved", schema.BuiltinOptions.AddOptions, schema.AddOptionsT())
    score_grid = reshape(scores_in, [*grid, 1], "score_grid")
    best = pool(schema.BuiltinOperator.MAX_POOL_2D, score_grid, 1, "best")
    resize = schema.ResizeNearestNeighborOptionsT()
    best_up = op(schema.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, [best, constant("up", np.array(grid[1:], np.int32))],
                 [*grid, 1], "best_up", schema.BuiltinOptions.ResizeNearestNeighborOptions, resize)
    is_best = op(schema.BuiltinOperator.GREATER_EQUAL, [score_grid, best_up], [*grid, 1], "is_best",
                 tensor_type=schema.TensorType.BOOL)
    cast = schema.CastOptionsT()
    cast.inDataType, cast.outDataType = schema.TensorType.BOOL, f32
    mask = op(schema.BuiltinOperator.CAST, [is_best], [*grid, 1], "mask", schema.BuiltinOptions.CastOptions, cast)
    picked = binary(schema.BuiltinOperator.MUL, reshape(moved, [*grid, values], "box_grid"), mask, [*grid, values],
                    "picked", schema.BuiltinOptions.MulOptions, schema.MulOptionsT())
    # Means over the block of the masked boxes and of the mask: their ratio is the best box (the
    # mean of the best ones, should two scores tie exactly).
    total = pool(schema.BuiltinOperator.AVERAGE_POOL_2D, picked, values, "picked_mean")
    count = pool(schema.BuiltinOperator.AVERAGE_POOL_2D, mask, 1, "mask_mean")
    box = binary(schema.BuiltinOperator.DIV, total, count, [1, cells, cells, values], "box",
                 schema.BuiltinOptions.DivOptions, schema.DivOptionsT())

    def two_anchors(source: int, width: int, fill: float, name: str) -> int:
        """(1, 16, 16, width) -> (512, width): each cell's value, then ``fill`` for its second anchor."""
        flat = reshape(source, [cells * cells, width], f"{name}/flat")
        options = schema.ConcatenationOptionsT()
        options.axis = 1
        pair = op(schema.BuiltinOperator.CONCATENATION,
                  [flat, constant(f"{name}/second", np.full((cells * cells, width), fill, np.float32))],
                  [cells * cells, 2 * width], f"{name}/pair", schema.BuiltinOptions.ConcatenationOptions, options)
        return reshape(pair, [2 * cells * cells, width], f"{name}/anchors")

    def pad(source: int, width: int, fill: float, name: str) -> int:
        options = schema.ConcatenationOptionsT()
        options.axis = 0
        slots = 2 * cells * cells
        out = op(schema.BuiltinOperator.CONCATENATION,
                 [source, constant(f"{name}/unused", np.full((unused, width), fill, np.float32))],
                 [slots + unused, width], f"{name}/padded", schema.BuiltinOptions.ConcatenationOptions, options)
        return reshape(out, [1, slots + unused, width], f"{name}/short_range")

    boxes_out = pad(two_anchors(box, values, 0.0, "boxes"), values, 0.0, "boxes")
    scores_out = pad(two_anchors(best, 1, -100.0, "scores"), 1, -100.0, "scores")
    graph.outputs = np.array([boxes_out, scores_out], dtype=np.int32)
    model.signatureDefs = []
    return tflite_file.write(model)


def fold_constant_operators(tflite: bytes) -> bytes:
    """``tflite`` with every operator whose inputs are all constants replaced by its output, as a constant.

    The full-range face detector keeps its weights sparse and float16: DENSIFY and DEQUANTIZE
    operators rebuild them at load time. 0.10.18's aarch64 runtime got them wrong (see
    ``short_range_layout``); dense float32 constants are what every runtime reads alike. The values
    come from LiteRT's reference kernels (no XNNPACK, which consumes such weights without writing
    them out); densifying and float16 -> float32 are exact, so every machine writes the same bytes.
    The model grows (the face detector from 0.7 to 2.1 MB); its outputs stay bit-identical (tested).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise ModelError("building this bundle needs LiteRT: pip install ai-edge-litert") from None
    model = tflite_file.read(tflite)
    graph = model.subgraphs[0]
    constant = {i for i, tensor in enumerate(graph.tensors)
                if model.buffers[tensor.buffer].data is not None and len(model.buffers[tensor.buffer].data)}
    folded = []
    for index, op in enumerate(graph.operators):  # in execution order, so chains fold too
        inputs = [int(t) for t in op.inputs if t >= 0]
        if inputs and all(t in constant for t in inputs):
            folded.append(index)
            constant |= {int(t) for t in op.outputs}
    if not folded:
        return tflite
    runner = Interpreter(model_content=tflite, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner.allocate_tensors()
    for detail in runner.get_input_details():
        runner.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    runner.invoke()
    for index in folded:
        for output in graph.operators[index].outputs:
            tensor = graph.tensors[int(output)]
            tensor.buffer = tflite_file.add_buffer(model, np.ascontiguousarray(runner.get_tensor(int(output))).tobytes())
            tensor.sparsity = None
    skipped = set(folded)
    graph.operators = [op for index, op in enumerate(graph.operators) if index not in skipped]
    return drop_dead_operators(tflite_file.write(model))


def _live_operators(graph) -> list[int]:
    """Indices of the operators some graph output depends on, in their original order."""
    producer = {int(tensor): i for i, op in enumerate(graph.operators) for tensor in op.outputs}
    live: set[int] = set()
    pending = [int(tensor) for tensor in graph.outputs]
    while pending:
        op = producer.get(pending.pop())
        if op is not None and op not in live:
            live.add(op)
            pending.extend(int(tensor) for tensor in graph.operators[op].inputs if tensor >= 0)
    return sorted(live)


def drop_dead_operators(tflite: bytes) -> bytes:
    """``tflite`` without the operators no output needs, nor the tensors and weights only they used.

    TFLite runs every operator of a subgraph, whether an output depends on it or not, and plans
    memory for every tensor those operators touch. The pose landmark model's remaining outputs stay
    bit-identical (tested). Not applied to the face model: its lip and eye heads are dead too, but
    dropping them moved points by up to 0.18 px (XNNPACK partitions around its custom ops change)
    and measured no faster, for 3 MiB.
    """
    model = tflite_file.read(tflite)
    if len(model.subgraphs) != 1:
        raise ModelError(f"expected a model with one subgraph, got {len(model.subgraphs)}")
    graph = model.subgraphs[0]
    graph.operators = [graph.operators[i] for i in _live_operators(graph)]

    used_tensors = {int(t) for t in graph.inputs} | {int(t) for t in graph.outputs}
    for op in graph.operators:
        used_tensors |= {int(t) for t in op.inputs if t >= 0} | {int(t) for t in op.outputs}
    tensor_index = {old: new for new, old in enumerate(sorted(used_tensors))}
    graph.tensors = [graph.tensors[old] for old in sorted(used_tensors)]

    def renumber(indices):
        return np.array([tensor_index[int(t)] if t >= 0 else -1 for t in indices], dtype=np.int32)

    for op in graph.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = renumber(op.intermediates)
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    for signature in model.signatureDefs or []:
        for entry in (*(signature.inputs or []), *(signature.outputs or [])):
            entry.tensorIndex = tensor_index[entry.tensorIndex]

    # Buffer 0 is the empty buffer by convention; metadata entries point at buffers too.
    used_buffers = {0} | {tensor.buffer for tensor in graph.tensors} | {entry.buffer for entry in model.metadata or []}
    if model.metadataBuffer is not None:
        used_buffers |= {int(b) for b in model.metadataBuffer}
    buffer_index = {old: new for new, old in enumerate(sorted(used_buffers))}
    model.buffers = [model.buffers[old] for old in sorted(used_buffers)]
    for tensor in graph.tensors:
        tensor.buffer = buffer_index[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = buffer_index[entry.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = np.array([buffer_index[int(b)] for b in model.metadataBuffer], dtype=np.int32)
    return tflite_file.write(model)


def zero_output(tflite: bytes, name: str) -> bytes:
    """``tflite`` whose output ``name`` is zeros of its shape, made by one TILE of a constant.

    The operators that computed it are left dead, for ``drop_dead_operators``. For heads a task
    is never asked for, whose output MediaPipe still expects to find in its place.
    """
    schema = tflite_file.schema()
    model = tflite_file.read(tflite)
    graph = model.subgraphs[0]
    by_name = {graph.tensors[int(i)].name.decode(): int(i) for i in graph.outputs}
    if name not in by_name:
        raise ModelError(f"the model has no output {name!r}; its outputs are {sorted(by_name)}")
    target = by_name[name]
    tensor = graph.tensors[target]
    if tensor.type != schema.TensorType.FLOAT32:
        raise ModelError(f"output {name!r} is not float32")
    shape = np.asarray(tensor.shape, dtype=np.int32)
    graph.operators = [op for op in graph.operators if target not in {int(t) for t in op.outputs}]
    zero = tflite_file.add_tensor(model, graph, f"cryedge/{name}/zero", [1] * len(shape), schema.TensorType.FLOAT32,
                       np.zeros(1, np.float32).tobytes())
    multiples = tflite_file.add_tensor(model, graph, f"cryedge/{name}/multiples", [len(shape)], schema.TensorType.INT32,
                            shape.tobytes())
    tflite_file.add_operator(model, graph, schema.BuiltinOperator.TILE, [zero, multiples], [target],
            schema.BuiltinOptions.TileOptions, schema.TileOptionsT())
    return tflite_file.write(model)


def add_image_normalization(tflite: bytes, mean: float = 0.0, std: float = 255.0, name: str = "") -> bytes:
    """``tflite`` with TFLite metadata saying its RGB input is (pixel - mean) / std.

    MediaPipe Tasks read the input normalization from this metadata and refuse a float model
    without it. The metadata flatbuffer is written with the generated schema classes: 1.2.x's own
    metadata writers import a module its wheel lacks.
    """
    md = _metadata_schema()
    model = tflite_file.read(tflite)
    if any(entry.name == b"TFLITE_METADATA" for entry in model.metadata or []):
        raise ModelError(f"{name or 'model'} already has TFLite metadata; not overwriting it")

    normalization = md.NormalizationOptionsT()
    normalization.mean = [mean]
    normalization.std = [std]
    unit = md.ProcessUnitT()
    unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
    unit.options = normalization
    image = md.ImagePropertiesT()
    image.colorSpace = md.ColorSpaceType.RGB
    content = md.ContentT()
    content.contentPropertiesType = md.ContentProperties.ImageProperties
    content.contentProperties = image
    stats = md.StatsT()
    stats.max = [(255.0 - mean) / std]
    stats.min = [(0.0 - mean) / std]
    tensor = md.TensorMetadataT()
    tensor.name = "image"
    tensor.content = content
    tensor.processUnits = [unit]
    tensor.stats = stats
    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [tensor]
    graph = model.subgraphs[0]
    outputs = []
    for index in graph.outputs:
        out = md.TensorMetadataT()
        out.name = graph.tensors[int(index)].name.decode()
        outputs.append(out)
    subgraph.outputTensorMetadata = outputs
    metadata = md.ModelMetadataT()
    metadata.name = name
    metadata.description = "Input normalization added by cryedge models fetch."
    metadata.license = "Apache-2.0"
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = "1.0.0"

    tflite_file.set_metadata(model, "TFLITE_METADATA", tflite_file.pack_table(metadata, b"M001"))
    return tflite_file.write(model)


