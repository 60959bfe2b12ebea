"""``cryedge eval``: event-level figures of a model on labelled footage, through the daemon's own pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest
from seams import FAILING_LANDMARKER

from convert.dataset import read_interval_labels
from convert.evaluate import match_episodes, merge_intervals, poisson_interval, wilson_interval
from edge import paths
from edge.errors import DataError

DEMO = paths.data_file("demo.mp4")


def cut(src, dst, first: int, last: int, dark: range = range(0)) -> None:
    """Frames [first, last) of ``src`` re-encoded to ``dst`` (a short real clip); those numbered in ``dark`` black,
    as a night with the illuminator off."""
    capture = cv2.VideoCapture(str(src))
    fps = capture.get(cv2.CAP_PROP_FPS)
    writer = None
    for index in range(last):
        ok, bgr = capture.read()
        assert ok
        if index < first:
            continue
        if writer is None:
            writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (bgr.shape[1], bgr.shape[0]))
        writer.write(bgr * 0 if index in dark else bgr)
    writer.release()
    capture.release()


@pytest.fixture(scope="module")
def demo_cut(tmp_path_factory):
    """3-20 s of the demo clip: neutral 2 s, crying 9 s, talking 3 s, neutral 3 s (its truth, shifted)."""
    folder = tmp_path_factory.mktemp("footage")
    cut(DEMO, folder / "cut.mp4", 45, 300)
    (folder / "labels.csv").write_text("video,start_s,end_s,label\ncut.mp4,0,2,neutral\ncut.mp4,2,11,crying\n"
                                       "cut.mp4,11,14,talking\ncut.mp4,14,17,neutral\n")
    return folder


def cryedge(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_a_found_cry_has_its_start_and_end_errors_and_no_false_alarm():
    match = match_episodes([(5.0, 14.0)], [(5.8, 14.9)])
    assert (match.cries, match.found, match.missed, match.false_alarms) == (1, 1, 0, 0)
    assert match.start_errors == [0.8] and match.end_errors == [0.9]
    assert match.false_alarm_seconds == 0.0  # the 0.9 s overrun is within the tolerance


def test_an_episode_away_from_every_cry_is_a_false_alarm_and_a_cry_without_one_is_missed():
    match = match_episodes([(30.0, 40.0)], [(2.0, 8.0), (30.5, 45.0)], tolerance=1.5)
    assert (match.found, match.missed, match.false_alarms) == (1, 0, 1)
    assert match.false_alarm_seconds == pytest.approx(6.0 + 3.5)  # the whole false one, the overrun past 41.5 s
    missed = match_episodes([(30.0, 40.0)], [])
    assert (missed.found, missed.missed, missed.start_errors) == (0, 1, [])


def test_touching_truth_intervals_are_one_cry():
    assert merge_intervals([(5, 7), (0, 2), (2, 3)]) == [(0, 3), (5, 7)]


@pytest.mark.parametrize(("count", "low", "high"), [(0, 0.0, 3.689), (1, 0.0253, 5.572), (2, 0.242, 7.225),
                                                    (10, 4.795, 18.39), (13, 6.922, 22.23)])
def test_the_false_alarm_rate_interval_is_the_exact_poisson_one(count, low, high):
    """The published exact (Garwood) 95% limits: 13 false alarms could as well come from a rate 0.5 or 1.7 times it."""
    assert poisson_interval(count) == pytest.approx((low, high), abs=5e-4)


def test_the_found_share_interval_is_wilsons():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # none of 10 found: still up to 28%
    assert wilson_interval(177, 182) == pytest.approx((0.9373, 0.9882), abs=1e-4)
    assert wilson_interval(5, 5)[1] == 1.0 and wilson_interval(0, 0) is None


def test_a_video_is_filmed_in_one_condition(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("video,start_s,end_s,label,condition\na.mp4,0,2,crying,night\na.mp4,2,4,neutral,night\n"
                      "b.mp4,0,1,neutral,\n")
    read = read_interval_labels(labels, "not_crying")
    assert (read["a.mp4"].condition, read["b.mp4"].condition) == ("night", None)
    labels.write_text("video,start_s,end_s,label,condition\na.mp4,0,2,crying,night\na.mp4,2,4,neutral,day\n")
    with pytest.raises(DataError, match="condition 'day' for a.mp4, which an earlier row gives 'night'"):
        read_interval_labels(labels, "not_crying")


@pytest.mark.slow
def test_eval_gives_its_figures_per_condition_with_how_sure_they_are(demo_cut, tmp_path):
    """A suite's labels say where each clip was filmed: the totals alone hid a model that breaks at night."""
    folder = tmp_path / "footage"
    folder.mkdir()
    (folder / "cry.mp4").symlink_to(demo_cut / "cut.mp4")
    cut(DEMO, folder / "calm.mp4", 0, 45)  # 3 s of the demo's neutral start
    (folder / "labels.csv").write_text(
        "video,start_s,end_s,label,condition\ncry.mp4,0,2,neutral,colour\ncry.mp4,2,11,crying,colour\n"
        "cry.mp4,11,17,talking,colour\ncalm.mp4,0,3,neutral,hard-negative\n")
    out = tmp_path / "report"
    result = cryedge("eval", folder, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "eval.json").read_text())
    colour, negative = report["by_condition"]["colour"], report["by_condition"]["hard-negative"]
    assert (colour["clips"], colour["cries"], colour["found"], colour["false_alarms"]) == (1, 1, 1, 0)
    assert (negative["clips"], negative["cries"], negative["false_alarms"]) == (1, 0, 0)
    assert colour["found_share_ci95"] == pytest.approx([0.2065, 1.0], abs=1e-4)  # one cry of one says little
    assert report["total"]["false_alarms_per_hour_ci95"][1] > 600  # 0 in 20 s: up to 3.7 in 20 s
    table = (out / "eval.md").read_text()
    assert "In all: cries found 1 of 1 (100%, 21-100%); false alarms 0 (0.0/h, 0.0-" in table
    assert "| colour | 1 | 17 | 1 of 1 (100%, 21-100%) |" in table
    assert "| hard-negative | 1 | 3 | 0 of 0 |" in table


@pytest.mark.slow
def test_eval_of_a_real_clip_gives_the_episodes_cryedge_run_gives(demo_cut, tmp_path):
    out = tmp_path / "report"
    result = cryedge("eval", demo_cut, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| **total** (1 clips)" in result.stdout
    report = json.loads((out / "eval.json").read_text())
    clip, total = report["clips"][0], report["total"]
    assert (total["cries"], total["found"], total["missed"], total["false_alarms"]) == (1, 1, 0, 0)
    assert abs(clip["match"]["start_errors"][0]) <= 1.5 and abs(clip["match"]["end_errors"][0]) <= 1.5
    assert clip["face_share"] == 1.0 and clip["frames"] == 255
    assert total["by_label"]["neutral"]["scored_crying"] <= 0.1  # a window or two near the cry, never an episode
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| cut.mp4 |" in (out / "eval.md").read_text()

    # the daemon on the same clip: the same episode
    run = cryedge("run", "--fast", "--no-health", "--source", demo_cut / "cut.mp4")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    events = [line for line in lines if line["type"] == "event"]
    assert [e["event_type"] for e in events] == ["cry_start", "cry_end"]
    episode = clip["episodes"][0]
    assert events[1]["timestamp"] - events[0]["timestamp"] == pytest.approx(episode["end_s"] - episode["start_s"], abs=0.01)


def test_eval_without_truth_says_what_it_needs(tmp_path):
    cut(DEMO, tmp_path / "a.mp4", 0, 12)
    result = cryedge("eval", tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("cryedge: no truth: give --labels")
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nb.mp4,0,1,crying\n")
    result = cryedge("eval", tmp_path)
    assert "cryedge: video b.mp4 named in" in result.stderr and "Traceback" not in result.stderr


def test_a_broken_video_in_the_folder_is_found_before_any_clip_is_judged(tmp_path):
    """A broken clip late in a folder was found only when its turn came: everything judged before it was lost."""
    cut(DEMO, tmp_path / "a.mp4", 0, 60)
    (tmp_path / "z-broken.mp4").write_bytes(b"not a video")
    (tmp_path / "z-empty.mp4").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\na.mp4,1,2,crying\n")
    result = cryedge("eval", tmp_path, "--progress", "--output-dir", tmp_path / "out")
    assert result.returncode == 7 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cryedge: ")]  # FFmpeg's own may follow
    assert errors == ["cryedge: cannot decode video file z-broken.mp4 (and 1 more: z-empty.mp4); nothing was judged"]
    assert "[1/3] a.mp4" not in result.stderr  # refused before the first clip, not after it


def test_a_cry_labelled_after_its_clip_ends_is_found_before_any_clip_is_judged(tmp_path):
    """Times in milliseconds: the cry was counted missed, a recall the clip never earned, and nothing said why."""
    cut(DEMO, tmp_path / "a.mp4", 0, 60)  # 4 s
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\na.mp4,1000,3000,crying\n")
    result = cryedge("eval", tmp_path, "--progress", "--output-dir", tmp_path / "out")
    assert result.returncode == 7 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "a.mp4's interval 1000-3000 s (crying) starts after the clip ends (4 s)" in errors[0]
    assert not (tmp_path / "out" / "eval.json").exists()


@pytest.mark.parametrize("tolerance", ["nan", "-5", "inf"])
def test_a_tolerance_that_is_no_number_of_seconds_is_a_usage_error(tmp_path, tolerance):
    """--tolerance nan matched no episode to any cry: the demo's cry reported missed and its episode a false alarm."""
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\ndemo.mp4,5,14,crying\n")
    result = cryedge("eval", DEMO, "--labels", tmp_path / "labels.csv", f"--tolerance={tolerance}",
                     "--output-dir", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert f"argument --tolerance: {tolerance}: seconds from 0 to 3600" in result.stderr


def first_seconds_with_sound(dst, seconds: float) -> None:
    """The demo clip's first ``seconds``, picture and sound track as they are."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(DEMO), "-t", str(seconds), "-c", "copy", str(dst)],
                   check=True)


@pytest.mark.parametrize("fusion", ["audio", "either"])
def test_judging_sound_on_clips_without_any_is_refused_naming_them(tmp_path, fusion):
    """They were judged on the picture alone (audio: on nothing) and exit 0, the figures headed as sound or fused."""
    cut(DEMO, tmp_path / "a.mp4", 0, 60)  # OpenCV writes no sound track
    cut(DEMO, tmp_path / "b.mp4", 0, 60)
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\na.mp4,1,2,crying\n")
    result = cryedge("eval", tmp_path, "--fusion", fusion, "--progress", "--output-dir", tmp_path / "out")
    assert result.returncode == 7 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"cryedge: --fusion {fusion} judges the clips' sound, and a.mp4 (and 1 more: b.mp4) have no "
                      "sound track; nothing was judged (--fusion vision judges the picture alone)"], errors
    assert not (tmp_path / "out" / "eval.json").exists()


@pytest.mark.slow
def test_a_clip_without_sound_is_left_out_of_the_sound_figures_and_named(tmp_path):
    """The silent clip's row and its windows were in the --fusion audio table and totals, as if heard."""
    cut(DEMO, tmp_path / "a-silent.mp4", 0, 60)
    first_seconds_with_sound(tmp_path / "b-heard.mp4", 4)
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\na-silent.mp4,1,3,crying\n")
    out = tmp_path / "out"
    result = cryedge("eval", tmp_path, "--fusion", "audio", "--output-dir", out)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "| b-heard.mp4 |" in result.stdout and "| a-silent.mp4 |" not in result.stdout
    assert "| **total** (1 clips) |" in result.stdout
    assert "**Left out** (not judged, in no figure above): a-silent.mp4: no sound track" in result.stdout
    said = [line for line in result.stderr.splitlines() if "left out" in line]
    assert len(said) == 1 and "a-silent.mp4; 1 of 2 clips judged" in said[0], result.stderr
    report = json.loads((out / "eval.json").read_text())
    assert [clip["video"] for clip in report["clips"]] == ["b-heard.mp4"]
    assert report["total"]["left_out"] == {"a-silent.mp4": "no sound track"}
    assert report["total"]["cries"] == 0  # the silent clip's cry is not counted missed
    assert "a-silent.mp4: no sound track" in (out / "eval.md").read_text()


def test_frames_without_a_face_and_frames_mediapipe_failed_on_are_counted_per_clip_and_in_total(tmp_path):
    """A night judge saw shares of frames with a face, never how many frames were blind nor that MediaPipe failed."""
    cut(DEMO, tmp_path / "a-night.mp4", 0, 60, dark=range(20, 32))  # 12 black frames: no face found
    cut(DEMO, tmp_path / "b-day.mp4", 0, 60)
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nb-day.mp4,1,2,crying\n")
    out = tmp_path / "out"
    # calls 41-45 are frames 41-45 of the first clip (the default model uses no body points: one call a frame)
    result = subprocess.run([sys.executable, "-c", FAILING_LANDMARKER, "41-45", "eval", str(tmp_path), "--output-dir",
                             str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads((out / "eval.json").read_text())
    night, day = report["clips"]
    assert (night["blind_frames"], night["landmark_faults"], night["frames"]) == (12 + 5, 5, 60)
    assert (day["blind_frames"], day["landmark_faults"]) == (0, 0)
    assert (report["total"]["blind_frames"], report["total"]["landmark_faults"]) == (17, 5)
    header = result.stdout.splitlines()[0].split(" | ")
    assert "blind frames" in header and "landmark faults" in header
    rows = {line.split(" | ")[0]: dict(zip(header, line.split(" | "), strict=True))
            for line in result.stdout.splitlines() if line.startswith("| ") and line.count("|") == len(header) + 1}
    assert (rows["| a-night.mp4"]["blind frames"], rows["| a-night.mp4"]["landmark faults"]) == ("17 of 60", "5")
    assert (rows["| b-day.mp4"]["blind frames"], rows["| b-day.mp4"]["landmark faults"]) == ("0 of 60", "0")
    assert (rows["| **total** (2 clips)"]["blind frames"], rows["| **total** (2 clips)"]["landmark faults"]) == (
        "17 of 120", "5")
