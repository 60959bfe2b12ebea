"""Synthetic footage: real photos animated into labelled expressions, the same frames for the same seed."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from convert import synth


@pytest.fixture(scope="module")
def astronaut():
    return synth.load_photo("astronaut")


def test_photos_have_68_points_on_the_face(astronaut):
    assert astronaut.points.shape == (68, 2)
    # scikit-image's astronaut: the face is in the upper middle of the 512x512 photo
    x0, y0 = astronaut.points.min(axis=0)
    x1, y1 = astronaut.points.max(axis=0)
    assert 150 < x0 < x1 < 300 and 60 < y0 < y1 < 200
    mirrored = synth.load_photo("astronaut", mirror=True)
    assert mirrored.subject == "astronaut-mirror"
    assert abs(mirrored.points[:, 0].mean() - (511 - astronaut.points[:, 0].mean())) < 3


def test_same_seed_same_frames_other_seed_other_frames(astronaut):
    segments = [("neutral", 0.4), ("crying", 0.6)]
    first = [frame for frame, _ in synth.render_clip(astronaut, segments, seed=11)]
    again = [frame for frame, _ in synth.render_clip(astronaut, segments, seed=11)]
    other = [frame for frame, _ in synth.render_clip(astronaut, segments, seed=12)]
    assert len(first) == len(again) == 15
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[-1], other[-1])
    assert first[0].shape == (480, 640, 3) and first[0].dtype == np.uint8


def test_frames_carry_the_labels_of_their_segments(astronaut):
    segments = [("neutral", 1.0), ("crying", 2.0), ("laughing", 1.0)]
    labels = [label for _, label in synth.render_clip(astronaut, segments, seed=1, fps=10)]
    assert labels == ["neutral"] * 10 + ["crying"] * 20 + ["laughing"] * 10
    assert synth.label_intervals(labels, 10) == [(0.0, 1.0, "neutral"), (1.0, 3.0, "crying"), (3.0, 4.0, "laughing")]


def test_crying_opens_the_mouth_shuts_the_eyes_and_pulls_corners_down(astronaut):
    rng = np.random.default_rng(0)
    crying = synth.expression_track("crying", 30, 15, rng).frame(15)
    laughing = synth.expression_track("laughing", 30, 15, rng).frame(15)
    e = astronaut.eye_distance
    for params, sign in ((crying, 1), (laughing, -1)):
        moved = synth.expression_points(astronaut.points, params, e)
        assert moved[66, 1] - moved[62, 1] > 0.3 * e  # inner lips apart
        level = synth.expression_points(astronaut.points, {**params, "corners": 0.0}, e)
        # corners below (crying) or above (laughing) where the same open mouth would put them
        assert sign * (moved[[48, 54], 1] - level[[48, 54], 1]).min() > 0.1 * e
    shut = synth.expression_points(astronaut.points, crying, e)
    assert (shut[41, 1] - shut[37, 1]) < 0.3 * (astronaut.points[41, 1] - astronaut.points[37, 1])


def test_generate_writes_readable_clips_and_interval_labels(tmp_path):
    plans = [synth.ClipPlan("a", "astronaut", False, (("neutral", 0.5), ("crying", 0.5)), seed=3, subject="astronaut")]
    labels_csv = synth.generate(tmp_path, plans, fps=10)
    with labels_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["video"], float(r["start_s"]), float(r["end_s"]), r["label"], r["subject"]) for r in rows] == [
        ("a.mp4", 0.0, 0.5, "neutral", "astronaut"), ("a.mp4", 0.5, 1.0, "crying", "astronaut")]
    capture = cv2.VideoCapture(str(tmp_path / "a.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 10


def test_plans_are_deterministic_and_mostly_about_crying():
    plans = synth.plan_clips([("astronaut", False), ("grace-hopper", True)], 3, 12.0, seed=5)
    assert plans == synth.plan_clips([("astronaut", False), ("grace-hopper", True)], 3, 12.0, seed=5)
    assert {p.subject for p in plans} == {"astronaut", "grace-hopper-mirror"}
    seconds = {}
    for plan in plans:
        assert plan.segments[0][0] == "neutral"
        for kind, length in plan.segments:
            seconds[kind] = seconds.get(kind, 0) + length
    assert set(seconds) <= set(synth.EXPRESSIONS)
    assert seconds.get("crying", 0) > 0.2 * sum(seconds.values())
