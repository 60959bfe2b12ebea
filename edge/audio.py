"""The audio path: chunks -> window -> front end -> model -> audio ``Score``s, and the thread that runs it.

``AudioPipeline`` is pure: give it ``AudioChunk``s in order and it returns a ``Score`` (with the sound
level) every ``hop_seconds`` of sound once a full window has been heard. ``AudioMonitor`` owns the
capture (reopened with back-off when the device fails or is missing) and runs the pipeline on a thread
of its own, keeping the newest scores for the frame loop to fuse. While no sound arrives, its score
says why with a status (``no_sound_device``, ``no_sound``), never a probability of zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.audio_features import AudioFrontEnd
from edge.audio_source import AudioChunk, SoundBackend, level_dbfs
from edge.errors import ModelError, SourceError
from edge.records import MODEL_ERROR, Score
from edge.source import Outage, SourceStatus, backoff_delays

log = logging.getLogger(__name__)

NO_SOUND_DEVICE = "no_sound_device"  # the microphone or stream cannot be opened (or is not configured)
NO_SOUND = "no_sound"  # it is open but no sound came for a while
STREAM_PROBE_SECONDS = 6.0  # more time for the first sound after an open: ffmpeg probes a stream up to 5 s
SOUND_STALE_SECONDS = 2.0  # an audio score older than this at a frame means the sound stopped


class Pace:
    """Whether a live source delivers its sound in real time, judged over ``over`` seconds after ``settle``.

    A capture device opened at another rate than asked (``hw:1,0`` at 48 kHz, where ``plughw`` converts) delivers
    3 s of "16 kHz" sound a second: pitched down, and most of it dropped as overruns, the model is deaf while
    every status says ok. ``settle`` leaves out what a stream's probe buffered before its first sample."""

    def __init__(self, rate: int, settle: float = STREAM_PROBE_SECONDS, over: float = 10.0, limit: float = 1.5):
        self.rate, self.settle, self.over, self.limit = rate, settle, over, limit
        self._first: float | None = None  # when the first sample came
        self._from: tuple[float, int] | None = None  # (when, samples so far) as counting began

    def add(self, position: int, now: float) -> float | None:
        """``position`` samples have come since the source opened (those dropped as overruns too), the newest at
        ``now``; how many seconds of sound came a second over the last period, when that is over ``limit``."""
        if self._first is None:
            self._first = now
        if now - self._first < self.settle:
            return None
        if self._from is None:
            self._from = (now, position)
            return None
        elapsed = now - self._from[0]
        if elapsed < self.over:
            return None
        ratio = (position - self._from[1]) / self.rate / elapsed
        self._from = (now, position)  # judged afresh over the next period
        return ratio if ratio > self.limit else None


@dataclass(frozen=True)
class AudioScore:
    """An audio ``Score`` (the card's evidence over the last windows) and the sound level of the same window."""

    score: Score
    level_dbfs: float
    window_probability: float | None = None  # the model's score of this window alone, before the evidence rule


class Evidence:
    """The card's evidence rule (``audio.evidence`` = [k, n]) over one sound's window scores, in order.

    The score the alarm follows is the k-th highest of the last n window scores, so it is at or above the
    threshold exactly when k of the last n windows were: one window that flickers below the threshold in a
    cry does not restart the debounce, and one that flickers above it in a song does not start it. Windows
    not heard yet (the start, after a gap) count as 0. None (or [1, 1]) is each window's own score.
    """

    def __init__(self, rule: tuple[int, int] | None):
        self.k, self.n = rule or (1, 1)
        self._recent: deque[float] = deque(maxlen=self.n)

    def add(self, probability: float) -> float:
        self._recent.append(probability)
        if len(self._recent) < self.k:
            return 0.0
        return sorted(self._recent, reverse=True)[self.k - 1]

    def reset(self) -> None:
        self._recent.clear()


def evidence_trace(probabilities: np.ndarray, rule: tuple[int, int] | None) -> np.ndarray:
    """``Evidence`` over one sound's window scores in order: what the alarm follows (for choosing a rule offline)."""
    evidence = Evidence(rule)
    return np.array([evidence.add(float(p)) for p in probabilities], dtype=np.float64)


class AudioWindow:
    """The newest ``size`` samples; a window is due every ``hop_seconds`` of sound once ``size`` were heard."""

    def __init__(self, size: int, rate: int, hop_seconds: float):
        self.size, self.rate = size, rate
        self.hop = max(1, round(hop_seconds * rate))
        self.reset()

    def push(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add samples; for each window now due: (how many of ``samples`` it includes, its ``size`` samples)."""
        first = self._seen
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32)])
        self._seen += len(samples)
        due = []
        while self._next <= self._seen:
            end = self._buffer.size - (self._seen - self._next)
            due.append((self._next - first, self._buffer[end - self.size:end].copy()))
            self._next += self.hop
        self._buffer = self._buffer[-self.size:]
        return due

    def reset(self) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)
        self._seen = 0
        self._next = self.size  # sample count at which the next window ends


class AudioScorer:
    """A loaded audio model and its card: a waveform window in, a ``Score`` out."""

    def __init__(self, model):
        self.model = model
        self.card = model.card
        if not self.card.is_audio:
            raise ValueError(f"{self.card.name} is a {self.card.kind} model, not an audio one")
        self.spec = self.card.audio
        self.front_end = AudioFrontEnd(self.spec)  # the windows of one sound, in order
        self.last_inference_ms = 0.0

    def probabilities(self, window: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        x = window if self.card.kind == "audio-waveform" else self.front_end(window)
        probabilities = self.model.probabilities(x)
        self.last_inference_ms = (time.perf_counter() - start) * 1000
        return probabilities

    def score(self, window: np.ndarray, t: float) -> Score:
        """ModelError when the model fails on this window: an invoke error, or scores that are not numbers."""
        probabilities = self.probabilities(window)
        return Score(t=t, probability=float(probabilities[self.card.positive_index]),
                     probabilities=tuple(float(p) for p in probabilities))


class AudioPipeline:
    """Chunks in, an ``AudioScore`` every hop once a window is full; ``t`` is the window's last sample."""

    def __init__(self, scorer: AudioScorer):
        self.scorer = scorer
        spec = scorer.spec
        self.window = AudioWindow(spec.window_samples, spec.rate, spec.hop_seconds)
        self.error: str | None = None  # why the model failed on the last window it failed on
        self.evidence = Evidence(spec.evidence)

    def process(self, chunk: AudioChunk) -> list[AudioScore]:
        if chunk.rate != self.window.rate:
            raise SourceError(f"audio at {chunk.rate} Hz, the model {self.scorer.card.name} wants {self.window.rate} Hz")
        results = []
        for end, window in self.window.push(chunk.samples):
            t = chunk.t + end / chunk.rate
            try:
                score = self.scorer.score(window, t)
            except ModelError as error:  # this window is not judged, and says so; the next may be
                self.error = str(error)
                score = Score(t=t, probability=0.0, status=MODEL_ERROR)
            # a window the model failed on is no evidence either way: it passes as it is, and the rule skips it
            heard = replace(score, probability=self.evidence.add(score.probability)) if score.ok else score
            # the level of the newest hop, so a short loud sound shows at its size
            results.append(AudioScore(heard, level_dbfs(window[-self.window.hop:]),
                                      score.probability if score.ok else None))
        return results

    def reset(self) -> None:
        """After a gap in the sound: the next score waits for a fresh full window, and the front end starts afresh."""
        self.window.reset()
        self.scorer.front_end.reset()
        self.evidence.reset()


class AudioMonitor:
    """Runs capture and the audio pipeline on a thread; ``latest(t)`` gives the score to fuse at time ``t``.

    A live device is read as fast as it delivers. With ``follow_frames`` a file keeps in step with the frame
    loop (``advance_to``), at most a second ahead, so the sound and the picture of one clip stay together
    at any playback speed. A device missing at start is
    not fatal: it is retried with back-off while the scores say ``no_sound_device``.
    """

    def __init__(self, make_backend: Callable[[], SoundBackend], pipeline: AudioPipeline, *, stall_seconds: float = 5.0,
                 backoff_first: float = 1.0, backoff_limit: float = 30.0, history_seconds: float = 10.0,
                 follow_frames: bool = False):
        self._make_backend = make_backend
        self.pipeline = pipeline
        self.stall_seconds = stall_seconds
        self.backoff_first, self.backoff_limit = backoff_first, backoff_limit
        self._backend = make_backend()
        self.live = self._backend.live
        self.status = SourceStatus(name=self._backend.name)
        self.reason = NO_SOUND_DEVICE  # why there is no score yet
        self.ended = False
        self.chunks = 0
        self.model_error: str | None = None  # why the audio model fails, while it does
        self.model_errors = 0  # windows the model failed on
        self.judged_at: float | None = None  # time.monotonic() when the model last judged a window (/health)
        self._too_fast = False  # the source last opened delivered sound faster than real time
        self._silence_said = False  # the log said the source delivers only zeros (muted), and not since that it hears
        self._outage = Outage()  # as the camera's: ended by the first sound, not by an open (ffmpeg starts, then fails)
        self._chunks_at_open = 0  # self.chunks when the source was last opened: none since, and a failure is the open's
        self._scores: deque[AudioScore] = deque(maxlen=max(4, int(history_seconds / pipeline.scorer.spec.hop_seconds)))
        self._changed = threading.Condition()
        self.follow_frames = follow_frames and not self.live  # a file next to a video waits for its frames
        self._horizon: float | None = None  # how far the frame loop has got
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[AudioScore], None]] = []

    @property
    def overruns(self) -> int:
        return getattr(self._backend, "overruns", 0)

    def on_score(self, listener: Callable[[AudioScore], None]) -> None:
        """Call ``listener`` on the audio thread with each new score (an audio-only monitor's alarm)."""
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cryedge-audio-pipeline", daemon=True)
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The ident of the thread that reads and judges the sound (None before ``start()``): where a deaf one is stuck."""
        return self._thread.ident if self._thread is not None else None

    @property
    def backend(self) -> SoundBackend:
        """What the sound is read from (``edge.audio_source``), the same object across reopens."""
        return self._backend

    def _run(self) -> None:
        try:
            self._hear()
        finally:  # however the thread ends, the frame loop must learn it (a file's end ends the run)
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def _hear(self) -> None:
        delays = backoff_delays(self.backoff_first, self.backoff_limit)
        # the sound of the camera's own session waits for that session, which the picture reopens with back-off
        wait_ready = self._backend.wait_ready if self._backend.in_camera_session else None
        while self._ready(wait_ready):
            self._chunks_at_open = self.chunks
            try:
                self._backend.open()
            except SourceError as error:
                self._failed(str(error), NO_SOUND_DEVICE, retried=self.live)
                if not self.live:  # a file that cannot be opened (not there, unreadable) will not open later
                    break
                if wait_ready is None and self._stop.wait(next(delays)):
                    break
                self.status.reconnects += 1
                continue
            self.status.state, self.reason = "open", NO_SOUND
            self._too_fast = False
            # in an outage an open is not yet the sound back (ffmpeg starts, then the stream refuses it): said once heard
            log.log(logging.DEBUG if self._outage.ongoing else logging.INFO, "listening: %s", self.status.name)
            chunks = self.chunks
            try:
                finished = self._listen()
            except SourceError as error:
                self._failed(str(error), NO_SOUND_DEVICE, retried=self.live)
                finished = not self.live  # a file without sound will not grow one: stop trying
            except Exception as error:  # noqa: BLE001 - a fault in the audio path must not end hearing for the night
                log.debug("the audio path failed", exc_info=True)
                self._failed(f"{self.status.name}: the audio path failed ({type(error).__name__}: {error})",
                             NO_SOUND_DEVICE, retried=self.live)
                finished = not self.live
            finally:
                self._backend.close()
            if finished:
                break
            if self.chunks > chunks and not self._too_fast:  # it was heard: a new failure starts the back-off afresh
                # (an open alone does not, nor sound that came too fast to be a microphone)
                delays = backoff_delays(self.backoff_first, self.backoff_limit)
            self.pipeline.reset()
            if wait_ready is None and self._stop.wait(next(delays)):
                break
            self.status.reconnects += 1

    def _ready(self, wait_ready: Callable[[float], bool] | None) -> bool:
        """Whether to open (again): False once stopped; with ``wait_ready``, once it says so."""
        while not self._stop.is_set():
            if wait_ready is None or wait_ready(0.5):
                return True
        return False

    def _failed(self, error: str, reason: str, retried: bool = True) -> None:
        if self._outage.failed(error, self.status.reconnects):
            log.warning("sound: %s", self._failure_line(error, retried))
        self.status.state, self.status.last_error, self.reason = "reopening", error, reason

    def _failure_line(self, error: str, retried: bool) -> str:
        """``error`` as the journal says it, as the camera's (``SupervisedSource``): sound that stopped is the symptom
        ("capture stopped: ...; reopening"), a failure before any sound since the open is the open's ("reopening
        failed: ..."), which the parent once read as the capture stopping again at every refused reopen."""
        if self._backend.in_camera_session:
            return f"{error}; back with the camera's next session"
        if not retried:
            return f"{error}; a file is not retried"
        if self.chunks > self._chunks_at_open:
            return f"{error}; reopening"
        attempt = "reopening" if self.status.reconnects else "opening"
        cause = error.removeprefix(f"{self.status.name}: ")
        return f"{self.status.name}: {attempt} failed: {cause}; retrying with back-off up to {self.backoff_limit:g} s"

    def _listen(self) -> bool:
        """Read until the stream fails (SourceError), stalls (False) or a file ends or stop() (True).

        The sound of the camera's own session that stalls is read on, not reopened: the session (the picture's)
        goes on, and its sound comes back in it or ends with it. Said once each way."""
        last = time.monotonic()
        # ffmpeg probes a stream for up to 5 s before its first sample: the first one gets that much more time
        grace = STREAM_PROBE_SECONDS
        in_session = self._backend.in_camera_session
        silent = False
        # the camera session's sound is resampled by ffmpeg from the stream's own clock, and a false alarm would
        # silence it until the picture's next session: only a device or stream of its own is judged
        pace = Pace(self._backend.rate) if self.live and not in_session else None
        zeros = 0  # samples in a row that were exactly 0 (live sources: a muted microphone)
        while not self._stop.is_set():
            chunk = self._backend.read(timeout=0.5)
            if chunk is None:
                if getattr(self._backend, "finished", False):
                    self.status.state = "ended"
                    return True
                if time.monotonic() - last >= self.stall_seconds + grace and not silent:
                    if not in_session:
                        self._failed(f"{self.status.name}: no sound for {self.stall_seconds:g} s", NO_SOUND)
                        return False
                    log.warning("sound: %s: no sound for %g s while its picture goes on; listening on",
                                self.status.name, self.stall_seconds)
                    silent = True
                    self.pipeline.reset()  # what comes next is not the continuation of what came before
                continue
            if silent:
                log.info("sound: %s: heard again", self.status.name)
                silent = False
            last, grace = time.monotonic(), 0.0
            fast = pace.add(chunk.index + chunk.samples.size, last) if pace is not None else None
            if fast is not None:
                self._too_fast = True  # not fixed by reopening at once: its back-off grows
                raise SourceError(f"{self.status.name} delivers about {round(fast)} s of sound a second: it does not "
                                  f"capture at {pace.rate} Hz (an ALSA hw: device keeps its own rate; plughw: converts)")
            self.chunks += 1
            if (ended := self._outage.over(self.status.reconnects)) is not None:
                log.info("listening: %s again, after %.0f s without sound (%d reopens)", self.status.name, *ended)
            if self.status.first_frame_t is None:
                self.status.first_frame_t = chunk.t - chunk.index / chunk.rate  # a file's time 0
            self.status.last_frame_t = chunk.t
            if self.follow_frames:
                self._wait_for_frames(chunk.t)
            results = self.pipeline.process(chunk)
            if self.live:
                zeros, results = self._digital_silence(chunk, zeros, results)
            self._judged(results)
            with self._changed:
                self._scores.extend(results)
                self._changed.notify_all()
            for result in results:
                for listener in self._listeners:
                    listener(result)
        return True

    def _digital_silence(self, chunk: AudioChunk, zeros: int, results: list[AudioScore]) -> tuple[int, list[AudioScore]]:
        """A live source's window whose every sample is exactly 0 is ``no_sound``, not judged ``ok``: a microphone's
        own noise is never all zeros. Said once when it has lasted ``stall_seconds``, and when sound comes again.
        ``zeros``: how many samples in a row given to the pipeline before ``chunk`` were 0; returned with ``chunk``'s.

        A USB microphone's capture switch off or its level at 0 (alsamixer), or a camera with its microphone
        turned off, deliver zeros in real time: the model judged them a silent room, ok all night, while deaf."""
        if np.any(chunk.samples):
            if self._silence_said:
                log.info("sound: %s: heard again", self.status.name)
                self._silence_said = False
            return 0, results
        if not self._silence_said and zeros + chunk.samples.size >= self.stall_seconds * chunk.rate:
            log.warning("sound: %s: every sample has been 0 for %g s: the microphone is muted (alsamixer: its "
                        "capture switch and level) or turned off; status %s until it hears", self.status.name,
                        self.stall_seconds, NO_SOUND)
            self._silence_said = True
        def silent(result: AudioScore) -> bool:  # the window's samples (t is its last's) are all among the zeros
            return zeros + round((result.score.t - chunk.t) * chunk.rate) >= self.pipeline.window.size

        return zeros + chunk.samples.size, [replace(result, score=replace(result.score, probability=0.0, status=NO_SOUND),
                                                    window_probability=None) if silent(result) else result
                                            for result in results]

    def _judged(self, results: list[AudioScore]) -> None:
        """Say once when the model starts failing on the sound (each new reason), and when it answers again."""
        if not results:
            return
        failing = results[-1].score.status == MODEL_ERROR
        if failing and self.model_error != self.pipeline.error:
            log.warning("sound: %s; the sound is not judged (status %s) until it answers again",
                        self.pipeline.error, MODEL_ERROR)
        elif not failing and self.model_error is not None:
            log.info("sound: the audio model answers again")
        self.model_error = self.pipeline.error if failing else None
        if any(result.score.ok for result in results):
            self.judged_at = time.monotonic()
        self.model_errors += sum(result.score.status == MODEL_ERROR for result in results)

    def _wait_for_frames(self, t: float) -> None:
        with self._changed:
            while not self._stop.is_set() and (self._horizon is None or t > self._horizon + 1.0):
                self._changed.wait(0.5)

    def advance_to(self, t: float) -> None:
        """The frame loop reached ``t``: a file's sound may go one second further, and is waited for up to ``t``."""
        with self._changed:
            self._horizon = t
            self._changed.notify_all()
            if not self.follow_frames:
                return
            deadline = time.monotonic() + 2.0
            while (not self.ended and not self._stop.is_set() and (not self._scores or self._scores[-1].score.t < t)
                   and self.reason != NO_SOUND_DEVICE and time.monotonic() < deadline):
                self._changed.wait(0.1)

    def latest(self, t: float) -> AudioScore | None:
        """The newest score at or before ``t`` no older than ``SOUND_STALE_SECONDS``; None if there is none."""
        with self._changed:
            for result in reversed(self._scores):
                if result.score.t <= t + 1e-6:
                    return result if t - result.score.t <= SOUND_STALE_SECONDS else None
        return None

    def since(self, t: float) -> list[AudioScore]:
        """The scores newer than ``t``, oldest first (as many as the history keeps)."""
        with self._changed:
            return [result for result in self._scores if result.score.t > t]

    def blind_score(self, t: float) -> Score:
        """A score that says why there is no sound to judge at ``t``."""
        return Score(t=t, probability=0.0, status=self.reason if self.reason != "open" else NO_SOUND)

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the thread to end; ``ended`` is set just before, and an exception that ends it
        is handed to threading.excepthook just after."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._backend.close()
        self.status.state = "closed"


class Hearing:
    """The audio path as the frame loop sees it: ``fuse(vision_score, t)`` gives the scores for the alarm.

    Owns the ``AudioMonitor`` (its thread, its capture) and the ``Fusion``; ``last`` is what each modality
    said at the newest frame, for the state topic. Every audio score reaches the alarm once: those heard
    between two frames with what the camera last saw, the newest with the frame. While no frames come,
    ``heard_alone`` gives the scores from the sound alone; with no camera at all, ``hear``. Every score it
    gives is at or after the one before: the alarm is one state machine fed in time order, by whichever
    modality spoke last.
    """

    def __init__(self, monitor: AudioMonitor, fusion):
        self.monitor, self.fusion = monitor, fusion
        self.last = None  # edge.fusion.Fused of the newest frame
        self.level_dbfs: float | None = None
        # a file's sound and picture: time 0 of the video on the monotonic clock (SourceStatus.first_frame_t)
        self.video_origin: Callable[[], float | None] = lambda: None
        self._last_t = float("-inf")  # of the newest fused score
        self._heard_t = float("-inf")  # of the newest audio score fused
        self._seen: Score | None = None  # the vision score of the newest frame

    @property
    def card(self):
        return self.monitor.pipeline.scorer.card

    @property
    def camera(self):
        """The camera whose one session gives this sound and the picture (``edge.source.FfmpegStreamSource``),
        for the frame loop to read; None when the sound comes from elsewhere."""
        return getattr(self.monitor.backend, "camera", None)

    def start(self) -> None:
        self.monitor.start()

    def fuse(self, vision: Score | None, t: float) -> list[Score]:
        """The scores for the alarm at a frame: each sound heard since the last frame but the newest, fused at
        its own time with the previous frame's view, then the frame with the newest sound. (Fusing only the
        newest lost a short cry heard between two frames of a slow camera.)"""
        heard_at = self._sound_time(t)
        self.monitor.advance_to(heard_at)
        fresh = [h for h in self.monitor.since(self._heard_t) if h.score.t <= heard_at + 1e-6]
        newest = self.monitor.latest(heard_at)
        between = fresh[:-1] if fresh and fresh[-1] is newest else fresh
        scores = [self._fuse(self._frame_time(h.score.t), self._seen, h) for h in between]
        self._seen = vision
        scores.append(self._fuse(t, vision, newest))
        return scores

    def hear(self, fresh: list[AudioScore], now: float) -> list[Score]:
        """No camera at all: each audio score, in time order, for the alarm; with none, one at ``now`` saying why
        there is no sound (the alarm's blind rule then ends an episode). The state shows no vision part."""
        if fresh:
            return [self._fuse(h.score.t, None, h) for h in fresh]
        return [self._fuse(now, None, None)]

    def heard_alone(self, now: float) -> list[Score]:
        """No frames for a while (the camera gone or stalled): the scores of the sound heard since the last
        one fused, with the vision status ``no_camera``; with no fresh sound either, one score at ``now``
        saying why, so the alarm's blind rule still ends an episode. A file's sound that follows its
        picture waits for the picture: nothing."""
        from edge.fusion import NO_CAMERA

        if self.monitor.follow_frames:
            return []
        fresh = self.monitor.since(self._heard_t)
        if fresh:
            return [self._fuse(h.score.t, Score(t=h.score.t, probability=0.0, status=NO_CAMERA), h) for h in fresh]
        if self.monitor.latest(now) is None:
            return [self._fuse(now, Score(t=now, probability=0.0, status=NO_CAMERA), None)]
        return []

    def _fuse(self, t: float, vision: Score | None, heard: AudioScore | None) -> Score:
        t = max(t, self._last_t)  # a frame captured before the sound last fused: never back in time
        self._last_t = t
        if heard is not None:
            self._heard_t = max(self._heard_t, heard.score.t)
            self.level_dbfs = heard.level_dbfs
            fused = self.fusion.fuse(t, vision, heard.score, heard.level_dbfs)
        else:
            self.level_dbfs = None  # nothing heard now: /stats must not go on showing the last level
            fused = self.fusion.fuse(t, vision, None, None, audio_status=self.monitor.blind_score(t).status)
        self.last = fused
        return fused.score

    def _sound_time(self, t: float) -> float:
        """Frame time ``t`` on the sound's clock: a file's picture and sound opened at different moments."""
        if not self.monitor.follow_frames:
            return t
        video, sound = self.video_origin(), self.monitor.status.first_frame_t
        return t if video is None or sound is None else t - video + sound

    def _frame_time(self, t: float) -> float:
        """Sound time ``t`` on the frames' clock (the inverse of ``_sound_time``)."""
        if not self.monitor.follow_frames:
            return t
        video, sound = self.video_origin(), self.monitor.status.first_frame_t
        return t if video is None or sound is None else t - sound + video

    def health(self) -> dict:
        """For /health and /stats: the sound source, its state, and what it hears (``ok`` or why not)."""
        monitor = self.monitor
        status = self.last.audio.status if self.last is not None and self.last.audio is not None else monitor.reason
        if monitor.status.state != "open" and status == "ok":  # gone since the last score
            status = monitor.reason
        return {"source": monitor.status.name, "state": monitor.status.state, "status": status,
                "reconnects": monitor.status.reconnects, "overruns": monitor.overruns}

    def stats(self) -> dict:
        monitor = self.monitor
        return {"audio_overruns": monitor.overruns, "audio_reconnects": monitor.status.reconnects,
                "audio_inference_ms": monitor.pipeline.scorer.last_inference_ms,
                **({"sound_level_dbfs": self.level_dbfs} if self.level_dbfs is not None else {})}

    def close(self) -> None:
        self.monitor.close()
        self.monitor.pipeline.scorer.model.close()


def sound_backend_factory(config) -> tuple[Callable[[int], object], bool]:
    """A maker (of the sample rate) of the backend ``[audio.source]`` names, and whether it follows ``[source]``'s frames."""
    from edge.audio_source import AlsaAudioSource, CameraSound, FfmpegAudioSource
    from edge.errors import ConfigError
    from edge.source import FfmpegStreamSource

    sound, video = config.audio.source, config.source
    paced = getattr(video, "realtime", True)

    def ffmpeg(uri: str, realtime: bool, transport: str = "tcp", name: str | None = None):
        return lambda rate: FfmpegAudioSource(uri, rate, realtime=realtime, timeout_seconds=sound.stall_seconds,
                                              rtsp_transport=transport, name=name)

    if sound.type == "alsa":
        return (lambda rate: AlsaAudioSource(sound.device, rate)), False
    if sound.type == "file":  # it keeps to the picture's timeline only when that is a file too
        return ffmpeg(str(sound.path), paced if sound.realtime is None else sound.realtime), video.type == "file"
    if sound.type == "stream":
        if not (video.type in ("rtsp", "http") and same_stream(sound.url, video.url)):
            return ffmpeg(sound.open_url(), True, sound.transport, sound.display()), False  # password on a pipe only
        # the camera's own URL: a second session would double the camera's traffic and take another of its clients
        log.info("[audio.source] url is the camera's stream: its sound is read from the camera's own session "
                 "([source]'s settings), as [audio.source] type = \"video\" says")
    elif video.type == "file":
        return ffmpeg(str(video.path), paced), True
    if video.type in ("rtsp", "http"):
        # one session gives the picture and the sound: many cameras take only one or two clients
        return (lambda rate: CameraSound(FfmpegStreamSource.from_config(video, sound_rate=rate))), False
    raise ConfigError(f"[audio.source] type \"video\": the camera ({video.type}) has no sound track cryedge can "
                      "read; set [audio.source] type = \"alsa\" for a microphone")


def same_stream(url: str, other: str) -> bool:
    """Whether two stream URLs name the same stream, whatever their user info, the letter case of scheme and
    host, a default port said or not, or a trailing slash."""
    from urllib.parse import urlsplit

    from edge.config import DEFAULT_PORTS, split_userinfo

    def identity(text: str) -> tuple:
        scheme, _, rest = split_userinfo(text)
        parts = urlsplit(f"{scheme.lower()}://{rest}")
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # not a port: compared as written
            port = parts.netloc
        return parts.scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/"), parts.query

    return identity(url) == identity(other)


def has_sound_track(path) -> bool:
    """Whether a media file holds an audio stream (``ffprobe``; False without it)."""
    import shutil
    import subprocess

    probe = shutil.which("ffprobe")
    if probe is None:
        return False
    try:
        found = subprocess.run([probe, "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
                                "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0 and bool(found.stdout.strip())


def hearing_enabled(config) -> bool:
    """``[audio] enabled``, with ``auto`` resolved: on for a video file with a sound track and a model to hear it."""
    enabled = config.audio.enabled
    if enabled != "auto":
        return bool(enabled)
    source = config.source
    return (config.audio.source.type == "video" and source.type == "file" and Path(config.audio.model).is_file()
            and has_sound_track(source.path))


def open_hearing(config, alarm_threshold: float | None, listener: Callable[[AudioScore], None] | None = None) -> Hearing:
    """The audio path ``[audio]`` and ``[fusion]`` describe, started; ModelError or ConfigError when it cannot be.

    ``alarm_threshold`` None: the audio model's own. ``listener`` gets every score on the audio thread."""
    from edge.fusion import Fusion
    from edge.model import TFLiteModel

    make, follows_frames = sound_backend_factory(config)
    if not Path(config.audio.model).is_file():
        raise ModelError(f"[audio] model file not found: {config.audio.model}")
    model = TFLiteModel(config.audio.model, num_threads=config.audio.num_threads)
    if not model.card.is_audio:
        model.close()
        raise ModelError(f"[audio] model {config.audio.model.name} is a {model.card.kind} model, not an audio one")
    pipeline = AudioPipeline(AudioScorer(model))
    rate = model.card.audio.rate
    sound = config.audio.source
    monitor = AudioMonitor(lambda: make(rate), pipeline, stall_seconds=sound.stall_seconds,
                           backoff_first=sound.reopen_min_seconds, backoff_limit=sound.reopen_max_seconds,
                           follow_frames=follows_frames)
    min_on = config.fusion.audio_min_on_seconds
    fusion = Fusion(config.fusion.mode, config.fusion.audio_weight, audio_threshold=model.card.threshold,
                    alarm_threshold=model.card.threshold if alarm_threshold is None else alarm_threshold,
                    audio_min_on_seconds=min_on if min_on is not None else model.card.audio.min_on_seconds)
    if listener is not None:
        monitor.on_score(listener)
    hearing = Hearing(monitor, fusion)
    hearing.start()
    return hearing
