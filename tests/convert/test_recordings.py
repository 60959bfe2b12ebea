"""``demo-audio build --recordings``: recorded sound joins training by subject, the other subjects judged on the card.

No recording ships with cryedge, so the "recordings" here are SYNTHETIC stand-ins (convert/audio_synth.py: a cry,
white noise) written as files at the rates phones record at; what is tested is what the build does with any
recording: the split by subject, the phone band, the card, and the errors a user meets.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert import audio_synth, recordings
from edge.card import load_card
from edge.errors import DataError

REPO = Path(__file__).resolve().parents[2]
CRYEDGE = Path(sys.executable).with_name("cryedge")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt)")


def write_recordings(folder: Path, rows: list[tuple[str, str, str, str]], seconds: float = 2.5,
                     rate: int = 16000) -> Path:
    """WAV files of a synthetic cry or white noise, and the CSV listing them: rows of (file, label, subject, kind)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for name, label, _, _ in rows:
        kind = "crying" if label == "crying" else "white_noise"
        samples = audio_synth.render([audio_synth.Event(kind, 0.0, seconds)], seconds, rng, room_dbfs=-55.0)
        if rate != audio_synth.RATE:
            samples = samples[:: audio_synth.RATE // rate]
        audio_synth.write_wav(folder / name, samples, rate)
    table = folder / "recordings.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "subject", "kind", "source"])
        writer.writerows([*row, "synthetic stand-in (tests), CC0"] for row in rows)
    return table


def subjects(count: int, label: str) -> list[str]:
    return [f"{label}-subject-{number}" for number in range(count)]


def test_a_subjects_recordings_stay_on_one_side_and_the_split_is_the_same_in_every_process(tmp_path):
    names = subjects(200, "baby")
    held = [recordings.held_out(name) for name in names]
    assert 60 < sum(held) < 140  # about half at the default share
    assert sum(recordings.held_out(name, 0.2) for name in names) < sum(held)
    listed = [recordings.Recording(tmp_path / f"{name}-{take}.wav", True, name, "cry", "") for name in names[:20]
              for take in range(3)]
    training, heldout = recordings.split(listed)
    assert {r.subject for r in training}.isdisjoint({r.subject for r in heldout})
    assert len(training) + len(heldout) == len(listed)
    # not Python's hash(): another process (another PYTHONHASHSEED) splits the same way
    code = "from convert.recordings import held_out; print([held_out(f'baby-subject-{n}') for n in range(200)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                           env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)})
    assert other.stdout.strip() == str(held)


def test_a_split_that_leaves_one_side_without_a_cry_is_refused(tmp_path):
    listed = [recordings.Recording(tmp_path / "a.wav", True, "only-baby", "cry", "")]
    listed += [recordings.Recording(tmp_path / f"{n}.wav", False, n, "speech", "") for n in subjects(10, "adult")]
    with pytest.raises(DataError, match="half has no cry"):
        recordings.split(listed)


@pytest.mark.parametrize(("header", "row", "words"), [
    (["file", "label"], ["a.wav", "crying"], "no column subject"),
    (["file", "label", "subject"], ["a.wav", "screaming", "s1"], "label 'screaming' is not one of crying, not_crying"),
    (["file", "label", "subject"], ["a.wav", "crying", ""], "line 2: no subject"),
    (["file", "label", "subject"], ["gone.wav", "crying", "s1"], "line 2: no such file"),
    (["file", "label", "subject"], ["a.wav", "not_crying", "s1"], "no recording labelled crying"),
    (["file", "label", "subject"], ["a.wav", "crying", "baby, 1", "extra"], "line 2: 4 fields for 3 columns"),
])
def test_a_bad_recordings_csv_is_one_line_before_any_clip_is_made(tmp_path, header, row, words):
    (tmp_path / "a.wav").write_bytes(b"")
    table = tmp_path / "recordings.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([header, row])
    work = tmp_path / "work"
    done = subprocess.run([str(CRYEDGE), "demo-audio", "build", "--no-demo", "--recordings", str(table),
                           "--work-dir", str(work), "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 7 and len(lines) == 1, done.stderr
    assert lines[0].startswith("cryedge: recordings") and words in lines[0], lines[0]
    assert not work.exists() and not (tmp_path / "out").exists()


def band_energy_above(path: Path, hz: float) -> float:
    from convert.dataset import sound_track

    samples = sound_track(path, 16000)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    frequencies = np.fft.rfftfreq(samples.size, 1 / 16000)
    return float(spectrum[frequencies > hz].sum() / spectrum.sum())


@needs_ffmpeg
def test_recordings_join_the_training_labels_by_subject_those_with_no_cry_also_through_a_phone_band(tmp_path):
    table = write_recordings(tmp_path / "rec", [("cry.wav", "crying", "baby-1", "cry"),
                                                ("noise.wav", "not_crying", "room-1", "noise"),
                                                ("phone-cry.wav", "crying", "baby-2", "cry")])
    (table.parent / "phone-cry.wav").unlink()
    write_recordings(tmp_path / "rec8k", [("phone-cry.wav", "crying", "baby-2", "cry")], rate=8000)
    shutil.move(tmp_path / "rec8k" / "phone-cry.wav", table.parent / "phone-cry.wav")  # a parent's 8 kHz phone
    listed = recordings.read_recordings(table)
    folder = tmp_path / "train"
    folder.mkdir()
    clips = folder / "labels.csv"
    clips.write_text("video,start_s,end_s,label,subject\r\ntrain0000.wav,1.0,2.0,crying,train0000\r\n")
    added = recordings.add_to_training(listed, folder, clips, folder / "with.csv", 16000)
    with open(folder / "with.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {"video": "train0000.wav", "start_s": "1.0", "end_s": "2.0", "label": "crying",
                       "subject": "train0000"}
    made = {row["video"]: row for row in rows[1:]}
    assert len(made) == 4  # two cries, the noise and the noise through the phone band
    assert sorted(row["subject"] for row in made.values()) == ["rec:baby-1", "rec:baby-2", "rec:room-1", "rec:room-1"]
    assert all(row["start_s"] == "0" and abs(float(row["end_s"]) - 2.5) < 0.05 for row in made.values())
    phone = [name for name in made if name.endswith("-phone.wav")]
    assert len(phone) == 1 and made[phone[0]]["label"] == "not_crying"
    plain = phone[0].replace("-phone", "")
    assert band_energy_above(folder / plain, 4100) > 0.3  # white noise reaches far above 4 kHz ...
    assert band_energy_above(folder / phone[0], 4100) < 0.01  # ... not through the phone band
    assert added["noise"] == {"recordings": 1, "subjects": 1, "minutes": 0.0, "phone_band_copies": 1}
    assert added["cry"]["recordings"] == 2 and added["cry"]["phone_band_copies"] == 0
    # a rerun with the same work folder keeps the files made
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("rec-*.wav")}
    recordings.add_to_training(listed, folder, clips, folder / "with.csv", 16000, phone_band=False)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("rec-*.wav")} == stamps


@needs_ffmpeg
def test_an_unreadable_recording_is_one_line_naming_it(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not a wav")
    listed = [recordings.Recording(tmp_path / "broken.wav", True, "baby", "cry", "")]
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label,subject\n")
    with pytest.raises(DataError, match="broken.wav: ffmpeg cannot read it"):
        recordings.add_to_training(listed, tmp_path, tmp_path / "labels.csv", tmp_path / "with.csv", 16000)
    assert not list(tmp_path.glob("rec-*"))  # nothing half-written left to be taken for a recording


@pytest.mark.skipif(not all(shutil.which(t) for t in ("ffmpeg", "espeak-ng", "sox")), reason="needs ffmpeg, espeak-ng, sox")
def test_a_build_with_recordings_trains_on_one_half_of_the_subjects_and_judges_the_other_on_the_card(tmp_path):
    pytest.importorskip("tensorflow")
    from convert.audio_demo import build
    from convert.dataset import load

    rows = [(f"{s}-{take}.wav", "crying", s, "cry (stand-in)") for s in subjects(6, "baby") for take in range(2)]
    rows += [(f"{s}.wav", "not_crying", s, "noise (stand-in)") for s in subjects(6, "room")]
    table = write_recordings(tmp_path / "rec", rows)
    held = {s for _, _, s, _ in rows if recordings.held_out(s)}
    assert held and any(s.startswith("baby") for s in held)  # the subjects' names are chosen so that each side cries
    assert any(s.startswith("baby") and s not in held for _, _, s, _ in rows)
    tiny = {"epochs": 1, "train_clips": 8, "heldout_clips": 2, "crib_clips": 0, "more_clips": 0}
    summary = build(tmp_path / "out", None, tmp_path / "work", recordings=table, **tiny)

    groups = set(load(tmp_path / "work" / "train.npz")["groups"].tolist())
    trained = {g.removeprefix("rec:") for g in groups if g.startswith("rec:")}
    assert trained == {s for _, _, s, _ in rows} - held  # no held-out subject was trained on
    card = load_card(tmp_path / "out" / "cry-audio-default.tflite")
    assert card.training["synthetic"] is False and "recordings" in card.description
    judged = card.training["recorded"]["held_out"]["by_kind"]
    assert judged["cry (stand-in)"]["recordings"] == sum(1 for _, _, s, k in rows if s in held and k.startswith("cry"))
    assert judged["noise (stand-in)"]["recordings"] == sum(1 for _, _, s, k in rows if s in held and k.startswith("noise"))
    assert card.training["recorded"]["sources"] == ["synthetic stand-in (tests), CC0"]
    assert summary["recorded"] == card.training["recorded"]
    markdown = (tmp_path / "out" / "cry-audio-default.md").read_text()
    assert "## Held-out recorded sound" in markdown and "synthetic stand-in (tests), CC0" in markdown
    # the rebuild line names the options that made it
    assert ("demo-audio build --train-clips 8 --heldout-clips 2 --crib-clips 0 --more-clips 0 --recordings "
            "RECORDINGS.csv" in markdown)
    assert json.loads((tmp_path / "out" / "cry-audio-default.json").read_text())["training"]["recorded"]

    # the work folder's dataset was made from these recordings: other ones are refused, not trained on silently
    other = write_recordings(tmp_path / "other", rows[:-1])
    with pytest.raises(DataError, match="made from other clips or recordings"):
        build(tmp_path / "out2", None, tmp_path / "work", recordings=other, **tiny)


def fake_clones(root: Path) -> dict[str, Path]:
    """The three public corpora's layouts, with SYNTHETIC stand-in sounds (noise) in place of their recordings."""
    rng = np.random.default_rng(3)

    def wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        audio_synth.write_wav(path, rng.normal(0, 0.1, int(seconds * rate)), rate)

    cries = root / "donateacry-corpus" / "donateacry_corpus_cleaned_and_updated_data"
    wav(cries / "hungry" / "02c3b725-26e4-4a2c-9336-04ddc58836d9-1430726196216-1.7-m-04-hu.wav", 2.0, 8000)
    wav(cries / "tired" / "02C3B725-26E4-4A2C-9336-04DDC58836D9-1430726199999-1.7-m-04-ti.wav", 2.0, 8000)
    wav(cries / "tired" / "7e6a3f0e-0c0e-4d33-8e46-39b1c1b8e2a1-1430000000000-1.7-f-26-ti.wav", 2.0, 8000)
    ocean = root / "speechocean762"
    for part, table in (("train", "0001\t7\n0002\t30\n"), ("test", "1075\t6\n")):
        (ocean / part).mkdir(parents=True)
        (ocean / part / "spk2age").write_text(table)
    for speaker, readings in (("0001", 8), ("0002", 2), ("1075", 3)):
        for number in range(readings):
            wav(ocean / "WAVE" / f"SPEAKER{speaker}" / f"0{speaker}{number:04d}.WAV")
    commands = root / "speech_commands"
    for word in ("yes", "no", "up", "down", "left", "right"):
        wav(commands / word / "aaaa1111_nohash_0.wav")
        wav(commands / word / "aaaa1111_nohash_1.wav")
    wav(commands / "_unknown_" / "bed_bbbb2222_nohash_0.wav")
    for word in ("yes", "no", "up"):
        wav(commands / word / "bbbb2222_nohash_0.wav")
    wav(commands / "_silence_" / "1024.wav")
    wav(commands / "yes" / "cccc3333_nohash_0.wav")  # one word: left out
    return {"donateacry": root / "donateacry-corpus", "speechocean762": ocean, "speech_commands": commands}


def test_the_public_corpora_are_listed_one_subject_a_baby_phone_child_or_speaker(tmp_path):
    import wave

    clones = fake_clones(tmp_path / "clones")
    out = tmp_path / "list"
    done = subprocess.run([str(CRYEDGE), "demo-audio", "recordings", "-o", str(out), "--donateacry",
                           str(clones["donateacry"]), "--speechocean762", str(clones["speechocean762"]),
                           "--speech-commands", str(clones["speech_commands"])], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cry (donateacry, phone app, 8 kHz): 3 recordings of 2 subjects" in done.stdout
    listed = recordings.read_recordings(out / "recordings.csv")  # what build --recordings reads
    by_subject: dict[str, list] = {}
    for recording in listed:
        by_subject.setdefault(recording.subject, []).append(recording)
    # one phone app's installation is one subject, whatever the case of its UUID
    assert len(by_subject["donateacry-02c3b725-26e4-4a2c-9336-04ddc58836d9"]) == 2
    assert all(r.crying and "Open Database License" in r.source for r in listed if r.subject.startswith("donateacry"))
    # only children aged 6-8, each a subject, their first 6 readings
    assert len(by_subject["so762-0001"]) == 6 and len(by_subject["so762-1075"]) == 3 and "so762-0002" not in by_subject
    # a speaker's words, _unknown_'s too, joined in path order; a speaker of one word and _silence_ left out
    assert {s for s in by_subject if s.startswith("commands-")} == {"commands-aaaa1111", "commands-bbbb2222"}
    (aaaa,) = by_subject["commands-aaaa1111"]
    words = sorted(clones["speech_commands"].glob("*/aaaa1111_nohash_*.wav"))[:10]
    with wave.open(str(aaaa.path)) as joined:
        frames = joined.readframes(joined.getnframes())
    expected = b"".join(wave.open(str(p)).readframes(16000) for p in words)
    assert frames == expected and len(words) == 10  # at most 10 of its 12, unchanged
    (bbbb,) = by_subject["commands-bbbb2222"]
    with wave.open(str(bbbb.path)) as joined:
        assert joined.getnframes() == 4 * 16000
    assert all(not r.crying and "CC BY 4.0" in r.source for r in listed if not r.subject.startswith("donateacry"))


def test_a_folder_that_is_not_the_corpus_is_one_line(tmp_path):
    done = subprocess.run([str(CRYEDGE), "demo-audio", "recordings", "-o", str(tmp_path / "list"), "--donateacry",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 7 and len(lines) == 1, done.stderr
    assert "--donateacry" in lines[0] and "gveres/donateacry-corpus" in lines[0]
    assert not (tmp_path / "list" / "recordings.csv").exists()
