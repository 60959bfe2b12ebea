"""``cryedge dataset build``: labelled clips through the device's landmarks and features into windows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert import dataset, synth

CRYEDGE = Path(sys.executable).with_name("cryedge")
FPS = 10
BLANK_FRAMES = 5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two tiny SYNTHETIC clips: a.mp4 neutral 1 s then crying 1 s; b.mp4 5 faceless frames then 1.5 s of talking."""
    folder = tmp_path_factory.mktemp("clips")
    a = synth.load_photo("astronaut")
    b = synth.load_photo("astronaut", mirror=True)
    synth.write_video(folder / "a.mp4", (f for f, _ in synth.render_clip(a, [("neutral", 1.0), ("crying", 1.0)], 1, FPS)), FPS)
    scene = synth.random_scene(np.random.default_rng(4))
    blank = [synth.background_canvas(scene)] * BLANK_FRAMES
    talking = [f for f, _ in synth.render_clip(b, [("talking", 1.5)], 2, FPS, scene=scene)]
    synth.write_video(folder / "b.mp4", iter(blank + talking), FPS)
    (folder / "labels.csv").write_text(
        "video,start_s,end_s,label,subject\n"
        "a.mp4,0.0,1.0,neutral,astronaut\n"
        "a.mp4,1.0,2.0,crying,astronaut\n"
        "b.mp4,0.5,2.0,talking,astronaut-mirror\n"
    )
    return folder


@pytest.fixture(scope="module")
def built(clips):
    return dataset.build(clips, clips / "labels.csv", window=5, positive="crying", progress=False)


def test_windows_have_the_device_feature_shape_and_groups(built):
    # a.mp4: 20 frames, b.mp4: 20 frames -> 16 windows each with window 5, stride 1
    assert built.x.shape == (32, 5, 156) and built.x.dtype == np.float32
    assert built.labels == ("not_crying", "crying")
    assert sorted(set(built.groups.tolist())) == ["astronaut", "astronaut-mirror"]
    assert (built.groups[built.videos == "b.mp4"] == "astronaut-mirror").all()
    assert built.frames == 40


def test_frames_without_a_face_are_counted(built):
    assert built.frames_without_face == BLANK_FRAMES
    assert built.faceless_by_video == {"a.mp4": 0, "b.mp4": BLANK_FRAMES}
    # faceless frames are zeros, as on the device: b.mp4's first window is all faceless, its second ends on a face
    first_b, second_b = built.x[built.videos == "b.mp4"][:2]
    assert not first_b.any()
    assert not second_b[:4].any() and second_b[4].any()


def test_a_window_is_labelled_by_its_last_frame(built):
    a = built.videos == "a.mp4"
    # windows end at frames 4..19, i.e. t = 0.4 .. 1.9 s; crying from 1.0 s
    np.testing.assert_allclose(built.t_end[a], np.arange(4, 20) / FPS, atol=1e-4)
    assert built.y[a].tolist() == [0] * 6 + [1] * 10
    assert not built.y[built.videos == "b.mp4"].any()


def test_per_video_frame_rows_give_the_same_windows(clips, built, tmp_path):
    folder = tmp_path / "per-frame"
    folder.mkdir()
    (folder / "a.csv").write_text("time_ms,label\n0,neutral\n1000,crying\n")
    (folder / "b.csv").write_text("time,label\n0.0,talking\n")
    per_frame = dataset.build(clips, folder, window=5, positive="crying", progress=False)
    assert np.array_equal(per_frame.y, built.y)
    np.testing.assert_array_equal(per_frame.x, built.x)  # the same frames through the same code
    assert sorted(set(per_frame.groups.tolist())) == ["a", "b"]  # no subject column: groups are the videos


def test_the_npz_holds_data_and_metadata(built, tmp_path):
    built.save(tmp_path / "d.npz")
    data = dataset.load(tmp_path / "d.npz")
    assert data["x"].shape == (32, 5, 156)
    assert data["labels"].tolist() == ["not_crying", "crying"]
    assert str(data["spec"]) == "openpose-face70-body8" and str(data["normalization"]) == "minmax"
    assert int(data["window"]) == 5 and int(data["frames_without_face"]) == BLANK_FRAMES


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(CRYEDGE), "dataset", "build", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), check=False)


def test_cli_builds_and_reports(clips, tmp_path):
    result = _cli(clips, clips / "labels.csv", "--window", "5", "--positive", "crying", "--output", tmp_path / "d.npz")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "32 windows of 5 x 156 (not_crying 22, crying 10)" in result.stdout
    assert f"b.mp4: {BLANK_FRAMES} frames without a face" in result.stdout
    assert "dataset: 2/2" in result.stderr  # plain progress lines when not a terminal


@pytest.mark.parametrize("labels_text, words", [
    ("video,start_s,end_s,label\nmissing.mp4,0,1,crying\n", "missing.mp4 named in"),
    ("video,start_s,end_s,emotion\na.mp4,0,1,crying\n", "no column label"),
    ("video,start_s,end_s,label\na.mp4,2,1,crying\n", "end_s 1.0 is not after start_s 2.0"),
    # nan passed every order check: the cry was kept with no time, and cryedge eval counted it missed
    ("video,start_s,end_s,label\na.mp4,nan,3,crying\n", "line 2: 'nan' is not a finite number of seconds"),
    ("video,start_s,end_s,label\na.mp4,1,inf,crying\n", "line 2: 'inf' is not a finite number of seconds"),
    # a time before the clip: the cry was kept as one from the start, and judged as labelled
    ("video,start_s,end_s,label\na.mp4,-2,1,crying\n", "line 2: '-2' is before the clip's start (times are 0 s or more)"),
    # times in milliseconds: the cry labelled no window and the build said nothing (every window not_crying)
    ("video,start_s,end_s,label\na.mp4,0,1,neutral\na.mp4,1000,2000,crying\n",
     "a.mp4's interval 1000-2000 s (crying) starts after the clip ends (2 s)"),
])
def test_bad_labels_are_one_line_errors(clips, tmp_path, labels_text, words):
    (tmp_path / "labels.csv").write_text(labels_text)
    result = _cli(clips, tmp_path / "labels.csv", "--output", tmp_path / "d.npz")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 7, result.stderr
    assert len(lines) == 1 and lines[0].startswith("cryedge: ") and words in lines[0], result.stderr


def test_labels_saved_by_a_spreadsheet_read_as_the_same_labels(clips, tmp_path):
    """Excel's and LibreOffice's "CSV UTF-8" start with a byte-order mark and end lines with CRLF: the first column
    was read as "\\ufeffvideo", and the build said "no column video (columns: video, ...)"."""
    text = (clips / "labels.csv").read_text()
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    spreadsheet = dataset.read_labels(tmp_path / "labels.csv", clips)
    plain = dataset.read_labels(clips / "labels.csv", clips)
    assert spreadsheet.keys() == plain.keys() == {"a.mp4", "b.mp4"}
    for video, truth in plain.items():
        assert spreadsheet[video].labels == truth.labels and spreadsheet[video].group == truth.group
        assert np.array_equal(spreadsheet[video].times, truth.times) and np.array_equal(spreadsheet[video].ends, truth.ends)


def test_a_video_without_frames_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nempty.mp4,0,1,crying\n")
    result = _cli(tmp_path, tmp_path / "labels.csv", "--output", tmp_path / "d.npz")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 7, result.stderr
    assert len(lines) == 1 and "empty.mp4" in lines[0], result.stderr


@pytest.mark.parametrize("options, words", [
    (("--hop-seconds", "0"), "greater than or equal to 0.01"),
    (("--hop-seconds", "0.3333", "--audio-background", "floor"), "whole number of frames"),
    (("--hop-seconds", "1.5"), "--hop-seconds 1.5: 1.5 s is longer than the window (15600 samples at 16000 Hz, 0.975 s)"),
    (("--audio-pitch-bins", "40"), "more than the 250-700 Hz pitch range can tell apart"),
    (("--audio-pitch-bins", "12", "--audio-pitch-bands", "5"), "must hold 3 harmonics of pitch_fmax 700 Hz"),
])
def test_an_impossible_audio_front_end_is_a_one_line_error(clips, tmp_path, options, words):
    result = _cli(clips, clips / "labels.csv", "--audio", *options, "--output", tmp_path / "d.npz")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 7, result.stderr
    assert len(lines) == 1 and lines[0].startswith("cryedge: ") and words in lines[0], result.stderr


def test_a_cry_labelled_after_its_sound_ends_is_a_one_line_error(tmp_path):
    """Times in milliseconds: ``--audio`` built every window not_crying and exited 0 (SYNTHETIC tone, real ffmpeg)."""
    from convert.audio_synth import write_wav

    t = np.arange(3 * 16000) / 16000
    write_wav(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\ntone.wav,1500,2500,crying\n")
    result = _cli(tmp_path, tmp_path / "labels.csv", "--audio", "--output", tmp_path / "d.npz")
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("sound dataset")]
    assert result.returncode == 7, result.stderr
    assert len(lines) == 1 and "tone.wav's interval 1500-2500 s (crying) starts after the clip ends (3 s)" in lines[0]
    assert not (tmp_path / "d.npz").exists()
