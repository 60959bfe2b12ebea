"""Turn a stream of timed scores into cry episodes: a start event, then exactly one end event.

A pure state machine: no threads, no clock reads of its own (the wall clock is injected), so a
scripted list of scores gives the same events every time.

Rules, in the order they apply to each score:
- Scores that are not ``ok`` (no face, no body, too dark, no sound device: the modality cannot
  perceive) are not evidence either way: they are skipped. If no ok score has come for
  ``blind_seconds`` (alias ``no_face_seconds``), a running episode ends with the status as its reason
  (``"no_face"``, ``"no_body"``, ...) and the smoothing starts afresh.
- The probability is smoothed (running median of the last k scores, or an EMA).
- Off: once the smoothed score has stayed at or above the ON threshold for ``min_on_seconds``, and the
  last episode ended at least ``cooldown_seconds`` ago, an episode starts. A score that carries its own
  ``min_on_seconds`` (the sound deciding: ``[fusion] audio_min_on_seconds``) asks for the shorter of
  the two.
- On: once the smoothed score has stayed below the (lower) OFF threshold for ``hold_seconds``, the
  episode ends with reason ``"scores"``. A dip shorter than that does not end it. What cuts a dip
  short is crying again: a score at or above ON at once, or one back between OFF and ON that stays
  there for ``min_on_seconds`` (the evidence a start needs). A blip of a fraction of a second into
  that uncertain band does not restart the hold: it would date the end at the next dip, seconds late.
- ``finish(t)`` ends a running episode with reason ``"shutdown"`` (the daemon stopped), or the reason given
  (``"error"``: it stopped on an error).

An event's ``t`` is when the change happened according to the scores (the smoothed score first
crossed the threshold), not when the rule fired ``min_on_seconds`` or ``hold_seconds`` later, so
subscribers learn when the baby started and stopped crying.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge.config import AlarmConfig
from edge.records import MODEL_ERROR, AlarmEvent, Score


def wall_clock_now(t: float) -> float:
    """The ``time.time()`` of monotonic time ``t``, using the current offset between the clocks."""
    return time.time() - (time.monotonic() - t)


def new_event_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class AlarmState:
    """What the retained state topic shows."""

    crying: bool
    since: float | None  # monotonic time the current state began; None before any episode
    since_wall: float | None  # the same as time.time()
    probability: float  # the latest smoothed probability (0 before the first face score)
    event_id: str | None = None  # of the running episode
    senses: dict | None = None  # what each modality says, when there are several (edge.fusion.Fused.senses)


class Smoother:
    """Running median of the last ``k`` values, an EMA, or the raw value."""

    def __init__(self, kind: str, median_window: int = 5, ema_alpha: float = 0.3):
        self.kind = kind
        self.ema_alpha = ema_alpha
        self._recent: deque[float] = deque(maxlen=median_window)
        self._ema: float | None = None

    def reset(self) -> None:
        self._recent.clear()
        self._ema = None

    def add(self, value: float) -> float:
        if self.kind == "median":
            self._recent.append(value)
            return float(statistics.median(self._recent))
        if self.kind == "ema":
            self._ema = value if self._ema is None else self.ema_alpha * value + (1 - self.ema_alpha) * self._ema
            return self._ema
        return value


class Alarm:
    """Feed it every ``Score`` in time order with ``update``; it returns the events each one raises."""

    def __init__(
        self,
        config: AlarmConfig,
        model_threshold: float = 0.5,
        wall_clock: Callable[[float], float] = wall_clock_now,
        new_id: Callable[[], str] = new_event_id,
    ):
        self.config = config
        self.on_threshold, self.off_threshold = config.thresholds(model_threshold)
        self._wall_clock = wall_clock
        self._new_id = new_id
        self._smoother = Smoother(config.smoothing, config.median_window, config.ema_alpha)
        self._crying = False
        self._event_id: str | None = None
        self._since: float | None = None
        self._since_wall: float | None = None  # fixed when the state changes, so "since" does not jitter
        self._probability = 0.0
        self._last_t: float | None = None
        self._last_ok_t: float | None = None
        self._above_since: float | None = None  # smoothed >= ON, while off
        self._below_since: float | None = None  # smoothed < OFF, while on
        self._back_since: float | None = None  # OFF <= smoothed < ON after a dip below OFF, while on
        self._last_end_decided: float | None = None  # when the last end event was raised

    @property
    def state(self) -> AlarmState:
        return AlarmState(self._crying, self._since, self._since_wall, self._probability, self._event_id)

    @property
    def crying(self) -> bool:
        return self._crying

    @property
    def last_t(self) -> float | None:
        """The time of the newest score taken (None before the first): the next must not be earlier."""
        return self._last_t

    def in_order(self, score: Score) -> Score:
        """``score``, dated no earlier than the newest score taken (``update`` refuses an earlier one): a frame
        captured before a score the daemon gave the alarm while it waited, or that score itself, comes after it."""
        last = self._last_t
        return score if last is None or score.t >= last else dataclasses.replace(score, t=last)

    def update(self, score: Score) -> list[AlarmEvent]:
        """Advance to ``score.t``; the start or end events this score raises (usually none)."""
        t = score.t
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"scores must come in time order: {t} after {self._last_t}")
        self._last_t = t
        if self._last_ok_t is None:
            self._last_ok_t = t  # the blind clock starts with the first score
        if score.ok and not math.isfinite(score.probability):  # neither above nor below a threshold: held ON for ever
            score = dataclasses.replace(score, status=MODEL_ERROR)

        if not score.ok:
            if t - self._last_ok_t >= self.config.blind_seconds:
                self._smoother.reset()
                self._above_since = None
                self._below_since = None
                self._back_since = None
                if self._crying:
                    return [self._end(self._last_ok_t, score.status, decided=t)]
            return []
        self._last_ok_t = t
        self._probability = self._smoother.add(float(score.probability))

        if not self._crying:
            if self._probability >= self.on_threshold:
                if self._above_since is None:
                    self._above_since = t
                cooled = self._last_end_decided is None or t - self._last_end_decided >= self.config.cooldown_seconds
                if t - self._above_since >= self._min_on(score) and cooled:
                    return [self._start(self._above_since)]
            else:
                self._above_since = None
            return []

        if self._probability < self.off_threshold:
            if self._below_since is None:
                self._below_since = t
            self._back_since = None
        elif self._probability >= self.on_threshold or self._below_since is None:
            self._below_since = self._back_since = None
        else:  # back between the thresholds after a dip: uncertain, so it must last to cancel the dip
            if self._back_since is None:
                self._back_since = t
            if t - self._back_since >= self._min_on(score):
                self._below_since = self._back_since = None
        if self._below_since is not None and t - self._below_since >= self.config.hold_seconds:
            return [self._end(self._below_since, "scores", decided=t)]
        return []

    def _min_on(self, score: Score) -> float:
        if score.min_on_seconds is None:
            return self.config.min_on_seconds
        return min(self.config.min_on_seconds, score.min_on_seconds)

    def finish(self, t: float | None = None, reason: str = "shutdown") -> list[AlarmEvent]:
        """End a running episode with ``reason`` at ``t`` (default: the last score's time)."""
        if not self._crying:
            return []
        t = t if t is not None else self._last_t
        t = max(t, self._since)
        return [self._end(t, reason, decided=t)]

    def close(self) -> list[AlarmEvent]:
        return self.finish()

    def _start(self, t: float) -> AlarmEvent:
        # a start can be dated before the previous end was raised; keep events in time order
        if self._last_end_decided is not None:
            t = max(t, self._last_end_decided)
        self._crying = True
        self._event_id = self._new_id()
        self._since = t
        self._since_wall = self._wall_clock(t)
        self._above_since = None
        return AlarmEvent("start", self._event_id, t, self._since_wall, self._probability)

    def _end(self, t: float, reason: str, decided: float) -> AlarmEvent:
        t = max(t, self._since)
        # the wall clock set back during the cry (NTP on a Pi without a real-time clock) would date the end before
        # the start: it is dated no earlier than its start plus the episode's monotonic length
        wall = max(self._wall_clock(t), self._since_wall + (t - self._since))
        event = AlarmEvent("end", self._event_id, t, wall, self._probability, reason)
        self._crying = False
        self._event_id = None
        self._since = t
        self._since_wall = event.wall_time
        self._below_since = None
        self._back_since = None
        self._last_end_decided = decided
        return event
