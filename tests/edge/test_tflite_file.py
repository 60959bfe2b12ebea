"""``.tflite`` files read and written in one place: constant buffers 16-byte aligned, metadata entries, same results.

On the shipped default model (real, int8) and the same model as the generated flatbuffers packer
writes it (which aligns a byte vector to 1, as the card embedding did before).
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edge import paths, tflite_file
from edge.card import CARD_METADATA_NAME, load_card

DEFAULT_MODEL = paths.default_model()


def packed_by_the_generated_packer(data: bytes) -> bytes:
    """``data`` re-packed the way ``ModelT.Pack`` does it: byte vectors aligned to 1."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(tflite_file.read(data).Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def outputs(model: bytes, n: int = 300) -> np.ndarray:
    """The raw (quantized) outputs of ``model`` for ``n`` random inputs spanning the input type's range."""
    interpreter = Interpreter(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    given, wanted = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    info = np.iinfo(given["dtype"])
    rng = np.random.default_rng(0)
    results = []
    for _ in range(n):
        interpreter.set_tensor(given["index"], rng.integers(info.min, info.max + 1, size=given["shape"], dtype=given["dtype"]))
        interpreter.invoke()
        results.append(interpreter.get_tensor(wanted["index"]).copy())
    return np.stack(results)


@pytest.fixture(scope="module")
def default_bytes() -> bytes:
    return DEFAULT_MODEL.read_bytes()


def test_the_shipped_default_model_keeps_every_constant_buffer_16_byte_aligned(default_bytes):
    starts = tflite_file.buffer_starts(default_bytes)
    assert len(starts) >= 10, "the default model has constant buffers"
    assert tflite_file.misaligned_buffers(default_bytes) == []


def test_the_generated_packer_misaligns_and_a_write_realigns_with_the_same_results(default_bytes):
    unaligned = packed_by_the_generated_packer(default_bytes)
    assert tflite_file.misaligned_buffers(unaligned), "the packer this module replaces aligns to 1"
    rewritten = tflite_file.write(tflite_file.read(unaligned))
    assert tflite_file.misaligned_buffers(rewritten) == []
    assert np.array_equal(outputs(rewritten), outputs(default_bytes)), "bit for bit"
    assert tflite_file.write(tflite_file.read(rewritten)) == rewritten, "writing is deterministic"


def test_a_metadata_entry_is_added_replaced_and_read_back_with_buffers_aligned(default_bytes):
    card = tflite_file.read_metadata(default_bytes, CARD_METADATA_NAME)
    assert card is not None and load_card(DEFAULT_MODEL).name in card.decode()
    assert tflite_file.read_metadata(default_bytes, "no_such_entry") is None

    once = tflite_file.with_metadata(packed_by_the_generated_packer(default_bytes), "cryedge_test", b"first")
    twice = tflite_file.with_metadata(once, "cryedge_test", b"second")
    assert tflite_file.read_metadata(twice, "cryedge_test") == b"second"
    assert tflite_file.read_metadata(twice, CARD_METADATA_NAME) == card
    names = [tflite_file.root(twice).Metadata(i).Name() for i in range(tflite_file.root(twice).MetadataLength())]
    assert names.count(b"cryedge_test") == 1
    assert tflite_file.misaligned_buffers(twice) == []
    assert np.array_equal(outputs(twice), outputs(default_bytes))
