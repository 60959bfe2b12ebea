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
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
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
