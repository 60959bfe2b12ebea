"""Feature specs: landmarks of one frame to the vector a model was trained on.

A spec is data, a table saying which MediaPipe points (averaged when more than one) make each
output keypoint, plus one normalization function. The host-side dataset builder uses this same
module, so the device never feeds a model features that differ from its training.

``openpose-face70-body8`` reproduces the original work's OpenPose layout: iBUG-68 face points
(jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67), pupils 68 (right) and 69 (left),
then BODY_25 points 0-7; values are x then y for each point. Right and left are the person's, as
in OpenPose. A missing face or body point is written as (0, 0), as OpenPose wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np

from edge.errors import ConfigError
from edge.records import Landmarks

# iBUG-68 + 2 pupils from MediaPipe's 478-point face mesh. Each entry lists the mesh points whose
# mean is the iBUG point. Indices 468-477 are the iris points (468 right iris centre, 473 left).
# MediaPipe's face oval is not the iBUG jaw line, so most jaw points (and a few brow, eye and lip
# points) are means of the mesh points that best matched dlib's iBUG-68 predictor on real photos
# (scikit-image's astronaut, matplotlib's Grace Hopper; each turned, mirrored, rescaled), keeping
# a change only where it also helped the photo it was not chosen on. Mean error over points 0-67
# in outer-eye-corner distances: 0.053 -> 0.034; jaw 0.10 -> 0.048 (edge/landmarks tests).
FACE70_FROM_MESH: tuple[tuple[int, ...], ...] = (
    # jaw 0-16, from the person's right ear level over the chin to the left
    (127,), (116, 137), (147,), (192, 215), (136, 138), (136,), (149,), (148, 176), (152,),
    (377, 400), (379, 400), (365,), (397,), (416, 435), (323, 433), (345, 366), (356,),
    # right brow 17-21, left brow 22-26 (outer to inner, then inner to outer)
    (70,), (63,), (69, 224), (108, 223), (55, 107),
    (285, 336), (296,), (334,), (293,), (300, 353),
    # nose bridge 27-30, nostrils 31-35
    (168,), (197,), (5,), (4,),
    (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41 (outer corner first), left eye 42-47 (inner corner first)
    (33,), (160,), (158,), (155,), (153,), (144,),
    (362,), (384, 385), (385, 387), (263,), (373,), (380,),
    # outer lips 48-59 from the right corner, upper lip first
    (61,), (40, 39), (37,), (0,), (267,), (270, 269), (291,), (321, 405), (314,), (17,), (84,), (91, 181),
    # inner lips 60-67
    (78,), (38,), (13,), (268, 312), (308,), (316, 317), (14,), (86, 87),
    # pupils: 68 right, 69 left
    (468,), (473,),
)

# BODY_25 from MediaPipe's 33 pose points. Neck (1) and mid-hip (8) are midpoints; MediaPipe has
# no small toe, so the foot index stands in for both toes.
BODY25_FROM_POSE: tuple[tuple[int, ...], ...] = (
    (0,),  # 0 nose
    (11, 12),  # 1 neck = midpoint of the shoulders
    (12,), (14,), (16,),  # 2-4 right shoulder, elbow, wrist
    (11,), (13,), (15,),  # 5-7 left shoulder, elbow, wrist
    (23, 24),  # 8 mid hip
    (24,), (26,), (28,),  # 9-11 right hip, knee, ankle
    (23,), (25,), (27,),  # 12-14 left hip, knee, ankle
    (5,), (2,), (8,), (7,),  # 15-18 right eye, left eye, right ear, left ear
    (31,), (31,), (29,),  # 19-21 left big toe, small toe, heel
    (32,), (32,), (30,),  # 22-24 right big toe, small toe, heel
)

NORMALIZATIONS = ("minmax", "pixels", "face-box")


@dataclass(frozen=True, eq=False)
class SourceTable:
    """A keypoint table as arrays, so a frame's keypoints are one gather and one weighted sum.

    ``indices`` (N, K) lists each keypoint's source points, padded by repeating the first;
    ``weights`` (N, K) is 1/k on the k real sources and 0 on the padding.
    """

    indices: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, table: tuple[tuple[int, ...], ...]) -> SourceTable:
        width = max((len(sources) for sources in table), default=1)
        indices = np.array([sources + (sources[0],) * (width - len(sources)) for sources in table], dtype=np.intp)
        weights = np.array([[1 / len(sources)] * len(sources) + [0.0] * (width - len(sources)) for sources in table])
        return cls(indices.reshape(len(table), width), weights.reshape(len(table), width))

    def all_seen(self, visibility: np.ndarray, min_visibility: float) -> np.ndarray:
        """(N,) bool: every source point of each keypoint is visible enough."""
        return (visibility[self.indices] >= min_visibility).all(axis=1)


@dataclass(frozen=True)
class FeatureSpec:
    """Which keypoints make a frame's feature vector, in order, and how they are normalized."""

    name: str
    version: int
    face_points: tuple[tuple[int, ...], ...]
    body_points: tuple[tuple[int, ...], ...]
    normalization: str = "minmax"

    @cached_property
    def face_table(self) -> SourceTable:
        return SourceTable.of(self.face_points)

    @cached_property
    def body_table(self) -> SourceTable:
        return SourceTable.of(self.body_points)

    @property
    def num_points(self) -> int:
        return len(self.face_points) + len(self.body_points)

    @property
    def size(self) -> int:
        """Values a frame: x and y for each keypoint."""
        return 2 * self.num_points

    def with_normalization(self, normalization: str) -> FeatureSpec:
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown feature normalization {normalization!r}; known: {', '.join(NORMALIZATIONS)}")
        return FeatureSpec(self.name, self.version, self.face_points, self.body_points, normalization)


SPECS: Mapping[str, FeatureSpec] = MappingProxyType(
    {
        "openpose-face70-body8": FeatureSpec("openpose-face70-body8", 1, FACE70_FROM_MESH, BODY25_FROM_POSE[:8]),
        # the face alone (the first 140 values of face70-body8): a model that never needs the pose
        # landmarker, so a hidden body, a close head crop or a dark room that costs the pose changes nothing
        "openpose-face70": FeatureSpec("openpose-face70", 1, FACE70_FROM_MESH, ()),
        "openpose-face70-body25": FeatureSpec("openpose-face70-body25", 1, FACE70_FROM_MESH, BODY25_FROM_POSE),
    }
)


def get_spec(name: str, normalization: str = "minmax") -> FeatureSpec:
    """The spec called ``name`` with ``normalization``; a ConfigError names the known ones."""
    try:
        spec = SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown feature spec {name!r}; known: {', '.join(SPECS)}") from None
    return spec.with_normalization(normalization)


def _gather(points: np.ndarray, table: SourceTable) -> np.ndarray:
    """Mean of the listed source points for each output keypoint: (len(table), 2)."""
    return np.einsum("nk,nkd->nd", table.weights, points[table.indices, :2]).astype(np.float32)


def keypoints(landmarks: Landmarks, spec: FeatureSpec, min_visibility: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The spec's keypoints in pixels and which of them are present: ((N, 2) float32, (N,) bool).

    A body point counts as present when MediaPipe's visibility of every point it is made from is
    at least ``min_visibility`` and it lies inside the frame, as OpenPose reported only what it saw.
    """
    n_face, n_body = len(spec.face_points), len(spec.body_points)
    xy = np.zeros((n_face + n_body, 2), dtype=np.float32)
    present = np.zeros(n_face + n_body, dtype=bool)
    if landmarks.face is not None:
        xy[:n_face] = _gather(landmarks.face, spec.face_table)
        present[:n_face] = True
    if landmarks.pose is not None and n_body:
        xy[n_face:] = _gather(landmarks.pose, spec.body_table)
        visibility = landmarks.pose_visibility
        if visibility is None:
            visibility = np.ones(len(landmarks.pose), dtype=np.float32)
        seen = spec.body_table.all_seen(visibility, min_visibility)
        body = xy[n_face:]
        inside = (body[:, 0] >= 0) & (body[:, 0] < landmarks.width) & (body[:, 1] >= 0) & (body[:, 1] < landmarks.height)
        present[n_face:] = seen & inside
    xy[~present] = 0.0
    return xy, present


def normalize(xy: np.ndarray, present: np.ndarray, normalization: str, n_face: int) -> np.ndarray:
    """Normalize present keypoints; absent ones stay (0, 0). Pure, for (N, 2) arrays."""
    out = np.zeros_like(xy, dtype=np.float32)
    if not present.any():
        return out
    if normalization == "pixels":
        out[present] = xy[present]
        return out
    if normalization == "minmax":
        reference = xy[present]
    elif normalization == "face-box":
        face_present = present[:n_face]
        if not face_present.any():
            return out  # no face, no box: the frame reads as "nothing seen"
        reference = xy[:n_face][face_present]
    else:
        raise ConfigError(f"unknown feature normalization {normalization!r}; known: {', '.join(NORMALIZATIONS)}")
    low = reference.min(axis=0)
    span = reference.max(axis=0) - low
    span[span == 0] = 1.0
    out[present] = (xy[present] - low) / span
    return out


def frame_features(landmarks: Landmarks, spec: FeatureSpec, min_visibility: float = 0.5) -> np.ndarray:
    """One frame's feature vector: (spec.size,) float32, x then y for each keypoint."""
    xy, present = keypoints(landmarks, spec, min_visibility)
    return normalize(xy, present, spec.normalization, len(spec.face_points)).reshape(-1)


def face_crop(image: np.ndarray, landmarks: Landmarks, size: tuple[int, int], channels: int, margin: float = 0.2) -> np.ndarray | None:
    """The face as a model input for ``face-crop`` models: (H, W, C) uint8, or None without a face.

    The crop is the square around the face mesh, enlarged by ``margin`` on each side, clipped to
    the frame; grey (C=1) uses ITU-R BT.601 luma, as OpenCV's RGB2GRAY.
    """
    import cv2  # only face-crop models need it

    if landmarks.face is None:
        return None
    x0, y0 = landmarks.face[:468, :2].min(axis=0)
    x1, y1 = landmarks.face[:468, :2].max(axis=0)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = image.shape[:2]
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    right, bottom = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    if right - left < 2 or bottom - top < 2:
        return None
    crop = cv2.resize(image[top:bottom, left:right], (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if channels == 1:
        return cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None]
    return crop
