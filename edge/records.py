"""The small frozen records passed between pipeline stages.

Each carries ``t``, a ``time.monotonic()`` timestamp in seconds taken when the frame was captured,
so every later stage can reason about time without a wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Frame:
    """One RGB image from a source."""

    image: np.ndarray  # (H, W, 3) uint8, RGB
    t: float
    index: int

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Face and pose landmarks of one subject in pixel coordinates of the frame.

    ``face`` is MediaPipe's 478-point face mesh (468 mesh points then 10 iris points), ``pose``
    MediaPipe's 33 pose points; either is None when that part was not found. ``pose_visibility``
    holds MediaPipe's per-point visibility in [0, 1] when a pose is present.
    """

    t: float
    width: int
    height: int
    face: np.ndarray | None = None  # (478, 2) float32 pixels
    pose: np.ndarray | None = None  # (33, 2) float32 pixels
    pose_visibility: np.ndarray | None = None  # (33,) float32
    face_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in pixels

    @property
    def has_face(self) -> bool:
        return self.face is not None

    @property
    def has_pose(self) -> bool:
        return self.pose is not None


# Score.status values. "ok": the probability means something. Anything else says why the modality cannot
# perceive; vision: no face, no body (for a model that needs one), too dark; audio names its own
# (e.g. "no_sound_device"). The alarm holds its state on a status that is not ok and ends a running
# episode with the status as the reason once it lasts ``alarm.blind_seconds``.
OK = "ok"
NO_FACE = "no_face"
NO_BODY = "no_body"
TOO_DARK = "too_dark"
MODEL_ERROR = "model_error"  # the model failed on this input (an invoke error, scores that are not numbers)


@dataclass(frozen=True)
class Score:
    """A model's output for the window ending at ``t``, or why there is none that means anything.

    ``face_seen=False`` with no status given means status ``"no_face"`` (the older way to say it).
    """

    t: float
    probability: float  # probability of the alarm class (crying); meaningless unless ``ok``
    face_seen: bool = True  # the newest frame of the window had a face
    probabilities: tuple[float, ...] = field(default=())  # all classes, in the card's label order
    status: str = OK
    # how long this evidence must hold before an episode starts; None: the alarm's min_on_seconds (the
    # fusion sets it when the sound decides: an audio window already integrates about a second of sound)
    min_on_seconds: float | None = None

    def __post_init__(self):
        if not self.face_seen and self.status == OK:
            object.__setattr__(self, "status", NO_FACE)

    @property
    def ok(self) -> bool:
        """Whether the probability is evidence (the modality could perceive)."""
        return self.status == OK


@dataclass(frozen=True)
class AlarmEvent:
    """A cry episode starting or ending."""

    kind: str  # "start" or "end"
    event_id: str  # shared by the start and the end of one episode
    t: float  # monotonic time the state changed
    wall_time: float  # time.time() at the same moment, for subscribers
    probability: float
    reason: str = ""  # why an episode ended: "scores", "shutdown", "error", or the Score.status that lasted ("no_face")
