"""The daemon: source -> landmarks -> features -> window -> model -> alarm -> publish, one frame at a time.

``Pipeline`` owns the stages and processes one frame; ``Daemon`` owns the pipeline, the source,
the publisher, the health server and the systemd notifications, and runs the loop until the
source ends or a signal stops it. Every episode that starts also ends: on a clean stop the alarm's
end event and the OFF state are published before the broker connection closes.

With no camera (``[source] type = "none"``) there is no pipeline: the loop follows the sound alone,
score by score (``Daemon._listen``), and the microphone stands where the camera stood in the stats,
/health and the watchdog.

``cryedge run`` with no arguments plays the bundled demo clip through the default model and prints
the alarm events as JSON lines.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from edge.errors import SourceError, ThreadFault, error_in_one_line, innermost_in_cryedge

log = logging.getLogger(__name__)

STAGES = ("exposure", "landmarks", "features", "model", "alarm", "publish")
# glibc gives each thread that allocates an arena of its own (up to 8 a core) and keeps freed memory in
# each; MediaPipe's graphs and XNNPACK run a dozen threads. Two arenas: peak RSS of the demo with a broker
# 248 -> 244 MiB, no slower (A/B, three runs each). MALLOC_ARENA_MAX, if set, wins.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter number in <malloc.h>
# No frame for this long (or the camera reconnecting): the alarm advances on the sound alone. Longer than a
# frame interval of any camera cryedge runs (>= 2 fps), so a slow camera's frames are not interleaved; a camera
# set slower ([source] fps, a picamera2's min_fps) gets two of its frame intervals (Daemon._frames_missing_after).
FRAMES_MISSING_SECONDS = 1.0
# MediaPipe raising on this many frames in a row is a fault of the landmark stage (the vision status model_error
# until a window of frames passes again); fewer are dropped frames, said at -vv only: one bad frame must not flap
# the status Home Assistant shows, nor a graph failing on every frame stop the daemon (exit 70, restarted for ever).
LANDMARK_FAULT_AFTER = 3
# systemd kills a daemon that has not exited TimeoutStopSec (20 s) after SIGTERM: a stop ends the running cry and sends
# (or keeps in the outbox) its end, the final OFF and offline within STOP_SECONDS of being asked, with room left for the
# interpreter's exit. The frame loop gets the first FRAME_LOOP_STOP_SECONDS to finish its frame and end the cry itself.
STOP_SECONDS = 15.0
FRAME_LOOP_STOP_SECONDS = 5.0
# The frame loop this long past its promise of progress (the watchdog's: a frame within [source] stall_seconds, or a
# reopen on the source supervisor's schedule) is stuck, not slow: a source notices a stall within a second and closes
# its camera (seconds at most) before it promises its reopen. Stuck, it ends a running cry and exits (70) to be
# restarted, where systemd's watchdog (WatchdogSec=30s) would abort it 15 s or more past the promise, the cry left ON.
STUCK_AFTER_SECONDS = 5.0
# The frame loop's first frame is due this long after the loop starts (READY=1), on top of the source's own wait for one
# ([source] stall_seconds and a stream's probe, after which its supervisor reopens it and promises each attempt itself):
# the first frame through MediaPipe and the model. It took 27-39 ms here (x86, three runs), and the daemon under QEMU's
# cortex-a72, far slower than a Pi 3, takes 5.2 s a frame (docs/raspberry-pi.md): a minute is ten times that. Without
# this promise a loop that hangs before its first frame (a graph's first inference, a driver's first read) was never
# stuck: outside systemd it hung for ever, unsaid; under it the watchdog, armed at READY=1, aborted it WatchdogSec
# later with no line of cryedge's, and again after every restart.
FIRST_FRAME_SECONDS = 60.0
# Start-up (Daemon.open: the model, MediaPipe's landmarkers, the sound's model, the broker's first answer, the camera's
# open), run on a thread of its own, must be over this long after it began; else it is stuck (a landmarker's creation, a
# delegate's load, a camera driver's open that never returns, in native code nothing can interrupt) and cryedge says
# where in one line and exits 70 to be restarted. Before, it hung for ever unsaid, and under systemd TimeoutStartSec
# (120 s) killed it without a line of cryedge's, again after every restart. It takes 0.8-0.9 s here from launch to
# READY=1 (x86, three runs: the model 0.01-0.03 s, the face landmarker 0.10-0.27 s, face and pose 0.11-0.25 s);
# `cryedge landmarks` on a photo, imports, both landmarkers and an inference, 45 s under QEMU's cortex-a72, far
# slower than any Pi (docs/raspberry-pi.md); a camera's open gives up after [source] stall_seconds (5 s). 90 s is
# twice QEMU's, and with the interpreter's start (about a second) and the exit (the publisher's goodbye, at most
# CLOSE_ACK_SECONDS) still inside TimeoutStartSec; EXTEND_TIMEOUT_USEC tells systemd to wait for it all the same.
START_UP_SECONDS = 90.0
# systemd is told, as start-up begins, to wait this much longer than START_UP_SECONDS: the line, the publisher's
# goodbye (its acknowledgements awaited at most CLOSE_ACK_SECONDS) and the exit, so cryedge's line comes first.
START_UP_EXIT_SECONDS = 15.0


@dataclass(frozen=True)
class FrameResult:
    """What one frame did to the pipeline: for statistics and tests."""

    t: float
    face_seen: bool
    score: object | None  # edge.records.Score once the window is full
    events: tuple  # edge.records.AlarmEvent raised by this frame
    stage_ms: dict
    body_seen: bool = False
    inference_ms: float | None = None  # the model's own time, when the window was scored
    brightness: float | None = None  # mean luma 0-255 of the frame as captured
    landmarks: object | None = None  # edge.records.Landmarks of the frame, for its pictures (edge.pictures)
    landmark_fault: bool = False  # the landmark stage raised on the frame: it was lost, not looked at


class RollingStats:
    """Medians of the last ``size`` frames' stage times, frame rate, and the share with a face."""

    def __init__(self, size: int = 100):
        self._stage_ms = {name: deque(maxlen=size) for name in STAGES}
        self._times = deque(maxlen=size)
        self._faces = deque(maxlen=size)
        self._inference_ms = deque(maxlen=size)
        self._brightness = deque(maxlen=size)
        self.frames = 0

    def add(self, result: FrameResult, now: float) -> None:
        self.frames += 1
        self._times.append(now)
        self._faces.append(result.face_seen)
        for name, ms in result.stage_ms.items():
            self._stage_ms[name].append(ms)
        if result.inference_ms is not None:
            self._inference_ms.append(result.inference_ms)
        if result.brightness is not None:
            self._brightness.append(result.brightness)

    @property
    def fps(self) -> float:
        if len(self._times) < 2 or self._times[-1] == self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    @property
    def face_share(self) -> float | None:
        return float(np.mean(self._faces)) if self._faces else None

    @property
    def brightness(self) -> float | None:
        """Median image brightness of the recent frames as captured, 0-1 (mean luma / 255)."""
        return float(np.median(self._brightness)) / 255 if self._brightness else None

    @property
    def inference_ms(self) -> float | None:
        """The model's median time over the last windows scored."""
        return float(np.median(self._inference_ms)) if self._inference_ms else None

    def stage_medians(self) -> dict[str, float]:
        return {name: float(np.median(values)) for name, values in self._stage_ms.items() if values}


class Pipeline:
    """The stages from landmarks to alarm for one stream of frames; built from the model's card."""

    def __init__(self, extractor, scorer, alarm, exposure=None, too_dark_below: float = 12.0):
        from edge.exposure import ExposureStage
        from edge.features import get_spec
        from edge.window import FeatureWindow

        self.extractor, self.scorer, self.alarm = extractor, scorer, alarm
        self.exposure = exposure if exposure is not None else ExposureStage()
        self.too_dark_below = too_dark_below
        self.fuse = None  # with hearing: (vision score, t) -> the fused scores the alarm follows (edge.audio)
        card = scorer.card
        self.card = card
        if card.kind == "landmark-window":
            self.spec = get_spec(card.features.spec, card.features.normalization)
            self.window = FeatureWindow(card.window, self.spec.size)
        else:
            crop = card.face_crop
            self.spec = None
            self.window = FeatureWindow(card.window, (crop.height, crop.width, crop.channels), dtype=np.uint8)
        self._faces = FeatureWindow(card.window, 1, dtype=bool)
        self._bodies = FeatureWindow(card.window, 1, dtype=bool)
        self.landmarks_error: str | None = None  # why the landmark stage fails, while it does (a vision model_error)
        self._landmark_failures = 0  # frames in a row the landmark stage raised on
        self._landmarks_failing_since: float | None = None  # frame time of the fault's first failure

    def process(self, frame) -> FrameResult:
        """``frame`` through every stage: what ``see`` makes of it, then the alarm's decision on it (``decide``)."""
        return self.decide(self.see(frame))

    def see(self, frame) -> FrameResult:
        """``frame`` through the stages before the alarm (its score once the window is full), no events yet: the daemon
        runs these, which may hang in native code, outside the lock it takes for the alarm and what it publishes."""
        from dataclasses import replace

        from edge.features import face_crop, frame_features
        from edge.model import vision_status

        times = {}
        start = time.perf_counter()
        image, exposure = self.exposure.process(frame.image)
        seen = frame if image is frame.image else replace(frame, image=image)
        mark = time.perf_counter()
        times["exposure"] = (mark - start) * 1000
        try:
            landmarks = self.extractor.extract(seen)
        except Exception as error:  # noqa: BLE001 - MediaPipe's graph raises RuntimeError, ValueError, ...: the frame is lost, not the daemon
            times["landmarks"] = (time.perf_counter() - mark) * 1000
            return self._landmarks_failed(frame, error, times, exposure.brightness)
        now = time.perf_counter()
        times["landmarks"], mark = (now - mark) * 1000, now
        self._landmark_failures = 0

        if self.spec is not None:
            self.window.push(frame_features(landmarks, self.spec))
        else:
            crop_spec = self.card.face_crop
            crop = face_crop(frame.image, landmarks, (crop_spec.height, crop_spec.width), crop_spec.channels)
            self.window.push(crop if crop is not None else np.zeros(self.window.frame_shape, np.uint8))
        self._faces.push(np.array([landmarks.has_face]))
        self._bodies.push(np.array([landmarks.has_pose]))
        now = time.perf_counter()
        times["features"], mark = (now - mark) * 1000, now

        score = None
        if self.window.full:
            faces = self._faces.array()[:, 0]
            status = vision_status(faces, self._bodies.array()[:, 0], exposure.brightness, self.card.required_parts,
                                   self.too_dark_below)
            score = self.scorer.score(self.window.array(), frame.t, landmarks.has_face, frames_with_face=faces,
                                      status=status)
            now = time.perf_counter()
            times["model"], mark = (now - mark) * 1000, now
            if self.landmarks_error is not None:  # a window of frames seen again since the fault
                log.info("landmarks: MediaPipe answers again after %.1f s; the picture is judged again",
                         frame.t - self._landmarks_failing_since)
                self.landmarks_error = self._landmarks_failing_since = None
        inference_ms = self.scorer.last_inference_ms if score is not None else None
        return FrameResult(frame.t, landmarks.has_face, score, (), times, body_seen=landmarks.has_pose,
                           inference_ms=inference_ms, brightness=exposure.brightness, landmarks=landmarks)

    def decide(self, seen: FrameResult) -> FrameResult:
        """The alarm's decision on a frame ``see`` scored: ``seen`` with the events it raises (none unscored)."""
        if seen.score is None:
            return seen
        mark = time.perf_counter()
        events = self._decide(seen.score, seen.t)
        seen.stage_ms["alarm"] = (time.perf_counter() - mark) * 1000
        return dataclasses.replace(seen, events=events)

    def _decide(self, score, t: float) -> tuple:
        """The vision ``score`` of the frame at ``t`` through the fusion (with hearing) and the alarm: its events."""
        if self.fuse is not None:  # with the sounds heard since the last frame
            fused = self.fuse(score, t)
        else:  # a frame captured before the "no camera" score the loop gave the alarm while it waited (Daemon)
            fused = (self.alarm.in_order(score),)
        return tuple(event for each in fused for event in self.alarm.update(each))

    def _landmarks_failed(self, frame, error: Exception, times: dict, brightness: float | None) -> FrameResult:
        """The landmark stage raised on ``frame``: the frame is dropped; after ``LANDMARK_FAULT_AFTER`` in a row the
        vision sense says ``model_error`` on every frame until a window of frames passes again, so the sound (or,
        with no microphone, the alarm's blind rule) decides meanwhile. Said once as it starts, once as it ends."""
        from edge.records import MODEL_ERROR, Score

        self._landmark_failures += 1
        why = error_in_one_line(error)  # also /health's reason and the status text: masked, one line
        if self._landmark_failures == 1:
            log.debug("landmarks: a frame dropped (%s)", why, exc_info=True)
            if self.landmarks_error is None:
                self._landmarks_failing_since = frame.t
        if self.landmarks_error is None and self._landmark_failures >= LANDMARK_FAULT_AFTER:
            log.warning("landmarks: MediaPipe fails on every frame (%s); the picture is not judged (status %s) "
                        "until it answers again", why, MODEL_ERROR)
            self.landmarks_error = why
            for window in (self.window, self._faces, self._bodies):  # what it saw before is no view of now
                window.clear()
        if self.landmarks_error is None:  # a frame or two lost: nothing is decided on it
            return FrameResult(frame.t, False, None, (), times, brightness=brightness, landmark_fault=True)
        score = Score(t=frame.t, probability=0.0, face_seen=False, status=MODEL_ERROR)
        return FrameResult(frame.t, False, score, (), times, brightness=brightness, landmark_fault=True)

    def close(self) -> None:
        self.extractor.close()


def build_pipeline(config, model, **alarm_options) -> Pipeline:
    """The daemon's pipeline for ``model`` as ``config`` describes it; ``cryedge eval`` runs the same one.

    The pose landmarker is left out when the model uses no body points. ``alarm_options`` go to
    ``Alarm`` (a test or an evaluation injects its clock).
    """
    from edge.alarm import Alarm
    from edge.errors import ModelError
    from edge.exposure import ExposureStage
    from edge.landmarks import LandmarkExtractor
    from edge.model import WindowScorer

    if model.card.kind not in ("landmark-window", "face-crop"):  # a sound model: an easy mix-up of two paths
        raise ModelError(f"model {model.path.name} is an {model.card.kind} model, for [audio] model (cryedge eval "
                         "--audio-model); [model] path takes a vision model (landmark-window or face-crop)")
    landmarks_cfg = config.landmarks
    if landmarks_cfg.pose and not uses_body_points(model.card):
        log.info("pose landmarks off: model %s (%s) uses no body points", model.card.name, model.card.kind)
        landmarks_cfg = landmarks_cfg.model_copy(update={"pose": False})
    extractor = LandmarkExtractor.from_config(landmarks_cfg)
    alarm = Alarm(config.alarm, model_threshold=model.card.threshold, **alarm_options)
    return Pipeline(extractor, WindowScorer(model), alarm, ExposureStage.from_config(config.exposure),
                    config.exposure.too_dark_below)


class Daemon:
    """Builds everything from a ``Config`` and runs the frame loop; ``stop()`` ends it cleanly."""

    def __init__(self, config, notifier=None):
        from edge.notify import Notifier, Watchdog

        self.config = config
        self.camera = config.source.type != "none"
        self.notifier = notifier or Notifier.from_environment()
        self.watchdog = Watchdog(self.notifier, stall_after=self._stall_after())
        self.started = time.monotonic()
        self.stats = RollingStats()
        self.state = "starting"
        self.last_frame: float | None = None
        self.last_event: dict | None = None
        self.last_event_unix: float | None = None
        self._stop = threading.Event()
        self._stop_asked: float | None = None  # when stop() was first called (monotonic): the stop's time runs from it
        self._idle = threading.Event()  # clear while run() is in the frame loop
        self._idle.set()
        self._loop_thread: int | None = None  # the ident of the thread in run(), to say where a stuck loop is
        self._loop_started: float | None = None  # when run() began (monotonic): its first frame is due from then
        self._loop_left = False  # the main thread gave up on the frame loop and ended its cry without it (_finish)
        self._opening = "starting"  # what start-up (open) is doing: said where it is stuck
        self._start_up_left = threading.Event()  # set when the main thread gave up on a stuck start-up (start_up)
        # the alarm's update and end and what they publish, one thread's at a time: the main thread ends the cry of a
        # loop it gave up on, which may come back at that very moment (both ended it: two ends, the second's id None)
        self._alarm_lock = threading.Lock()
        self._late_output_said = False
        self._closing = []  # resources to close, in the order they were opened
        self.model = self.extractor = self.source = self.publisher = self.alarm = self.pipeline = None
        self.hearing = None  # edge.audio.Hearing when [audio] is enabled
        self._heard: queue.SimpleQueue = queue.SimpleQueue()  # with no camera: every audio score, from its thread
        self._vision: tuple | None = None  # (latest vision Score, that frame's brightness 0-255)
        self.model_faults: dict = {}  # edge.health.ModelFault by sense, replaced whole (read by /health's threads)
        self.health = None
        self.snapshots = None  # edge.pictures.SnapshotWorker when [snapshot] is enabled
        self.live = None  # edge.live.LiveView when [live] is enabled
        self.fault: ThreadFault | None = None  # the first unexpected error of another thread (thread_fault)
        self._fault_raised = False
        self._excepthook = None  # threading.excepthook as it was before open(), put back by close()

    # --- building

    def start_up(self) -> None:
        """``open()`` on a thread of its own while this (the main) thread waits, ``START_UP_SECONDS`` at most; any
        failure is ``open()``'s own. Stuck past them (a landmarker's creation, a delegate's load, a camera driver's open,
        in native code that never returns): one line saying where, ``offline`` sent if the publisher is up, exit 70.

        The waiting is here, not on the opening thread, because nothing can interrupt native code: the main thread
        gives up on it instead. It exits with ``os._exit``, not by returning, because the opening thread never returns
        and the interpreter's own exit may wait for what it holds (the landmarker's or interpreter's destructor, a
        native library's at exit). A stop asked meanwhile gives it until ``STOP_SECONDS`` less the publisher's goodbye
        after the stop, then exits 0 the same way, as systemd's stop would otherwise end in its SIGKILL."""
        from edge.publish import CLOSE_ACK_SECONDS

        began = time.monotonic()
        # under systemd, TimeoutStartSec is at least this long: cryedge's line comes before its kill
        self.notifier.extend_timeout(START_UP_SECONDS + START_UP_EXIT_SECONDS)
        opener, outcome = on_a_thread_of_its_own(self.open, "cryedge-opening")
        while opener.is_alive():
            opener.join(0.25)  # not an Event's wait: a signal handler calls stop() on this thread
            now = time.monotonic()
            stopping = self._stop_asked is not None and now > self._stop_asked + STOP_SECONDS - CLOSE_ACK_SECONDS
            if opener.is_alive() and (now > began + START_UP_SECONDS or stopping):
                self._leave_the_start_up(opener, now - began, stopped=stopping)
        if "error" in outcome:
            raise outcome["error"]

    def _leave_the_start_up(self, opener: threading.Thread, seconds: float, stopped: bool) -> None:
        """Give up on a start-up stuck in ``opener`` (or on a stop's time): one line, the publisher's final state and
        ``offline`` if it was started (a killed process's last will would say it later), then exit, never to return:
        70 (restarted) when stuck, 0 when a stop was asked (70 if another thread's fault asked it). Before READY=1 no
        cry can run: no alarm has decided yet."""
        from edge.cli import UNEXPECTED_ERROR_EXIT_CODE
        from edge.publish import CLOSE_ACK_SECONDS

        self._start_up_left.set()  # the opening thread, should it come back, opens nothing more (_starting)
        where = where_in_cryedge(sys._current_frames().get(opener.ident))
        if stopped:
            log.error("start-up did not finish within %.0f s of the stop (stuck %s %s); cryedge exits without it",
                      time.monotonic() - self._stop_asked, where, self._opening)
        else:
            log.error("start-up is stuck %s %s (not done in %.0f s); cryedge exits to be restarted", where,
                      self._opening, seconds)
        self.notifier.stopping("start-up stuck")
        opened = list(self._closing)  # what the opening thread had opened (it appends only once a thing is up)
        for resource in (self.health, self.publisher):
            if resource is not None and resource in opened:
                try:
                    if resource is self.publisher:
                        resource.close(timeout=CLOSE_ACK_SECONDS)
                    else:
                        resource.close()
                except Exception as error:  # noqa: BLE001 - the exit goes on
                    log.warning("closing %s: %s", type(resource).__name__, error)
        logging.shutdown()  # flushes every handler
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        # a stop asked for ends well; one asked by another thread's fault (thread_fault) is that fault's: restarted
        os._exit(0 if stopped and self.fault is None else UNEXPECTED_ERROR_EXIT_CODE)

    def open(self) -> None:
        """Open the model, landmarkers, publisher, source and health server; any failure is one CryedgeError."""
        from edge.model import TFLiteModel
        from edge.source import SupervisedSource

        cfg = self.config
        self._watch_threads()
        if not self.camera:
            self._open_without_camera()
            return
        try:
            self._starting("loading the model")
            self.model = self._own(TFLiteModel(cfg.model.path, num_threads=cfg.model.num_threads, edgetpu=cfg.model.edgetpu))
            self._starting("creating MediaPipe's landmarkers")
            self.pipeline = self._own(build_pipeline(cfg, self.model))
            self.extractor, self.alarm = self.pipeline.extractor, self.pipeline.alarm
            from edge.audio import hearing_enabled

            cfg.audio.enabled = hearing_enabled(cfg)  # "auto" resolved: the publisher discovers what runs
            if not cfg.audio.enabled and cfg.fusion.mode == "audio":  # else the picture alone would decide, unsaid
                from edge.errors import ConfigError

                raise ConfigError('fusion.mode "audio" with nothing to hear: set [audio] enabled = true and its '
                                  '[audio.source] ("auto" hears only a video file\'s sound track)')
            if cfg.audio.enabled:
                from edge.audio import open_hearing

                self._starting("loading the sound model")
                self.hearing = self._own(open_hearing(cfg, self.alarm.on_threshold))
                self.pipeline.fuse = self.hearing.fuse
            self._start_publisher(self.model.card.name)
            if cfg.snapshot.enabled:  # closed before the publisher: a picture being encoded still goes out
                from edge.pictures import SnapshotWorker

                self.snapshots = self._own(SnapshotWorker.for_publisher(cfg.snapshot, self.publisher))
            if cfg.live.enabled:
                from edge.live import LiveView

                self.live = LiveView(cfg.live, too_dark_below=cfg.exposure.too_dark_below)
            self.source = SupervisedSource.from_config(cfg.source, on_progress=self._source_progress,
                                                       on_idle=self._without_frames,
                                                       backend=self.hearing.camera if self.hearing is not None else None)
            self._starting("opening the camera")
            self.source.open()
            if self.hearing is not None:
                self.hearing.video_origin = lambda: self.source.status.first_frame_t
            self._closing.append(self.source)
            self._start_health(live=self.live)
            if self.live is not None:  # closed before the server: its streams end, the server's threads are free
                self._closing.append(self.live)
        except BaseException:
            self.close()
            raise
        log.info("running: %s through %s (%s), alarm ON >= %.2f, OFF < %.2f", self.source.status.name, self.model.card.name,
                 self.model.delegate_name, self.alarm.on_threshold, self.alarm.off_threshold)

    def _open_without_camera(self) -> None:
        """No camera: the audio path, the alarm on the audio model's threshold, the publisher and the health
        server; no vision model, no landmarkers (their memory is not spent)."""
        from edge.alarm import Alarm
        from edge.audio import open_hearing
        from edge.config import no_camera_problem
        from edge.errors import ConfigError

        cfg = self.config
        problem = no_camera_problem(cfg)  # load_config said it already; a Config built in code is checked here
        if problem is not None:
            raise ConfigError(problem)
        cfg.audio.enabled = True  # "auto" resolved: the publisher discovers what runs
        try:
            self._starting("loading the sound model")
            self.hearing = self._own(open_hearing(cfg, None, listener=self._heard.put))
            self.alarm = Alarm(cfg.alarm, model_threshold=self.hearing.card.threshold)
            self.hearing.fusion.alarm_threshold = self.alarm.on_threshold
            self._start_publisher(self.hearing.card.name)
            self._start_health()
        except BaseException:
            self.close()
            raise
        log.info("running: no camera, listening to %s through %s, alarm ON >= %.2f, OFF < %.2f",
                 self.hearing.monitor.status.name, self.hearing.card.name, self.alarm.on_threshold,
                 self.alarm.off_threshold)

    def _start_publisher(self, model_name: str) -> None:
        from edge.publish import make_publisher

        self._starting("connecting to the broker")
        self.publisher = make_publisher(self.config, model_name, on_output_closed=self.stop, on_fault=self.thread_fault)
        self.publisher.start()
        self._closing.append(self.publisher)

    def _start_health(self, live=None) -> None:
        """The health server (when enabled), stale after the same silence the watchdog allows."""
        from edge.health import start_health_server

        health = self.config.health
        self._starting("starting the health server")
        self.health = start_health_server(self.health_stats, enabled=health.enabled, host=health.host, port=health.port,
                                          stale_after=self._stall_after(), live=live)
        if self.health is not None:
            self._closing.append(self.health)

    def _stall_after(self) -> float:
        """No sign of progress for this long is a stall (the watchdog's and /health's limit)."""
        if self.camera:
            return max(2.0, self.config.source.stall_seconds)
        from edge.audio import STREAM_PROBE_SECONDS

        # the sound path reopens by itself after stall_seconds (and a stream's probe) without sound
        return max(2.0, self.config.audio.source.stall_seconds + STREAM_PROBE_SECONDS)

    @property
    def model_name(self) -> str:
        """The model the alarm follows: the vision model's, or with no camera the audio model's."""
        if self.model is not None:
            return self.model.card.name
        return self.hearing.card.name if self.hearing is not None else ""

    def _own(self, resource):
        self._closing.append(resource)
        return resource

    def _starting(self, what: str) -> None:
        """Start-up goes on to ``what`` ("loading the model"): in ``systemctl status``, and in the line if it is stuck.
        A start-up the main thread gave up on (``start_up``) goes no further: its thread waits here for the exit, so
        that it cannot send ``online`` or open the camera while the process says goodbye."""
        if self._start_up_left.is_set():
            threading.Event().wait()
        self._opening = what
        self.notifier.status(f"starting: {what}")

    # --- running

    def stop(self, *_signal_args) -> None:
        """Ask the loop to finish after the current frame; safe from a signal handler."""
        if self._stop_asked is None:
            self._stop_asked = time.monotonic()
        self._stop.set()
        if self.source is not None:
            self.source.stop()

    def run(self) -> int:
        """Process frames until the source ends or ``stop()``; then end any episode and close."""
        self.state = "running"
        self._loop_started = time.monotonic()
        if self.camera:  # (with no camera _listen promises the first sound)
            self.watchdog.alive_until(self._loop_started + self._first_frame_within())
        self.notifier.ready(f"{self._source_state()}: {self._status().name}")
        self.watchdog.start()
        self._loop_thread = threading.get_ident()
        self._idle.clear()
        try:
            return self._loop() if self.camera else self._listen()
        except BaseException:
            # whatever ended the loop, an episode it leaves open ends now, before anything closes: not at the next
            # run (reason "restart"), which systemd may never start (an exit code it does not restart)
            self.state = "stopping"
            try:
                self._finish(reason="error")
            except Exception as error:  # noqa: BLE001 - the error that stopped the loop is the one to report
                log.error("could not end the running episode: %s", error)
            raise
        finally:
            self._idle.set()

    def _loop(self) -> int:
        next_report = time.monotonic() + 5.0
        for frame in self.source.frames():
            seen = self.pipeline.see(frame)  # where a loop hangs (MediaPipe, a driver): outside the alarm's lock
            with self._alarm_lock:
                if self._left_behind():
                    break
                result = self.pipeline.decide(seen)
                mark = time.perf_counter()
                for event in result.events:
                    self._publish_event(event)
                    if self.snapshots is not None:  # after the event is on its way: it never waits for a picture
                        self.snapshots.offer(frame.image, result.landmarks, event)
                if self.live is not None:  # a reference handed over; viewers' threads draw and encode
                    self.live.offer(frame.image, result, self.alarm.state)
                if result.score is not None:
                    self._vision = (result.score, result.brightness)
                    self.publisher.publish_state(self._alarm_state())
                result.stage_ms["publish"] = (time.perf_counter() - mark) * 1000
            now = time.monotonic()
            self.stats.add(result, now)
            self.last_frame = now
            self._note_model_faults(now)
            self.watchdog.frame_processed(now)
            if now >= next_report:
                next_report = now + 5.0
                self._report()
            if self._stop.is_set():
                break
        self.raise_thread_fault()
        self.state = "stopping"
        self._finish()
        return 0

    def _listen(self) -> int:
        """No camera: every audio score, in time order, through the alarm on this thread; health and the
        watchdog follow the sound. With no sound for a while, a score saying why (the alarm's blind rule
        ends an episode on it) while the microphone is reopened with back-off."""
        from edge.audio import SOUND_STALE_SECONDS

        monitor = self.hearing.monitor
        next_report = time.monotonic() + 5.0
        last_heard = time.monotonic()
        reported = None  # the microphone's state at the last report: a change is reported at once
        self.watchdog.alive_until(last_heard + self.watchdog.stall_after)  # its first sound is due by then
        while not self._stop.is_set():
            fresh = self._drain_heard(timeout=0.5)
            now = time.monotonic()
            if fresh:
                last_heard = now
                self.watchdog.frame_processed(now)
            elif monitor.status.state == "reopening":  # alive, waiting out its back-off
                self.watchdog.alive_until(now + self.watchdog.stall_after)
                self.last_frame = None  # /health: "starting" once reopened, until it is heard again
                self.hearing.last = None  # nor "ok": what it heard last is not what it hears now
            if fresh:
                # one score at a time: the state at a change of crying carries the sound that changed it
                heard = [[h] for h in fresh]
            elif now - last_heard >= SOUND_STALE_SECONDS:
                # silent too long: one score saying why there is no sound, so the alarm's blind rule can end
                # an episode that nothing will end otherwise
                heard = [[]]
            else:
                # a short wait between windows is not silence: no score, and the state is not republished
                heard = []
            with self._alarm_lock:
                if self._left_behind():
                    break
                for one in heard:
                    for score in self.hearing.hear(one, now):
                        self._alarm_update(score)
                if heard:
                    self.publisher.publish_state(self._alarm_state())
            if any(h.score.ok for h in fresh):  # judged sound: a model failing on it is not "ok" (/health stalls)
                self.last_frame = now  # after the state: /health's "ok" and its "audio" agree
            self._note_model_faults(now)
            if now >= next_report or monitor.status.state != reported:
                next_report, reported = now + 5.0, monitor.status.state
                self._report()
            if monitor.ended and self._heard.empty():  # a sound file played to its end, or its thread failed
                monitor.join(1.0)  # if it failed, threading.excepthook has said so (thread_fault) once it has ended
                break
        self.raise_thread_fault()
        self.state = "stopping"
        self._finish()
        if monitor.ended and not monitor.chunks and monitor.status.last_error:  # a file never heard: not done
            raise SourceError(monitor.status.last_error)
        return 0

    def _drain_heard(self, timeout: float) -> list:
        """The audio scores heard since the last call, oldest first; waits up to ``timeout`` for the first."""
        try:
            fresh = [self._heard.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                fresh.append(self._heard.get_nowait())
            except queue.Empty:
                return fresh

    def _note_model_faults(self, now: float) -> None:
        """Which model fails, since when (its first failure since it last answered): /health says so after a while."""
        from edge.health import ModelFault

        errors = {"vision": (self.model, (self.pipeline.scorer.error or self.pipeline.landmarks_error)
                             if self.pipeline is not None else None),
                  "audio": (self.hearing.card if self.hearing is not None else None,
                            self.hearing.monitor.model_error if self.hearing is not None else None)}
        faults = {}
        for sense, (model, error) in errors.items():
            if error is not None:
                known = self.model_faults.get(sense)
                name = model.card.name if sense == "vision" else model.name
                if sense == "vision" and self.pipeline.scorer.error is None:  # the frames fail before the model
                    name = "MediaPipe landmarker"
                faults[sense] = ModelFault(name, error, known.since if known is not None else now)
        if faults != self.model_faults:
            self.model_faults = faults

    # --- errors of the other threads

    def _watch_threads(self) -> None:
        """Until close(), an exception that ends a thread (the publisher's, paho's network loop, the hearing, a
        camera reader, the health server) is this run's fault: threading's own hook printed a traceback, and the
        thread was dead while the daemon looked alive (alerts queued and never sent, a deaf monitor)."""
        if self._excepthook is None:
            self._excepthook = threading.excepthook
            threading.excepthook = self._thread_ended

    def _thread_ended(self, args) -> None:
        """threading.excepthook while the daemon is open."""
        if issubclass(args.exc_type, SystemExit):  # as threading's own hook: a thread that chose to end
            return
        self.thread_fault(args.thread.name if args.thread is not None else "unknown", args.exc_value)

    def thread_fault(self, thread: str, error: BaseException) -> None:
        """An unexpected error on ``thread`` (any thread; a thread that lives on reports it too, as the publisher's):
        the loop stops and raises it, so it ends as an error of the loop does (the episode ended with reason
        ``error``, one line, exit 70, a restart). The first one is kept; its traceback is said with -vv."""
        if self.fault is None:
            self.fault = ThreadFault(thread, error)
        self.stop()

    def raise_thread_fault(self) -> None:
        """Raise the fault of another thread (once), if there was one."""
        if self.fault is not None and not self._fault_raised:
            self._fault_raised = True
            raise self.fault

    def _alarm_follows(self) -> tuple[str, ...]:
        """The senses the fused alarm decides on (``[fusion] mode``)."""
        if not self.camera:
            return ("audio",)
        mode = self.config.fusion.mode if self.hearing is not None else "vision"
        return ("vision", "audio") if mode in ("either", "mean") else (mode,)

    def _without_frames(self) -> None:
        """No frame lately (called by the source's wait, on the loop's thread): the alarm follows the sound.

        The camera gone for minutes must not silence a heard cry nor keep an episode ON: the alarm
        advances on the audio scores, in time order, on this one thread as it does on frames. With no
        microphone, on a score saying there is no camera: the blind rule ends an episode after
        ``blind_seconds`` (it stayed ON for as long as the camera was away), and the state says why."""
        from edge.fusion import NO_CAMERA
        from edge.records import Score

        now = time.monotonic()
        if self.source.status.state != "reconnecting" and now - (self.last_frame or self.started) < self._frames_missing:
            return
        with self._alarm_lock:
            if self._left_behind():
                return
            if self.hearing is None:
                blind = self.alarm.in_order(Score(t=now, probability=0.0, face_seen=False, status=NO_CAMERA))
                self._vision = (blind, None)
                self._alarm_update(blind)
                self.publisher.publish_state(self._alarm_state())
                return
            scores = self.hearing.heard_alone(now)
            for score in scores:
                self._alarm_update(score)
            if scores:
                self._vision = None  # the state says "no_camera" (from the fusion), not the last frame's view
                self.publisher.publish_state(self._alarm_state())

    @property
    def _frames_missing(self) -> float:
        """No frame for this long, the camera is not delivering: two intervals of the slowest rate ``[source]`` sets
        (``fps``, a picamera2's ``min_fps``), at least ``FRAMES_MISSING_SECONDS``; a slow camera's gaps are not
        its absence (at fps 0.7 the state said no_camera between every two frames)."""
        rates = [rate for rate in (getattr(self.config.source, "fps", None), getattr(self.config.source, "min_fps", None))
                 if rate]
        return max(FRAMES_MISSING_SECONDS, 2.0 / min(rates)) if rates else FRAMES_MISSING_SECONDS

    def _alarm_update(self, score) -> None:
        """One score through the alarm, its events published, and a change of crying on the state topic at once.

        A loaded machine hands the loop many scores at a time: a cry heard start to end among them was published
        as one OFF state after them, so the retained state never went ON."""
        events = self.alarm.update(score)
        for event in events:
            self._publish_event(event)
        if events:
            self.publisher.publish_state(self._alarm_state())

    def _publish_event(self, event) -> None:
        from edge.publish import event_payload

        self.publisher.publish_event(event)
        self.last_event = event_payload(event, self.config.device.id, self.model_name)
        self.last_event_unix = event.wall_time
        log.info("cry %s (p=%.2f%s)", event.kind, event.probability, f", {event.reason}" if event.reason else "")

    def _report(self) -> None:
        source = self._status()
        crying = "ON" if self.alarm.crying else "OFF"
        fps = self.stats.fps if source.state == "open" else 0.0
        if source.state == "reconnecting":
            self.notifier.status(f"reconnecting {source.name} (attempt {source.reconnects}), crying {crying}")
        elif not self.camera:
            self.notifier.status(f"listening: crying {crying}, p={self.alarm.state.probability:.2f}")
        else:
            self.notifier.status(f"running: {fps:.1f} fps, crying {crying}, p={self.alarm.state.probability:.2f}")
        seen = {"fps": fps, "inference_ms": self.stats.inference_ms, "face_share": self.stats.face_share,
                "brightness": self.stats.brightness} if self.camera else {}
        self.publisher.publish_stats({**(self.hearing.stats() if self.hearing else {}), **seen, "source_state": source.state,
                                      "source_reconnects": source.reconnects})

    def _first_frame_within(self) -> float:
        """Seconds from the loop's start by which its first frame is due: the source's own wait for one (past it the
        supervisor reopens the camera, each attempt promised on its own), then ``FIRST_FRAME_SECONDS`` through the
        pipeline."""
        return self.source.stall_seconds + self.source.probe_seconds + FIRST_FRAME_SECONDS

    def _source_progress(self, deadline: float) -> None:
        """The source supervisor, reconnecting, promises its next sign of progress by ``deadline``."""
        self.watchdog.alive_until(deadline)
        self._report()

    def _source_state(self) -> str:
        return "reconnecting" if self._status().state == "reconnecting" else "running"

    def _status(self):
        """The camera's ``SourceStatus``; with no camera the microphone's, its "reopening" said "reconnecting"."""
        if self.source is not None:
            return self.source.status
        status = self.hearing.monitor.status
        return dataclasses.replace(status, state="reconnecting" if status.state == "reopening" else status.state)

    def _alarm_state(self):
        """The alarm's state, with what each modality says when the daemon also listens."""
        state = self.alarm.state
        senses = {}
        if self.hearing is not None and self.hearing.last is not None:
            senses = self.hearing.last.senses()
        if self._vision is not None:  # what the camera sees, always: a parent must know when it is blind
            score, brightness = self._vision
            vision = {"probability": round(score.probability, 3), "status": score.status, **senses.get("vision", {})}
            if brightness is not None:
                vision["brightness"] = round(brightness / 255, 3)
            senses = {**senses, "vision": vision}
        return dataclasses.replace(state, senses=senses) if senses else state

    def _finish(self, reason: str = "shutdown", leaving_the_loop: bool = False) -> None:
        """End a running episode before anything closes; the publisher's close() publishes the final OFF once.

        ``reason``: ``"shutdown"`` when asked to stop (or a file ended), ``"error"`` when an error stopped the loop.
        ``leaving_the_loop``: the main thread ends it for a frame loop it gave up on; whatever that loop's alarm
        decides after this (its own end as it stops, a state ON) is dropped, so the cry ends once, its OFF last."""
        self.notifier.stopping("stopping")
        with self._alarm_lock:
            if leaving_the_loop:
                self._loop_left = True
            elif self._left_behind():
                return
            for event in self.alarm.finish(reason=reason):
                self._publish_event(event)

    def _left_behind(self) -> bool:
        """On the frame loop's thread, holding ``_alarm_lock``: whether the main thread gave up on this loop and ended
        its cry; what the loop's alarm decides from then on is dropped (said once)."""
        if self._loop_left and not self._late_output_said:
            self._late_output_said = True
            log.warning("the frame loop came back after its cry was ended without it; what its alarm decides now is "
                        "dropped")
        return self._loop_left

    def health_stats(self):
        from edge.health import HealthStats

        state = self.alarm.state if self.alarm is not None else None
        source = self._status() if self.source is not None or self.hearing is not None else None
        publisher = self.publisher
        return HealthStats(
            started=self.started, last_frame=self.last_frame,
            state="reconnecting" if source is not None and source.state == "reconnecting" else self.state,
            # no camera: no frame rate at all, not a rate of 0 (a camera that stopped)
            frames=self.stats.frames, fps=self.stats.fps if self.camera else None, stage_ms=self.stats.stage_medians(),
            inference_ms=self.stats.inference_ms,  # the median, as /metrics and the MQTT stats say
            face_share=self.stats.face_share, source=source.name if source else "",
            source_state=source.state if source else "", source_reconnects=source.reconnects if source else 0,
            outbox_depth=getattr(publisher, "outbox_depth", 0),
            outbox_fault=getattr(publisher, "outbox_fault", None),
            broker_connected=getattr(publisher, "connected", None) if self.config.mqtt.enabled else None,
            **(publisher.picture_figures() if hasattr(publisher, "picture_figures") else {}),
            crying=state.crying if state else None, probability=state.probability if state else None,
            last_event=self.last_event, last_event_unix=self.last_event_unix,
            model=self.model_name, audio=self.hearing.health() if self.hearing is not None else None,
            model_faults=self.model_faults, alarm_follows=self._alarm_follows(),
            last_heard=self.hearing.monitor.judged_at if self.hearing is not None else None,
        )

    def serve(self) -> int:
        """``run()`` on a thread of its own until it ends or a stop is asked; then ``close()`` can end the daemon in time.
        A loop stuck past its promise of progress with no stop asked is left, its cry ended: exit code 70.

        The signals are taken on this (the main) thread, which only waits: a frame loop stuck in native code (a
        MediaPipe graph, a camera driver) runs no signal handler and never ends its cry, and, run here, it held the
        stop until systemd killed the process with the cry still ON."""
        runner, outcome = on_a_thread_of_its_own(self.run, "cryedge-frames")
        while runner.is_alive() and not self._stop.is_set():
            runner.join(0.25)  # not an Event's wait: a signal handler setting that same Event could deadlock on its lock
            if runner.is_alive() and self._stuck():
                return self._leave_the_stuck_loop()
        if runner.is_alive():
            self._stop_the_loop()
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result", 0)

    def _stuck(self) -> bool:
        """Whether the frame loop is ``STUCK_AFTER_SECONDS`` past its promise of progress (from its start: its first
        frame, or sound, is promised as it starts)."""
        promised = self.watchdog.promised_until
        return promised is not None and time.monotonic() > promised + STUCK_AFTER_SECONDS

    def _leave_the_stuck_loop(self) -> int:
        """The frame loop is stuck with no stop asked (a MediaPipe graph, a camera driver that never returns, from the
        first frame on or later): one line saying where, a running cry ended (reason ``error``) without it, and exit
        code 70, so that systemd restarts cryedge now, not at its watchdog's abort, which ends nothing. ``close()``
        then sends the OFF and offline."""
        from edge.cli import UNEXPECTED_ERROR_EXIT_CODE

        crying = self.alarm is not None and self.alarm.crying  # before its first frame, only the sound can cry
        self.stop()  # should it come back after all, it ends after its frame
        now = time.monotonic()
        first = "frame" if self.camera else "sound"
        if self.stats.frames == 0 if self.camera else self.hearing.monitor.judged_at is None:
            ended = "a running cry is ended and " if crying else ""
            line = (f"the frame loop is stuck {{where}} before its first {first} (none in {now - self._loop_started:.0f} "
                    f"s); {ended}cryedge exits to be restarted")
        else:
            line = (f"the frame loop is stuck {{where}} (no progress for {now - (self.last_frame or self.started):.0f} "
                    "s); a running cry is ended and cryedge exits to be restarted")
        self._leave_the_loop(line, reason="error")
        return UNEXPECTED_ERROR_EXIT_CODE

    def _stop_the_loop(self) -> bool:
        """Stop ``run()`` running in another thread and wait for it, until ``FRAME_LOOP_STOP_SECONDS`` after the stop
        was asked; whether it stopped."""
        self.stop()
        return self._idle.wait(max(0.0, self._stop_asked + FRAME_LOOP_STOP_SECONDS - time.monotonic()))

    def close(self) -> None:
        """Close everything opened, newest first; the publisher sends OFF and offline as it closes, its wait for the
        broker shortened so that the stop is over ``STOP_SECONDS`` after it was asked (or after this call).

        Called while ``run()`` is busy in another thread, it stops the loop and waits for it first: releasing the
        decoder or the landmarkers under a running frame crashes in native code. A loop that has not stopped in its
        time is left running (the process is exiting): the cry is ended here, and only what the loop does not use
        is closed, the publisher, which sends the end, and the health server.
        """
        if not self._idle.is_set() and not self._loop_left and not self._stop_the_loop():
            self._leave_the_loop(f"the frame loop did not stop within {FRAME_LOOP_STOP_SECONDS:g} s (stuck {{where}}); "
                                 "the cry is ended without it, the loop is left")
        deadline = (self._stop_asked or time.monotonic()) + STOP_SECONDS
        self.watchdog.close()
        while self._closing:
            resource = self._closing.pop()
            if self._loop_left and resource not in (self.publisher, self.health):
                continue
            try:
                if resource is self.publisher:
                    self._close_publisher(deadline)
                else:
                    resource.close()
            except Exception as error:  # noqa: BLE001 - closing must go on for the rest
                log.warning("closing %s: %s", type(resource).__name__, error)
        if self._excepthook is not None:  # the threads are stopped: what ends one now is no longer the run's
            threading.excepthook, self._excepthook = self._excepthook, None

    def _leave_the_loop(self, line: str, reason: str = "shutdown") -> None:
        """Give up on the frame loop (stuck, or not stopped in its time): ``line`` said as an error, ``{where}`` in it
        where the loop is stuck, and its cry ended here (``reason``); what it decides later is dropped.

        With no camera the loop mostly waits for the sound's thread, which is then where the fault is (a model's
        invoke, a microphone's read that never returns): said too."""
        frames = sys._current_frames()
        where = where_in_cryedge(frames.get(self._loop_thread))
        sound = frames.get(self.hearing.monitor.thread_id) if not self.camera and self.hearing is not None else None
        if sound is not None:
            where += f", the sound's thread {where_in_cryedge(sound)}"
        log.error(line.format(where=where))
        self.state = "stopping"
        self._finish(reason=reason, leaving_the_loop=True)

    def _close_publisher(self, deadline: float) -> None:
        """The publisher's close, its wait for the broker's acknowledgements shortened to end by ``deadline``."""
        from edge.publish import CLOSE_ACK_SECONDS, CLOSE_MARGIN_SECONDS

        left = deadline - time.monotonic() - CLOSE_MARGIN_SECONDS
        self.publisher.close(timeout=min(CLOSE_ACK_SECONDS, max(0.5, left)))

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def on_a_thread_of_its_own(call, name: str) -> tuple[threading.Thread, dict]:
    """``call()`` started on a daemon thread named ``name`` (a stuck one does not hold the process's exit) and what it
    left when it ended: ``{"result": ...}``, or ``{"error": ...}`` for the caller to raise again on its own thread."""
    outcome: dict = {}

    def calling() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:  # noqa: BLE001 - raised again by the caller, as call() would have
            outcome["error"] = error

    thread = threading.Thread(target=calling, name=name, daemon=True)
    thread.start()
    return thread, outcome


def where_in_cryedge(frame) -> str:
    """``at edge/x.py:N in f``, the innermost call of cryedge's own code in the stack of ``frame``."""
    import traceback

    if frame is None:
        return "where, unknown"
    ours = innermost_in_cryedge(traceback.extract_stack(frame))
    if ours is None:
        return "outside cryedge's code"
    call, path = ours
    return f"at {path}:{call.lineno} in {call.name}"


def uses_body_points(card) -> bool:
    """Whether a model's input needs the pose landmarker: a face-crop model does not (60 MiB, 15 ms a frame)."""
    from edge.features import get_spec

    return card.kind == "landmark-window" and bool(get_spec(card.features.spec).body_points)


def limit_malloc_arenas(count: int = MALLOC_ARENAS, environ=os.environ) -> bool:
    """Cap glibc's malloc arenas before the pipeline starts its threads; False where nothing was changed.

    Nothing changes under another C library, or when ``MALLOC_ARENA_MAX`` is set (glibc read it at start).
    """
    import ctypes
    import platform

    if "MALLOC_ARENA_MAX" in environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def _run_command(args) -> int:
    from edge.config import cli_overrides, load_config
    from edge.installed import warn_if_drifted

    limit_malloc_arenas()
    warn_if_drifted()  # pip changed the venv since its lock was installed: one line, then it runs on

    overrides = cli_overrides(source=args.source, broker=args.broker, audio_source=args.audio_source)
    if args.no_health:
        overrides["health"] = {"enabled": False}
    config = load_config(args.config, overrides)
    if args.fast and config.source.type == "file":  # a camera has no "as fast as possible"
        config.source.realtime = False
    if args.fast and config.source.type == "none" and config.audio.source.type == "file":
        config.audio.source.realtime = False
    daemon = Daemon(config)
    # SIGHUP (a closed terminal, a reload request) stops cleanly too: its default would kill mid-cry
    previous = {sig: signal.signal(sig, daemon.stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        daemon.start_up()  # open(), given its time: stuck, cryedge says where and exits 70
        try:
            code = daemon.serve()
        finally:
            daemon.close()
        daemon.raise_thread_fault()  # a thread failed as the daemon stopped: the episode ended, the run was not clean
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the cry monitor (no arguments: the bundled demo clip, events to stdout)",
        description="Run the pipeline from a camera, stream or file to MQTT (or stdout without a broker).")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config (default: built-in defaults)")
    parser.add_argument("--source", metavar="SRC",
                        help="file, /dev/videoN, camera index, rtsp:// or http:// URL, picamera2[:lores], "
                             "or none (no camera: listen only, with --audio-source or [audio.source])")
    parser.add_argument("--audio-source", metavar="SRC",
                        help="listen to alsa[:CARD or NAME] (a microphone), a sound or video file, an rtsp:// or "
                             "http:// URL, or video (the camera's own sound); turns hearing on")
    parser.add_argument("--broker", metavar="URL", help="mqtt://[user@]host[:port] (mqtts:// for TLS)")
    parser.add_argument("--fast", action="store_true",
                        help="process a file (or, with no camera, a sound file) as fast as possible, not in real time")
    parser.add_argument("--no-health", action="store_true", help="do not serve the health endpoints")
    parser.set_defaults(handler=_run_command)
