"""Face and body detection rate and landmark agreement on the condition suite, with and without the exposure stage.

Usage: python benchmarks/exposure.py SUITE_DIR [--frames N]
Agreement: mean distance of the 478 face points to the colour clip's points of the same frame, in
units of the outer-eye-corner distance (NME), over frames where both found a face.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.exposure import ExposureStage
from edge.landmarks import LandmarkExtractor
from edge.records import Frame

METHODS = {
    "none": None,
    "gamma": dict(clahe_clip=0.0001),
    "gamma+clahe": dict(),
}


def frames_of(path: Path, limit: int):
    capture = cv2.VideoCapture(str(path))
    out = []
    while len(out) < limit:
        ok, bgr = capture.read()
        if not ok:
            break
        out.append(bgr[:, :, ::-1].copy())
    capture.release()
    return out


def run(frames, stage):
    faces, bodies, points, lifted = [], [], [], 0
    with LandmarkExtractor(mode="video", pose_every=2) as extractor:
        for i, image in enumerate(frames):
            if stage is not None:
                image, exposure = stage.process(image)
                lifted += exposure.conditioned
            landmarks = extractor.extract(Frame(image, i / 15, i))
            faces.append(landmarks.has_face)
            bodies.append(landmarks.has_pose)
            points.append(landmarks.face)
    return np.array(faces), np.array(bodies), points, lifted


def nme(a, b):
    eye = np.linalg.norm(b[33] - b[263])
    return float(np.linalg.norm(a[:468] - b[:468], axis=1).mean() / eye)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--subject", action="append", default=None)
    parser.add_argument("--condition", action="append", default=None)
    args = parser.parse_args(argv)
    subjects = args.subject or ["grace-hopper", "lfw-90"]
    conditions = args.condition or ["grey", "dark-50", "dark-25", "dark-12", "noise", "glare"]
    print("| subject | condition | method | brightness | lifted | face | body | NME vs colour |")
    print("|---|---|---|---|---|---|---|---|")
    for subject in subjects:
        reference = run(frames_of(args.suite / f"{subject}-cry-colour.mp4", args.frames), None)[2]
        for condition in conditions:
            frames = frames_of(args.suite / f"{subject}-cry-{condition}.mp4", args.frames)
            brightness = np.mean([float(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).mean()) for f in frames])
            for method, options in METHODS.items():
                stage = None if options is None else ExposureStage(**options)
                faces, bodies, points, lifted = run(frames, stage)
                errors = [nme(p, r) for p, r in zip(points, reference, strict=False) if p is not None and r is not None]
                agreement = f"{np.median(errors):.3f}" if errors else "-"
                print(f"| {subject} | {condition} | {method} | {brightness:.0f} | {lifted}/{len(frames)} | "
                      f"{faces.mean():.0%} | {bodies.mean():.0%} | {agreement} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
