"""A toolchain number out of range is a usage error (exit 2) naming the option, read before any work starts.

``cryedge train --batch-size 0`` trained with Keras' default batch, ``--batch-size -3`` and ``--augment -2``
ended in tracebacks minutes in; ``--epochs 0`` was exit 7 after the imports. Parsed by cryedge's own parser
(nothing runs: a build that accepted a bad value would otherwise write the package's default model).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser

CRYEDGE = Path(sys.executable).with_name("cryedge")

TRAIN = ["train", "--arch", "conv1d", "--data", "d.npz", "-o", "m.keras"]
CONVERT = ["convert", "m.keras", "-o", "m.tflite"]
DATASET = ["dataset", "build", "videos", "labels.csv", "-o", "d.npz"]


@pytest.mark.parametrize(("command", "option", "value", "reason"), [
    (TRAIN, "--batch-size", "0", "must be at least 1"),
    (TRAIN, "--batch-size", "-3", "must be at least 1"),
    (TRAIN, "--epochs", "0", "must be at least 1"),
    (TRAIN, "--patience", "-1", "must be at least 0"),
    (TRAIN, "--folds", "-2", "must be at least 0"),
    (TRAIN, "--augment", "-2", "must be at least 0"),
    (TRAIN, "--seed", "-1", "must be at least 0"),
    (TRAIN, "--test-fraction", "1.5", "must be above 0 and below 1"),
    (TRAIN, "--test-fraction", "nan", "not a finite number"),
    (TRAIN, "--epochs", "ten", "not a whole number"),
    (CONVERT, "--window", "0", "must be at least 1"),
    (CONVERT, "--threshold", "1", "must be above 0 and below 1"),
    (CONVERT, "--agreement-target", "0", "must be above 0 and at most 1"),
    (DATASET, "--window", "0", "must be at least 1"),
    (DATASET, "--stride", "0", "must be at least 1"),
    (DATASET, "--mel-bands", "0", "must be at least 1"),
    (["demo", "build"], "--clips-per-subject", "0", "must be at least 1"),
    (["demo", "build"], "--clip-seconds", "-1", "must be above 0"),
    (["demo", "build"], "--epochs", "0", "must be at least 1"),
    (["demo", "build"], "--seeds", "0", "must be at least 1"),
    (["demo-audio", "build"], "--epochs", "0", "must be at least 1"),
    (["demo-audio", "build"], "--train-clips", "0", "must be at least 1"),
    (["demo-audio", "build"], "--heldout-clips", "0", "must be at least 1"),
    (["demo-audio", "build"], "--masked-clips", "-1", "must be at least 0"),
    (["demo-audio", "build"], "--more-clips", "-1", "must be at least 0"),
    (["demo-audio", "build"], "--patience", "-1", "must be at least 0"),
    (["demo-audio", "build"], "--max-false-alarms", "-1", "must be at least 0"),
    (["demo-audio", "build"], "--pitch-bins", "-1", "must be at least 0"),
    (["demo-audio", "build"], "--pitch-bands", "0", "must be at least 1"),
    (["demo-audio", "build"], "--mel-bands", "0", "must be at least 1"),
    (["demo-audio", "build"], "--n-fft", "0", "must be at least 1"),
    (["demo-audio", "build"], "--window-seconds", "0", "must be above 0"),
    (["suite", "build", "out"], "--seed", "-1", "must be at least 0"),
])
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(capsys, command, option, value, reason):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([*command, option, value])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {option}: {value}: {reason}" in error


def test_the_defaults_and_values_in_range_still_parse():
    args = build_parser().parse_args([*TRAIN, "--batch-size", "1", "--patience", "0", "--test-fraction", "0.5"])
    assert (args.batch_size, args.epochs, args.patience, args.test_fraction) == (1, 40, 0, 0.5)
    args = build_parser().parse_args([*CONVERT, "--agreement-target", "1"])
    assert (args.agreement_target, args.threshold) == (1.0, 0.5)
    args = build_parser().parse_args(["demo-audio", "build"])  # the bundled model's build: 960 more, 320 crib clips
    assert (args.more_clips, args.crib_clips, args.masked_clips, args.epochs, args.patience) == (960, 320, 0, 30, 6)
    assert args.max_false_alarms is None
    assert (args.mel_bands, args.n_fft) == (64, 512)


def test_demo_audio_build_mel_bands_and_n_fft_reach_the_card_front_end_and_a_bad_pair_is_one_line():
    from convert.audio_demo import front_end, front_end_of
    from edge.card import AudioSpec
    from edge.errors import DataError

    assert front_end_of(build_parser().parse_args(["demo-audio", "build"])) == front_end() == AudioSpec(hop_seconds=0.25)
    spec = front_end_of(build_parser().parse_args(["demo-audio", "build", "--mel-bands", "128", "--n-fft", "1024"]))
    assert (spec.mel_bands, spec.n_fft, spec.feature_size) == (128, 1024, 128)
    assert spec.model_copy(update={"mel_bands": 64, "n_fft": 512}) == front_end()  # nothing else moved
    with pytest.raises(DataError, match="^audio front end: .*win_length must not exceed n_fft$"):  # 400-sample frames
        front_end_of(build_parser().parse_args(["demo-audio", "build", "--n-fft", "256"]))
    with pytest.raises(DataError, match="^audio front end: .*less than or equal to 1024$"):
        front_end_of(build_parser().parse_args(["demo-audio", "build", "--mel-bands", "2000"]))


def test_the_bundled_audio_model_is_what_demo_audio_build_makes_with_the_options_its_card_names():
    """Its card's rebuild line names the build's options (the model that passed the session 13 rules, docs/audio.md:
    the defaults with --tonal-clips 320 and --recordings); parsed as the command parses them, they are the clips its
    card says it was trained on; its .keras is the one the card's sha256 names: the options and the files agree."""
    import hashlib
    import re

    from convert import audio_demo
    from edge import paths
    from edge.card import load_card

    model = paths.bundled("models", "cry-audio-default.tflite")
    card = load_card(model)
    rebuild = re.search(r"Rebuild: `\.venv/bin/cryedge (demo-audio build[^`]*)`", model.with_suffix(".md").read_text())
    args = build_parser().parse_args(rebuild.group(1).split())
    assert (args.tonal_clips, str(args.recordings)) == (320, "RECORDINGS.csv")
    synthetic, _, recorded = card.training["data"].partition("; and recordings: ")
    assert synthetic == (
        f"SYNTHETIC sounds (convert/audio_synth.py), seed {args.seed}: {args.train_clips} clips of 8 s, "
        f"{args.crib_clips} of loud hard negatives with a cry audible over some, {args.more_clips} more of "
        f"the same plan from seed {args.seed + audio_demo.MORE_SEED_OFFSET}, {args.tonal_clips} of a siren, a car horn "
        f"or bells loud with a cry audible over some (seed {args.seed + audio_demo.TONAL_SEED_OFFSET})")
    assert (args.seed, args.crib_clips, args.more_clips) == (audio_demo.SEED, 320, 960)  # the defaults
    assert recorded and card.training["recorded"]["trained_on"] and card.training["synthetic"] is False
    assert (card.threshold, card.audio.min_on_seconds) == (0.85, 0.25)
    assert card.audio == audio_demo.front_end(mean=card.audio.mean, std=card.audio.std, normalization=card.audio.normalization,
                                              min_on_seconds=card.audio.min_on_seconds, evidence=card.audio.evidence)
    keras = model.with_name(card.source.path)
    assert hashlib.sha256(keras.read_bytes()).hexdigest() == card.source.sha256


def test_cryedge_train_batch_size_0_is_exit_2_before_the_data_is_read(tmp_path):
    # the data file does not exist: the option is refused first, in one error line
    out = subprocess.run([str(CRYEDGE), "train", "--arch", "conv1d", "--data", str(tmp_path / "none.npz"),
                          "--output", str(tmp_path / "m.keras"), "--batch-size", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors == ["cryedge train: error: argument --batch-size: 0: must be at least 1"]
    assert not (tmp_path / "m.keras").exists()


def test_demo_build_names_an_unknown_architecture_before_it_renders_clips(capsys):
    """``--arch conv3d`` rendered the clips and built the dataset (minutes) before train said it was unknown."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["demo", "build", "--arch", "conv3d"])
    assert stopped.value.code == 2
    assert "argument --arch: invalid choice: 'conv3d'" in capsys.readouterr().err.splitlines()[-1]
    assert build_parser().parse_args(["demo", "build", "--arch", "lstm2"]).arch == ["lstm2"]


def test_demo_audio_build_with_no_demo_video_stops_before_it_replaces_the_model(tmp_path):
    """It trained and wrote the new default audio model into --output-dir, then stopped on the missing clip."""
    out = tmp_path / "models"
    done = subprocess.run([str(CRYEDGE), "demo-audio", "build", "--output-dir", str(out), "--work-dir",
                           str(tmp_path / "work"), "--demo-video", str(tmp_path / "none.mp4"), "--epochs", "1",
                           "--train-clips", "2", "--heldout-clips", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 7 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"cryedge: --demo-video {tmp_path / 'none.mp4'}: no such video to give "
                                            "the sound track (--no-demo leaves it)")
    assert not out.exists() and not (tmp_path / "work").exists()


def test_demo_audio_build_with_pitch_channels_it_cannot_compute_stops_before_the_first_clip(tmp_path):
    done = subprocess.run([str(CRYEDGE), "demo-audio", "build", "--output-dir", str(tmp_path / "models"), "--work-dir",
                           str(tmp_path / "work"), "--no-demo", "--pitch-bins", "40"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 7 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("cryedge: audio front end: ")
    assert "pitch_bins 40: more than the 250-700 Hz pitch range can tell apart" in done.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("where", ["folder", "a-file/demo.mp4"])
def test_demo_build_with_a_demo_video_it_cannot_write_stops_before_it_replaces_the_model(tmp_path, where):
    """The clip was written last: the new default model was already copied into --output-dir (without its
    card's update), then the build stopped on the clip it could not write."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("notes\n")
    out = tmp_path / "models"
    done = subprocess.run([str(CRYEDGE), "demo", "build", "--output-dir", str(out), "--work-dir", str(tmp_path / "work"),
                           "--demo-video", str(tmp_path / where), "--clips-per-subject", "1", "--clip-seconds", "2",
                           "--arch", "conv1d", "--epochs", "1", "--seeds", "1"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 7 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"cryedge: --demo-video {tmp_path / where}: a video cannot be written "
                                            "there (a folder, or under a file)")
    assert not out.exists() and not (tmp_path / "work").exists()


def test_audio_cnn_options_parse_for_train_and_demo_audio_build_and_are_none_unless_given(tmp_path):
    from convert.train import TrainOptions, audio_sizes, train
    from edge.errors import DataError

    for command in (["demo-audio", "build"], ["train", "--arch", "audio-cnn", "--data", "d.npz", "-o", "m.keras"]):
        assert audio_sizes(build_parser().parse_args(command)) == {}  # the default model's network
        args = build_parser().parse_args([*command, "--audio-head", "time", "--audio-filters", "32"])
        assert audio_sizes(args) == {"head": "time", "filters": 32}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo-audio", "build", "--audio-head", "frequency"])
    with pytest.raises(DataError, match="conv1d: head is an option of the audio models only"):  # before the data is read
        train(TrainOptions(arch="conv1d", data=tmp_path / "none.npz", output=tmp_path / "m.keras", sizes={"head": "time"}))
