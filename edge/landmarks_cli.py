"""``cryedge landmarks``: a photo's or a video's OpenPose-layout points, printed or drawn.

A tool for people checking what the landmark stage sees; the stage itself is ``edge.landmarks``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge import files, paths
from edge.errors import ConfigError, DataError
from edge.landmarks import SUBJECTS, LandmarkExtractor, landmarks_of_photo
from edge.records import Frame, Landmarks

DEMO_PHOTO = "astronaut.jpg"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8; a DataError when it is missing or not an image."""
    import cv2

    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image or a video")
    if not path.is_file():
        raise DataError(f"no such image or video: {path}")
    # read by Python, decoded by OpenCV: imread crashed the process on a name that is not UTF-8
    try:
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # a header that claims more pixels than OpenCV decodes (99999 x 99999): exit 70 before
        bgr = None
    if bgr is None:
        raise DataError(f"cannot read {path} as an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def subject_points(landmarks: Landmarks, spec) -> dict:
    """The subject's face70 and body8 points in pixels (None where absent) and its feature vector."""
    from edge.features import frame_features, keypoints

    xy, present = keypoints(landmarks, spec)
    n_face = len(spec.face_points)
    as_list = [[round(float(x), 2), round(float(y), 2)] if ok else None for (x, y), ok in zip(xy, present, strict=True)]
    return {
        "face70": as_list[:n_face],
        "body8": as_list[n_face:],
        "features": [round(float(v), 5) for v in frame_features(landmarks, spec)],
    }


def draw_points(image: np.ndarray, points: dict) -> np.ndarray:
    """``image`` (RGB) with face70 points in green and body8 points in magenta, each numbered."""
    import cv2

    canvas = np.ascontiguousarray(image[:, :, ::-1].copy())
    scale = max(image.shape[:2]) / 1000
    # BGR colours: face green, small; body magenta, larger, with a dark rim to stand out on any cloth.
    for group, colour, radius, font in (("face70", (60, 220, 80), 2, 0.3), ("body8", (255, 0, 255), 5, 0.5)):
        radius = max(radius, int(radius * scale))
        for i, point in enumerate(points[group]):
            if point is None:
                continue
            x, y = int(round(point[0])), int(round(point[1]))
            cv2.circle(canvas, (x, y), radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(canvas, (x, y), radius, colour, -1, cv2.LINE_AA)
            cv2.putText(canvas, str(i), (x + radius + 1, y - radius - 1), cv2.FONT_HERSHEY_SIMPLEX, font * max(scale, 1),
                        colour, 1, cv2.LINE_AA)
    return canvas[:, :, ::-1]


def _summary(source: str, landmarks: Landmarks, points: dict) -> str:
    face = sum(p is not None for p in points["face70"])
    body = sum(p is not None for p in points["body8"])
    lines = [f"{source}: {landmarks.width}x{landmarks.height}"]
    if landmarks.face_box is not None:
        x0, y0, x1, y1 = landmarks.face_box
        lines.append(f"  face: {face}/70 points, box {x0:.0f},{y0:.0f}-{x1:.0f},{y1:.0f} ({x1 - x0:.0f} px wide)")
    else:
        lines.append("  face: none found")
    lines.append(f"  body: {body}/8 points" + ("" if landmarks.has_pose else " (no pose found)"))
    for name, index in (("right pupil", 68), ("left pupil", 69)):
        point = points["face70"][index]
        if point is not None:
            lines.append(f"  {name}: {point[0]:.1f}, {point[1]:.1f}")
    lines.append(f"  features: {len(points['features'])} values")
    return "\n".join(lines)


def _video_frames(path: Path) -> Iterator[Frame]:
    from edge.errors import SourceError
    from edge.source import FileSource

    source = FileSource(path, realtime=False)
    try:
        source.open()
    except SourceError as error:
        raise DataError(str(error)) from None
    try:
        while (frame := source.read()) is not None:
            yield frame
    finally:
        source.close()


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction of the frame (0 to 1)")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:  # MediaPipe's graph refuses 0 with a message about its calculators, read as a broken bundle
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def _landmarks_command(args) -> int:
    import cv2

    from edge.features import get_spec

    if args.roi and not (args.roi[0] < args.roi[2] and args.roi[1] < args.roi[3]):
        raise ConfigError("--roi X0 Y0 X1 Y1: the crop's left must be left of its right (x0 < x1) and its top "
                          "above its bottom (y0 < y1)")
    spec = get_spec(args.spec, args.normalization)
    path = Path(args.source) if args.source else paths.data_file(DEMO_PHOTO)
    options = {
        "pose": not args.no_pose,
        "subject": args.subject,
        "roi": tuple(args.roi) if args.roi else None,
        "num_faces": args.num_faces,
        "num_poses": args.num_faces,
    }
    if path.suffix.lower() in VIDEO_SUFFIXES:
        if args.draw:  # was ignored: exit 0 and no picture
            raise ConfigError(f"--draw {args.draw}: draws on a photo, and {path} is a video")
        if not path.is_file():
            raise DataError(f"no such image or video: {path}")
        with LandmarkExtractor(mode="video", **options) as extractor:
            count = faces = 0
            for frame in _video_frames(path):
                landmarks = extractor.extract(frame)
                points = subject_points(landmarks, spec)
                count, faces = count + 1, faces + landmarks.has_face
                if args.json:
                    print(json.dumps({"frame": frame.index, **points}), flush=True)
        if count == 0:
            raise DataError(f"{path} has no frames")
        if not args.json:
            print(f"{path}: {count} frames, a face in {faces}")
        return 0

    image = read_image(path)
    landmarks = landmarks_of_photo(image, **options)
    points = subject_points(landmarks, spec)
    print(json.dumps(points) if args.json else _summary(str(path), landmarks, points))
    drawn = np.ascontiguousarray(draw_points(image, points)[:, :, ::-1]) if args.draw else None
    if drawn is not None:
        # encoded here and written by Python, so a folder that is a file, a read-only or full disk
        # is an OSError that names the path and the reason (imwrite only returns False)
        try:
            encoded, picture = cv2.imencode(Path(args.draw).suffix or ".png", drawn)
        except cv2.error:
            encoded = False
        if not encoded:
            raise DataError(f"cannot write {args.draw}: no picture format for its suffix (give .png or .jpg)")
        files.write_bytes(Path(args.draw), picture.tobytes())
    return 0


def add_commands(subparsers) -> None:
    from edge.features import NORMALIZATIONS, SPECS

    parser = subparsers.add_parser(
        "landmarks", help="print the OpenPose-layout points of a photo or video",
        description="Face70 (iBUG-68 + pupils) and body8 (BODY_25 0-7) points of the subject, in pixels, "
        "and the feature vector. Without SOURCE: a bundled photo.",
    )
    parser.add_argument("source", nargs="?", metavar="IMAGE_OR_VIDEO", help="a photo or a video file")
    parser.add_argument("--json", action="store_true", help="JSON (one line a frame for a video)")
    parser.add_argument("--draw", metavar="OUT.png", help="write the photo with the points drawn and numbered (photos only)")
    parser.add_argument("--spec", default="openpose-face70-body8", choices=sorted(SPECS))
    parser.add_argument("--normalization", default="minmax", choices=NORMALIZATIONS)
    parser.add_argument("--subject", default="largest", choices=SUBJECTS, help="which face is the subject")
    parser.add_argument("--num-faces", type=_count, default=4, metavar="N",
                        help="faces (and poses) to find and choose the subject among (default: %(default)s)")
    parser.add_argument("--roi", nargs=4, type=_fraction, metavar=("X0", "Y0", "X1", "Y1"), help="crop (fractions) before detection")
    parser.add_argument("--no-pose", action="store_true", help="face only")
    parser.set_defaults(handler=_landmarks_command)
