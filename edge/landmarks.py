"""Landmark stage: MediaPipe Tasks face (478 points) and pose (33 points) for one subject a frame.

The subject is one face, the largest (or the one nearest the frame centre), and the pose nearest
that face. Points come back in pixels of the whole frame even when a region of interest was
cropped out first. Video frames go through the Tasks VIDEO mode, which tracks from frame to frame
and wants strictly increasing timestamps; single photos through the IMAGE mode.

The ``cryedge landmarks`` command that shows what this stage sees is ``edge.landmarks_cli``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge import native, paths
from edge.bundles.digests import check_written
from edge.errors import ModelError
from edge.mediapipe_import import import_mediapipe
from edge.records import Frame, Landmarks

log = logging.getLogger(__name__)

FACE_MESH_POINTS = 478
POSE_POINTS = 33
SUBJECTS = ("largest", "center")


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
            if path is not None:
                check_written(path)  # damaged on disk since it was fetched: refused, not run on wrong points

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
        except OSError as error:  # libmediapipe.so is loaded here, with the system libraries it links
            self.close()
            raise native.missing_library_error(error, "MediaPipe's landmarker") or error from None

    @classmethod
    def from_config(cls, config, mode: str = "video") -> LandmarkExtractor:
        """From ``edge.config.LandmarksConfig``."""
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
            # at least a pixel: a small frame's crop rounded to none, and MediaPipe's graph raised on it
            x1, y1 = max(int(round(self.roi[2] * width)), x0 + 1), max(int(round(self.roi[3] * height)), y0 + 1)
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
