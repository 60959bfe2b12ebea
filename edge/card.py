"""The model card: what a model expects and what it says, travelling with the ``.tflite``.

The converter writes it twice: as ``MODEL.json`` beside the model and embedded in the model's
flatbuffer as a metadata entry named ``cryedge_card``. The device reads the sidecar when present,
else the embedded copy, and builds the pipeline from it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge import tflite_file
from edge.errors import ModelError

CARD_METADATA_NAME = "cryedge_card"
CARD_FORMAT = "cryedge-model-card/1"
MAX_WINDOW_SECONDS = 60.0  # of sound one audio score sees (YAMNet's: 0.975 s)
# The front end computes in float32 (edge.audio_features): a card's number finite as a Python float but past
# float32's range became inf there (mean 1e300), or 0 below its smallest normal number (amin 1e-300: -inf dB
# at silence), and the model saw inf or NaN features for ever.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
# The largest feature before normalization: dB over float32's normal range (|10 log10| < 390), a background
# floor's difference of two, through an orthonormal DCT of at most 1024 bands (sqrt(1024) = 32): under 25,000.
FEATURE_BOUND = 1e5


class TensorQuantization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    dtype: Literal["float32", "float16", "int8", "uint8", "int16"]
    scale: float = 0.0
    zero_point: int = 0


class Quantization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    scheme: Literal["float32", "float16", "dynamic", "int8", "int16x8"]
    input: TensorQuantization
    output: TensorQuantization
    # int8 graphs whose worst layers were left in float to keep the labels (cryedge convert --int8-fallback)
    float_layers: tuple[str, ...] = ()
    edgetpu_compatible: bool | None = None  # None: written before cryedge said


class FeatureSpecRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    spec: str = "openpose-face70-body8"
    normalization: Literal["minmax", "pixels", "face-box"] = "minmax"
    version: int = 1


class FaceCropSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    aggregate: Literal["mean", "vote"] = "vote"
    scale: Literal["unit", "byte"] = "unit"  # pixels /255 to [0, 1], or raw 0-255


@lru_cache(maxsize=8)
def pitch_quefrencies(rate: int, fmin: float, fmax: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole periods in samples (quefrencies) of fundamentals fmin-fmax, lowest pitch first, grouped into
    ``bins`` log-spaced bins: (quefrencies, where each bin starts).

    The one rule for both sides: the front end (``edge.audio_features.pitch_salience``) takes each bin's
    channel over the periods from its start to the next bin's, and ``AudioSpec`` refuses a card with a bin
    that holds none, which would silently take a neighbour's (or fail, the last). Here, not in the front end,
    because the front end imports the card."""
    quefrencies = np.arange(np.floor(rate / fmin), np.ceil(rate / fmax) - 1, -1).astype(np.int64)
    edges = np.geomspace(fmin, fmax, bins + 1)
    which = np.clip(np.searchsorted(edges, rate / quefrencies, side="right") - 1, 0, bins - 1)
    starts = np.searchsorted(which, np.arange(bins))
    for array in (quefrencies, starts):
        array.setflags(write=False)
    return quefrencies, starts


class AudioSpec(BaseModel):
    """The audio front end and window of an audio model: every number the features depend on.

    ``edge.audio_features`` computes the features from these alone, in training and on the device.
    An ``audio-window`` model sees ``audio_features`` of the newest ``window_samples`` samples; an
    ``audio-waveform`` model (YAMNet's signature) sees the samples themselves and gives ``classes`` scores,
    of which the ``cry_classes`` (indices) count as crying: the cry probability is their maximum.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # The upper bounds (and hop_seconds' lower one) are what a device can afford, far past any real front end: a
    # card past them loaded, then failed every window on the audio thread (out of memory), waited days for its
    # first window, or invoked the model on every sample and fell behind the sound. A deaf monitor either way.
    rate: int = Field(default=16000, gt=0, le=384_000)  # samples a second, mono
    window_samples: int = Field(default=15600, gt=0)  # what one score sees: 0.975 s at 16 kHz; at most 60 s
    hop_seconds: float = Field(default=0.5, ge=0.01)  # a score this often
    # the alarm's debounce when this model's score decides ([fusion] audio_min_on_seconds overrides it);
    # chosen with the threshold, on the same held-out clips. None: [alarm] min_on_seconds
    min_on_seconds: float | None = Field(default=None, ge=0, le=600)
    # the evidence the alarm follows, [k, n]: the k-th highest of the model's last n scores, at or above the
    # threshold when k of the last n windows were (edge.audio.Evidence); chosen with the threshold and the
    # debounce. None: each window's own score, as before the field
    evidence: tuple[int, int] | None = None
    # front end (audio-window); win/hop in samples: 25 ms frames every 10 ms at 16 kHz
    win_length: int = Field(default=400, gt=0)
    hop_length: int = Field(default=160, gt=0)
    n_fft: int = Field(default=512, gt=0, le=65_536)
    window: Literal["hann"] = "hann"
    mel_bands: int = Field(default=64, gt=0, le=1024)
    fmin: float = Field(default=125.0, ge=0)
    fmax: float = Field(default=7500.0, gt=0)
    mel_scale: Literal["slaney", "htk"] = "slaney"
    log: Literal["db", "ln-offset"] = "db"  # 10 log10(max(mel, amin)), or ln(mel + log_offset) as YAMNet
    amin: float = Field(default=1e-10, gt=0)  # the dB floor: -100 dB
    log_offset: float = Field(default=0.001, gt=0)
    features: Literal["log-mel", "mfcc"] = "log-mel"
    n_mfcc: int = Field(default=20, gt=0)
    # a per-band background floor subtracted from the log-mel (edge.audio_features.BackgroundFloor): tracked
    # causally frame by frame, it falls to a quieter frame within about floor_fall_seconds and rises to a louder
    # one only over floor_rise_seconds, so it follows a steady noise, TV or fan but not a cry with breaths in it
    background: Literal["none", "floor"] = "none"
    floor_rise_seconds: float = Field(default=4.0, gt=0)
    floor_fall_seconds: float = Field(default=0.1, gt=0)
    # pitch channels appended to each frame's features (edge.audio_features.pitch_salience): the frame's harmonic
    # ripple, in dB peak to valley, for pitch_bins fundamentals log-spaced over pitch_fmin-pitch_fmax (a cry's
    # f0), from the cepstrum of the log power spectrum of each of pitch_bands equal parts of fmin-fmax.
    # 0 bins: none (cards from before the field)
    pitch_bins: int = Field(default=0, ge=0, le=64)
    pitch_fmin: float = Field(default=250.0, gt=0)
    pitch_fmax: float = Field(default=700.0, gt=0)
    pitch_bands: int = Field(default=1, ge=1, le=8)
    normalization: Literal["none", "fixed", "patch"] = "none"  # fixed: (x - mean) / std from training (pitch channels: x / std)
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)
    # audio-waveform models
    classes: int | None = Field(default=None, gt=0)  # output scores (AudioSet: 521 for YAMNet)
    cry_classes: tuple[int, ...] = ()  # indices of the output that mean crying
    cry_class_names: tuple[str, ...] = ()  # their names, for people (YAMNet: 20 "Baby cry, infant cry")

    @field_validator("mean")
    @classmethod
    def _float32(cls, value: float) -> float:
        if abs(value) > FLOAT32_MAX:
            raise ValueError(f"{value:g} is past float32's range (±{FLOAT32_MAX:.2g}), in which the features are computed")
        return value

    @field_validator("std", "amin", "log_offset")
    @classmethod
    def _positive_float32(cls, value: float) -> float:
        if not FLOAT32_TINY <= value <= FLOAT32_MAX:
            raise ValueError(f"{value:g} is outside float32's range ({FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}), "
                             f"in which the features are computed")
        return value

    @field_validator("hop_seconds")
    @classmethod
    def _no_gaps(cls, hop_seconds: float, info: ValidationInfo) -> float:
        # windows further apart than they are long leave the sound between them unheard
        rate, window_samples = info.data.get("rate"), info.data.get("window_samples")
        if rate and window_samples and hop_seconds > window_samples / rate:
            raise ValueError(f"{hop_seconds:g} s is longer than the window ({window_samples} samples at {rate} Hz, "
                             f"{window_samples / rate:g} s): the sound between windows would not be heard")
        return hop_seconds

    @model_validator(mode="after")
    def _consistent(self) -> AudioSpec:
        if self.window_samples > MAX_WINDOW_SECONDS * self.rate:
            raise ValueError(f"window_samples {self.window_samples} at {self.rate} Hz is {self.window_samples / self.rate:g} s; "
                             f"a score sees at most {MAX_WINDOW_SECONDS:g} s")
        if self.fmax > self.rate / 2:
            raise ValueError(f"fmax {self.fmax:g} is above the Nyquist frequency {self.rate / 2:g}")
        if self.fmin >= self.fmax:
            raise ValueError("fmin must be below fmax")
        if self.win_length > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        if self.window_samples < self.win_length:
            raise ValueError("window_samples must hold at least one frame (win_length)")
        if self.features == "mfcc" and self.n_mfcc > self.mel_bands:
            raise ValueError("n_mfcc must not exceed mel_bands")
        if self.background == "floor" and abs(self.hop_seconds * self.rate / self.hop_length
                                              - round(self.hop_seconds * self.rate / self.hop_length)) > 1e-6:
            # the floor follows every frame once: a score's frames must continue the previous score's
            raise ValueError(f"background 'floor' needs hop_seconds ({self.hop_seconds:g}) to span a whole number "
                             f"of frames of hop_length {self.hop_length}")
        if self.pitch_bins:
            self._check_pitch()
        if self.normalization == "fixed" and (FEATURE_BOUND + abs(self.mean)) / self.std > FLOAT32_MAX:
            raise ValueError(f"normalization 'fixed' with mean {self.mean:g} and std {self.std:g} takes features past "
                             f"float32's range (±{FLOAT32_MAX:.2g}), in which they are computed")
        if self.evidence is not None and not 1 <= self.evidence[0] <= self.evidence[1] <= 20:
            raise ValueError(f"evidence [k, n] needs 1 <= k <= n <= 20 (k of the last n scores); got {list(self.evidence)}")
        if self.classes is not None and any(not 0 <= i < self.classes for i in self.cry_classes):
            raise ValueError(f"cry_classes must be indices below classes ({self.classes})")
        return self

    def _check_pitch(self) -> None:
        if self.pitch_fmin >= self.pitch_fmax:
            raise ValueError("pitch_fmin must be below pitch_fmax")
        if 2 * self.rate / self.pitch_fmin > self.win_length:
            raise ValueError(f"pitch_fmin {self.pitch_fmin:g} Hz: two of its periods must fit in a frame of "
                             f"win_length {self.win_length}")
        if 3 * self.pitch_fmax > (self.fmax - self.fmin) / self.pitch_bands:
            raise ValueError(f"pitch_bands {self.pitch_bands}: each band of {self.fmin:g}-{self.fmax:g} Hz must hold "
                             f"3 harmonics of pitch_fmax {self.pitch_fmax:g} Hz")
        quefrencies, starts = pitch_quefrencies(self.rate, self.pitch_fmin, self.pitch_fmax, self.pitch_bins)
        held = np.diff(starts, append=quefrencies.size)
        if (held == 0).any():
            empty = int(np.flatnonzero(held == 0)[0])
            edges = np.geomspace(self.pitch_fmin, self.pitch_fmax, self.pitch_bins + 1)
            raise ValueError(f"pitch_bins {self.pitch_bins}: more than the {self.pitch_fmin:g}-{self.pitch_fmax:g} Hz "
                             f"pitch range can tell apart at {self.rate} Hz (the bin {edges[empty]:.4g}-"
                             f"{edges[empty + 1]:.4g} Hz holds no whole period in samples)")

    @property
    def frames(self) -> int:
        """Feature frames in one window."""
        return 1 + (self.window_samples - self.win_length) // self.hop_length

    @property
    def hop_frames(self) -> int:
        """Feature frames new in each score's window (the frames of ``hop_seconds``)."""
        return round(self.hop_seconds * self.rate / self.hop_length)

    @property
    def spectrum_size(self) -> int:
        """Features a frame of the spectrum (log-mel bands or MFCCs), before any pitch channels."""
        return self.n_mfcc if self.features == "mfcc" else self.mel_bands

    @property
    def feature_size(self) -> int:
        return self.spectrum_size + self.pitch_bands * self.pitch_bins


AUDIO_KINDS = ("audio-window", "audio-waveform")


class SourceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    path: str
    sha256: str


class ModelCard(BaseModel):
    """Validated card; ``extra="forbid"`` so a misspelt field is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: Literal["cryedge-model-card/1"] = CARD_FORMAT
    name: str
    kind: Literal["landmark-window", "face-crop", "audio-window", "audio-waveform"]
    description: str = ""
    input_shape: tuple[int, ...]
    window: int = Field(default=10, gt=0)
    features: FeatureSpecRef | None = None
    face_crop: FaceCropSpec | None = None
    audio: AudioSpec | None = None
    labels: tuple[str, ...]
    positive_label: str
    output: Literal["sigmoid", "softmax", "multilabel"]  # multilabel: audio.classes independent scores
    # not 0 nor 1: every score is at or above 0 (an alarm that never ends), an int8 model's top is 0.996 (one that never starts)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    quantization: Quantization | None = None
    stateful: bool = False  # a fused LSTM keeps state between invokes: reset before each window
    # The parts of the subject the model cannot do without. When one is missing in most frames of a
    # window, the score says so (status "no_face" / "no_body") instead of a probability. Every model
    # needs a face; a card that says nothing asks for nothing more (cards from before this field).
    requires: tuple[Literal["face", "body"], ...] = ("face",)
    source: SourceModel | None = None
    tools: dict[str, str] = Field(default_factory=dict)
    training: dict = Field(default_factory=dict)  # data, split, metrics: free-form, shown to people

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.positive_label not in self.labels:
            raise ValueError(f"positive_label {self.positive_label!r} is not one of labels {list(self.labels)}")
        if self.kind == "landmark-window" and self.features is None:
            raise ValueError("a landmark-window card needs 'features'")
        if self.kind == "face-crop" and self.face_crop is None:
            raise ValueError("a face-crop card needs 'face_crop'")
        if self.kind in AUDIO_KINDS and self.audio is None:
            raise ValueError(f"an {self.kind} card needs 'audio'")
        if self.kind == "audio-waveform":
            if self.output != "multilabel" or self.audio.classes is None or not self.audio.cry_classes:
                raise ValueError("an audio-waveform card needs output 'multilabel', audio.classes and audio.cry_classes")
        if self.output == "multilabel" and (self.kind != "audio-waveform" or len(self.labels) != 2):
            raise ValueError("a multilabel output is for audio-waveform cards, with 2 labels (not crying, crying)")
        if self.output == "sigmoid" and len(self.labels) != 2:
            raise ValueError("a sigmoid output needs exactly 2 labels (negative, positive)")
        return self

    @property
    def required_parts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("face", *self.requires)))

    @property
    def is_audio(self) -> bool:
        return self.kind in AUDIO_KINDS

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)


def parse_card(text: str | bytes, where: str) -> ModelCard:
    """Validate card JSON; a ModelError says which field is wrong and where the card came from."""
    try:
        return ModelCard.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "card"
        raise ModelError(f"model card {where}: {field}: {first['msg'].removeprefix('Value error, ')}") from None


def sidecar_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def read_embedded_card(model_bytes: bytes) -> bytes | None:
    """The card's JSON bytes from the model's ``cryedge_card`` metadata entry, if any."""
    try:
        return tflite_file.read_metadata(model_bytes, CARD_METADATA_NAME)
    except Exception:  # no schema installed, or a damaged flatbuffer the interpreter will name more clearly
        return None


def load_card(model_path: Path) -> ModelCard:
    """The card of ``model_path``: the sidecar JSON, else the embedded one, else a ModelError."""
    model_path = Path(model_path)
    sidecar = sidecar_path(model_path)
    if sidecar.is_file():
        return parse_card(sidecar.read_bytes(), str(sidecar))
    try:
        embedded = read_embedded_card(model_path.read_bytes())
    except OSError as error:
        raise ModelError(f"cannot read model {model_path}: {error.strerror}") from None
    if embedded is None:
        raise ModelError(
            f"model {model_path} has no card: put {sidecar.name} beside it or convert it with 'cryedge convert'"
        )
    return parse_card(embedded, f"embedded in {model_path}")


def card_from_dict(data: dict, where: str = "card") -> ModelCard:
    return parse_card(json.dumps(data), where)
