"""The model card: what a model expects and what it says, travelling with the ``.tflite``.

The converter writes it twice: as ``MODEL.json`` beside the model and embedded in the model's
flatbuffer as a metadata entry named ``cryedge_card``. The device reads the sidecar when present,
else the embedded copy, and builds the pipeline from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge import tflite_file
from edge.errors import ModelError

CARD_METADATA_NAME = "cryedge_card"
CARD_FORMAT = "cryedge-model-card/1"


class TensorQuantization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dtype: Literal["float32", "float16", "int8", "uint8"]
    scale: float = 0.0
    zero_point: int = 0


class Quantization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    scheme: Literal["float32", "float16", "dynamic", "int8"]
    input: TensorQuantization
    output: TensorQuantization


class FeatureSpecRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    spec: str = "openpose-face70-body8"
    normalization: Literal["minmax", "pixels", "face-box"] = "minmax"
    version: int = 1


class FaceCropSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    aggregate: Literal["mean", "vote"] = "vote"
    scale: Literal["unit", "byte"] = "unit"  # pixels /255 to [0, 1], or raw 0-255


class SourceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    sha256: str


class ModelCard(BaseModel):
    """Validated card; ``extra="forbid"`` so a misspelt field is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["cryedge-model-card/1"] = CARD_FORMAT
    name: str
    kind: Literal["landmark-window", "face-crop"]
    description: str = ""
    input_shape: tuple[int, ...]
    window: int = Field(default=10, gt=0)
    features: FeatureSpecRef | None = None
    face_crop: FaceCropSpec | None = None
    labels: tuple[str, ...]
    positive_label: str
    output: Literal["sigmoid", "softmax"]
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
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
        if self.output == "sigmoid" and len(self.labels) != 2:
            raise ValueError("a sigmoid output needs exactly 2 labels (negative, positive)")
        return self

    @property
    def required_parts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("face", *self.requires)))

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
        raise ModelError(f"model card {where}: {field}: {first['msg']}") from None


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
