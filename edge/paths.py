"""Where cryedge finds its files, one way each.

- Files shipped inside the package (``edge/data/``: the default model and its card, the demo clip,
  sample photos, the bundle pins) through ``importlib.resources``: the same in a checkout, an editable
  install, a wheel in a venv or the service's ``/opt/cryedge/venv``.
- The landmark bundles ``cryedge models fetch`` builds, in ``<models>/landmarks/``, where
  ``<models>`` is the first of: ``$CRYEDGE_MODELS`` (the service sets ``/opt/cryedge/models``, which
  ``systemd/install.sh`` fills at install time); the ``models/`` folder of the source checkout this
  package runs from (development); the user's data directory, ``$XDG_DATA_HOME/cryedge/models``
  (``~/.local/share/cryedge/models``), for a wheel installed anywhere else. The daemon reads bundles
  where ``fetch`` writes them, so the two always agree.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from edge.errors import ConfigError

INSTALLED_MODELS = Path("/opt/cryedge/models")
DEFAULT_MODEL_NAME = "cry-default.tflite"


def bundled(*parts: str) -> Path:
    """A file shipped inside the package, e.g. ``bundled("models", "cry-default.tflite")``.

    cryedge is installed as files (never imported from a zip): the resource is a real path that
    native code (MediaPipe, LiteRT, OpenCV) can open.
    """
    return Path(os.fspath(files("edge").joinpath("data", *parts)))


def data_file(name: str) -> Path:
    """A file in ``edge/data/``: the demo clip, sample photos, the bundle pins."""
    return bundled(name)


def default_model() -> Path:
    """The default model shipped with the package (a demonstration model; see its card)."""
    return bundled("models", DEFAULT_MODEL_NAME)


def source_checkout() -> Path | None:
    """The source checkout this package runs from (editable install, PYTHONPATH), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "models").is_dir() else None


def home(instead: str, environ=os.environ) -> Path:
    """``$HOME``, else this user's home in the passwd database; else a ConfigError ending with ``instead``.

    Looked up where a path is needed, never at import: a user id with neither (systemd's DynamicUser, a
    container) made every cryedge command a traceback ("Could not determine home directory").
    """
    if environ.get("HOME"):
        return Path(environ["HOME"])
    try:
        return Path.home()
    except RuntimeError:
        raise ConfigError(f"$HOME is not set and user id {os.getuid()} has no home directory; {instead}") from None


def user_data_dir(environ=os.environ) -> Path:
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]) / "cryedge"
    return home("set $CRYEDGE_MODELS or $XDG_DATA_HOME for the models folder", environ) / ".local" / "share" / "cryedge"


def models_dir(environ=os.environ) -> Path:
    """Where fetched landmark bundles (and a user's own models) live; see the module docstring."""
    if environ.get("CRYEDGE_MODELS"):
        return Path(environ["CRYEDGE_MODELS"])
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "models"
    return user_data_dir(environ) / "models"


def landmarks_dir(environ=os.environ) -> Path:
    return models_dir(environ) / "landmarks"
