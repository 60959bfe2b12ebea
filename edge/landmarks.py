"""Landmark stage: MediaPipe Tasks face (478 points) and pose (33 points) for one subject a frame.

The subject is one face, the largest (or the one nearest the frame centre), and the pose nearest
that face. Points come back in pixels of the whole frame even when a region of interest was
cropped out first. Video frames go through the Tasks VIDEO mode, which tracks from frame to frame
and wants strictly increasing timestamps; single photos through the IMAGE mode.

Also the ``cryedge landmarks`` command, which prints a photo's or a video's OpenPose-layout points.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge import paths
from edge.errors import DataError, ModelError
from edge.records import Frame, Landmarks

log = logging.getLogger(__name__)

FACE_MESH_POINTS = 478
POSE_POINTS = 33
SUBJECTS = ("largest", "center")
DEMO_PHOTO = "astronaut.jpg"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}


# Parts of mediapipe that ``import mediapipe`` runs and cryedge never uses, loaded only on first use:
# the vision drawing helpers import matplotlib.pyplot (0.3 s and 36 MiB of RSS measured at import);
# the audio tasks import sounddevice, which loads PortAudio where it is installed; the text tasks.
# Audio and text together measured 2 MiB here, without PortAudio.
DEFERRED_MODULES = frozenset({
    "mediapipe.tasks.python.vision.drawing_utils",
    "mediapipe.tasks.python.vision.drawing_styles",
    "mediapipe.tasks.python.audio",
    "mediapipe.tasks.python.text",
})


class _LeanMediapipeImport(importlib.abc.MetaPathFinder):
    """Keeps TensorFlow out of ``import mediapipe`` and defers the ``DEFERRED_MODULES``.

    mediapipe's optional_dependencies imports TensorFlow merely for documentation decorators when
    it is installed (a host with the convert extra), costing seconds and hundreds of MB. The deferred
    modules are loaded lazily (``importlib.util.LazyLoader``): still importable, and executed on
    first use of one of their names.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of mediapipe by cryedge)", name=name)
        if name in DEFERRED_MODULES:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = importlib.util.LazyLoader(spec.loader)
            return spec
        return None  # not ours: the next finder looks


def import_mediapipe():
    """``import mediapipe`` without TensorFlow and with the unused parts deferred; all stay importable."""
    if "mediapipe" in sys.modules or "tensorflow" in sys.modules:
        import mediapipe

        return mediapipe
    finder = _LeanMediapipeImport()
    sys.meta_path.insert(0, finder)
    try:
        import mediapipe
    finally:
        sys.meta_path.remove(finder)
    return mediapipe


def bundle_path(name: str, models_dir: Path | None = None) -> Path:
    """A bundle's path; a ModelError saying how to build it when it is missing."""
    path = (Path(models_dir) if models_dir else paths.landmarks_dir()) / name
    if not path.is_file():
        raise ModelError(f"landmark model {path} is missing; run `cryedge models fetch` to build it")
    return path


def _points(landmarks, width: int, height: int, x0: float, y0: float) -> np.ndarray:
    """Normalized Tasks landmarks of a (crop) image to frame pixels: (N, 2) float32."""
    xy = np.array([(p.x, p.y) for p in landmarks], dtype=np.float32)
    xy[:, 0] = xy[:, 0] * width + x0
    xy[:, 1] = xy[:, 1] * height + y0
    return xy


def _box(xy: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def choose_face(boxes: list[tuple[float, float, float, float]], width: int, height: int, subject: str) -> int | None:
    """Index of the subject's face box: the largest, or the one whose centre is nearest the frame's."""
    if not boxes:
        return None
    if subject == "largest":
        return max(range(len(boxes)), key=lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
    centre = np.array([width / 2, height / 2])
    return min(range(len(boxes)), key=lambda i: np.hypot(*(np.array([(boxes[i][0] + boxes[i][2]) / 2, (boxes[i][1] + boxes[i][3]) / 2]) - centre)))


def choose_pose(poses: list[np.ndarray], face_box: tuple[float, float, float, float] | None) -> int | None:
    """Index of the pose whose head (points 0-10) is nearest the face box centre; else the largest."""
    if not poses:
        return None
    if face_box is None:
        return max(range(len(poses)), key=lambda i: np.prod(np.ptp(poses[i], axis=0)))
    centre = np.array([(face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2])
    return min(range(len(poses)), key=lambda i: float(np.linalg.norm(poses[i][:11].mean(axis=0) - centre)))


class LandmarkExtractor:
    """Face mesh and pose of one subject a frame, over MediaPipe Tasks; owns both landmarkers.

    ``mode`` is "video" (frames of one stream, timestamps from ``Frame.t``) or "image" (unrelated
    photos). ``pose_every=k`` runs pose on every k-th frame and repeats the last pose in between:
    pose costs about four times face (640x480, one core: face 3.9 ms, both 22 ms a frame, both with
    k=3 10.4 ms on average; benchmarks/landmarks.py), while body points lag by up to k-1 frames and
    a frame's time varies (pose frames still take the full 22 ms). ``roi`` (x0, y0, x1, y1 fractions) crops the frame before detection, so
    a small face in a known place (a crib) is seen larger; points are mapped back to the frame.
    The Tasks API has no thread-count option: pin the process (``taskset``) to bound its cores.

    ``subject`` picks among the ``num_faces`` faces MediaPipe returns; with the default 1 that is
    the face MediaPipe tracks. More candidates cost: with fewer faces in view than ``num_faces`` the
    detector runs on every frame (640x480, one core: face 4.0 ms with 1, 9.1 ms with 2; pose 18 ms
    with 1, 31 ms with 2).
    """

    def __init__(
        self,
        face_model: Path | None = None,
        pose_model: Path | None = None,
        *,
        face: bool = True,
        pose: bool = True,
        pose_every: int = 1,
        subject: str = "largest",
        roi: tuple[float, float, float, float] | None = None,
        num_faces: int = 1,
        num_poses: int = 1,
        min_face_detection_confidence: float = 0.5,
        min_face_presence_confidence: float = 0.5,
        min_pose_detection_confidence: float = 0.5,
        min_pose_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        mode: str = "video",
    ):
        if subject not in SUBJECTS:
            raise ValueError(f"subject must be one of {SUBJECTS}, not {subject!r}")
        if mode not in ("video", "image"):
            raise ValueError(f"mode must be 'video' or 'image', not {mode!r}")
        if not (face or pose):
            raise ValueError("an extractor needs face or pose (or both)")
        if pose_every < 1:
            raise ValueError("pose_every must be at least 1")
        if roi is not None and not (0 <= roi[0] < roi[2] <= 1 and 0 <= roi[1] < roi[3] <= 1):
            raise ValueError(f"roi must be x0, y0, x1, y1 fractions inside the frame, not {roi}")
        self.subject = subject
        self.roi = roi
        self.pose_every = pose_every
        self.mode = mode
        self._face = None
        self._pose = None
        self._last_ms = -1
        self._frames = 0
        self._last_pose: tuple[np.ndarray, np.ndarray] | None = None
        face_path = bundle_path("face_landmarker.task") if face and face_model is None else face_model
        pose_path = bundle_path("pose_landmarker.task") if pose and pose_model is None else pose_model
        for path in (face_path if face else None, pose_path if pose else None):
            if path is not None and not Path(path).is_file():
                raise ModelError(f"landmark model {path} is missing; run `cryedge models fetch` to build it")

        mp = import_mediapipe()
        vision = mp.tasks.vision
        running_mode = vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE
        try:
            if face:
                self._face = vision.FaceLandmarker.create_from_options(
                    vision.FaceLandmarkerOptions(
                        base_options=mp.tasks.BaseOptions(model_asset_path=str(face_path)),
                        running_mode=running_mode,
                        num_faces=num_faces,
                        min_face_detection_confidence=min_face_detection_confidence,
                        min_face_presence_confidence=min_face_presence_confidence,
                        min_tracking_confidence=min_tracking_confidence,
                    )
                )
            if pose:
                self._pose = vision.PoseLandmarker.create_from_options(
                    vision.PoseLandmarkerOptions(
                        base_options=mp.tasks.BaseOptions(model_asset_path=str(pose_path)),
                        running_mode=running_mode,
                        num_poses=num_poses,
                        min_pose_detection_confidence=min_pose_detection_confidence,
                        min_pose_presence_confidence=min_pose_presence_confidence,
                        min_tracking_confidence=min_tracking_confidence,
                    )
                )
        except (RuntimeError, ValueError) as error:
            self.close()
            raise ModelError(f"MediaPipe cannot load the landmark models ({face_path}, {pose_path}): {error}") from None

    @classmethod
    def from_config(cls, config, mode: str = "video") -> LandmarkExtractor:
        """From ``edge.config.LandmarksConfig`` (``num_threads`` is left to process pinning)."""
        return cls(
            config.face_model, config.pose_model, pose=config.pose, pose_every=config.pose_every,
            subject=config.subject, roi=config.roi,
            min_face_detection_confidence=config.min_face_detection_confidence,
            min_face_presence_confidence=config.min_face_presence_confidence,
            min_pose_detection_confidence=config.min_pose_detection_confidence,
            min_pose_presence_confidence=config.min_pose_presence_confidence,
            min_tracking_confidence=config.min_tracking_confidence, mode=mode,
        )

    @property
    def runs_pose(self) -> bool:
        """Whether this extractor has a pose landmarker (and so body points)."""
        return self._pose is not None

    def _timestamp_ms(self, t: float) -> int:
        ms = int(round(t * 1000))
        if ms <= self._last_ms:
            ms = self._last_ms + 1  # Tasks refuses a timestamp that does not increase
        self._last_ms = ms
        return ms

    def _run(self, task, image, timestamp_ms: int):
        if self.mode == "video":
            return task.detect_for_video(image, timestamp_ms)
        return task.detect(image)

    def extract(self, frame: Frame) -> Landmarks:
        """The subject's landmarks in ``frame``; face and pose are None where not found."""
        if self._face is None and self._pose is None:
            raise ModelError("the landmark extractor is closed")
        mp = import_mediapipe()
        rgb = frame.image
        height, width = rgb.shape[:2]
        x0 = y0 = 0
        if self.roi is not None:
            x0, y0 = int(self.roi[0] * width), int(self.roi[1] * height)
            x1, y1 = int(round(self.roi[2] * width)), int(round(self.roi[3] * height))
            rgb = rgb[y0:y1, x0:x1]
        crop_h, crop_w = rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        timestamp_ms = self._timestamp_ms(frame.t)

        face = face_box = None
        if self._face is not None:
            result = self._run(self._face, image, timestamp_ms)
            faces = [_points(points, crop_w, crop_h, x0, y0) for points in result.face_landmarks]
            faces = [xy for xy in faces if len(xy) == FACE_MESH_POINTS]
            boxes = [_box(xy[:468]) for xy in faces]
            chosen = choose_face(boxes, width, height, self.subject)
            if chosen is not None:
                face, face_box = faces[chosen], boxes[chosen]

        pose = visibility = None
        if self._pose is not None:
            if self._frames % self.pose_every == 0:
                result = self._run(self._pose, image, timestamp_ms)
                poses = [_points(points, crop_w, crop_h, x0, y0) for points in result.pose_landmarks]
                chosen = choose_pose(poses, face_box)
                if chosen is None:
                    self._last_pose = None
                else:
                    seen = np.array(
                        [p.visibility if p.visibility is not None else 0.0 for p in result.pose_landmarks[chosen]],
                        dtype=np.float32,
                    )
                    self._last_pose = (poses[chosen], seen)
            if self._last_pose is not None:
                pose, visibility = self._last_pose
        self._frames += 1
        return Landmarks(
            t=frame.t, width=width, height=height, face=face, pose=pose, pose_visibility=visibility, face_box=face_box
        )

    def close(self) -> None:
        """Free the native landmarkers; safe to call twice."""
        for name in ("_face", "_pose"):
            task = getattr(self, name, None)
            if task is not None:
                setattr(self, name, None)
                task.close()

    def __enter__(self) -> LandmarkExtractor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


def landmarks_of_photo(image: np.ndarray, **options) -> Landmarks:
    """One photo's landmarks in IMAGE mode (``options`` as LandmarkExtractor's)."""
    with LandmarkExtractor(mode="image", **options) as extractor:
        return extractor.extract(Frame(image=image, t=0.0, index=0))


# --- cryedge landmarks -------------------------------------------------------------------------

def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8; a DataError when it is missing or not an image."""
    import cv2

    if not path.is_file():
        raise DataError(f"no such image or video: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read {path} as an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def subject_points(landmarks: Landmarks, spec) -> dict:
    """The subject's face70 and body8 points in pixels (None where absent) and its feature vector."""
    from edge.features import frame_features, keypoints

    xy, present = keypoints(landmarks, spec)
    n_face = len(spec.face_points)
    as_list = [[round(float(x), 2), round(float(y), 2)] if ok else None for (x, y), ok in zip(xy, present, strict=True)]
    return {
        "face70": as_list[:n_face],
        "body8": as_list[n_face:],
        "features": [round(float(v), 5) for v in frame_features(landmarks, spec)],
    }


def draw_points(image: np.ndarray, points: dict) -> np.ndarray:
    """``image`` (RGB) with face70 points in green and body8 points in magenta, each numbered."""
    import cv2

    canvas = np.ascontiguousarray(image[:, :, ::-1].copy())
    scale = max(image.shape[:2]) / 1000
    # BGR colours: face green, small; body magenta, larger, with a dark rim to stand out on any cloth.
    for group, colour, radius, font in (("face70", (60, 220, 80), 2, 0.3), ("body8", (255, 0, 255), 5, 0.5)):
        radius = max(radius, int(radius * scale))
        for i, point in enumerate(points[group]):
            if point is None:
                continue
            x, y = int(round(point[0])), int(round(point[1]))
            cv2.circle(canvas, (x, y), radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(canvas, (x, y), radius, colour, -1, cv2.LINE_AA)
            cv2.putText(canvas, str(i), (x + radius + 1, y - radius - 1), cv2.FONT_HERSHEY_SIMPLEX, font * max(scale, 1),
                        colour, 1, cv2.LINE_AA)
    return canvas[:, :, ::-1]


def _summary(source: str, landmarks: Landmarks, points: dict) -> str:
    face = sum(p is not None for p in points["face70"])
    body = sum(p is not None for p in points["body8"])
    lines = [f"{source}: {landmarks.width}x{landmarks.height}"]
    if landmarks.face_box is not None:
        x0, y0, x1, y1 = landmarks.face_box
        lines.append(f"  face: {face}/70 points, box {x0:.0f},{y0:.0f}-{x1:.0f},{y1:.0f} ({x1 - x0:.0f} px wide)")
    else:
        lines.append("  face: none found")
    lines.append(f"  body: {body}/8 points" + ("" if landmarks.has_pose else " (no pose found)"))
    for name, index in (("right pupil", 68), ("left pupil", 69)):
        point = points["face70"][index]
        if point is not None:
            lines.append(f"  {name}: {point[0]:.1f}, {point[1]:.1f}")
    lines.append(f"  features: {len(points['features'])} values")
    return "\n".join(lines)


def _video_frames(path: Path) -> Iterator[Frame]:
    from edge.errors import SourceError
    from edge.source import FileSource

    source = FileSource(path, realtime=False)
    try:
        source.open()
    except SourceError as error:
        raise DataError(str(error)) from None
    try:
        while (frame := source.read()) is not None:
            yield frame
    finally:
        source.close()


def _landmarks_command(args) -> int:
    import cv2

    from edge.features import get_spec

    spec = get_spec(args.spec, args.normalization)
    path = Path(args.source) if args.source else paths.data_file(DEMO_PHOTO)
    options = {
        "pose": not args.no_pose,
        "subject": args.subject,
        "roi": tuple(args.roi) if args.roi else None,
        "num_faces": args.num_faces,
        "num_poses": args.num_faces,
    }
    if path.suffix.lower() in VIDEO_SUFFIXES:
        if not path.is_file():
            raise DataError(f"no such image or video: {path}")
        with LandmarkExtractor(mode="video", **options) as extractor:
            count = faces = 0
            for frame in _video_frames(path):
                landmarks = extractor.extract(frame)
                points = subject_points(landmarks, spec)
                count, faces = count + 1, faces + landmarks.has_face
                if args.json:
                    print(json.dumps({"frame": frame.index, **points}), flush=True)
        if count == 0:
            raise DataError(f"{path} has no frames")
        if not args.json:
            print(f"{path}: {count} frames, a face in {faces}")
        return 0

    image = read_image(path)
    landmarks = landmarks_of_photo(image, **options)
    points = subject_points(landmarks, spec)
    print(json.dumps(points) if args.json else _summary(str(path), landmarks, points))
    drawn = np.ascontiguousarray(draw_points(image, points)[:, :, ::-1]) if args.draw else None
    if drawn is not None and not cv2.imwrite(str(args.draw), drawn):
        raise DataError(f"cannot write {args.draw}")
    return 0


def add_commands(subparsers) -> None:
    from edge.features import NORMALIZATIONS, SPECS

    parser = subparsers.add_parser(
        "landmarks", help="print the OpenPose-layout points of a photo or video",
        description="Face70 (iBUG-68 + pupils) and body8 (BODY_25 0-7) points of the subject, in pixels, "
        "and the feature vector. Without SOURCE: a bundled photo.",
    )
    parser.add_argument("source", nargs="?", metavar="IMAGE_OR_VIDEO", help="a photo or a video file")
    parser.add_argument("--json", action="store_true", help="JSON (one line a frame for a video)")
    parser.add_argument("--draw", metavar="OUT.png", help="write the photo with the points drawn and numbered (photos only)")
    parser.add_argument("--spec", default="openpose-face70-body8", choices=sorted(SPECS))
    parser.add_argument("--normalization", default="minmax", choices=NORMALIZATIONS)
    parser.add_argument("--subject", default="largest", choices=SUBJECTS, help="which face is the subject")
    parser.add_argument("--num-faces", type=int, default=4, metavar="N",
                        help="faces (and poses) to find and choose the subject among (default: %(default)s)")
    parser.add_argument("--roi", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="crop (fractions) before detection")
    parser.add_argument("--no-pose", action="store_true", help="face only")
    parser.set_defaults(handler=_landmarks_command)
