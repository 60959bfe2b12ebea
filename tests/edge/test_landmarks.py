"""The landmark stage on real photos shipped by packages (scikit-image, matplotlib).

Bundles are built by ``cryedge models fetch`` from the pinned mediapipe wheel (cached in
~/.cache/cryedge). Face points are checked against anatomy (parts, order, sides) and against an
independent iBUG-68 detector: dlib's frontal face detector and its 68-point shape predictor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import cli
from edge.bundles import build
from edge.errors import DataError, ModelError
from edge.features import get_spec, keypoints
from edge.landmarks import LandmarkExtractor, landmarks_of_photo
from edge.records import Frame

SPEC = get_spec("openpose-face70-body8")
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # the person's
RIGHT_PUPIL, LEFT_PUPIL = 68, 69
NOSE_TIP, CHIN = 30, 8
BODY = 70  # offset of body8 in the spec's points
NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER = BODY + 1, BODY + 2, BODY + 3, BODY + 4, BODY + 5


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models folder with both bundles built from the pinned wheel."""
    models = tmp_path_factory.mktemp("models")
    build.fetch(models / "landmarks")
    return models


@pytest.fixture
def use_models(models_dir, monkeypatch) -> Path:
    monkeypatch.setenv("CRYEDGE_MODELS", str(models_dir))
    return models_dir


def photo(name: str) -> np.ndarray:
    """A real photo as RGB uint8: scikit-image's astronaut, camera, coffee; matplotlib's Grace Hopper."""
    if name == "hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.ascontiguousarray(np.dstack([image] * 3) if image.ndim == 2 else image)


def points_of(image: np.ndarray, **options):
    landmarks = landmarks_of_photo(image, **options)
    xy, present = keypoints(landmarks, SPEC)
    return landmarks, xy, present


def inside(point, polygon) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32).reshape(-1, 1, 2), tuple(map(float, point)), False) > 0


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_face70_points_land_on_the_faces_parts_in_order_and_on_the_persons_sides(use_models, name):
    landmarks, xy, present = points_of(photo(name), pose=False)
    assert landmarks.has_face and present[:70].all()
    x, y = xy[:, 0], xy[:, 1]
    # Frontal, un-mirrored photos: the person's right is the image's left.
    assert x[RIGHT_EYE].max() < x[LEFT_EYE].min()
    assert x[0] < x[8] < x[16], "the jaw runs from the person's right ear over the chin to the left"
    assert np.all(np.diff(x[0:9]) > -2) and np.all(np.diff(x[8:17]) > -2), "the jaw line goes round, not back"
    assert y[CHIN] == y[0:17].max(), "the chin is the lowest jaw point"
    assert y[17:27].max() < y[36:48].min(), "brows above the eyes"
    assert y[36:48].max() < y[NOSE_TIP] < y[48:68].min(), "eyes, then nose tip, then mouth"
    # Thin closed lips (Grace Hopper) put the upper lip's top and inner edge within a pixel.
    assert y[51] - 2 < y[62] <= y[66] + 1 < y[57], "upper lip over the inner lips over the lower lip"
    assert x[48] < x[51] < x[54], "mouth corners on their sides"
    assert x[31] < x[33] < x[35], "nostrils on their sides"
    assert inside(xy[RIGHT_PUPIL], xy[RIGHT_EYE]) and inside(xy[LEFT_PUPIL], xy[LEFT_EYE]), "pupils inside the eyes"
    box = landmarks.face_box
    assert box[0] <= x[:68].min() + 1 and x[:68].max() - 1 <= box[2]


def test_body8_points_sit_on_the_shoulders_and_the_right_arm(use_models):
    # Positions checked by eye on the photos; the boxes are generous but exclude the other side.
    _, xy, present = points_of(photo("astronaut"))
    assert present[[NECK, R_SHOULDER, L_SHOULDER, R_ELBOW]].all()
    chin_y = xy[CHIN, 1]
    assert xy[R_SHOULDER, 0] < xy[NECK, 0] < xy[L_SHOULDER, 0]
    assert min(xy[R_SHOULDER, 1], xy[L_SHOULDER, 1]) > chin_y, "shoulders below the chin"
    assert 60 <= xy[R_SHOULDER, 0] <= 160 and 190 <= xy[R_SHOULDER, 1] <= 280
    assert 40 <= xy[R_ELBOW, 0] <= 120 and 330 <= xy[R_ELBOW, 1] <= 440, "right elbow low on the left of the photo"

    # The cameraman: his right arm is bent, elbow low at the left, hand at the camera.
    _, xy, present = points_of(photo("camera"))
    assert present[[R_SHOULDER, R_ELBOW, R_WRIST]].all()
    assert 110 <= xy[R_ELBOW, 0] <= 180 and 260 <= xy[R_ELBOW, 1] <= 340
    assert 190 <= xy[R_WRIST, 0] <= 290 and 180 <= xy[R_WRIST, 1] <= 250

    _, xy, present = points_of(photo("hopper"))
    assert present[[R_SHOULDER, L_SHOULDER]].all()
    assert xy[R_SHOULDER, 0] < xy[RIGHT_EYE, 0].min() and xy[L_SHOULDER, 0] > xy[LEFT_EYE, 0].max()
    assert min(xy[R_SHOULDER, 1], xy[L_SHOULDER, 1]) > xy[CHIN, 1]


def _variants(image: np.ndarray):
    h, w = image.shape[:2]
    yield "as shipped", image
    yield "mirrored", np.ascontiguousarray(image[:, ::-1])
    for angle in (-15, 15):
        rotation = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        yield f"turned {angle} deg", cv2.warpAffine(image, rotation, (w, h), borderMode=cv2.BORDER_REFLECT)
    yield "half size", cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


@pytest.mark.slow
def test_face70_agrees_with_dlibs_ibug68_detector(use_models):
    """Done-when of the landmarks issue: mean error / inter-ocular distance <= 8% (5% for 17-67)."""
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    errors = []
    with LandmarkExtractor(pose=False, mode="image") as extractor:
        for name in ("astronaut", "hopper"):
            for variant, image in _variants(photo(name)):
                landmarks = extractor.extract(Frame(image, 0.0, 0))
                assert landmarks.has_face, f"no face in {name} {variant}"
                faces = detector(image, 1)
                assert faces, f"dlib finds no face in {name} {variant}"
                # dlib also "finds" a face in the astronaut's flag: take the one MediaPipe found.
                x, y = landmarks.face[:468].mean(axis=0)
                face = min(faces, key=lambda r: np.hypot(r.center().x - x, r.center().y - y))
                reference = np.array([(p.x, p.y) for p in predictor(image, face).parts()], dtype=np.float32)
                xy, _ = keypoints(landmarks, SPEC)
                inter_ocular = np.linalg.norm(reference[36] - reference[45])  # outer eye corners
                error = np.linalg.norm(xy[:68] - reference, axis=1) / inter_ocular
                assert error.mean() <= 0.08, f"{name} {variant}: mean error {error.mean():.3f}"
                errors.append(error)
    errors = np.array(errors)
    assert errors.mean() <= 0.08, f"points 0-67: {errors.mean():.3f}"
    assert errors[:, 17:].mean() <= 0.05, f"points 17-67: {errors[:, 17:].mean():.3f}"


def crib_scene(face_photo: np.ndarray, face_width: float, fraction: float, size=(640, 480), at=(0.15, 0.2)):
    """A real face pasted at ``fraction`` of the frame width into a larger real photo; and its box."""
    width, height = size
    scale = fraction * width / face_width
    small = cv2.resize(face_photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    scene = cv2.resize(photo("coffee"), size, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    x, y = int(at[0] * (width - w)), int(at[1] * (height - h))
    scene[y : y + h, x : x + w] = small
    return np.ascontiguousarray(scene), (x, y, scale)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_a_face_8_percent_of_the_frame_width_is_found(use_models, size):
    astronaut = photo("astronaut")
    big = landmarks_of_photo(astronaut, pose=False)
    big_width = big.face_box[2] - big.face_box[0]
    scene, (x, y, scale) = crib_scene(astronaut, big_width, 0.08, size)
    small = landmarks_of_photo(scene, pose=False)
    assert small.has_face, "the full-range face detector finds a face of 8% of the frame width"
    width = small.face_box[2] - small.face_box[0]
    assert width == pytest.approx(0.08 * size[0], rel=0.15)
    expected_nose = big.face[4] * scale + (x, y)
    assert np.linalg.norm(small.face[4] - expected_nose) < 0.1 * width, "the points are on the pasted face"


def test_a_region_of_interest_finds_a_face_5_percent_of_the_width_and_maps_points_to_the_frame(use_models):
    hopper = photo("hopper")
    big = landmarks_of_photo(hopper, pose=False)
    big_width = big.face_box[2] - big.face_box[0]
    scene, (x, y, scale) = crib_scene(hopper, big_width, 0.05, at=(0.2, 0.3))
    assert not landmarks_of_photo(scene, pose=False).has_face, "too small for the whole frame"
    found = landmarks_of_photo(scene, pose=False, roi=(0.0, 0.0, 0.5, 0.6))
    assert found.has_face and (found.width, found.height) == (640, 480)
    expected_nose = big.face[4] * scale + (x, y)
    assert np.linalg.norm(found.face[4] - expected_nose) < 0.1 * (found.face_box[2] - found.face_box[0])


def test_no_person_gives_no_face_no_pose_and_zero_features(use_models):
    from edge.features import frame_features

    landmarks = landmarks_of_photo(photo("coffee"))
    assert landmarks.face is None and landmarks.pose is None and landmarks.face_box is None
    assert not frame_features(landmarks, SPEC).any()


def test_video_mode_tracks_a_moving_face_and_repeats_pose_between_pose_frames(use_models):
    astronaut = photo("astronaut")
    frames = [Frame(np.ascontiguousarray(np.roll(astronaut, 4 * i, axis=1)), t=100.0 + i / 30, index=i) for i in range(6)]
    with LandmarkExtractor(pose_every=3) as extractor:
        results = [extractor.extract(frame) for frame in frames]
        # A repeated timestamp (a source that stalls) must not stop the landmarker.
        again = extractor.extract(Frame(frames[-1].image, t=frames[-1].t, index=6))
    assert all(r.has_face and r.has_pose for r in results) and again.has_face
    noses = np.array([r.face[4, 0] for r in results])
    assert np.allclose(np.diff(noses), 4, atol=1.5), "the face follows the image shifting 4 px a frame"
    assert results[1].pose is results[0].pose and results[2].pose is results[0].pose
    assert results[3].pose is not results[0].pose
    assert results[3].pose[0, 0] - results[0].pose[0, 0] == pytest.approx(12, abs=3)


def test_largest_or_centre_face_is_the_subject(use_models):
    scene = cv2.resize(photo("coffee"), (1024, 576))
    scene[48 : 48 + 480, 0:410] = cv2.resize(photo("hopper"), (410, 480))  # a big face on the left
    scene[60 : 60 + 450, 400:700] = photo("astronaut")[:450, 100:400]  # a smaller one near the centre
    largest = landmarks_of_photo(scene, pose=False, num_faces=2)
    centre = landmarks_of_photo(scene, pose=False, num_faces=2, subject="center")
    assert largest.face_box[2] < 400 < centre.face_box[0]
    # The pose follows the chosen face: Grace Hopper's shoulders, then the astronaut's.
    for subject, side in (("largest", slice(0, 400)), ("center", slice(400, 1024))):
        landmarks = landmarks_of_photo(scene, num_faces=2, num_poses=2, subject=subject)
        nose = landmarks.pose[0, 0]
        assert side.start <= nose < side.stop, f"{subject}: pose nose at x={nose:.0f}"


def test_the_extractor_is_built_from_the_landmarks_config_section(use_models):
    from edge.config import LandmarksConfig

    config = LandmarksConfig(pose=False, roi=(0.2, 0.0, 0.7, 0.5), subject="center")
    with LandmarkExtractor.from_config(config) as extractor:
        assert extractor.roi == (0.2, 0.0, 0.7, 0.5) and extractor.subject == "center"
        cropped = extractor.extract(Frame(photo("astronaut"), 1.0, 0))
    whole = landmarks_of_photo(photo("astronaut"), pose=False)
    assert cropped.has_face and not cropped.has_pose and (cropped.width, cropped.height) == (512, 512)
    assert np.abs(cropped.face[:468] - whole.face[:468]).mean() < 2.0, "points are in whole-frame pixels"


def test_a_missing_bundle_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYEDGE_MODELS", str(tmp_path))
    with pytest.raises(ModelError, match=r"face_landmarker\.task is missing; run `cryedge models fetch`"):
        LandmarkExtractor()
    assert cli.main(["landmarks"]) == ModelError.exit_code


def test_close_is_idempotent_and_a_closed_extractor_refuses_frames(use_models):
    extractor = LandmarkExtractor(pose=False)
    extractor.close()
    extractor.close()
    with pytest.raises(ModelError, match="closed"):
        extractor.extract(Frame(photo("astronaut"), 0.0, 0))


def test_cli_prints_points_and_features_of_the_bundled_photo(use_models, capsys, tmp_path):
    out = tmp_path / "drawn.png"
    assert cli.main(["landmarks", "--json", "--draw", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["face70"]) == 70 and all(p is not None for p in result["face70"])
    assert len(result["body8"]) == 8 and len(result["features"]) == 156
    assert 0 <= min(result["features"]) and max(result["features"]) <= 1, "min-max normalized by default"
    drawn = cv2.imread(str(out))
    assert drawn.shape == (512, 512, 3)
    x, y = map(round, result["face70"][30])
    assert tuple(drawn[y, x]) != tuple(cv2.imread(str(Path(cli.__file__).parent / "data" / "astronaut.jpg"))[y, x])

    assert cli.main(["landmarks", "--normalization", "pixels", "--json"]) == 0
    pixels = json.loads(capsys.readouterr().out)
    assert pixels["features"][:2] == pytest.approx(pixels["face70"][0], abs=0.01)

    assert cli.main(["landmarks"]) == 0
    summary = capsys.readouterr().out
    assert "face: 70/70 points" in summary and "features: 156 values" in summary


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--roi", "0.5", "0.5", "0.1", "0.1"], 3, "cryedge: --roi X0 Y0 X1 Y1: the crop's left must be left of its right"),
    (["--roi", "2", "2", "3", "3"], 2, "argument --roi: 2 is not a fraction of the frame (0 to 1)"),
    (["--num-faces", "0"], 2, "argument --num-faces: 0: at least 1"),
])
def test_cli_refuses_a_crop_or_a_face_count_that_cannot_be_in_one_line(use_models, capsys, args, code, words):
    """A crop upside down or outside the frame was a ValueError traceback; --num-faces 0 said MediaPipe could not
    load the landmark models (exit 4), as if the bundles were broken."""
    try:
        returned = cli.main(["landmarks", *args])
    except SystemExit as exit_:  # argparse's usage error
        returned = exit_.code
    err = capsys.readouterr().err
    assert returned == code and "Traceback" not in err and words in err.strip().splitlines()[-1], err


def test_cli_prints_one_json_line_a_video_frame(use_models, capsys, tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for i in range(4):
        writer.write(np.ascontiguousarray(np.roll(photo("astronaut"), 3 * i, axis=1)[:, :, ::-1]))
    writer.release()
    assert cli.main(["landmarks", str(clip), "--json", "--no-pose"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3]
    assert all(line["face70"][0] is not None and line["body8"] == [None] * 8 for line in lines)


def test_cli_bad_inputs_are_one_line_data_errors(use_models, capsys, tmp_path):
    assert cli.main(["landmarks", str(tmp_path / "nope.jpg")]) == DataError.exit_code
    assert capsys.readouterr().err.strip() == f"cryedge: no such image or video: {tmp_path / 'nope.jpg'}"
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert cli.main(["landmarks", str(junk)]) == DataError.exit_code
    assert "cannot read" in capsys.readouterr().err


def test_the_command_exits_without_native_teardown_noise(use_models):
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "landmarks", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr


def test_mediapipe_is_imported_without_tensorflow_even_where_tensorflow_is_installed():
    script = (
        "import sys; from edge.mediapipe_import import import_mediapipe; import_mediapipe(); "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "False", result.stderr


def test_mediapipe_is_imported_without_matplotlib_and_audio_and_they_still_load_on_use():
    script = (
        "import sys; from edge.mediapipe_import import import_mediapipe; mp = import_mediapipe(); "
        "unused = ('matplotlib', 'mediapipe.tasks.python.audio.audio_classifier'); "
        "print(*(name in sys.modules for name in unused)); "
        "draw = mp.tasks.vision.drawing_utils.draw_landmarks; "
        "classifier = mp.tasks.audio.AudioClassifier; "
        "print(*(name in sys.modules for name in unused), callable(draw), callable(classifier))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.split() == ["False", "False", "True", "True", "True", "True"], result.stderr


def test_a_region_of_interest_under_a_pixel_of_a_small_frame_is_no_face_not_a_mediapipe_error(use_models):
    """A 5% region of a 16x12 frame (a camera's tiny substream) rounds to no pixel at all: MediaPipe's graph raised
    RuntimeError ("ROI width and height must be > 0") on every frame, out of the frame loop, and the service was
    restarted for ever. Now the crop is at least one pixel, and nothing is found in it."""
    with LandmarkExtractor(pose=True, roi=(0.0, 0.0, 0.05, 0.05)) as extractor:
        for n in range(3):
            found = extractor.extract(Frame(np.full((12, 16, 3), 90, np.uint8), n / 15, n))
            assert not found.has_face and not found.has_pose and (found.width, found.height) == (16, 12)
