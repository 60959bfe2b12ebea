"""The MediaPipe Tasks bundles the landmark stage needs, built offline (``cryedge models fetch``).

mediapipe 1.2.x ships no model files and the model hubs may be out of reach, so by default the two
bundles are built from the Apache-2.0 ``.tflite`` files inside the pinned ``mediapipe`` 0.10.x wheel
(got with ``pip download``; every input pinned by sha256 in ``edge/data/landmark_sources.json``):

- ``face_landmarker.task``: the full-range face detector (the short-range one misses faces of a
  tenth of the frame width, a camera above a crib) and the 0.10.x face-landmark model "with
  attention", its own 10 iris points joined to its 468-point mesh output. 1.2.x decodes 478 points
  from output 0 while the 0.10.x models give 468 there, which unchanged yields scrambled points
  and no error. For mediapipe 0.10.x, the last line whose aarch64 wheels run on a Pi 4's ARMv8.0
  cores, the detector's outputs are regrouped into the short-range layout that 0.10.x decodes
  (``graph_edits.short_range_layout``): same network, same 192x192 input, same faces found; its
  sparse float16 weights folded into dense ones, which 0.10.18's aarch64 runtime reads correctly.
- ``pose_landmarker.task``: the pose detector and ``pose_landmark_full.tflite`` with the input
  normalization metadata ([0, 255] -> [0, 1]) that PoseLandmarker insists on, and without its
  segmentation-mask head, which cryedge never asks for (the output stays, as zeros).

Official bundles given with ``--face-bundle`` / ``--pose-bundle`` (a path or URL) are checked and
copied instead. The graph edits (``edge.bundles.graph_edits``) need no TensorFlow: this runs on a Pi
and in a Pi image build too. Builds are deterministic: the same inputs give byte-identical bundles.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import struct
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge import files, paths
from edge.bundles.digests import record_digests, sha256_of
from edge.bundles.graph_edits import (
    POSE_SEGMENTATION,
    add_image_normalization,
    append_iris_points,
    drop_dead_operators,
    fold_constant_operators,
    short_range_layout,
    zero_output,
)
from edge.errors import DataError, ModelError

log = logging.getLogger(__name__)

FACE_BUNDLE = "face_landmarker.task"
POSE_BUNDLE = "pose_landmarker.task"
# Member names MediaPipe 1.2.x's FaceLandmarker and PoseLandmarker look up in a bundle.
BUNDLE_MEMBERS = {
    FACE_BUNDLE: ("face_detector.tflite", "face_landmarks_detector.tflite"),
    POSE_BUNDLE: ("pose_detector.tflite", "pose_landmarks_detector.tflite"),
}
# Shipped inside the package: an installed cryedge (systemd/install.sh) builds bundles without a checkout.
SOURCES_FILE = paths.data_file("landmark_sources.json")
# Zip entries carry this date so a rebuild is byte-identical (the earliest a zip can say).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_ALIGN_EXTRA_ID = 0xD935  # the extra-field id Android's zipalign pads with
MEMBER_ALIGNMENT = 64
DETECTOR_LAYOUTS = ("full-range", "short-range")


@dataclass(frozen=True)
class Pins:
    """The pinned wheel for this machine and the sha256 of every file taken from it."""

    requirement: str
    wheel: str
    platform_tag: str
    wheel_sha256: str
    members: dict[str, dict[str, str]]  # name -> {"path": in the wheel, "sha256": ...}


def machine_key(machine: str | None = None) -> str:
    """``x86_64`` or ``aarch64``: which pinned wheel this platform uses."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    raise ModelError(f"no pinned mediapipe wheel for machine {machine!r}; pass --face-bundle and --pose-bundle")


def load_pins(machine: str | None = None, sources: Path = SOURCES_FILE) -> Pins:
    try:
        data = json.loads(sources.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read the landmark model pins {sources}: {error}") from None
    wheel = data["wheels"][machine_key(machine)]
    return Pins(wheel["requirement"], wheel["file"], wheel["platform"], wheel["sha256"], data["members"])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_cache(environ=os.environ) -> Path:
    """Where the wheel is kept by default: ``$XDG_CACHE_HOME/cryedge``, else ``~/.cache/cryedge``.

    Looked up when a wheel is needed, not at import (see ``paths.home``): only the command that needs it says so.
    """
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "cryedge"
    return paths.home("pass --cache DIR (or set $XDG_CACHE_HOME) for the mediapipe wheel", environ) / ".cache" / "cryedge"


def fetch_wheel(pins: Pins, cache: Path) -> Path:
    """The pinned wheel in ``cache``, downloaded with pip when absent; its sha256 is checked."""
    wheel = cache / pins.wheel
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--platform", pins.platform_tag, "--dest", str(cache), pins.requirement,
        ]
        log.info("downloading %s: %s", pins.requirement, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.exists():
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelError(f"pip could not download {pins.requirement} into {cache}: {detail[0]}")
    actual = sha256_of(wheel)
    if actual != pins.wheel_sha256:
        raise ModelError(
            f"{wheel} has sha256 {actual}, but {SOURCES_FILE.name} pins {pins.wheel_sha256}; "
            "delete it to download again, or check where it came from"
        )
    return wheel


def wheel_members(wheel: Path, pins: Pins) -> dict[str, bytes]:
    """The pinned .tflite files from the wheel, each checked against its sha256."""
    out = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, pin in pins.members.items():
            data = archive.read(pin["path"])
            actual = sha256_bytes(data)
            if actual != pin["sha256"]:
                raise ModelError(f"{pin['path']} in {wheel.name} has sha256 {actual}, pinned {pin['sha256']}")
            out[name] = data
    return out


def write_bundle(path: Path, members: dict[str, bytes]) -> str:
    """Write an uncompressed zip (Tasks memory-map the members) deterministically; its sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            # Pad the local header's extra field so the member's bytes start on a 64-byte
            # boundary: MediaPipe memory-maps members, and LiteRT wants aligned tensors.
            header_end = buffer.tell() + 30 + len(name.encode()) + 4
            padding = -header_end % MEMBER_ALIGNMENT
            info.extra = struct.pack("<HH", ZIP_ALIGN_EXTRA_ID, padding) + bytes(padding)
            archive.writestr(info, members[name])
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_bytes(path, data)  # a half-written bundle never sits under the real name
    return sha256_bytes(data)


def check_bundle(data: bytes, kind: str, origin: str) -> None:
    """A DataError unless ``data`` is an uncompressed zip holding the members ``kind`` needs."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = {info.filename: info for info in archive.infolist()}
    except zipfile.BadZipFile:
        raise DataError(f"{origin} is not a MediaPipe task bundle (not a zip file)") from None
    missing = [name for name in BUNDLE_MEMBERS[kind] if name not in infos]
    if missing:
        raise DataError(f"{origin} is not a {kind} bundle: it lacks {', '.join(missing)}")
    compressed = [name for name in BUNDLE_MEMBERS[kind] if infos[name].compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise DataError(f"{origin}: members {', '.join(compressed)} are compressed; MediaPipe needs them stored")


def read_path_or_url(source: str) -> bytes:
    if "://" in source:
        try:
            with urllib.request.urlopen(source, timeout=60) as response:
                return response.read()
        except OSError as error:
            raise DataError(f"cannot download {source}: {error}") from None
    try:
        return Path(source).expanduser().read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {source}: {error.strerror or error}") from None


def detector_layout(mediapipe_version: str | None = None) -> str:
    """"full-range" for mediapipe >= 1.0, "short-range" for 0.10.x (see ``short_range_layout``).

    Without a version, the installed mediapipe's: the bundles are built for the runtime that loads them.
    """
    if mediapipe_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            mediapipe_version = version("mediapipe")
        except PackageNotFoundError:
            raise ModelError("mediapipe is not installed; install cryedge's runtime first") from None
    return "short-range" if mediapipe_version.startswith("0.") else "full-range"


def build_bundles(tflites: dict[str, bytes], layout: str = "full-range") -> dict[str, dict[str, bytes]]:
    """The members of both bundles from the wheel's pinned .tflite files. Pure: bytes in, bytes out.

    ``layout`` is the face detector's output layout the installed mediapipe decodes (``detector_layout``).
    """
    if layout not in DETECTOR_LAYOUTS:
        raise ValueError(f"layout must be one of {DETECTOR_LAYOUTS}, not {layout!r}")
    detector = tflites["face_detection_full_range_sparse.tflite"]
    return {
        FACE_BUNDLE: {
            "face_detector.tflite": (
                short_range_layout(fold_constant_operators(detector)) if layout == "short-range" else detector
            ),
            "face_landmarks_detector.tflite": append_iris_points(tflites["face_landmark_with_attention.tflite"]),
        },
        POSE_BUNDLE: {
            "pose_detector.tflite": tflites["pose_detection.tflite"],
            "pose_landmarks_detector.tflite": add_image_normalization(
                drop_dead_operators(zero_output(tflites["pose_landmark_full.tflite"], POSE_SEGMENTATION)),
                name="pose_landmark_full",
            ),
        },
    }


def fetch(
    output: Path, cache: Path | None = None, face_bundle: str | None = None, pose_bundle: str | None = None,
    machine: str | None = None, layout: str | None = None,
) -> dict[str, str]:
    """Write both bundles into ``output``; returns {bundle path: sha256}.

    ``cache``: where the wheel is kept (None: ``default_cache()``, looked up only when a bundle is built).
    ``layout``: the face detector layout (default: what the installed mediapipe decodes).
    """
    given = {FACE_BUNDLE: face_bundle, POSE_BUNDLE: pose_bundle}
    written = {}
    built = None
    for kind, source in given.items():
        target = output / kind
        if source:
            data = read_path_or_url(source)
            check_bundle(data, kind, source)
            target.parent.mkdir(parents=True, exist_ok=True)
            files.write_bytes(target, data)
            written[str(target)] = sha256_bytes(data)
            continue
        if built is None:
            pins = load_pins(machine)
            wheel = fetch_wheel(pins, cache if cache is not None else default_cache())
            built = build_bundles(wheel_members(wheel, pins), layout or detector_layout())
        written[str(target)] = write_bundle(target, built[kind])
    record_digests(output, {Path(path).name: digest for path, digest in written.items()})
    return written
