"""The fusion stage: what is seen and what is heard, as the one ``Score`` the alarm follows.

Pure: a vision ``Score`` (or None without a camera) and the newest audio ``Score`` (or None) in, a
fused ``Score`` and what each modality said out. Each model has its own decision threshold (on its
card); the audio probability is first mapped piecewise-linearly so that the audio model's threshold
lands on the alarm's, which makes "above the threshold" mean the same for both before they are combined.

Modes (``[fusion] mode``):
- ``either``: the higher probability of the modalities that can perceive: neither can hide the other's cry.
- ``mean``: ``audio_weight`` x audio + (1 - ``audio_weight``) x vision when both can perceive.
- ``vision`` / ``audio``: that modality alone; the other is reported, not used.
In ``either`` and ``mean``, a modality whose status is not ``ok`` (no face, no sound device) leaves the
decision to the other; when neither can perceive, the fused score carries the vision status (or the
audio one without a camera), and the alarm holds its state.

When the sound decides (``audio`` mode, or the only sense in ``mean``) or, in ``either``, the sound
alone says crying (its mapped probability at or above the alarm's threshold), the fused score asks the alarm for
``audio_min_on_seconds`` of evidence instead of ``[alarm] min_on_seconds``: one audio window already
integrates about a second of sound, so a second debounce on top of it would spend the alert's budget.
A cry seen and heard is then as quick as one only heard; what only the picture says keeps the alarm's.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.records import OK, Score

MODES = ("either", "mean", "vision", "audio")
NO_CAMERA = "no_camera"


@dataclass(frozen=True)
class Sense:
    """What one modality said at a frame: its probability (None before its first score) and status."""

    probability: float | None
    status: str
    level_dbfs: float | None = None  # audio only

    def as_dict(self) -> dict:
        shown = {"probability": None if self.probability is None else round(self.probability, 3), "status": self.status}
        if self.level_dbfs is not None:
            shown["level_dbfs"] = round(self.level_dbfs, 1)
        return shown


@dataclass(frozen=True)
class Fused:
    score: Score
    vision: Sense | None
    audio: Sense | None

    def senses(self) -> dict[str, dict]:
        """For the state topic: ``{"vision": {...}, "audio": {...}}`` of the modalities present."""
        return {name: sense.as_dict() for name, sense in (("vision", self.vision), ("audio", self.audio)) if sense}


def rescale(p: float, from_threshold: float, to_threshold: float) -> float:
    """Map [0, from_threshold, 1] onto [0, to_threshold, 1], linearly on each side."""
    p = min(1.0, max(0.0, p))
    if from_threshold <= 0.0 or from_threshold >= 1.0 or from_threshold == to_threshold:
        return p
    if p <= from_threshold:
        return p / from_threshold * to_threshold
    return to_threshold + (p - from_threshold) / (1.0 - from_threshold) * (1.0 - to_threshold)


class Fusion:
    def __init__(self, mode: str = "either", audio_weight: float = 0.5, alarm_threshold: float = 0.5,
                 audio_threshold: float = 0.5, audio_min_on_seconds: float | None = None):
        if mode not in MODES:
            raise ValueError(f"fusion mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode, self.audio_weight = mode, audio_weight
        self.audio_min_on_seconds = audio_min_on_seconds
        self.alarm_threshold, self.audio_threshold = alarm_threshold, audio_threshold

    def fuse(self, t: float, vision: Score | None, audio: Score | None, level_dbfs: float | None = None,
             audio_status: str | None = None) -> Fused:
        """The score at ``t``. ``audio`` None: no audio path, or ``audio_status`` says why there is no score."""
        vision_sense = None if vision is None else Sense(vision.probability if vision.ok else None, vision.status)
        heard = None
        if audio is not None:
            heard = rescale(audio.probability, self.audio_threshold, self.alarm_threshold) if audio.ok else None
            audio_sense = Sense(heard, audio.status, level_dbfs)
        elif audio_status is not None:
            audio_sense = Sense(None, audio_status, level_dbfs)
        else:
            audio_sense = None
        seen = vision.probability if vision is not None and vision.ok else None

        if self.mode == "vision":
            candidates = [seen]
        elif self.mode == "audio":
            candidates = [heard]
        else:
            candidates = [seen, heard]
        present = [p for p in candidates if p is not None]
        probabilities = vision.probabilities if vision is not None and heard is None else ()
        if not present:
            status = self._blind_status(vision_sense, audio_sense)
            return Fused(Score(t=t, probability=0.0, probabilities=probabilities, status=status), vision_sense, audio_sense)
        if self.mode == "mean" and len(present) == 2:
            p = self.audio_weight * heard + (1.0 - self.audio_weight) * seen
        else:
            p = max(present)
        if self.mode == "audio" or (self.mode == "mean" and seen is None):
            heard_decides = heard is not None
        else:  # either: the sound alone says crying
            heard_decides = self.mode == "either" and heard is not None and heard >= self.alarm_threshold
        min_on = self.audio_min_on_seconds if heard_decides else None
        return Fused(Score(t=t, probability=float(p), probabilities=probabilities, status=OK, min_on_seconds=min_on),
                     vision_sense, audio_sense)

    def _blind_status(self, vision: Sense | None, audio: Sense | None) -> str:
        if self.mode == "audio":
            return audio.status if audio is not None else "no_sound_device"
        if vision is not None and vision.status != OK:
            return vision.status
        if audio is not None and audio.status != OK:
            return audio.status
        return NO_CAMERA if vision is None else OK
