"""The feature layout the original OpenPose-trained models expect, computed from MediaPipe points."""

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.features import FACE70_FROM_MESH, SPECS, face_crop, frame_features, get_spec, keypoints, normalize
from edge.records import Landmarks


def landmarks(face=True, pose=True, width=640, height=480, visibility=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return Landmarks(
        t=0.0, width=width, height=height,
        face=(rng.uniform(200, 400, (478, 2)).astype(np.float32) if face else None),
        pose=(rng.uniform(100, 450, (33, 2)).astype(np.float32) if pose else None),
        pose_visibility=(np.full(33, visibility, np.float32) if pose else None),
    )


def test_openpose_spec_is_156_values_a_frame_in_openpose_order():
    spec = get_spec("openpose-face70-body8")
    assert spec.size == 156
    lm = landmarks()
    xy, present = keypoints(lm, spec)
    assert xy.shape == (78, 2) and present.all()
    # face point 30 (nose tip) is mesh point 4; pupils are the iris centres 468 and 473
    np.testing.assert_allclose(xy[30], lm.face[4])
    np.testing.assert_allclose(xy[68], lm.face[468])
    np.testing.assert_allclose(xy[69], lm.face[473])
    # body: nose, neck = mid-shoulders, then the person's right arm (MediaPipe 12, 14, 16), then left
    np.testing.assert_allclose(xy[70], lm.pose[0])
    np.testing.assert_allclose(xy[71], (lm.pose[11] + lm.pose[12]) / 2)
    np.testing.assert_allclose(xy[72:75], lm.pose[[12, 14, 16]])
    np.testing.assert_allclose(xy[75:78], lm.pose[[11, 13, 15]])


def test_vector_is_x_then_y_for_each_point():
    spec = get_spec("openpose-face70-body8", "pixels")
    lm = landmarks()
    vector = frame_features(lm, spec)
    xy, _ = keypoints(lm, spec)
    assert vector.dtype == np.float32 and vector.shape == (156,)
    np.testing.assert_allclose(vector[0::2], xy[:, 0])
    np.testing.assert_allclose(vector[1::2], xy[:, 1])


def test_face_table_uses_each_ibug_slot_once_and_only_mesh_points():
    assert len(FACE70_FROM_MESH) == 70
    assert all(0 <= i < 478 for sources in FACE70_FROM_MESH for i in sources)


def test_missing_face_is_zeros_as_openpose_wrote_them():
    spec = get_spec("openpose-face70-body8")
    vector = frame_features(landmarks(face=False), spec)
    assert not vector[:140].any()
    assert vector[140:].any()


def test_nothing_seen_is_all_zeros():
    spec = get_spec("openpose-face70-body8")
    assert not frame_features(landmarks(face=False, pose=False), spec).any()


def test_unseen_or_off_frame_body_points_are_zeros():
    spec = get_spec("openpose-face70-body8", "pixels")
    lm = landmarks(visibility=0.2)
    assert not frame_features(lm, spec)[140:].any()
    pose = lm.pose.copy()
    pose[16] = (700, 100)  # right wrist outside a 640-wide frame
    seen = Landmarks(t=0, width=640, height=480, face=lm.face, pose=pose, pose_visibility=np.ones(33, np.float32))
    xy, present = keypoints(seen, spec)
    assert not present[74] and tuple(xy[74]) == (0, 0)
    assert present[72]


def test_minmax_normalization_maps_the_frames_points_to_unit_range():
    spec = get_spec("openpose-face70-body8", "minmax")
    vector = frame_features(landmarks(), spec)
    for axis in (vector[0::2], vector[1::2]):
        assert axis.min() == pytest.approx(0.0) and axis.max() == pytest.approx(1.0)


def test_minmax_is_invariant_to_where_the_person_is_and_how_big():
    spec = get_spec("openpose-face70-body8", "minmax")
    lm = landmarks()
    moved = Landmarks(t=0, width=2000, height=2000, face=lm.face * 2 + 300, pose=lm.pose * 2 + 300,
                      pose_visibility=lm.pose_visibility)
    np.testing.assert_allclose(frame_features(lm, spec), frame_features(moved, spec), atol=1e-5)


def test_face_box_normalization_is_relative_to_the_face():
    spec = get_spec("openpose-face70-body8", "face-box")
    vector = frame_features(landmarks(), spec)
    face = vector[:140]
    assert face[0::2].min() == pytest.approx(0) and face[0::2].max() == pytest.approx(1)
    assert not frame_features(landmarks(face=False), spec).any()


def test_normalize_keeps_absent_points_at_zero():
    xy = np.array([[10, 20], [30, 60], [99, 99]], np.float32)
    out = normalize(xy, np.array([True, True, False]), "minmax", n_face=2)
    np.testing.assert_allclose(out, [[0, 0], [1, 1], [0, 0]])


def test_full_body25_spec_adds_the_lower_body():
    assert SPECS["openpose-face70-body25"].size == 2 * (70 + 25)


def test_unknown_spec_or_normalization_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="openpose-face70-body8"):
        get_spec("openpose-face68")
    with pytest.raises(ConfigError, match="minmax"):
        get_spec("openpose-face70-body8", "zscore")


def test_face_crop_is_the_face_region_resized_and_grey():
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:400, 200:400] = 255  # the "face" area is white, the rest black
    lm = landmarks()
    crop = face_crop(image, lm, (48, 48), channels=1, margin=0.0)
    assert crop.shape == (48, 48, 1) and crop.dtype == np.uint8
    assert crop.mean() > 200
    assert face_crop(image, landmarks(face=False), (48, 48), 1) is None
