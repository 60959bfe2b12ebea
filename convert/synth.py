"""SYNTHETIC labelled footage: real face photos animated into crying and non-crying expressions.

No crying footage can be had for this project, so the default model is trained on clips made
here. Each clip animates one real photo that a Python package ships (scikit-image's astronaut,
NASA, public domain; matplotlib's Grace Hopper sample), mirrored photos counting as further
"subjects". dlib's independent 68-point predictor (face_recognition_models) finds control points
once a photo; each frame moves those points into an expression and warps the photo with a
piecewise-affine triangle mesh, then paints what a warp cannot make (a dark open mouth, closed
lids). The face is placed into a 640x480 canvas like a camera above a crib, with head motion,
lighting, colour and noise jitter.

Expressions: crying (mouth wide open and stretched, corners down, eyes squeezed shut, inner brows
raised and drawn together, sobbing rhythm, head shake) and the hard negatives laughing (corners
up, eyes squinting, fast rhythm), yawning (tall narrow mouth, eyes closed, slow), talking (small
fast mouth movements) and neutral (blinks, small head motion).

This demonstrates the pipeline; clips of two animated photos are not babies crying, and a model
trained on them is not a cry detector.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError, SourceError
from edge.source import opencv_name

EXPRESSIONS = ("neutral", "talking", "laughing", "yawning", "crying")
# More hard negatives: things a baby's face does that are not crying.
HARD_NEGATIVES = ("coughing", "sneezing", "pacifier", "sleeping")
ALL_EXPRESSIONS = EXPRESSIONS + HARD_NEGATIVES
# lfw-NN: face NN (0-99) of scikit-image's Labeled Faces in the Wild subset (25x25 grey, cropped close
# around the head, no shoulders): 100 more people, seen as a tight head crop a NoIR camera might give.
PHOTOS = ("astronaut", "grace-hopper", "lfw-NN")
LFW_FACES = 100
LFW_SCALE = 8  # 25 px -> 200 px before the warp
WIDTH, HEIGHT, FPS = 640, 480, 15
RAMP_SECONDS = 0.4  # expressions blend into each other over this long after a segment starts


@dataclass(frozen=True, eq=False)
class FacePhoto:
    """A real photo (RGB uint8) and its iBUG-68 points in pixels; ``subject`` names it in datasets."""

    subject: str
    image: np.ndarray
    points: np.ndarray  # (68, 2) float32

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.points[36:42].mean(axis=0) - self.points[42:48].mean(axis=0)))


def check_photo(name: str) -> None:
    """DataError unless ``name`` is one of PHOTOS; nothing is loaded (a build checks every name before it starts)."""
    if name not in ("astronaut", "grace-hopper") and not (
            name.startswith("lfw-") and name[4:].isdigit() and int(name[4:]) < LFW_FACES):
        raise DataError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)} (NN below {LFW_FACES})")


def _photo_image(name: str) -> np.ndarray:
    check_photo(name)
    if name == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut())
    if name == "grace-hopper":
        import matplotlib.cbook
        import matplotlib.image

        return np.ascontiguousarray(matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[:, :, :3])
    import cv2
    import skimage.data

    grey = np.round(skimage.data.lfw_subset()[int(name[4:])] * 255).astype(np.uint8)
    big = cv2.resize(grey, None, fx=LFW_SCALE, fy=LFW_SCALE, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(np.dstack([big] * 3))


def face_points(image: np.ndarray) -> np.ndarray:
    """dlib's 68 points of the most confidently detected face: (68, 2) float32; DataError without a face."""
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    boxes, scores, _ = detector.run(image, 1, -0.5)
    if not boxes:
        raise DataError("dlib finds no face in the photo")
    box = boxes[int(np.argmax(scores))]
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    shape = predictor(image, box)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def load_photo(name: str, mirror: bool = False) -> FacePhoto:
    """One of PHOTOS, optionally mirrored (a further subject, named ``NAME-mirror``)."""
    image = _photo_image(name)
    if mirror:
        image = np.ascontiguousarray(image[:, ::-1])
    return FacePhoto(f"{name}-mirror" if mirror else name, image, face_points(image))


# --- expressions -------------------------------------------------------------------------------

@dataclass
class Track:
    """Per-frame expression parameters; each array has one value a frame.

    open: jaw and lips apart (0 closed .. 1 wide open); wide: mouth corners apart (-1 narrow .. 1);
    corners: corners up (+) or down (-); eyes: lids closed (0 open .. 1 shut); brow_raise: inner
    brows up; brow_furrow: inner brows drawn together; shake: head roll in degrees; nod: head
    up/down in fractions of the eye distance.
    """

    open: np.ndarray
    wide: np.ndarray
    corners: np.ndarray
    eyes: np.ndarray
    brow_raise: np.ndarray
    brow_furrow: np.ndarray
    shake: np.ndarray
    nod: np.ndarray

    pacifier: np.ndarray | None = None  # 1 where a pacifier is in the mouth (painted, not warped)

    NAMES = ("open", "wide", "corners", "eyes", "brow_raise", "brow_furrow", "shake", "nod", "pacifier")

    @classmethod
    def zeros(cls, n: int) -> Track:
        return cls(*(np.zeros(n, dtype=np.float32) for _ in cls.NAMES))

    def frame(self, i: int) -> dict[str, float]:
        return {name: float(getattr(self, name)[i]) for name in self.NAMES}


def _blinks(n: int, fps: float, rng: np.random.Generator, rate_s: float = 3.5) -> np.ndarray:
    """Lid closure of spontaneous blinks (about 0.2 s each, every few seconds)."""
    lids = np.zeros(n, dtype=np.float32)
    t = rng.uniform(0.5, rate_s)
    while t * fps < n:
        start = int(t * fps)
        shape = np.array([0.6, 1.0, 0.6])
        lids[start : start + 3] = np.maximum(lids[start : start + 3], shape[: max(0, min(3, n - start))])
        t += rng.uniform(0.6, 2.0) * rate_s
    return lids


def _wobble(n: int, fps: float, rng: np.random.Generator, hz: float, jitter: float = 0.25) -> np.ndarray:
    """A rhythm in [0, 1] at about ``hz`` whose frequency and phase drift a little."""
    rate = hz * (1 + jitter * np.cumsum(rng.standard_normal(n)) / np.sqrt(np.arange(1, n + 1)))
    phase = rng.uniform(0, 2 * np.pi) + np.cumsum(2 * np.pi * np.clip(rate, 0.3 * hz, 2 * hz) / fps)
    return (0.5 + 0.5 * np.sin(phase)).astype(np.float32)


def expression_track(kind: str, n: int, fps: float, rng: np.random.Generator) -> Track:
    """``n`` frames of expression ``kind``, with per-segment random strengths and rhythms."""
    if kind not in ALL_EXPRESSIONS:
        raise DataError(f"unknown expression {kind!r}; known: {', '.join(ALL_EXPRESSIONS)}")
    track = Track.zeros(n)
    u = rng.uniform
    track.shake[:] = u(-2, 2) + u(0.5, 1.5) * np.sin(2 * np.pi * u(0.1, 0.3) * np.arange(n) / fps + u(0, 6))
    track.eyes[:] = _blinks(n, fps, rng)
    if kind == "neutral":
        track.open[:] = u(0.0, 0.05)
        track.corners[:] = u(-0.1, 0.15)
    elif kind == "talking":
        syllables = _wobble(n, fps, rng, u(3.0, 5.0), jitter=0.6)
        pauses = (_wobble(n, fps, rng, u(0.3, 0.6)) > 0.25).astype(np.float32)
        track.open[:] = u(0.12, 0.3) * syllables * pauses
        track.wide[:] = u(-0.15, 0.15) * syllables
        track.corners[:] = u(-0.1, 0.2)
        track.brow_raise[:] = u(0.0, 0.3) * _wobble(n, fps, rng, u(0.5, 1.0))
        track.nod[:] = 0.04 * (_wobble(n, fps, rng, u(1, 2)) - 0.5)
    elif kind == "laughing":
        bursts = _wobble(n, fps, rng, u(3.0, 4.5), jitter=0.3)
        track.open[:] = u(0.3, 0.5) + u(0.15, 0.3) * bursts
        track.wide[:] = u(0.4, 0.8)
        track.corners[:] = u(0.6, 1.0)
        track.eyes[:] = np.maximum(track.eyes, u(0.4, 0.7) + 0.1 * bursts)
        track.brow_raise[:] = u(-0.1, 0.3)
        track.nod[:] = 0.08 * (bursts - 0.5)
        track.shake[:] += u(-3, 3)
    elif kind == "yawning":
        rise = np.sin(np.linspace(0, np.pi, n)) ** 0.7
        track.open[:] = u(0.85, 1.0) * rise
        track.wide[:] = -u(0.2, 0.5) * rise
        track.corners[:] = u(-0.1, 0.1)
        track.eyes[:] = np.maximum(track.eyes, u(0.6, 1.0) * rise)
        track.brow_raise[:] = u(0.2, 0.6) * rise
        track.nod[:] = -0.1 * rise
    elif kind == "crying":
        sobs = _wobble(n, fps, rng, u(1.0, 2.2), jitter=0.4)
        track.open[:] = u(0.5, 0.7) + u(0.15, 0.3) * sobs
        track.wide[:] = u(0.5, 0.9)
        track.corners[:] = -u(0.6, 1.0)
        track.eyes[:] = np.maximum(track.eyes, u(0.8, 1.0))
        track.brow_raise[:] = u(0.5, 1.0)
        track.brow_furrow[:] = u(0.5, 1.0)
        track.shake[:] += u(2, 5) * np.sin(2 * np.pi * u(0.8, 1.6) * np.arange(n) / fps + u(0, 6))
        track.nod[:] = 0.06 * (sobs - 0.5)
    elif kind == "sleeping":
        breath = _wobble(n, fps, rng, u(0.25, 0.4), jitter=0.1)
        track.shake[:] = u(-2, 2)  # still: no head motion but breathing
        track.eyes[:] = 1.0
        track.open[:] = u(0.0, 0.08) * breath
        track.nod[:] = 0.015 * (breath - 0.5)
    elif kind == "coughing":
        coughs = np.zeros(n, np.float32)
        t = u(0.2, 0.8)
        while t * fps < n:  # short sharp bursts, 2-3 in a row
            for k in range(int(rng.integers(1, 4))):
                start = int((t + 0.35 * k) * fps)
                coughs[start : start + 3] = np.maximum(coughs[start : start + 3], np.array([1.0, 0.7, 0.3])[: max(0, min(3, n - start))])
            t += u(1.2, 2.5)
        track.open[:] = u(0.35, 0.6) * coughs
        track.wide[:] = -0.1 * coughs
        track.eyes[:] = np.maximum(track.eyes, 0.6 * coughs)
        track.brow_furrow[:] = 0.4 * coughs
        track.nod[:] = 0.1 * coughs
    elif kind == "sneezing":
        peak = u(0.55, 0.8)
        phase = np.linspace(0, 1, n)
        build = np.clip((phase - (peak - 0.35)) / 0.35, 0, 1) * (phase < peak)
        burst = np.exp(-((phase - peak) * n / fps / 0.12) ** 2)
        track.open[:] = 0.3 * build + 0.6 * burst
        track.eyes[:] = np.maximum(track.eyes, np.maximum(0.7 * build, burst))
        track.brow_raise[:] = 0.5 * build
        track.brow_furrow[:] = 0.6 * burst
        track.nod[:] = -0.06 * build + 0.15 * burst
    elif kind == "pacifier":
        sucks = _wobble(n, fps, rng, u(1.0, 2.0), jitter=0.3)
        track.open[:] = 0.04 + 0.04 * sucks
        track.wide[:] = -0.3
        track.pacifier[:] = 1.0
        track.eyes[:] = np.maximum(track.eyes, u(0.0, 0.5))
    return track


def sequence_track(segments: list[tuple[str, float]], fps: float, rng: np.random.Generator) -> tuple[Track, list[str]]:
    """Consecutive segments ``(expression, seconds)`` as one track, blended at the joins, and per-frame labels."""
    counts = [max(1, round(seconds * fps)) for _, seconds in segments]
    n = sum(counts)
    track, labels = Track.zeros(n), []
    ramp = max(1, int(RAMP_SECONDS * fps))
    start = 0
    previous = None
    for (kind, _), count in zip(segments, counts, strict=True):
        part = expression_track(kind, count, fps, rng)
        for name in Track.NAMES:
            values = getattr(part, name).copy()
            if previous is not None:
                # Blend from where the last segment ended into this one over RAMP_SECONDS.
                weight = np.clip(np.arange(count) / ramp, 0, 1)
                values = weight * values + (1 - weight) * getattr(previous, name)[-1]
            getattr(track, name)[start : start + count] = values
        labels += [kind] * count
        previous = part
        start += count
    return track, labels


# --- warping -----------------------------------------------------------------------------------

def expression_points(points: np.ndarray, params: dict[str, float], eye_distance: float) -> np.ndarray:
    """The 68 points moved into the expression (pure)."""
    p = points.astype(np.float32).copy()
    e = eye_distance
    down = np.array([0.0, 1.0], dtype=np.float32)
    opening = params["open"]
    # Jaw drops (chin most), lower lip follows, upper lip lifts a little.
    jaw_weight = np.array([0, 0, 0, 0.1, 0.3, 0.55, 0.8, 0.95, 1.0, 0.95, 0.8, 0.55, 0.3, 0.1, 0, 0, 0])
    p[0:17] += (jaw_weight[:, None] * 0.75 * e * opening) * down
    for index in (55, 56, 57, 58, 59, 65, 66, 67):
        p[index] += 0.8 * e * opening * down
    for index in (49, 50, 51, 52, 53, 61, 62, 63):
        p[index] -= 0.12 * e * opening * down
    # Mouth corners: apart (wide) and up or down; their neighbours follow by half.
    mouth_centre = p[48:68].mean(axis=0)
    for corner, half in ((48, (49, 59, 60)), (54, (53, 55, 64))):
        side = np.sign(p[corner][0] - mouth_centre[0]) or 1.0
        shift = np.array([side * 0.22 * e * params["wide"], -0.22 * e * params["corners"] + 0.25 * e * opening], np.float32)
        p[corner] += shift
        for index in half:
            p[index] += 0.5 * shift
    if 60 < len(p):
        p[60] = p[48] * 0.7 + p[60] * 0.3 if opening > 0.3 else p[60]
        p[64] = p[54] * 0.7 + p[64] * 0.3 if opening > 0.3 else p[64]
    # Lids: upper lid points down to the lower lid; a squeeze lifts the lower lid a little.
    lids = params["eyes"]
    for upper, lower in (((37, 38), (41, 40)), ((43, 44), (47, 46))):
        for u, lo in zip(upper, lower, strict=True):
            gap = p[lo] - p[u]
            p[u] += lids * 0.85 * gap
            p[lo] -= lids * 0.15 * gap
    # Brows: inner ends up (sadness) and together (furrow).
    raise_ = params["brow_raise"] * 0.22 * e
    face_centre_x = p[27][0]
    for index, weight in ((17, 0.1), (18, 0.3), (19, 0.6), (20, 0.9), (21, 1.0), (22, 1.0), (23, 0.9), (24, 0.6), (25, 0.3), (26, 0.1)):
        p[index][1] -= weight * raise_
        toward = np.sign(face_centre_x - p[index][0])
        p[index][0] += toward * weight * params["brow_furrow"] * 0.1 * e
        p[index][1] += weight * params["brow_furrow"] * 0.05 * e
    return p


def identity_points(points: np.ndarray, eye_distance: float, rng: np.random.Generator) -> np.ndarray:
    """The 68 points of a made-up face shape near the photo's: eyes, brows, mouth and jaw moved a little.

    Each clip gets its own, so two photos give many face geometries (pure but for ``rng``).
    """
    p = points.astype(np.float32).copy()
    e = eye_distance
    centre_x = float(p[27:31, 0].mean())
    eyes = np.r_[17:27, 36:48]
    p[eyes, 0] = centre_x + (p[eyes, 0] - centre_x) * rng.uniform(0.92, 1.08)
    p[17:27, 1] += rng.uniform(-0.08, 0.08) * e
    mouth_centre = p[48:68].mean(axis=0)
    p[48:68, 0] = mouth_centre[0] + (p[48:68, 0] - mouth_centre[0]) * rng.uniform(0.88, 1.15)
    p[48:68, 1] += rng.uniform(-0.08, 0.1) * e
    p[0:17, 0] = centre_x + (p[0:17, 0] - centre_x) * rng.uniform(0.92, 1.1)
    chin = np.array([0, 0, 0, 0.1, 0.3, 0.6, 0.85, 1, 1, 1, 0.85, 0.6, 0.3, 0.1, 0, 0, 0], np.float32)
    p[0:17, 1] += chin * rng.uniform(-0.08, 0.12) * e
    return p


def anchor_points(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fixed points around the face (a ring well outside it, and the image border) that keep the warp local."""
    centre = points.mean(axis=0)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    span = np.ptp(points, axis=0)
    ring = centre + np.stack([np.cos(angles) * span[0] * 1.0, np.sin(angles) * span[1] * 1.25], axis=1)
    ring[:, 1] += np.where(ring[:, 1] > centre[1], 0.25 * span[1], 0)  # room under the chin for the jaw to drop
    border = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1],
                       [width / 2, 0], [width / 2, height - 1], [0, height / 2], [width - 1, height / 2]])
    ring[:, 0] = np.clip(ring[:, 0], 1, width - 2)
    ring[:, 1] = np.clip(ring[:, 1], 1, height - 2)
    return np.concatenate([ring, border]).astype(np.float32)


def warp_image(image: np.ndarray, source: np.ndarray, target: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp moving ``source`` points to ``target`` (anchors stay): a new image.

    The target points are triangulated; each triangle is rasterized into a map of triangle numbers
    and every pixel takes its triangle's affine map back to the source (scipy's point location is
    slow on meshes with near-coincident points such as closed lips).
    """
    import cv2
    from scipy.spatial import Delaunay

    src = np.concatenate([source, anchors]).astype(np.float32)
    dst = np.concatenate([target, anchors]).astype(np.float32)
    triangles = Delaunay(dst.astype(np.float64)).simplices
    height, width = image.shape[:2]
    x0, y0 = np.floor(anchors[:16].min(axis=0)).astype(int)
    x1, y1 = np.ceil(anchors[:16].max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    which = np.full((y1 - y0, x1 - x0), -1, dtype=np.int32)
    affines = np.zeros((len(triangles) + 1, 2, 3), dtype=np.float32)
    affines[-1] = [[1, 0, 0], [0, 1, 0]]  # index -1: outside every triangle, the identity
    for k, corners in enumerate(triangles):
        d, s = dst[corners], src[corners]
        u, v = d[1] - d[0], d[2] - d[0]
        if abs(u[0] * v[1] - u[1] * v[0]) < 1e-3:  # degenerate: no affine map
            affines[k] = affines[-1]
            continue
        affines[k] = cv2.getAffineTransform(d, s)
        cv2.fillConvexPoly(which, np.round(d - [x0, y0]).astype(np.int32), int(k))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    chosen = affines[which]  # (h, w, 2, 3); -1 picks the identity row
    map_x = chosen[..., 0, 0] * xs + chosen[..., 0, 1] * ys + chosen[..., 0, 2]
    map_y = chosen[..., 1, 0] * xs + chosen[..., 1, 1] * ys + chosen[..., 1, 2]
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def _blend_polygon(image: np.ndarray, polygon: np.ndarray, colour, alpha: float, feather: int) -> None:
    """In place: ``polygon`` filled with ``colour`` at ``alpha``, edges feathered; only its box is touched."""
    import cv2

    if alpha <= 0:
        return
    pad = 2 * feather + 2
    x0, y0 = np.maximum(np.floor(polygon.min(axis=0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(polygon.max(axis=0)).astype(int) + pad, [image.shape[1], image.shape[0]])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    cv2.fillPoly(mask, [np.round(polygon - [x0, y0]).astype(np.int32)], 1.0, cv2.LINE_AA)
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (2 * feather + 1, 2 * feather + 1), 0)
    mask = (mask * alpha)[..., None]
    box = image[y0:y1, x0:x1]
    box[:] = (box * (1 - mask) + np.asarray(colour, np.float32) * mask).astype(np.uint8)


def paint_expression(image: np.ndarray, points: np.ndarray, params: dict[str, float], eye_distance: float) -> None:
    """In place: the dark inside of an open mouth and skin over shut lids, which a warp cannot make."""
    import cv2

    feather = max(1, int(eye_distance / 25))
    inner = points[60:68]
    if params["open"] > 0.08:
        _blend_polygon(image, inner, (45, 12, 18), min(1.0, params["open"] * 3), feather)
    if params.get("pacifier", 0.0) > 0.5:  # a shield over the mouth with a ring handle
        centre = points[48:68].mean(axis=0)
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        shield = centre + np.stack([np.cos(angles) * 0.55, np.sin(angles) * 0.32], axis=1) * eye_distance
        _blend_polygon(image, shield, (120, 190, 230), 1.0, feather)
        cv2.circle(image, tuple(int(v) for v in centre + [0, 0.05 * eye_distance]), max(2, int(0.18 * eye_distance)),
                   (240, 240, 235), max(1, int(0.06 * eye_distance)), cv2.LINE_AA)
    lids = params["eyes"]
    if lids > 0.5:
        alpha = min(1.0, (lids - 0.5) * 2.5)
        for eye in (points[36:42], points[42:48]):
            below = eye.mean(axis=0) + np.array([0, 0.35 * eye_distance])
            bx, by = np.clip(np.round(below).astype(int), 0, [image.shape[1] - 1, image.shape[0] - 1])
            skin = image[max(0, by - 2) : by + 3, max(0, bx - 2) : bx + 3].reshape(-1, 3).mean(axis=0)
            centre = eye.mean(axis=0)
            grown = centre + (eye - centre) * np.array([1.1, 1.8])
            _blend_polygon(image, grown, skin, alpha, feather)
            lash = np.round(eye[[0, 5, 4, 3]]).astype(np.int32)  # along the lower lid, corner to corner
            if alpha > 0.5:
                cv2.polylines(image, [lash], False, (50, 35, 30), max(1, feather), cv2.LINE_AA)


# --- clips -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """A clip's fixed look: where and how big the face sits, background, light, noise."""

    face_width: float  # eye distance in canvas pixels
    centre: tuple[float, float]
    roll: float  # degrees
    background: tuple[int, int, int]
    bars: bool  # crib bars in the background
    gain: float
    bias: float
    tint: tuple[float, float, float]
    noise: float
    drift: tuple[float, float]  # canvas pixels a second


def random_scene(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT) -> Scene:
    return Scene(
        face_width=float(rng.uniform(38, 80)),
        centre=(float(rng.uniform(0.38, 0.62) * width), float(rng.uniform(0.35, 0.55) * height)),
        roll=float(rng.uniform(-15, 15)),
        background=tuple(int(v) for v in rng.integers(40, 220, 3)),
        bars=bool(rng.random() < 0.5),
        gain=float(rng.uniform(0.7, 1.2)),
        bias=float(rng.uniform(-25, 20)),
        tint=tuple(float(v) for v in rng.uniform(0.88, 1.12, 3)),
        noise=float(rng.uniform(1, 6)),
        drift=(float(rng.uniform(-3, 3)), float(rng.uniform(-2, 2))),
    )


def background_canvas(scene: Scene, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A plain wall with a vertical light gradient, sometimes crib bars."""
    shade = np.linspace(0.8, 1.15, height)[:, None, None]
    canvas = np.clip(np.array(scene.background, np.float32)[None, None, :] * shade * np.ones((1, width, 1)), 0, 255)
    if scene.bars:
        step = width // 9
        for x in range(step // 2, width, step):
            canvas[:, x : x + max(4, step // 6)] = canvas[:, x : x + max(4, step // 6)] * 0.55 + 90
    return canvas.astype(np.uint8)


def render_clip(photo: FacePhoto, segments: list[tuple[str, float]], seed: int, fps: float = FPS,
                scene: Scene | None = None, width: int = WIDTH, height: int = HEIGHT,
                vary_identity: bool = True, with_points: bool = False) -> Iterator[tuple]:
    """Frames (RGB uint8, height x width) of ``photo`` going through ``segments``, each with its label.

    ``vary_identity`` reshapes the face a little (``identity_points``), a different shape each seed.
    ``with_points`` adds a third item: the 68 face points where they are in the frame (to place
    occluders).
    """
    import cv2

    rng = np.random.default_rng(seed)
    scene = scene or random_scene(rng, width, height)
    track, labels = sequence_track(segments, fps, rng)
    canvas = background_canvas(scene, width, height)
    # Work at the size the face will have on the canvas: the warp then costs what the face covers.
    scale = scene.face_width / photo.eye_distance
    image, points = photo.image, photo.points
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        points = points * scale
        scale = 1.0
    anchors = anchor_points(points, image.shape[1], image.shape[0])
    eye = photo.eye_distance * (image.shape[1] / photo.image.shape[1])
    face_centre = points[27:36].mean(axis=0)
    shape = identity_points(points, eye, rng) if vary_identity else points
    cv2.setRNGSeed(seed)  # cv2.randn draws the sensor noise
    for i in range(len(labels)):
        params = track.frame(i)
        moved = expression_points(shape, params, eye)
        face = warp_image(image, points, moved, anchors)
        paint_expression(face, moved, params, eye)
        t = i / fps
        cx = scene.centre[0] + scene.drift[0] * t + 4 * np.sin(0.7 * t)
        cy = scene.centre[1] + scene.drift[1] * t + params["nod"] * scene.face_width + 3 * np.sin(0.5 * t + 1)
        cx = float(np.clip(cx, 0.25 * width, 0.75 * width))
        cy = float(np.clip(cy, 0.25 * height, 0.7 * height))
        matrix = cv2.getRotationMatrix2D((float(face_centre[0]), float(face_centre[1])), scene.roll + params["shake"],
                                         scale * (1 + 0.03 * np.sin(0.3 * t)))
        matrix[:, 2] += np.array([cx, cy]) - face_centre
        frame = canvas.copy()
        cv2.warpAffine(face, matrix, (width, height), dst=frame, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_TRANSPARENT)
        flicker = 1 + 0.02 * np.sin(2 * np.pi * t / 3.0)
        gains = (scene.gain * flicker * np.array(scene.tint, np.float32)).tolist()
        lit = cv2.transform(frame, np.diag(gains).astype(np.float32), None)  # per-channel gain, saturating
        noise = np.empty(lit.shape, np.int16)
        cv2.randn(noise, scene.bias, scene.noise)
        out = cv2.add(lit, noise, dtype=cv2.CV_8U)
        if with_points:
            yield out, labels[i], moved @ matrix[:, :2].T + matrix[:, 2]
        else:
            yield out, labels[i]


def write_video(path: Path, frames: Iterator[np.ndarray], fps: float = FPS) -> int:
    """RGB frames to an mp4v ``.mp4`` (OpenCV); returns the frame count."""
    import cv2

    writer = None
    count = 0
    try:
        for frame in frames:
            if writer is None:
                try:
                    name = opencv_name(path)
                except SourceError as error:
                    raise DataError(str(error)) from None
                writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    raise DataError(f"OpenCV cannot write {path}")
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def label_intervals(labels: list[str], fps: float) -> list[tuple[float, float, str]]:
    """Per-frame labels as ``(start_s, end_s, label)`` runs; frame i covers [i/fps, (i+1)/fps)."""
    runs: list[tuple[float, float, str]] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((round(start / fps, 4), round(i / fps, 4), labels[start]))
            start = i
    return runs


@dataclass(frozen=True)
class ClipPlan:
    name: str
    photo: str
    mirror: bool
    segments: tuple[tuple[str, float], ...]
    seed: int
    subject: str = field(default="")
    look: str = "colour"
    strength: float = 0.5


def random_segments(rng: np.random.Generator, seconds: float, hard_negatives: bool = False) -> list[tuple[str, float]]:
    """A clip's story: a neutral start, then expressions of 2-5 s; about a third of the time crying.

    ``hard_negatives`` mixes in coughing, sneezing, a pacifier and sleeping too.
    """
    kinds, p = EXPRESSIONS, [0.14, 0.16, 0.16, 0.14, 0.40]
    if hard_negatives:
        kinds, p = ALL_EXPRESSIONS, [0.08, 0.11, 0.11, 0.11, 0.35, 0.06, 0.06, 0.06, 0.06]
    segments = [("neutral", float(rng.uniform(1.0, 2.5)))]
    total = segments[0][1]
    while total < seconds:
        kind = str(rng.choice(kinds, p=p))
        if kind == segments[-1][0]:
            continue
        length = float(rng.uniform(2.0, 5.0)) if kind != "yawning" else float(rng.uniform(2.5, 4.0))
        segments.append((kind, round(length, 2)))
        total += length
    return segments


# How a training clip is seen, drawn per clip by ``plan_clips(looks=True)``: what a night camera does
# to a picture (the condition suite, ``convert.conditions``, uses other settings of the same kinds).
LOOKS = ("colour", "grey", "dark", "noisy", "blur", "body-hidden")
LOOK_ODDS = (0.4, 0.15, 0.15, 0.1, 0.1, 0.1)


def look_frame(look: str, image: np.ndarray, points: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """``image`` as ``look`` shows it; ``strength`` in [0, 1] is drawn once a clip."""
    import cv2

    from convert import conditions

    if look == "colour":
        return image
    if look == "grey":
        return conditions.grey(image)
    if look == "dark":
        return conditions.sensor_noise(conditions.expose(conditions.grey(image), 0.15 + 0.45 * strength), 2 + 3 * strength, rng)
    if look == "noisy":
        return conditions.sensor_noise(conditions.expose(conditions.grey(image), 0.5 + 0.3 * strength), 6 + 8 * strength, rng)
    if look == "blur":
        return cv2.GaussianBlur(image, (0, 0), 1.5 + 2 * strength)
    if look == "body-hidden":
        return conditions.body_hidden(image, points, 0.0, rng)
    raise DataError(f"unknown look {look!r}; known: {', '.join(LOOKS)}")


def plan_clips(subjects: list[tuple[str, bool]], clips_per_subject: int, seconds: float, seed: int,
               looks: bool = False, hard_negatives: bool = False) -> list[ClipPlan]:
    """Deterministic plans: ``clips_per_subject`` clips of each (photo, mirror) subject.

    ``looks`` draws each clip's look (``LOOKS``: grey, dark, noisy, blurred, body hidden, or colour);
    ``hard_negatives`` puts coughing, sneezing, pacifiers and sleep into the stories.
    """
    rng = np.random.default_rng(seed)
    plans = []
    for photo, mirror in subjects:
        subject = f"{photo}-mirror" if mirror else photo
        for k in range(clips_per_subject):
            segments = tuple(random_segments(rng, seconds, hard_negatives))
            clip_seed = int(rng.integers(0, 2**31 - 1))
            look = str(rng.choice(LOOKS, p=LOOK_ODDS)) if looks else "colour"
            strength = float(rng.random()) if looks else 0.5
            plans.append(ClipPlan(f"{subject}-{k:02d}", photo, mirror, segments, clip_seed, subject, look, strength))
    return plans


INTERVALS_HEADER = ("video", "start_s", "end_s", "label", "subject")


def generate(out_dir: Path, plans: list[ClipPlan], fps: float = FPS, progress=None, resume: bool = False) -> Path:
    """Render ``plans`` into ``out_dir`` as ``NAME.mp4``; returns the intervals CSV (``labels.csv``) it wrote.

    ``resume`` keeps clips already there (from an interrupted run of the same plans); their labels
    follow from the plan alone.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    photos: dict[tuple[str, bool], FacePhoto] = {}
    rows = []
    for number, plan in enumerate(plans):
        if resume and (out_dir / f"{plan.name}.mp4").is_file() and number + 1 < len(plans) and (out_dir / f"{plans[number + 1].name}.mp4").is_file():
            # a clip is complete once the next one was begun
            labels = [kind for kind, seconds in plan.segments for _ in range(max(1, round(seconds * fps)))]
            rows += [(f"{plan.name}.mp4", start, end, label, plan.subject) for start, end, label in label_intervals(labels, fps)]
            continue
        key = (plan.photo, plan.mirror)
        if key not in photos:
            photos[key] = load_photo(plan.photo, plan.mirror)
        labels: list[str] = []

        def frames(plan=plan, labels=labels, photo=photos[key]):
            rng = np.random.default_rng(plan.seed + 1)
            for frame, label, points in render_clip(photo, list(plan.segments), plan.seed, fps, with_points=True):
                labels.append(label)
                yield look_frame(plan.look, frame, points, rng, plan.strength)

        write_video(out_dir / f"{plan.name}.mp4", frames(), fps)
        rows += [(f"{plan.name}.mp4", start, end, label, plan.subject) for start, end, label in label_intervals(labels, fps)]
        if progress is not None:
            progress(number + 1, len(plans))
    labels_path = out_dir / "labels.csv"
    with labels_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(INTERVALS_HEADER)
        writer.writerows(rows)
    return labels_path
