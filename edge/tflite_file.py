"""Reading and writing ``.tflite`` flatbuffers: the one place that knows the file's layout.

Used by the model card (the embedded ``cryedge_card`` metadata entry), the converter's report (the
graph's ops and tensors) and the bundle builder (graph edits). Every model written here keeps each
constant buffer on a 16-byte boundary, as TFLite's own writer lays them out: the generated
flatbuffers packer aligns a byte vector to 1 only, and a runtime that memory-maps the file wants
its constant tensors aligned (else it has to copy them, or refuses them).

The schema classes are the ones generated for flatbuffers' object API, shipped in ``ai-edge-litert``
(else in ``mediapipe``), so no TensorFlow is needed: this runs on a Pi.
"""

from __future__ import annotations

import numpy as np

BUFFER_ALIGNMENT = 16
FILE_IDENTIFIER = b"TFL3"


def schema():
    """The TFLite schema module (``Model``, ``ModelT``, ``BuiltinOperator``, ...)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from edge.mediapipe_import import import_mediapipe

        import_mediapipe()
        from mediapipe.tasks.metadata import schema_py_generated
    return schema_py_generated


def root(data: bytes):
    """The read-only view of ``data`` (``schema().Model``): fast, nothing is copied."""
    return schema().Model.GetRootAs(data, 0)


def read(data: bytes):
    """``data`` unpacked into the object API (``schema().ModelT``), to edit and ``write``."""
    tflite = schema()
    return tflite.ModelT.InitFromObj(tflite.Model.GetRootAs(data, 0))


def write(model) -> bytes:
    """The flatbuffer of ``model`` (a ``ModelT``), every non-empty buffer 16-byte aligned.

    Deterministic: the same model gives the same bytes.
    """
    import flatbuffers

    tflite = schema()

    class AlignedBuffer(tflite.BufferT):
        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                # StartVector aligns the end of the bytes; the builder's final padding to its
                # largest alignment makes that hold from the start of the file as well.
                builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
                builder.head -= len(payload)
                builder.Bytes[builder.head : builder.head + len(payload)] = payload
                data = builder.EndVector()
            tflite.BufferStart(builder)
            if data is not None:
                tflite.BufferAddData(builder, data)
            tflite.BufferAddOffset(builder, self.offset)
            tflite.BufferAddSize(builder, self.size)
            return tflite.BufferEnd(builder)

    buffers = model.buffers
    aligned = []
    for buffer in buffers or []:
        copy = AlignedBuffer()
        copy.data, copy.offset, copy.size = buffer.data, buffer.offset, buffer.size
        aligned.append(copy)
    model.buffers = aligned
    try:
        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    finally:
        model.buffers = buffers
    return bytes(builder.Output())


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def read_metadata(data: bytes, name: str) -> bytes | None:
    """The bytes of metadata entry ``name``, or None when the model has none of that name."""
    model = root(data)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def with_metadata(data: bytes, name: str, payload: bytes) -> bytes:
    """``data`` with metadata entry ``name`` holding ``payload`` (replacing one of that name)."""
    model = read(data)
    set_metadata(model, name, payload)
    return write(model)


def set_metadata(model, name: str, payload: bytes) -> None:
    """Put metadata entry ``name`` holding ``payload`` into ``model`` (a ``ModelT``), replacing one of that name."""
    entry = schema().MetadataT()
    entry.name = name
    entry.buffer = add_buffer(model, payload)
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != name] + [entry]


def pack_table(table, file_identifier: bytes) -> bytes:
    """The flatbuffer of one object-API table other than a model, e.g. TFLite metadata (``M001``)."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(table.Pack(builder), file_identifier=file_identifier)
    return bytes(builder.Output())


def buffer_starts(data: bytes) -> dict[int, int]:
    """{buffer index: file offset of its first byte} for every non-empty buffer held in the flatbuffer."""
    model = root(data)
    starts = {}
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            table = buffer._tab  # the generated reader has no accessor for a field's position
            starts[i] = table.Vector(table.Offset(4))  # vtable slot 4: Buffer.data, the first field
    return starts


def misaligned_buffers(data: bytes, alignment: int = BUFFER_ALIGNMENT) -> list[int]:
    """Indices of the non-empty buffers whose bytes do not start on an ``alignment`` boundary."""
    return [i for i, start in buffer_starts(data).items() if start % alignment]


# --- building graphs (object API) ----------------------------------------------------------------

def add_buffer(model, data: bytes | None) -> int:
    """Append a buffer holding ``data`` (None: an empty one) to ``model``; its index."""
    buffer = schema().BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8) if data else None
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def add_tensor(model, subgraph, name: str, shape, tensor_type: int, data: bytes | None = None) -> int:
    """Append a tensor (a constant when ``data`` is given) to ``subgraph``; its index."""
    tensor = schema().TensorT()
    tensor.name = name.encode()
    tensor.shape = np.asarray(shape, dtype=np.int32)
    tensor.type = tensor_type
    tensor.buffer = add_buffer(model, data)
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def opcode_index(model, builtin: int) -> int:
    """The index of builtin operator ``builtin`` in ``model``'s operator codes, added when missing."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and not code.customCode:
            return i
    code = schema().OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # readers take the larger of the two fields
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def add_operator(model, subgraph, builtin: int, inputs, outputs, options_type: int, options) -> None:
    """Append a builtin operator reading tensors ``inputs`` (-1: omitted) and writing ``outputs``."""
    op = schema().OperatorT()
    op.opcodeIndex = opcode_index(model, builtin)
    op.inputs = np.asarray(inputs, dtype=np.int32)
    op.outputs = np.asarray(outputs, dtype=np.int32)
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    subgraph.operators.append(op)
