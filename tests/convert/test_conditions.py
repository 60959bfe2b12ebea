"""The SYNTHETIC condition suite: held-out faces only, seeded, each condition doing what its name says."""

from __future__ import annotations

import numpy as np
import pytest
from taps import record_published

from convert import conditions, demo, synth
from edge.errors import DataError


@pytest.fixture(scope="module")
def frame_and_points():
    photo = synth.load_photo("grace-hopper")
    image, _, points = next(synth.render_clip(photo, [("neutral", 0.2)], seed=3, vary_identity=False, with_points=True))
    return image, points


def test_the_suite_never_uses_a_face_the_default_model_trained_on(tmp_path):
    assert not set(demo.SUITE_PHOTOS) & set(demo.TRAIN_PHOTOS)
    assert not any(photo.startswith(tuple(p.rstrip("*") for p in demo.HOLDOUT)) for photo in demo.TRAIN_PHOTOS)
    with pytest.raises(DataError, match="trained on this face"):
        conditions.build_suite(tmp_path, ("astronaut",))


def test_the_suite_faces_are_in_no_clip_of_the_demo_build_not_even_to_choose_the_model():
    """The suite judged a model whose architecture its face (Grace Hopper, then held out as "test") had chosen."""
    faces = {name: {plan.photo for plan in plans} for name, plans in demo.clip_sets(1, 2.0).items()}
    training = set().union(*(photos for name, photos in faces.items() if name != "validation"))
    assert training == set(demo.TRAIN_PHOTOS) and faces["validation"] == set(demo.VALIDATION_PHOTOS)
    assert not training & faces["validation"]
    assert not set(demo.SUITE_PHOTOS) & (training | faces["validation"])
    assert all(pattern.rstrip("*").rstrip("-") in faces["validation"] for pattern in demo.HOLDOUT)
    # LFW repeats people: faces whose dlib descriptors lie near a suite or validation face train on nothing
    assert not {"lfw-00", "lfw-36", "lfw-68", "lfw-21", "lfw-61"} & training


def test_the_plan_is_the_same_every_time_and_covers_every_condition_and_hard_negative():
    plans = conditions.plan_suite(("grace-hopper", "lfw-90"))
    assert plans == conditions.plan_suite(("grace-hopper", "lfw-90"))
    cries = [p for p in plans if p.kind == "cry"]
    assert {p.condition for p in cries} == set(conditions.CONDITIONS)
    negatives = [p for p in plans if p.kind == "hard-negative"]
    assert {p.story[1][0] for p in negatives} == set(conditions.HARD_NEGATIVE_KINDS)
    assert {p.condition for p in negatives if p.subject == "grace-hopper"} == {"colour", conditions.NIGHT}


def test_night_conditions_are_grey_and_darker_with_noise(frame_and_points):
    image, points = frame_and_points
    rng = np.random.default_rng(0)
    means = {}
    for name in ("grey", "dark-50", "dark-25", "dark-12"):
        out = conditions.CONDITIONS[name](image, points, 0.0, rng)
        assert out.shape == image.shape and (out[..., 0] == out[..., 2]).all()
        means[name] = out.mean()
    assert means["grey"] > means["dark-50"] > means["dark-25"] > means["dark-12"] > 0


def test_body_hidden_covers_everything_below_the_chin_and_face_away_only_for_a_while(frame_and_points):
    image, points = frame_and_points
    rng = np.random.default_rng(0)
    covered = conditions.body_hidden(image, points, 0.0, rng)
    chin = int(points[8, 1])
    np.testing.assert_array_equal(covered[: chin - 5], image[: chin - 5])
    assert covered[chin + 40 :, :, 0].std() < 6  # a plain blanket, no shoulders
    assert conditions.face_away(image, points, 1.0, rng) is image
    away = conditions.face_away(image, points, sum(conditions.FACE_AWAY_S) / 2, rng)
    x0, y0 = points.min(axis=0).astype(int)
    x1, y1 = points.max(axis=0).astype(int)
    assert not np.array_equal(away[y0:y1, x0:x1], image[y0:y1, x0:x1])


def test_new_hard_negatives_are_rendered_with_their_labels():
    photo = synth.load_photo("lfw-03")
    assert photo.image.shape == (200, 200, 3) and photo.points.shape == (68, 2)
    frames = list(synth.render_clip(photo, [("sleeping", 0.4), ("pacifier", 0.4), ("coughing", 0.4), ("sneezing", 0.4)],
                                    seed=2, fps=10))
    assert [label for _, label in frames] == ["sleeping"] * 4 + ["pacifier"] * 4 + ["coughing"] * 4 + ["sneezing"] * 4


def test_the_fused_section_hides_the_face_for_the_whole_cry_and_gives_every_clip_a_sound_plan(frame_and_points):
    image, points = frame_and_points
    rng = np.random.default_rng(0)
    plans = conditions.plan_suite(("grace-hopper", "lfw-90"), vision=False, sound=True)
    assert plans == conditions.plan_suite(("grace-hopper", "lfw-90"), vision=False, sound=True)
    assert all(p.sound for p in plans)
    cries = [p for p in plans if p.kind == "cry"]
    assert {p.condition for p in cries} == set(conditions.SOUND_CRY_CONDITIONS)
    assert all(any(e.kind == "crying" and (e.start, e.end) == conditions.CRY_SPAN_S for e in p.sound) for p in cries)
    negatives = [p for p in plans if p.kind == "hard-negative"]
    assert {e.kind for p in negatives for e in p.sound} >= {"speech", "music", "white_noise", "tv"}
    assert not any(e.kind == "crying" for p in negatives for e in p.sound)
    # the face is out of frame, or under a blanket, for the whole cry: MediaPipe finds no face
    from edge.landmarks import LandmarkExtractor
    from edge.records import Frame

    with LandmarkExtractor(pose=False, mode="image") as extractor:
        assert extractor.extract(Frame(image, 0.0, 0)).has_face
        for hide in (conditions.face_turned, conditions.face_covered_night):
            for t in (conditions.CRY_SPAN_S[0], sum(conditions.CRY_SPAN_S) / 2, conditions.CRY_SPAN_S[1] - 0.01):
                assert not extractor.extract(Frame(hide(image, points, t, rng), t, 0)).has_face, (hide.__name__, t)
    assert conditions.face_turned(image, points, conditions.CRY_SPAN_S[1], rng) is image


def record_decided(daemon, events: list) -> None:
    """Every event ``daemon`` publishes, kept with when it was decided: the newest fused score's time then."""
    publish_event = daemon.publisher.publish_event
    daemon.publisher.publish_event = lambda e: (events.append((e, daemon.hearing.last.score.t)), publish_event(e))


@pytest.mark.slow
def test_a_cry_heard_with_the_face_turned_away_is_decided_within_a_second_and_a_half(tmp_path):
    """The daemon's own path (default vision and audio models, real TFLite graphs) on two fused suite clips."""
    import shutil

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    from edge.config import load_config
    from edge.daemon import Daemon

    cry, talk = "grace-hopper-cry-heard-face-turned", "grace-hopper-talking-sound-speech"
    conditions.build_suite(tmp_path, ("grace-hopper",), vision=False, sound=True, only={cry, talk})
    seen = {}
    for name in (cry, talk):
        config = load_config(None, {"source": {"uri": str(tmp_path / f"{name}.mp4"), "realtime": False},
                                    "health": {"enabled": False}, "outbox": {"path": str(tmp_path / "outbox.sqlite3")}})
        daemon = Daemon(config)
        events, states = [], []
        with daemon:
            record_decided(daemon, events)
            record_published(daemon.publisher, states=states)
            assert daemon.run() == 0
            origin = daemon.source.status.first_frame_t
        seen[name] = [(e.kind, round(e.t - origin, 2), round(decided - origin, 2), e.reason) for e, decided in events]
        if name == cry:
            assert "no_face" in [s.senses and s.senses["vision"]["status"] for s in states]
    assert seen[talk] == []  # a face that talks over speech: no alarm
    (kind, start, decided, _), (end_kind, end, _, reason) = seen[cry]
    a, b = conditions.CRY_SPAN_S
    assert kind == "start" and a - 0.5 <= start and decided <= a + 1.5
    assert end_kind == "end" and reason == "scores" and b <= end <= b + 1.5


def test_suite_build_checks_every_photo_and_the_output_before_the_first_clip(tmp_path):
    """``--photo lfw-90 --photo nope`` rendered lfw-90's 23 clips (minutes) and then stopped on 'nope', a suite
    without labels.csv left behind; an OUTPUT_DIR that is a file said only "File exists"."""
    import subprocess
    import sys
    from pathlib import Path

    cryedge = Path(sys.executable).with_name("cryedge")
    out = tmp_path / "suite"
    done = subprocess.run([str(cryedge), "suite", "build", str(out), "--photo", "lfw-90", "--photo", "lfw-100"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == DataError.exit_code and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == ["cryedge: unknown photo 'lfw-100'; known: astronaut, grace-hopper, lfw-NN "
                                        "(NN below 100)"]
    assert not out.exists()
    a_file = tmp_path / "suite.txt"
    a_file.write_text("notes\n")
    done = subprocess.run([str(cryedge), "suite", "build", str(a_file), "--photo", "lfw-90"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # as every output that cannot be written (models fetch --output FILE too)
    assert done.stderr.splitlines() == [
        f"cryedge: cannot write into {a_file}: it is a file"]
    assert a_file.read_text() == "notes\n"


def test_a_photo_given_twice_is_one_subject(tmp_path):
    """Its clips were rendered twice under the same names and listed twice in labels.csv: each cry counted twice."""
    clip = "lfw-90-cry-blur"
    once = conditions.build_suite(tmp_path / "once", ("lfw-90",), only={clip})
    twice = conditions.build_suite(tmp_path / "twice", ("lfw-90", "lfw-90"), only={clip})
    assert twice.read_text() == once.read_text() and once.read_text().count(",crying,") == 1
