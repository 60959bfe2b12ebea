"""``cryedge models fetch``: bundles built offline from the pinned mediapipe wheel, or given ones.

The wheel is downloaded once into ~/.cache/cryedge (pip from PyPI) and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge import cli, tflite_file
from edge.bundles import build, graph_edits
from edge.errors import DataError, ModelError

FACE, POSE = build.FACE_BUNDLE, build.POSE_BUNDLE


@pytest.fixture(scope="session")
def wheel_tflites() -> dict[str, bytes]:
    pins = build.load_pins()
    return build.wheel_members(build.fetch_wheel(pins, build.default_cache()), pins)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("landmarks")
    build.fetch(out)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter(model: bytes):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model)
    runner.allocate_tensors()
    return runner


def test_fetch_builds_both_bundles_and_the_same_bytes_every_time(built, tmp_path):
    # A second build in another process (its own hash seeds, allocation, flatbuffer builder).
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "models", "fetch", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    for name in (FACE, POSE):
        assert sha256(tmp_path / name) == sha256(built / name), f"{name} differs between two builds"
        assert f"{tmp_path / name}  sha256 {sha256(built / name)}" in printed


@pytest.mark.parametrize("name", [FACE, POSE])
def test_bundles_are_stored_zips_with_the_members_mediapipe_looks_up_aligned_for_mmap(built, name):
    with zipfile.ZipFile(built / name) as archive:
        infos = archive.infolist()
        assert sorted(i.filename for i in infos) == sorted(build.BUNDLE_MEMBERS[name])
        assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == build.ZIP_DATE for i in infos)
    data = (built / name).read_bytes()
    for info in infos:
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        assert data[start : start + 8][4:8] == b"TFL3", "member bytes are a TFLite flatbuffer"
        assert start % build.MEMBER_ALIGNMENT == 0


@pytest.mark.parametrize("name", [FACE, POSE])
def test_the_edited_landmark_models_keep_their_constant_buffers_16_byte_aligned(built, name):
    # The detectors are copied from the wheel unchanged (and unaligned as MediaPipe ships them):
    # rewriting them would change the pinned bundle bytes for no measured gain.
    edited = "face_landmarks_detector.tflite" if name == FACE else "pose_landmarks_detector.tflite"
    with zipfile.ZipFile(built / name) as archive:
        model = archive.read(edited)
    assert len(tflite_file.buffer_starts(model)) > 100
    assert tflite_file.misaligned_buffers(model) == []


def test_the_face_model_gives_478_points_from_output_0_and_face_presence_from_output_1(built, wheel_tflites):
    from edge.mediapipe_import import import_mediapipe

    import_mediapipe()
    from mediapipe.tasks.metadata import schema_py_generated as schema

    def outputs(model: bytes) -> list[tuple[str, int]]:
        graph = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0)).subgraphs[0]
        return [(graph.tensors[i].name.decode(), int(np.prod(graph.tensors[i].shape))) for i in graph.outputs]

    original = outputs(wheel_tflites["face_landmark_with_attention.tflite"])
    assert original[0] == ("output_mesh_identity", 468 * 3), "what 1.2.x would misread without the surgery"
    with zipfile.ZipFile(built / FACE) as archive:
        grown = outputs(archive.read("face_landmarks_detector.tflite"))
    assert grown == [("cryedge/landmarks", 478 * 3), ("conv_faceflag", 1)]


def test_iris_weights_copy_each_iris_and_give_it_its_eyes_depth():
    weights = graph_edits.iris_weights()
    mesh = np.random.default_rng(0).normal(size=(468, 3)).astype(np.float32)
    iris_a, iris_b = np.arange(10, dtype=np.float32) + 100, np.arange(10, dtype=np.float32) + 200
    points = (weights @ np.concatenate([mesh.reshape(-1), iris_a, iris_b])).reshape(10, 3)
    assert np.allclose(points[:5, :2], iris_a.reshape(5, 2)) and np.allclose(points[5:, :2], iris_b.reshape(5, 2))
    assert np.allclose(points[:5, 2], mesh[list(graph_edits.RIGHT_EYE_CONTOUR), 2].mean(), atol=1e-6)
    assert np.allclose(points[5:, 2], mesh[list(graph_edits.LEFT_EYE_CONTOUR), 2].mean(), atol=1e-6)


def test_the_built_face_bundle_puts_each_iris_in_its_eye(built):
    import skimage.data

    from edge.landmarks import landmarks_of_photo

    face = landmarks_of_photo(skimage.data.astronaut(), face_model=built / FACE, pose=False).face
    for centre, contour in ((468, graph_edits.RIGHT_EYE_CONTOUR), (473, graph_edits.LEFT_EYE_CONTOUR)):
        eye = face[list(contour)]
        eye_width = np.ptp(eye[:, 0])
        assert np.linalg.norm(face[centre] - eye.mean(axis=0)) < 0.15 * eye_width, "iris centre inside its eye"
        radii = np.linalg.norm(face[centre + 1 : centre + 5] - face[centre], axis=1)
        assert np.all((radii > 0.1 * eye_width) & (radii < 0.5 * eye_width)), "a ring round the iris centre"


def test_the_pose_landmark_model_says_its_input_is_scaled_from_0_255_to_0_1(built):
    from edge.mediapipe_import import import_mediapipe

    import_mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md
    from mediapipe.tasks.metadata import schema_py_generated as schema

    with zipfile.ZipFile(built / POSE) as archive:
        model = archive.read("pose_landmarks_detector.tflite")
    root = schema.Model.GetRootAs(model, 0)
    entries = {root.Metadata(i).Name(): root.Metadata(i).Buffer() for i in range(root.MetadataLength())}
    raw = root.Buffers(entries[b"TFLITE_METADATA"]).DataAsNumpy().tobytes()
    metadata = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(raw, 0))
    unit = metadata.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0]
    assert unit.optionsType == md.ProcessUnitOptions.NormalizationOptions
    assert list(unit.options.mean) == [0.0] and list(unit.options.std) == [255.0]
    interpreter(model)  # still a valid model


def astronaut_for_pose_model() -> np.ndarray:
    """A real photo as the pose landmark model's input: 256x256 RGB scaled to [0, 1]."""
    import cv2
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (256, 256)).astype(np.float32)[None] / 255.0


def run_tflite(model: bytes, image: np.ndarray) -> dict[str, np.ndarray]:
    runner = interpreter(model)
    runner.set_tensor(runner.get_input_details()[0]["index"], image)
    runner.invoke()
    return {detail["name"]: runner.get_tensor(detail["index"]) for detail in runner.get_output_details()}


def test_the_pose_landmark_model_loses_its_mask_head_and_keeps_its_other_outputs_bit_for_bit(built, wheel_tflites):
    original = wheel_tflites["pose_landmark_full.tflite"]
    with zipfile.ZipFile(built / POSE) as archive:
        lean = archive.read("pose_landmarks_detector.tflite")
    image = astronaut_for_pose_model()
    before, after = run_tflite(original, image), run_tflite(lean, image)
    assert sorted(before) == sorted(after), "MediaPipe finds the outputs by position: all five stay"
    mask = graph_edits.POSE_SEGMENTATION
    assert before[mask].any() and not after[mask].any() and after[mask].shape == before[mask].shape
    for name in sorted(set(before) - {mask}):
        assert np.array_equal(before[name], after[name]), f"output {name} changed"
    operators = [tflite_file.read(model).subgraphs[0].operators for model in (original, lean)]
    assert len(operators[1]) <= len(operators[0]) - 40, "the mask head's operators are gone"


def test_pose_landmarker_finds_the_same_points_with_the_lean_bundle_as_with_the_whole_model(built, wheel_tflites, tmp_path):
    import skimage.data

    from edge.landmarks import landmarks_of_photo

    whole = tmp_path / POSE
    build.write_bundle(whole, {
        "pose_detector.tflite": wheel_tflites["pose_detection.tflite"],
        "pose_landmarks_detector.tflite": graph_edits.add_image_normalization(wheel_tflites["pose_landmark_full.tflite"]),
    })
    photo = skimage.data.astronaut()
    points = [landmarks_of_photo(photo, pose_model=bundle, face=False).pose for bundle in (whole, built / POSE)]
    assert points[0] is not None and np.array_equal(points[0], points[1])


def test_zeroing_an_output_the_model_lacks_names_the_outputs_it_has(wheel_tflites):
    with pytest.raises(ModelError, match=r"no output 'mask'; its outputs are \['Identity', 'Identity_1'"):
        graph_edits.zero_output(wheel_tflites["pose_landmark_full.tflite"], "mask")


def test_a_wheel_whose_sha256_differs_from_the_pin_is_refused(tmp_path):
    pins = build.load_pins()
    good = build.fetch_wheel(pins, build.default_cache())
    tampered = tmp_path / pins.wheel
    shutil.copyfile(good, tampered)
    with open(tampered, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match=f"{pins.wheel} has sha256 .* but landmark_sources.json pins {pins.wheel_sha256}"):
        build.fetch(tmp_path / "out", cache=tmp_path)
    assert not (tmp_path / "out" / FACE).exists()


def test_a_tflite_whose_sha256_differs_from_the_pin_is_refused(tmp_path):
    pins = build.load_pins()
    wheel = build.fetch_wheel(pins, build.default_cache())
    name = "pose_detection.tflite"
    wrong = build.Pins(pins.requirement, pins.wheel, pins.platform_tag, pins.wheel_sha256,
                           {name: {**pins.members[name], "sha256": "0" * 64}})
    with pytest.raises(ModelError, match=f"{pins.members[name]['path']} in {pins.wheel} has sha256"):
        build.wheel_members(wheel, wrong)


def test_each_machine_has_its_pinned_wheel():
    assert build.load_pins("x86_64").requirement == "mediapipe==0.10.21"
    arm = build.load_pins("aarch64")
    assert arm.requirement == "mediapipe==0.10.18" and "aarch64" in arm.wheel
    assert build.load_pins("arm64") == arm
    with pytest.raises(ModelError, match="riscv64"):
        build.load_pins("riscv64")


def test_given_official_bundles_are_checked_and_copied(built, tmp_path):
    out = tmp_path / "out"
    written = build.fetch(out, face_bundle=str(built / FACE), pose_bundle=f"file://{built / POSE}")
    assert sha256(out / FACE) == sha256(built / FACE) and sha256(out / POSE) == sha256(built / POSE)
    assert written == {str(out / FACE): sha256(built / FACE), str(out / POSE): sha256(built / POSE)}


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>not found</html>", "not a MediaPipe task bundle"),
        (_zip({"face_detector.tflite": b"x"}), "lacks face_landmarks_detector.tflite"),
        (_zip({"face_detector.tflite": b"x" * 100, "face_landmarks_detector.tflite": b"y" * 100}, zipfile.ZIP_DEFLATED),
         "compressed"),
    ],
)
def test_a_given_bundle_that_is_not_a_face_landmarker_is_a_data_error(tmp_path, content, message):
    bad = tmp_path / "bad.task"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message):
        build.fetch(tmp_path / "out", face_bundle=str(bad), pose_bundle=str(bad))
    assert cli.main(["models", "fetch", "--output", str(tmp_path / "out"), "--face-bundle", str(tmp_path / "nope")]) == 7


def test_an_output_that_is_a_file_is_said_to_be_one(tmp_path, capsys):
    """It read "cryedge: File exists: PATH", the file left alone but the reason unsaid."""
    a_file = tmp_path / "landmarks"
    a_file.write_text("notes\n")
    given = tmp_path / "given.task"
    given.write_bytes(b"x")
    assert cli.main(["models", "fetch", "--output", str(a_file), "--face-bundle", str(given),
                     "--pose-bundle", str(given)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"cryedge: cannot write into {a_file}: it is a file"]
    assert a_file.read_text() == "notes\n"


def decoded_boxes(raw: np.ndarray, scale: float, centres: np.ndarray) -> np.ndarray:
    """Box values (x, y, w, h, 6 keypoints) in frame fractions, as MediaPipe decodes fixed-size anchors."""
    boxes = raw / scale
    boxes[:, 0::2] += centres[:, :1]
    boxes[:, 1::2] += centres[:, 1:]
    boxes[:, 2:4] -= centres  # width and height are not offsets from the anchor
    return boxes


def grid_centres(cells: int, per_cell: int = 1) -> np.ndarray:
    ys, xs = np.divmod(np.arange(cells * cells), cells)
    return np.repeat(np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=1), per_cell, axis=0)


def test_the_short_range_layout_keeps_each_cells_best_full_range_box_as_it_decodes(wheel_tflites):
    """mediapipe 0.10.x (the Pi 4's) decodes 896 short-range anchors; the regrouped full-range detector
    must hand it the very boxes and scores the full-range model found, only re-expressed."""
    import cv2
    import skimage.data

    full = graph_edits.fold_constant_operators(wheel_tflites["face_detection_full_range_sparse.tflite"])
    short = graph_edits.short_range_layout(full)
    scene = cv2.resize(skimage.data.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    image = (scene.astype(np.float32)[None] - 127.5) / 127.5
    before, after = list(run_tflite(full, image).values()), list(run_tflite(short, image).values())
    assert [a.shape for a in after] == [(1, 896, 16), (1, 896, 1)], "the short-range model's output shapes"
    native = decoded_boxes(before[0][0].copy(), 192.0, grid_centres(48))
    native_scores = before[1][0, :, 0]
    regrouped = decoded_boxes(after[0][0, :512].copy(), 128.0, grid_centres(16, 2))
    scores = after[1][0, :, 0]
    assert (scores[1:512:2] == -100).all() and (scores[512:] == -100).all(), "only one anchor a cell holds a face"
    ys, xs = np.divmod(np.arange(48 * 48), 48)
    for cell in range(256):
        gy, gx = divmod(cell, 16)
        block = np.flatnonzero((ys // 3 == gy) & (xs // 3 == gx))
        best = block[np.argmax(native_scores[block])]
        assert scores[2 * cell] == pytest.approx(native_scores[best], abs=1e-5)
        assert np.allclose(regrouped[2 * cell], native[best], atol=1e-4), f"cell {cell}: the box moved"
    assert native_scores.max() > 0, "the face was found (score above 0.5)"
    assert np.isclose(scores.max(), native_scores.max())


def test_folding_the_detectors_sparse_float16_weights_keeps_its_outputs_bit_for_bit(wheel_tflites):
    import skimage.data

    sparse = wheel_tflites["face_detection_full_range_sparse.tflite"]
    dense = graph_edits.fold_constant_operators(sparse)
    image = (skimage.data.astronaut()[::8, ::8][:64].astype(np.float32) - 127.5) / 127.5
    image = np.ascontiguousarray(np.pad(image, ((0, 128), (0, 128), (0, 0)))[None, :192, :192])
    for before, after in zip(run_tflite(sparse, image).values(), run_tflite(dense, image).values(), strict=True):
        assert np.array_equal(before, after)
    kinds = {tflite_file.schema().BuiltinOperator.DENSIFY, tflite_file.schema().BuiltinOperator.DEQUANTIZE}
    for model, expected in ((sparse, True), (dense, False)):
        graph = tflite_file.read(model).subgraphs[0]
        codes = tflite_file.read(model).operatorCodes
        used = {max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode) for op in graph.operators}
        assert bool(used & kinds) == expected
    assert graph_edits.fold_constant_operators(dense) == dense, "nothing left to fold"


@pytest.mark.parametrize(("version", "layout"), [("0.10.18", "short-range"), ("0.10.14", "short-range"),
                                                 ("1.2.3", "full-range"), ("1.0.0", "full-range")])
def test_the_face_detector_layout_follows_the_installed_mediapipe(version, layout):
    assert build.detector_layout(version) == layout


def test_the_short_range_bundle_differs_only_in_the_face_detector(wheel_tflites):
    full, short = build.build_bundles(wheel_tflites), build.build_bundles(wheel_tflites, "short-range")
    assert short[POSE] == full[POSE]
    assert short[FACE]["face_landmarks_detector.tflite"] == full[FACE]["face_landmarks_detector.tflite"]
    assert short[FACE]["face_detector.tflite"] != full[FACE]["face_detector.tflite"]
    with pytest.raises(ValueError, match="layout"):
        build.build_bundles(wheel_tflites, "medium-range")


def test_a_bundle_damaged_on_disk_since_it_was_fetched_is_refused_in_one_line(tmp_path):
    """4 KiB of zeros in the face landmark model's weights (an SD card's damage) after `cryedge models fetch`:
    MediaPipe loaded it without a word and the face points moved by tens of pixels, so the cry model would judge
    wrong points all night. fetch lists what it wrote (SHA256SUMS, sha256sum's format) and the landmark stage
    refuses a bundle that differs: one line naming the file and the command, exit 4 (systemd does not restart).
    Real bundles, a real MediaPipe, the checkout's photo."""
    from edge import paths

    models = tmp_path / "models"
    env = {**os.environ, "CRYEDGE_MODELS": str(models)}
    source = paths.landmarks_dir()
    fetched = subprocess.run([sys.executable, "-m", "edge.cli", "models", "fetch", "--face-bundle", str(source / FACE),
                              "--pose-bundle", str(source / POSE)], capture_output=True, text=True, timeout=120, env=env)
    assert fetched.returncode == 0, fetched.stderr
    listed = (models / "landmarks" / "SHA256SUMS").read_text()
    assert listed == "".join(f"{sha256(source / name)}  {name}\n" for name in sorted((FACE, POSE)))
    photo = str(paths.data_file("astronaut.jpg"))

    def points() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge.cli", "landmarks", photo, "--json"],
                              capture_output=True, text=True, timeout=120, env=env)

    sound = points()
    assert sound.returncode == 0 and json.loads(sound.stdout)["face70"], sound.stderr
    face = models / "landmarks" / FACE
    data = bytearray(face.read_bytes())
    with zipfile.ZipFile(face) as bundle:
        member = bundle.getinfo("face_landmarks_detector.tflite")
    weights = member.header_offset + 64 + int(member.file_size * 0.6)  # inside its stored bytes
    data[weights:weights + 4096] = bytes(4096)
    face.write_bytes(data)
    damaged = points()
    assert damaged.returncode == 4, (damaged.returncode, damaged.stdout[:200])
    said = damaged.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"cryedge: landmark model {face} is not the one `cryedge models "
                                                 "fetch` wrote there") and "models fetch --output" in said[0], said
