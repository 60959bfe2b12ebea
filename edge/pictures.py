"""Pictures of what the camera sees: the alert snapshot (MQTT) and the frames of the live view (HTTP).

Both are opt-in (``[snapshot]``, ``[live]``) and both are made off the frame loop: the loop hands over a
reference to the frame's array and its landmarks (sources make a new array for every frame, so nothing
changes it afterwards), and a worker or a viewer's thread draws, scales and encodes. Nothing here writes
a picture to disk.

``render`` is pure (an RGB array in, a smaller BGR array out); ``encode_jpeg`` turns it into bytes.
``SnapshotWorker`` owns the thread that encodes the picture of a cry's start (and, if asked, its end)
and gives the bytes to the publisher.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.records import AlarmEvent, Landmarks

log = logging.getLogger(__name__)

FACE_COLOUR = (80, 220, 255)  # BGR: amber dots on the face
BODY_COLOUR = (80, 255, 80)  # BGR: green for the body
# MediaPipe pose points the models use (BODY_25 0-7: nose, shoulders, elbows, wrists), drawn as a skeleton
UPPER_BODY_LINES = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16))
UPPER_BODY_POINTS = (0, 11, 12, 13, 14, 15, 16)
FACE_MARGIN = 0.6  # a face crop or blur reaches this share of the face box beyond each side (hair, chin)


@dataclass(frozen=True)
class Look:
    """How a picture is drawn: points, probability text, the face shown/blurred/cropped, the size bound."""

    landmarks: bool = True
    probability: bool = True
    face: str = "show"  # "show", "blur" or "crop"
    max_width: int = 640
    max_height: int = 480

    @classmethod
    def from_config(cls, config) -> Look:
        return cls(config.landmarks, config.probability, config.face, config.max_width, config.max_height)


def face_region(landmarks: Landmarks | None, width: int, height: int,
                margin: float = FACE_MARGIN) -> tuple[int, int, int, int] | None:
    """The face box widened by ``margin`` on each side and clipped to the frame, in pixels; None without a face."""
    if landmarks is None or landmarks.face_box is None:
        return None
    x0, y0, x1, y1 = landmarks.face_box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    box = (max(0, int(x0 - dx)), max(0, int(y0 - dy)), min(width, int(np.ceil(x1 + dx))),
           min(height, int(np.ceil(y1 + dy))))
    return box if box[2] > box[0] and box[3] > box[1] else None


def render(image: np.ndarray, landmarks: Landmarks | None, look: Look, probability: float | None = None,
           label: str = "") -> np.ndarray:
    """``image`` (RGB) as a BGR picture within ``look``'s size, with what ``look`` asks drawn on it.

    With ``face="crop"`` and no face found the whole frame is shown (there is nothing to crop to); with
    ``face="blur"`` and no face nothing is blurred: the picture is of a room in which no face was found.
    """
    import cv2

    height, width = image.shape[:2]
    region = face_region(landmarks, width, height)
    x0 = y0 = 0
    if look.face == "crop" and region is not None:
        x0, y0, x1, y1 = region
        image = image[y0:y1, x0:x1]
    scale = min(1.0, look.max_width / image.shape[1], look.max_height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    picture = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)  # a new array: the frame itself is never drawn on

    def to_picture(points: np.ndarray) -> np.ndarray:
        return np.round((points - (x0, y0)) * scale).astype(np.int32)

    if look.face == "blur" and region is not None:
        bx0, by0, bx1, by1 = to_picture(np.array(region, np.float32).reshape(2, 2)).reshape(4)
        patch = picture[by0:by1, bx0:bx1]
        if patch.size:
            # a kernel a third of the face wide leaves a shape, not a person
            k = max(3, (max(patch.shape[:2]) // 3) | 1)
            picture[by0:by1, bx0:bx1] = cv2.GaussianBlur(patch, (k, k), 0)
    if look.landmarks and landmarks is not None:
        radius = max(1, round(2 * min(picture.shape[:2]) / 480))
        if landmarks.pose is not None:
            body = to_picture(landmarks.pose)
            for a, b in UPPER_BODY_LINES:
                cv2.line(picture, tuple(body[a]), tuple(body[b]), BODY_COLOUR, radius, cv2.LINE_AA)
            for index in UPPER_BODY_POINTS:
                cv2.circle(picture, tuple(body[index]), radius + 2, BODY_COLOUR, -1, cv2.LINE_AA)
        if landmarks.face is not None and look.face != "blur":
            for x, y in to_picture(landmarks.face[::2]):  # every other mesh point reads as the face's outline
                cv2.circle(picture, (int(x), int(y)), radius, FACE_COLOUR, -1)
    text = " ".join(part for part in (label, f"p={probability:.2f}" if look.probability and probability is not None
                                      and np.isfinite(probability) else "") if part)
    if text:
        scale_text = max(0.45, picture.shape[0] / 600)
        origin = (6, int(8 + 26 * scale_text))
        outline = max(2, round(4 * scale_text))  # white on a black outline reads on any picture
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale_text, (0, 0, 0), outline, cv2.LINE_AA)
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale_text, (255, 255, 255), 1, cv2.LINE_AA)
    return picture


def encode_jpeg(picture: np.ndarray, quality: int) -> bytes:
    """A BGR picture as JPEG bytes."""
    import cv2

    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


@dataclass(frozen=True)
class SnapshotRequest:
    """What the frame loop hands over: references only, no copy and no work."""

    image: np.ndarray
    landmarks: Landmarks | None
    event: AlarmEvent


class SnapshotWorker:
    """Encodes the pictures of cry events on its own thread and hands the JPEG bytes to ``deliver``.

    ``offer()`` returns at once: the request goes on a queue of ``depth``; when it is full the oldest
    request is dropped (and counted in ``dropped``), so a slow encoder never holds up the frame loop and
    the newest cry is the one pictured. ``close()`` encodes what is queued (for at most ``timeout``).
    ``on_dropped()`` is called for each picture that is not delivered (dropped so, or failed to draw or encode): the
    publisher counts it with the pictures its broker never took, where a parent looks (``snapshots_dropped``).
    """

    def __init__(self, config, deliver: Callable[[bytes, AlarmEvent], None], depth: int = 2,
                 on_dropped: Callable[[], None] | None = None):
        self.look = Look.from_config(config)
        self.quality = config.quality
        self.on_end = config.on_end
        self._deliver = deliver
        self._on_dropped = on_dropped
        self._requests: deque[SnapshotRequest] = deque()
        self._depth = depth
        self._changed = threading.Condition()
        self._closing = False
        self.dropped = 0
        self.encoded = 0
        self.last_ms: float | None = None
        self._thread = threading.Thread(target=self._run, name="cryedge-snapshot", daemon=True)
        self._thread.start()

    @classmethod
    def for_publisher(cls, config, publisher) -> SnapshotWorker:
        """The worker that hands its pictures to ``publisher`` (``edge.publish``) and has it count those it drops."""
        return cls(config, publisher.publish_snapshot, on_dropped=publisher.snapshot_dropped)

    def offer(self, image: np.ndarray, landmarks: Landmarks | None, event: AlarmEvent) -> bool:
        """Queue the picture of ``event``'s frame; False when this kind of event is not pictured."""
        if event.kind == "end" and not self.on_end:
            return False
        with self._changed:
            if self._closing:
                return False
            if len(self._requests) >= self._depth:
                self._requests.popleft()
                self.dropped += 1
                log.warning("snapshot encoder behind: dropped the oldest picture (%d so far)", self.dropped)
                self._dropped()
            self._requests.append(SnapshotRequest(image, landmarks, event))
            self._changed.notify()
        return True

    def _run(self) -> None:
        import time

        while True:
            with self._changed:
                while not self._requests and not self._closing:
                    self._changed.wait()
                if not self._requests:
                    return
                request = self._requests.popleft()
            start = time.perf_counter()
            try:
                label = "cry" if request.event.kind == "start" else "calm"
                picture = render(request.image, request.landmarks, self.look, request.event.probability, label)
                data = encode_jpeg(picture, self.quality)
                self.last_ms = (time.perf_counter() - start) * 1000
                self.encoded += 1
                self._deliver(data, request.event)
            except Exception:  # noqa: BLE001 - a picture that fails must not stop the next one, nor the alerts: one
                # line (edge.logs.OneLineErrors; the traceback at -vv), and the daemon goes on (its event went first)
                log.exception("snapshot of %s %s failed", request.event.kind, request.event.event_id)
                self._dropped()

    def _dropped(self) -> None:
        if self._on_dropped is not None:
            self._on_dropped()

    def close(self, timeout: float = 2.0) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout)
