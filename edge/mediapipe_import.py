"""``import mediapipe`` for the device: without TensorFlow, and with the parts cryedge never uses deferred.

Used by the landmark stage and by the bundle builder (whose flatbuffer schemas ship in mediapipe).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys

from edge import native

# Parts of mediapipe that ``import mediapipe`` runs and cryedge never uses, loaded only on first use:
# the vision drawing helpers import matplotlib.pyplot (0.3 s and 36 MiB of RSS measured at import);
# the audio tasks import sounddevice, which loads PortAudio where it is installed; the text tasks.
# Audio and text together measured 2 MiB here, without PortAudio.
DEFERRED_MODULES = frozenset({
    "mediapipe.tasks.python.vision.drawing_utils",
    "mediapipe.tasks.python.vision.drawing_styles",
    "mediapipe.tasks.python.audio",
    "mediapipe.tasks.python.text",
    # mediapipe 0.10.x (the Pi 4's line): its legacy solutions' drawing helpers import matplotlib
    "mediapipe.python.solutions.drawing_utils",
    "mediapipe.python.solutions.drawing_styles",
})


class _LeanMediapipeImport(importlib.abc.MetaPathFinder):
    """Keeps TensorFlow out of ``import mediapipe`` and defers the ``DEFERRED_MODULES``.

    mediapipe's optional_dependencies imports TensorFlow merely for documentation decorators when
    it is installed (a host with the convert extra), costing seconds and hundreds of MB. The deferred
    modules are loaded lazily (``importlib.util.LazyLoader``): still importable, and executed on
    first use of one of their names.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of mediapipe by cryedge)", name=name)
        if name in DEFERRED_MODULES:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = importlib.util.LazyLoader(spec.loader)
            return spec
        return None  # not ours: the next finder looks


def import_mediapipe():
    """``import mediapipe`` without TensorFlow and with the unused parts deferred; all stay importable.

    The first time: an InstallError, not SIGILL, when this CPU cannot run the installed build, and one
    line naming the Debian package when a system library that mediapipe or cv2 links is missing.
    """
    if "mediapipe" in sys.modules:
        import mediapipe

        return mediapipe
    native.check_cpu_runs_mediapipe()
    finder = None if "tensorflow" in sys.modules else _LeanMediapipeImport()
    if finder:
        sys.meta_path.insert(0, finder)
    try:
        import mediapipe
    except (ImportError, OSError) as error:
        raise native.missing_library_error(error, "mediapipe") or error from None
    finally:
        if finder:
            sys.meta_path.remove(finder)
    return mediapipe
