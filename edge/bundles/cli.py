"""``cryedge models fetch``: build or copy the MediaPipe bundles the landmark stage needs."""

from __future__ import annotations

from pathlib import Path

from edge import paths
from edge.bundles.build import fetch
from edge.errors import CryedgeError


def _fetch_command(args) -> int:
    output = Path(args.output) if args.output else paths.landmarks_dir()
    try:
        output.mkdir(parents=True, exist_ok=True)  # before a bundle is built: a folder that cannot be made fails now
        written = fetch(output, Path(args.cache) if args.cache else None, args.face_bundle, args.pose_bundle)
    except PermissionError as error:
        raise CryedgeError(f"cannot write into {output}: {error.strerror}; pass --output DIR") from None
    for path, digest in written.items():
        print(f"{path}  sha256 {digest}")
    return 0


def add_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="landmark model bundles")
    commands = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    fetch_parser = commands.add_parser(
        "fetch", help="build or copy face_landmarker.task and pose_landmarker.task",
        description="Without bundle options, build both bundles offline from the pinned mediapipe wheel's "
        "Apache-2.0 models (downloaded with pip into the cache, checked by sha256).",
    )
    fetch_parser.add_argument("--output", metavar="DIR", help="where the bundles go (default: <models>/landmarks, where the daemon reads them; <models> is "
                              "$CRYEDGE_MODELS, this checkout's models/ or $XDG_DATA_HOME/cryedge/models)")
    fetch_parser.add_argument("--cache", metavar="DIR", help="where the wheel is kept (default: $XDG_CACHE_HOME/cryedge or ~/.cache/cryedge)")
    fetch_parser.add_argument("--face-bundle", metavar="PATH_OR_URL", help="use this official face_landmarker.task")
    fetch_parser.add_argument("--pose-bundle", metavar="PATH_OR_URL", help="use this official pose_landmarker.task")
    fetch_parser.set_defaults(handler=_fetch_command)

