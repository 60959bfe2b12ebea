"""Where cryedge finds its model files.

Order: ``$CRYEDGE_MODELS``; the ``models/`` folder of the source checkout this package runs from;
``/opt/cryedge/models`` (what ``systemd/install.sh`` lays down). Built landmark bundles live in
``<models>/landmarks/``.
"""

from __future__ import annotations

import os
from pathlib import Path

INSTALLED_MODELS = Path("/opt/cryedge/models")
DEFAULT_MODEL_NAME = "cry-default.tflite"


def models_dir(environ=os.environ) -> Path:
    if environ.get("CRYEDGE_MODELS"):
        return Path(environ["CRYEDGE_MODELS"])
    checkout = Path(__file__).resolve().parents[1] / "models"
    if checkout.is_dir():
        return checkout
    return INSTALLED_MODELS


def landmarks_dir(environ=os.environ) -> Path:
    return models_dir(environ) / "landmarks"


def default_model(environ=os.environ) -> Path:
    return models_dir(environ) / DEFAULT_MODEL_NAME


def data_file(name: str) -> Path:
    """A file shipped inside the package (``edge/data/``): the demo clip, sample photos."""
    return Path(__file__).resolve().parent / "data" / name
