"""Recorded sound for the audio model: recordings the user fetched, listed in a CSV, split by subject.

``cryedge demo-audio build --recordings recordings.csv`` adds one half of them to the synthetic training clips
and judges the model on the other half, as the device hears it; the card says what was heard and where it came
from. No recording ships with cryedge (docs/audio.md, "Recorded sound", says which public corpora were used and
under which licences).

The CSV: ``file,label,subject`` and optionally ``kind`` and ``source``, one row a recording, every recording one
label throughout (``crying`` or ``not_crying``):

- ``file``: the recording, relative to the CSV's folder (any sound ffmpeg reads);
- ``subject``: who is heard (a baby, a phone app's installation, a speaker): the split keeps all of a subject's
  recordings on one side, so the held-out figures are on voices the model never trained on;
- ``kind``: what the figures are grouped by (default: the label), e.g. "cry (donateacry)", "children reading";
- ``source``: where it came from and its licence, e.g. "gveres/donateacry-corpus, ODbL 1.0": listed on the card.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import files
from edge.errors import DataError

LABELS = ("crying", "not_crying")
HELD_OUT_SHARE = 0.5  # of the subjects: their recordings are judged, never trained on
# The public recorded cries are parents' phone recordings at 8 kHz: with the rest at 16 kHz a model learns that a
# telephone band means a cry. Every recording with no cry is also trained on once through that band.
PHONE_RATE = 8000
TRAINING_GROUP_PREFIX = "rec:"  # a recorded subject's group in the dataset: never a synthetic validation clip's


@dataclass(frozen=True)
class Recording:
    path: Path
    crying: bool
    subject: str
    kind: str
    source: str


def read_recordings(path: Path) -> list[Recording]:
    """The recordings a CSV lists; DataError, one line, for a missing column, file or label."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            rows = []
            for row in reader:
                if None in row:  # more fields than the header names: a comma in an unquoted name, say
                    raise DataError(f"recordings {path} line {reader.line_num}: {len(header) + len(row[None])} fields "
                                    f"for {len(header)} columns (quote a name with a comma in it)")
                rows.append({k.strip(): (v or "").strip() for k, v in row.items()})
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"recordings {path}: {error}") from None
    missing = [name for name in ("file", "label", "subject") if name not in header]
    if missing:
        raise DataError(f"recordings {path}: no column {', '.join(missing)} (columns: {', '.join(header) or 'none'}); "
                        "it needs file,label,subject[,kind][,source]")
    found = []
    for line, row in enumerate(rows, start=2):
        if row["label"] not in LABELS:
            raise DataError(f"recordings {path} line {line}: label {row['label']!r} is not one of {', '.join(LABELS)}")
        if not row["subject"]:
            raise DataError(f"recordings {path} line {line}: no subject (who is heard: the split keeps a subject's "
                            "recordings on one side)")
        recording = path.parent / row["file"]
        if not row["file"] or not recording.is_file():
            raise DataError(f"recordings {path} line {line}: no such file {recording}")
        found.append(Recording(recording, row["label"] == "crying", row["subject"], row.get("kind") or row["label"],
                               row.get("source") or ""))
    if not any(r.crying for r in found):
        raise DataError(f"recordings {path}: no recording labelled crying")
    return found


def held_out(subject: str, share: float = HELD_OUT_SHARE) -> bool:
    """Whether a subject's recordings are held out: a hash of the subject's name, the same on every machine."""
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big") / 2**64 < share


def split(recordings: list[Recording], share: float = HELD_OUT_SHARE) -> tuple[list[Recording], list[Recording]]:
    """(to train on, held out), whole subjects on one side; DataError when a side would have no cry."""
    heldout = [r for r in recordings if held_out(r.subject, share)]
    training = [r for r in recordings if not held_out(r.subject, share)]
    for side, chosen in (("training", training), ("held-out", heldout)):
        if not any(r.crying for r in chosen):
            cried = len({r.subject for r in recordings if r.crying})
            raise DataError(f"recordings: the {side} half has no cry ({cried} subjects cry in all; the split is by "
                            f"subject at a held-out share of {share:g}): list more subjects' cries")
    return training, heldout


def _transcode(source: Path, output: Path, rate: int, via: int | None = None) -> None:
    """``source`` as a mono WAV at ``rate``, through a band of ``via`` Hz sampling first when given."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DataError("ffmpeg is needed to read recordings (apt install ffmpeg)")
    band = ["-af", f"aresample={via},aresample={rate}"] if via else []
    partial = output.with_name(output.name + ".part.wav")
    done = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), *band, "-ac", "1",
                           "-ar", str(rate), "-c:a", "pcm_s16le", str(partial)], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = (done.stderr.strip().splitlines() or ["unreadable"])[-1]
        raise DataError(f"recording {source}: ffmpeg cannot read it: {reason}")
    partial.replace(output)


def add_to_training(recordings: list[Recording], folder: Path, labels: Path, output: Path, rate: int,
                    phone_band: bool = True) -> dict:
    """The recordings as training files in ``folder`` (at ``rate``; with no cry, also through the phone band), and
    ``output``: the ``labels`` CSV with a row for each, labelled throughout, grouped by its subject. Files already
    made are kept (a rerun with the same work folder). Returns what was added, by kind."""
    from convert.dataset import media_duration

    folder = Path(folder)
    rows, added = [], {}
    for recording in recordings:
        key = hashlib.sha256(str(recording.path.resolve()).encode()).hexdigest()[:16]
        copies = [(f"rec-{key}.wav", None)] + ([(f"rec-{key}-phone.wav", PHONE_RATE)]
                                                if phone_band and not recording.crying else [])
        for name, via in copies:
            if not (folder / name).is_file():
                _transcode(recording.path, folder / name, rate, via)
            seconds = media_duration(folder / name)
            if seconds is None:
                raise DataError(f"recording {recording.path}: no duration (ffprobe)")
            rows.append([name, "0", f"{seconds:.3f}", "crying" if recording.crying else "not_crying",
                         TRAINING_GROUP_PREFIX + recording.subject])
            entry = added.setdefault(recording.kind, {"recordings": 0, "subjects": set(), "minutes": 0.0,
                                                      "phone_band_copies": 0})
            entry["phone_band_copies" if via else "recordings"] += 1
            entry["subjects"].add(recording.subject)
            entry["minutes"] += 0.0 if via else seconds / 60
    with open(labels, newline="") as handle:
        clips = list(csv.reader(handle))
    if not clips or clips[0] != ["video", "start_s", "end_s", "label", "subject"]:
        raise DataError(f"labels {labels}: not the training clips' video,start_s,end_s,label,subject")
    table = io.StringIO()
    csv.writer(table).writerows(clips + rows)
    files.write_text(output, table.getvalue())
    return {kind: {**entry, "subjects": len(entry["subjects"]), "minutes": round(entry["minutes"], 1)}
            for kind, entry in sorted(added.items())}


def heard(model: Path, path: Path, threshold: float, min_on: float | None) -> dict:
    """One recording through the device's audio path and alarm: its length, highest score and start events."""
    from convert.audio_demo import alarm_events, clip_scores

    times, probabilities = clip_scores(model, path)
    seconds = float(times[-1]) if times.size else 0.0
    events = alarm_events(times, probabilities, seconds, threshold, min_on) if times.size else []
    starts = [e for e in events if e["kind"] == "start"]
    return {"file": str(path), "seconds": round(seconds, 2), "scores": int(times.size),
            "max_score": round(float(probabilities.max()), 4) if times.size else None,
            "starts": len(starts), "first_decided_s": starts[0]["decided"] if starts else None}


def judge(model: Path, recordings: list[Recording]) -> dict:
    """The held-out recordings through the device's audio path and alarm at the card's threshold and debounce, by
    kind: for cries, how many raise a cry start (and within 1.5 s of the recording's start); for the rest, the
    false alarms and their rate an hour; and how well the highest scores rank cries over the rest (ROC AUC)."""
    from convert.train import roc_auc
    from edge.card import load_card

    card = load_card(model)
    by_kind: dict[str, dict] = {}
    maxima: dict[bool, list[float]] = {True: [], False: []}
    for recording in recordings:
        result = heard(model, recording.path, card.threshold, card.audio.min_on_seconds)
        entry = by_kind.setdefault(recording.kind, {"crying": recording.crying, "recordings": 0, "subjects": set(),
                                                    "minutes": 0.0, "too_short": 0, "with_start": 0,
                                                    "within_1_5_s": 0, "false_alarms": 0})
        if not result["scores"]:
            entry["too_short"] += 1
            continue
        entry["recordings"] += 1
        entry["subjects"].add(recording.subject)
        entry["minutes"] += result["seconds"] / 60
        maxima[recording.crying].append(result["max_score"])
        if recording.crying:
            entry["with_start"] += int(bool(result["starts"]))
            entry["within_1_5_s"] += int(result["starts"] > 0 and result["first_decided_s"] <= 1.5)
        else:
            entry["false_alarms"] += result["starts"]
            entry["with_start"] += int(bool(result["starts"]))
    auc = roc_auc(np.r_[np.ones(len(maxima[True])), np.zeros(len(maxima[False]))],
                  np.asarray(maxima[True] + maxima[False], dtype=float))
    kinds = {kind: {**entry, "subjects": len(entry["subjects"]), "minutes": round(entry["minutes"], 1)}
             for kind, entry in sorted(by_kind.items())}
    return {"by_kind": kinds, "roc_auc": None if auc is None else round(float(auc), 4),
            "threshold": card.threshold, "min_on_seconds": card.audio.min_on_seconds}


# --- the public corpora the repository's model was trained on, listed as a recordings CSV --------------------------

DONATEACRY = "gveres/donateacry-corpus, Open Database License 1.0"
SPEECHOCEAN = "jimbozhang/speechocean762 (OpenSLR 101), CC BY 4.0"
SPEECH_COMMANDS = "Speech Commands v0.02 (Pete Warden, Google), CC BY 4.0"
CHILD_AGES = range(6, 9)  # speechocean762's youngest speakers: the nearest public stand-in found for a child talking
READINGS_PER_CHILD = 6
WORDS_PER_SPEAKER = (4, 10)  # a speaker's 1 s words joined, at most 10; one with fewer than 4 is left out


def donateacry_rows(clone: Path, folder: Path) -> list[list[str]]:
    """The cleaned corpus's cries (every file is one), the subject the phone app's installation (a UUID)."""
    cleaned = clone / "donateacry_corpus_cleaned_and_updated_data"
    found = sorted(p for p in cleaned.rglob("*.wav")) if cleaned.is_dir() else []
    if not found:
        raise DataError(f"--donateacry {clone}: no donateacry_corpus_cleaned_and_updated_data/*/*.wav (a clone of "
                        "https://github.com/gveres/donateacry-corpus)")
    return [[_relative(p, folder), "crying", "donateacry-" + p.name[:36].lower(), "cry (donateacry, phone app, 8 kHz)",
             DONATEACRY] for p in found]


def speechocean_rows(clone: Path, folder: Path) -> list[list[str]]:
    """The first readings of each child aged 6-8 (``train/spk2age``, ``test/spk2age``), the subject the child."""
    ages = {}
    for part in ("train", "test"):
        table = clone / part / "spk2age"
        if table.is_file():
            ages.update(line.split()[:2] for line in table.read_text().splitlines() if len(line.split()) >= 2)
    children = sorted(speaker for speaker, age in ages.items() if age.isdigit() and int(age) in CHILD_AGES)
    rows = []
    for speaker in children:
        readings = sorted((clone / "WAVE" / f"SPEAKER{speaker}").glob("*.WAV"))[:READINGS_PER_CHILD]
        rows += [[_relative(p, folder), "not_crying", f"so762-{speaker}", "children aged 6-8 reading (speechocean762)",
                  SPEECHOCEAN] for p in readings]
    if not rows:
        raise DataError(f"--speechocean762 {clone}: no WAVE/SPEAKERnnnn/*.WAV of a speaker aged 6-8 in "
                        "train/spk2age or test/spk2age (a clone of https://github.com/jimbozhang/speechocean762)")
    return rows


def speech_commands_rows(dataset: Path, folder: Path) -> list[list[str]]:
    """Each speaker's words (``WORD/SPEAKER_nohash_N.wav``, 1 s each, in path order; ``_unknown_``'s
    ``WORD_SPEAKER_nohash_N.wav`` theirs too; ``_silence_`` left out), at most 10, joined
    into one recording written to ``folder/speech-commands``: one second is barely one window."""
    by_speaker: dict[str, list[Path]] = {}
    for path in sorted(dataset.glob("*/*_nohash_*.wav")):
        if path.parent.name != "_silence_":  # _unknown_/WORD_SPEAKER_nohash_N.wav: the speaker is the last part
            by_speaker.setdefault(path.name.split("_nohash_")[0].split("_")[-1], []).append(path)
    fewest, most = WORDS_PER_SPEAKER
    speakers = {s: words[:most] for s, words in sorted(by_speaker.items()) if len(words) >= fewest}
    if not speakers:
        raise DataError(f"--speech-commands {dataset}: no speaker with {fewest} or more WORD/SPEAKER_nohash_N.wav")
    out = folder / "speech-commands"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for speaker, words in speakers.items():
        joined = out / f"{speaker}_{len(words)}words.wav"
        if not joined.is_file():
            _join_words(words, joined)
        rows.append([_relative(joined, folder), "not_crying", f"commands-{speaker}", "command words (Speech Commands)",
                     SPEECH_COMMANDS])
    return rows


def _join_words(words: list[Path], output: Path) -> None:
    """The words' samples one after another, unchanged (Speech Commands is 16 kHz 16-bit mono WAV)."""
    frames = []
    for path in words:
        try:
            with wave.open(str(path), "rb") as handle:
                if (handle.getframerate(), handle.getsampwidth(), handle.getnchannels()) != (16000, 2, 1):
                    raise DataError(f"{path}: not Speech Commands' 16 kHz 16-bit mono WAV")
                frames.append(handle.readframes(handle.getnframes()))
        except (OSError, EOFError, wave.Error) as error:
            raise DataError(f"{path}: {error}") from None
    partial = output.with_name(output.name + ".part")
    with wave.open(str(partial), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(b"".join(frames))
    partial.replace(output)


def _relative(path: Path, folder: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), folder.resolve())


def write_public_list(folder: Path, donateacry: Path | None = None, speechocean: Path | None = None,
                      speech_commands: Path | None = None) -> Path:
    """``folder/recordings.csv`` listing the public corpora given (clones of their repositories), as the repository's
    model was trained on them; the CSV for ``demo-audio build --recordings``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    if donateacry:
        rows += donateacry_rows(Path(donateacry), folder)
    if speechocean:
        rows += speechocean_rows(Path(speechocean), folder)
    if speech_commands:
        rows += speech_commands_rows(Path(speech_commands), folder)
    if not rows:
        raise DataError("give at least one of --donateacry, --speechocean762, --speech-commands")
    table = io.StringIO()
    csv.writer(table).writerows([["file", "label", "subject", "kind", "source"], *rows])
    files.write_text(folder / "recordings.csv", table.getvalue())
    return folder / "recordings.csv"
