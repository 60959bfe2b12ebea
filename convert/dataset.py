"""``cryedge dataset build``: labelled videos to windows of the device's own features (``.npz``).

Each video goes through ``edge.landmarks.LandmarkExtractor`` (VIDEO mode, the daemon's defaults)
and ``edge.features.frame_features``, exactly the device's code, then through the device's sliding
window. A window's label is the label of its last frame: the device scores the window ending at a
frame and the alarm attributes that score to that frame's time, so the model learns to answer
"is the baby crying now, given the last N frames". Frames without a face keep their (all-zero)
features, as on the device, and are counted.

Labels come in one of two layouts:
- intervals: one CSV with ``video,start_s,end_s,label`` (optionally ``subject``); frames outside
  every interval get ``--default-label``;
- per-frame rows: a folder of CSVs named like the videos (``clip.mp4`` -> ``clip.csv``) with a time
  column (``time`` in seconds or ``time_ms``) and a label column, as the AM-FED per-video files;
  each row's label holds until the next row.

Output arrays: ``x`` (N, T, F) float32, ``y`` (N,) int64 indexes into ``labels``, ``groups`` (N,)
(the subject column, else the video's name), ``videos`` and ``t_end`` (N,) (which clip and second
each window ends at), and the metadata ``labels``, ``spec``, ``normalization``, ``window``,
``stride``, ``fps``, ``frames``, ``frames_without_face``.
"""

from __future__ import annotations

import csv
import math
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError
from edge.files import replacing

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")
TIME_COLUMNS = {"time": 1.0, "time_s": 1.0, "time_ms": 0.001, "timestamp (msec)": 0.001}


# what np.load raises on a file that is not a whole .npz: cut short (BadZipFile, EOFError), damaged inside a
# compressed member (zlib.error), not a zip at all (ValueError)
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def npz_error(error: Exception) -> str:
    """Why ``np.load`` could not read a file, in words: numpy takes what is neither a zip nor an .npy for a pickle,
    and its refusal to load one advised loading it unsafely."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return "not an .npz file" if "pickled" in text else text


def non_finite_windows(x: np.ndarray) -> np.ndarray:
    """Indexes of the windows (first axis) of ``x`` that hold a NaN or an infinity.

    A slice at a time: a sound dataset's windows run to GiBs, and ``np.isfinite`` of all of them at once is a
    quarter of that again."""
    rows = max(1, (64 << 20) // max(1, x[:1].nbytes))
    found = [np.zeros(0, np.int64)]
    for start in range(0, len(x), rows):
        part = x[start:start + rows]
        found.append(start + np.flatnonzero(~np.isfinite(part.reshape(len(part), -1)).all(axis=1)))
    return np.concatenate(found)


def npz_path(path: Path) -> Path:
    """``path`` as numpy saves it: with ``.npz`` added unless it ends with it."""
    path = Path(path)
    return path if path.name.endswith(".npz") else path.with_name(path.name + ".npz")


def save_npz(path: Path, arrays: dict, compressed: bool = True) -> None:
    """``np.savez_compressed`` (``np.savez`` when not ``compressed``) of ``arrays`` at ``path`` as numpy names it,
    whole or not at all (``edge.files.replacing``): a rerun reuses what it finds there."""
    with replacing(npz_path(path)) as (partial,):
        (np.savez_compressed if compressed else np.savez)(partial, **arrays)


class Progress:
    """A one-line progress bar on a terminal; plain lines at every tenth when not a tty."""

    def __init__(self, total: int, what: str, stream=None):
        self.total, self.what = max(1, total), what
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._shown_tenth = -1
        self._start = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        fraction = min(1.0, done / self.total)
        if self.tty:
            bar = "#" * int(30 * fraction)
            self.stream.write(f"\r{self.what} [{bar:<30}] {done}/{self.total} {note[:40]:<40}")
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        if tenth > self._shown_tenth:
            self._shown_tenth = tenth
            elapsed = time.monotonic() - self._start
            print(f"{self.what}: {done}/{self.total} ({fraction:.0%}, {elapsed:.0f} s) {note}".rstrip(), file=self.stream, flush=True)


# --- labels ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoLabels:
    """One video's labelling: a step function of time, its group (subject) and the condition it was filmed in."""

    video: str
    group: str
    times: np.ndarray  # sorted start times of each label run, seconds
    ends: np.ndarray | None  # interval ends (intervals layout), None for per-frame rows
    labels: tuple[str, ...]
    default: str
    condition: str | None = None  # the intervals CSV's optional condition column (night, body hidden, ...)

    def label_at(self, t: float) -> str:
        """The label at second ``t``: the covering interval's (the last one listed wins), or the run's."""
        eps = 1e-6
        if self.ends is None:
            index = int(np.searchsorted(self.times, t + eps, side="right")) - 1
            return self.labels[max(index, 0)]  # before the first row: the first row's label
        covering = np.flatnonzero((self.times <= t + eps) & (self.ends > t + eps))
        return self.labels[int(covering[-1])] if covering.size else self.default


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which became part of the first
        # column's name: "no column video (columns: video, ...)"
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = [name.strip() for name in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read labels {path}: {error}") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    return header, rows


def _number(value: str, where: str) -> float:
    """A time in seconds. ``nan`` and ``inf`` parse as floats but are no time: ``nan`` passes every order check
    (a cry from nan to 3 s was kept, matched nothing, and ``cryedge eval`` counted it missed)."""
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {value!r} is not a finite number of seconds")
    if number < 0:  # a cry from -2 s was kept as one from the start, and judged as labelled
        raise DataError(f"{where}: {value!r} is before the clip's start (times are 0 s or more)")
    return number


def read_interval_labels(path: Path, default: str, label_column: str = "label", group_by: str = "subject") -> dict[str, VideoLabels]:
    """An intervals CSV (``video,start_s,end_s,label[,subject][,condition]``) by video file name.

    ``group_by="subject"`` groups by the subject column when there is one, else by video. A video is filmed in one
    condition (``cryedge eval`` gives figures per condition): two different ones for a video are refused.
    """
    header, rows = _read_csv(path)
    missing = [name for name in ("video", "start_s", "end_s", label_column) if name not in header]
    if missing:
        raise DataError(f"labels {path}: no column {', '.join(missing)} (columns: {', '.join(header) or 'none'}); "
                        f"expected video,start_s,end_s,{label_column}")
    by_video: dict[str, list] = {}
    groups: dict[str, str] = {}
    conditions: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        where = f"labels {path} line {line}"
        start, end = _number(row["start_s"], where), _number(row["end_s"], where)
        if end <= start:
            raise DataError(f"{where}: end_s {end} is not after start_s {start}")
        if not row[label_column]:
            raise DataError(f"{where}: empty {label_column}")
        by_video.setdefault(row["video"], []).append((start, end, row[label_column]))
        groups[row["video"]] = (row.get("subject") if group_by == "subject" else None) or Path(row["video"]).stem
        if row.get("condition"):
            if conditions.setdefault(row["video"], row["condition"]) != row["condition"]:
                raise DataError(f"{where}: condition {row['condition']!r} for {row['video']}, which an earlier row "
                                f"gives {conditions[row['video']]!r} (one condition a video)")
    if not by_video:
        raise DataError(f"labels {path} has no rows")
    result = {}
    for video, runs in by_video.items():
        runs.sort()
        result[video] = VideoLabels(video, groups[video], np.array([r[0] for r in runs]), np.array([r[1] for r in runs]),
                                    tuple(r[2] for r in runs), default, conditions.get(video))
    return result


def read_frame_labels(folder: Path, videos: list[Path], label_column: str = "label") -> dict[str, VideoLabels]:
    """Per-video CSVs (``NAME.csv`` for ``NAME.mp4``) of time and label rows, by video file name."""
    result = {}
    for video in videos:
        path = folder / f"{video.stem}.csv"
        if not path.is_file():
            continue
        header, rows = _read_csv(path)
        lower = {name.lower(): name for name in header}
        time_column = next((lower[name] for name in TIME_COLUMNS if name in lower), None)
        if time_column is None:
            raise DataError(f"labels {path}: no time column (one of {', '.join(TIME_COLUMNS)}); columns: {', '.join(header)}")
        if label_column not in header:
            raise DataError(f"labels {path}: no label column {label_column!r} (columns: {', '.join(header)}); pass --label-column")
        factor = TIME_COLUMNS[time_column.lower()]
        times = np.array([_number(row[time_column], f"labels {path}") * factor for row in rows])
        if times.size == 0:
            raise DataError(f"labels {path} has no rows")
        order = np.argsort(times, kind="stable")
        result[video.name] = VideoLabels(video.name, video.stem, times[order], None,
                                         tuple(rows[i][label_column] for i in order), "")
    if not result:
        raise DataError(f"labels folder {folder} has no CSV named like a video ({', '.join(v.stem for v in videos[:3])}.csv ...)")
    return result


def read_labels(labels: Path, videos_dir: Path, default: str = "not_crying", label_column: str = "label",
                group_by: str = "subject") -> dict[str, VideoLabels]:
    """Labels of either layout; every labelled video must be in ``videos_dir``."""
    labels, videos_dir = Path(labels), Path(videos_dir)
    if not videos_dir.is_dir():
        raise DataError(f"videos folder {videos_dir} does not exist")
    if labels.is_dir():
        videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise DataError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {videos_dir}")
        return read_frame_labels(labels, videos, label_column)
    if not labels.is_file():
        raise DataError(f"labels {labels} do not exist (an intervals CSV or a folder of per-video CSVs)")
    result = read_interval_labels(labels, default, label_column, group_by)
    for video in result:
        if not (videos_dir / video).is_file():
            raise DataError(f"video {video} named in {labels} is not in {videos_dir}")
    return result


def media_duration(path: Path) -> float | None:
    """A video's or sound file's duration in seconds (``ffprobe``); None when it cannot tell."""
    import shutil
    import subprocess

    probe = shutil.which("ffprobe")
    if probe is None:
        return None
    try:
        found = subprocess.run([probe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                               capture_output=True, text=True, timeout=30)
        duration = float(found.stdout.strip())
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return duration if found.returncode == 0 and math.isfinite(duration) and duration > 0 else None


def check_within_clips(labels: dict[str, VideoLabels], folder: Path, labels_path: Path) -> None:
    """``check_within`` for every labelled clip in ``folder``, their durations from ``ffprobe`` (before any is decoded)."""
    for video, truth in sorted(labels.items()):
        if (Path(folder) / video).is_file():
            check_within(truth, media_duration(Path(folder) / video), labels_path)


def check_within(truth: VideoLabels, duration: float | None, labels_path: Path) -> None:
    """DataError for an interval that starts after its clip's ``duration`` ends: it labels nothing, and said nothing
    (times in milliseconds, or another clip's). None: the duration is not known, nothing to check."""
    if truth.ends is None or duration is None:
        return
    for start, end, name in zip(truth.times, truth.ends, truth.labels, strict=True):
        if start >= duration:
            raise DataError(f"labels {labels_path}: {truth.video}'s interval {start:g}-{end:g} s ({name}) starts after "
                            f"the clip ends ({duration:.3g} s): are its times in seconds, of this clip?")


# --- features ----------------------------------------------------------------------------------

@dataclass
class VideoFeatures:
    video: str
    features: np.ndarray  # (frames, F) float32
    times: np.ndarray  # (frames,) seconds from the first frame
    has_face: np.ndarray  # (frames,) bool
    fps: float


def video_features(path: Path, spec, extractor_options: dict | None = None, exposure=None) -> VideoFeatures:
    """Every frame's feature vector through the device's exposure stage, extractor and features (a fresh tracker a video).

    ``exposure``: an ``edge.exposure.ExposureStage`` (default: the daemon's default settings).
    """
    from dataclasses import replace

    from edge.errors import SourceError
    from edge.exposure import ExposureStage
    from edge.features import frame_features
    from edge.landmarks import LandmarkExtractor
    from edge.source import FileSource

    if path.stat().st_size == 0:
        raise DataError(f"video {path} is empty: no frames")
    source = FileSource(path, realtime=False)
    try:
        source.open()
    except SourceError as error:
        raise DataError(str(error)) from None
    exposure = exposure if exposure is not None else ExposureStage()
    rows, times, faces = [], [], []
    first = None
    try:
        with LandmarkExtractor(mode="video", **(extractor_options or {})) as extractor:
            while (frame := source.read()) is not None:
                first = frame.t if first is None else first
                image, _ = exposure.process(frame.image)
                landmarks = extractor.extract(frame if image is frame.image else replace(frame, image=image))
                rows.append(frame_features(landmarks, spec))
                times.append(frame.index / source.file_fps)
                faces.append(landmarks.has_face)
                del frame
    finally:
        fps = float(source.file_fps)
        source.close()
    if not rows:
        raise DataError(f"video {path} has no frames")
    return VideoFeatures(path.name, np.stack(rows).astype(np.float32), np.array(times), np.array(faces, bool), fps)


def windows_of(features: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows (N, window, F) and the index of each window's last frame (N,); pure."""
    if len(features) < window:
        return np.zeros((0, window, features.shape[1]), np.float32), np.zeros(0, int)
    ends = np.arange(window - 1, len(features), stride)
    return np.stack([features[end - window + 1 : end + 1] for end in ends]).astype(np.float32), ends


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    videos: np.ndarray
    t_end: np.ndarray
    labels: tuple[str, ...]
    spec: str
    normalization: str
    window: int
    stride: int
    fps: float
    frames: int
    frames_without_face: int
    faceless_by_video: dict

    def save(self, path: Path) -> None:
        path = npz_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, dict(
            x=self.x, y=self.y, groups=self.groups, videos=self.videos, t_end=self.t_end,
            labels=np.array(self.labels), spec=np.array(self.spec), normalization=np.array(self.normalization),
            window=np.array(self.window), stride=np.array(self.stride), fps=np.array(self.fps),
            frames=np.array(self.frames), frames_without_face=np.array(self.frames_without_face),
        ))


def build(videos_dir: Path, labels_path: Path, spec_name: str = "openpose-face70-body8", normalization: str = "minmax",
          window: int = 10, stride: int = 1, positive: str | None = None, default_label: str = "not_crying",
          label_column: str = "label", extractor_options: dict | None = None, progress: bool = True,
          group_by: str = "subject") -> Dataset:
    """Windows of every labelled video. ``positive`` makes it binary: [not-positive, positive]."""
    from edge.features import get_spec

    spec = get_spec(spec_name, normalization)
    if window < 1 or stride < 1:
        raise DataError(f"window ({window}) and stride ({stride}) must be at least 1")
    by_video = read_labels(labels_path, videos_dir, default_label, label_column, group_by)
    bar = Progress(len(by_video), "dataset") if progress else None
    parts = []
    frames = faceless = 0
    faceless_by_video = {}
    fps_seen = set()
    for number, (video, truth) in enumerate(sorted(by_video.items())):
        result = video_features(Path(videos_dir) / video, spec, extractor_options)
        check_within(truth, len(result.features) / result.fps if result.fps > 0 else None, labels_path)
        frames += len(result.features)
        faceless_by_video[video] = int((~result.has_face).sum())
        faceless += faceless_by_video[video]
        fps_seen.add(round(result.fps, 3))
        x, ends = windows_of(result.features, window, stride)
        names = [truth.label_at(float(result.times[end])) for end in ends]
        parts.append((x, names, truth.group, video, result.times[ends]))
        if bar:
            bar.update(number + 1, video)
    all_names = [name for part in parts for name in part[1]]
    if not all_names:
        raise DataError(f"no windows: every video is shorter than the window of {window} frames")
    if positive is not None:
        if positive not in all_names:
            raise DataError(f"positive label {positive!r} labels no window; labels seen: {', '.join(sorted(set(all_names)))}")
        negative = default_label if default_label != positive else f"not_{positive}"
        labels = (negative, positive)
        y = np.array([int(name == positive) for name in all_names], np.int64)
    else:
        labels = tuple(sorted(set(all_names)))
        y = np.array([labels.index(name) for name in all_names], np.int64)
    return Dataset(
        x=np.concatenate([p[0] for p in parts]), y=y,
        groups=np.array([p[2] for p in parts for _ in p[1]]), videos=np.array([p[3] for p in parts for _ in p[1]]),
        t_end=np.concatenate([p[4] for p in parts]).astype(np.float32), labels=labels, spec=spec.name,
        normalization=normalization, window=window, stride=stride,
        fps=float(next(iter(fps_seen))) if len(fps_seen) == 1 else 0.0,
        frames=frames, frames_without_face=faceless, faceless_by_video=faceless_by_video,
    )


# --- sound --------------------------------------------------------------------------------------

def sound_track(path: Path, rate: int) -> np.ndarray:
    """All of a file's sound (an audio file or a video's sound track) through the device's capture, mono at ``rate``."""
    from edge.audio_source import FfmpegAudioSource
    from edge.errors import SourceError

    source = FfmpegAudioSource(path, rate, realtime=False)
    try:
        source.open()
        chunks = []
        while not source.finished:
            chunk = source.read(timeout=5.0)
            if chunk is not None:
                chunks.append(chunk.samples)
    except SourceError as error:
        raise DataError(str(error)) from None
    finally:
        source.close()
    if not chunks:
        raise DataError(f"{path} has no sound")
    return np.concatenate(chunks)


@dataclass
class SoundDataset:
    x: np.ndarray  # (N, frames, bands) features, or (N, samples) for a waveform model
    y: np.ndarray
    groups: np.ndarray
    videos: np.ndarray
    t_end: np.ndarray
    labels: tuple[str, ...]
    audio: object  # edge.card.AudioSpec
    kind: str

    def save(self, path: Path) -> None:
        path = npz_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, dict(x=self.x, y=self.y, groups=self.groups, videos=self.videos, t_end=self.t_end,
                            labels=np.array(self.labels), audio=np.array(self.audio.model_dump_json()),
                            kind=np.array(self.kind)))


def build_sound(files_dir: Path, labels_path: Path, audio=None, kind: str = "audio-window", positive: str | None = None,
                default_label: str = "not_crying", label_column: str = "label", group_by: str = "subject",
                progress: bool = True) -> SoundDataset:
    """Windows of every labelled file's sound, every ``audio.hop_seconds``, through the device's front end.

    A window's label is the label at its last sample, as the device attributes a score to the window's end.
    """
    from edge.audio import AudioWindow
    from edge.audio_features import AudioFrontEnd, normalize_fixed
    from edge.card import AudioSpec

    audio = audio or AudioSpec()
    by_file = read_labels(labels_path, files_dir, default_label, label_column, group_by)
    bar = Progress(len(by_file), "sound dataset") if progress else None
    xs, names, groups, files, ends = [], [], [], [], []
    for number, (name, truth) in enumerate(sorted(by_file.items())):
        samples = sound_track(Path(files_dir) / name, audio.rate)
        check_within(truth, samples.size / audio.rate, labels_path)
        window = AudioWindow(audio.window_samples, audio.rate, audio.hop_seconds)
        front_end = AudioFrontEnd(audio)  # each file a sound of its own, its windows in order, as the device hears it
        for end, waveform in window.push(samples):
            xs.append(waveform if kind == "audio-waveform" else front_end(waveform))
            t = end / audio.rate
            names.append(truth.label_at(t - 1e-3))
            groups.append(truth.group)
            files.append(name)
            ends.append(t)
        if bar:
            bar.update(number + 1, name)
    if not xs:
        raise DataError(f"no windows: every file is shorter than a window of {audio.window_samples / audio.rate:g} s")
    if positive is not None:
        if positive not in names:
            raise DataError(f"positive label {positive!r} labels no window; labels seen: {', '.join(sorted(set(names)))}")
        labels = (default_label if default_label != positive else f"not_{positive}", positive)
        y = np.array([int(n == positive) for n in names], np.int64)
    else:
        labels = tuple(sorted(set(names)))
        y = np.array([labels.index(n) for n in names], np.int64)
    x = np.stack(xs).astype(np.float32)
    if kind == "audio-window" and audio.normalization == "none":
        # one mean and scale for every value, from this data, on the card: the device applies the same two numbers
        # of the spectrum's values: pitch channels (0 dB: not pitched) are scaled with them, not moved
        spectrum = x[..., :audio.spectrum_size]
        mean, std = float(spectrum.mean()), max(float(spectrum.std()), 1e-6)
        audio = audio.model_copy(update={"normalization": "fixed", "mean": round(mean, 4), "std": round(std, 4)})
        x = normalize_fixed(x, audio)
    return SoundDataset(x, y, np.array(groups), np.array(files), np.array(ends, np.float32), labels, audio, kind)


def load(path: Path) -> dict:
    """A dataset ``.npz`` as a dict of arrays and plain metadata; DataError when it is not one."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"dataset {path} is a folder; give the .npz that 'cryedge dataset build' wrote")
    if not path.is_file():
        raise DataError(f"dataset {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):  # a lone .npy array
                raise ValueError("a single array, not an .npz of arrays")
            arrays = {name: data[name] for name in data.files}
    except NPZ_ERRORS as error:
        raise DataError(f"cannot read dataset {path}: {npz_error(error)}") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(f"dataset {path} has no '{name}' array (make one with 'cryedge dataset build')")
    if len(arrays["x"]) != len(arrays["y"]):
        raise DataError(f"dataset {path}: x has {len(arrays['x'])} rows, y {len(arrays['y'])}")
    if "groups" not in arrays:
        arrays["groups"] = np.array([str(i) for i in range(len(arrays["y"]))])
    return arrays


# --- CLI ---------------------------------------------------------------------------------------

def _build_command(args) -> int:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # fails now, not after every video is read
    if args.audio:
        from pydantic import ValidationError

        from edge.card import AudioSpec

        kind = "audio-waveform" if args.audio_features == "waveform" else "audio-window"
        try:
            spec = (AudioSpec(hop_seconds=args.hop_seconds) if kind == "audio-waveform" else
                    AudioSpec(features=args.audio_features, mel_bands=args.mel_bands, hop_seconds=args.hop_seconds,
                              background=args.audio_background, pitch_bins=args.audio_pitch_bins,
                              pitch_bands=args.audio_pitch_bands))
        except ValidationError as error:
            first = error.errors()[0]
            option = {"hop_seconds": "--hop-seconds", "mel_bands": "--mel-bands"}.get(first["loc"][0] if first["loc"] else "")
            what = f"{option} {first['input']}" if option else "audio front end"
            raise DataError(f"{what}: {first['msg'].removeprefix('Value error, ')}") from None
        sound = build_sound(args.videos_dir, args.labels, spec, kind, args.positive, args.default_label,
                            args.label_column, args.group_by)
        sound.save(args.output)
        counts = ", ".join(f"{name} {int((sound.y == i).sum())}" for i, name in enumerate(sound.labels))
        print(f"{args.output}: {len(sound.y)} sound windows of {'x'.join(map(str, sound.x.shape[1:]))} ({counts}); "
              f"{len(set(sound.groups.tolist()))} groups")
        return 0
    dataset = build(args.videos_dir, args.labels, args.spec, args.normalization, args.window, args.stride,
                    args.positive, args.default_label, args.label_column, progress=True, group_by=args.group_by)
    dataset.save(args.output)
    counts = ", ".join(f"{name} {int((dataset.y == i).sum())}" for i, name in enumerate(dataset.labels))
    print(f"{args.output}: {len(dataset.y)} windows of {dataset.window} x {dataset.x.shape[2]} ({counts}); "
          f"{len(set(dataset.groups.tolist()))} groups; {dataset.frames} frames, "
          f"{dataset.frames_without_face} without a face")
    for video, count in sorted(dataset.faceless_by_video.items()):
        if count:
            print(f"  {video}: {count} frames without a face")
    return 0


def add_commands(subparsers) -> None:
    from convert.arguments import whole
    from edge.features import NORMALIZATIONS, SPECS

    dataset = subparsers.add_parser("dataset", help="build training data from labelled videos")
    commands = dataset.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)
    parser = commands.add_parser(
        "build", help="labelled videos -> windows of the device's features (.npz)",
        description="Run every labelled video through the device's landmarks and features and cut sliding windows; "
                    "a window's label is its last frame's.")
    parser.add_argument("videos_dir", type=Path, metavar="VIDEOS_DIR")
    parser.add_argument("labels", type=Path, metavar="LABELS",
                        help="intervals CSV (video,start_s,end_s,label[,subject]) or a folder of per-video CSVs (time,label)")
    parser.add_argument("--spec", default="openpose-face70-body8", choices=sorted(SPECS))
    parser.add_argument("--normalization", default="minmax", choices=NORMALIZATIONS)
    parser.add_argument("--window", type=whole(1), default=10, help="frames a window (default 10)")
    parser.add_argument("--stride", type=whole(1), default=1, help="frames between window starts (default 1)")
    parser.add_argument("--positive", default=None, help="make it binary: this label against all others (e.g. crying)")
    parser.add_argument("--default-label", default="not_crying", help="label of frames outside every interval")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--group-by", choices=("subject", "video"), default="subject",
                        help="groups for a split: the intervals CSV's subject column (default, when present) or the video")
    parser.add_argument("--audio", action="store_true",
                        help="windows of the files' sound (audio files or videos' sound tracks) through the device's "
                             "audio front end, not of the pictures")
    parser.add_argument("--audio-features", choices=("log-mel", "mfcc", "waveform"), default="log-mel",
                        help="with --audio: what a window holds (waveform: the samples, for a YAMNet-style model)")
    parser.add_argument("--mel-bands", type=whole(1), default=64, help="with --audio: mel bands (default 64)")
    parser.add_argument("--hop-seconds", type=float, default=0.5, help="with --audio: a window this often (default 0.5)")
    parser.add_argument("--audio-background", choices=("none", "floor"), default="none",
                        help="with --audio: subtract a per-band background floor followed through each file (the "
                             "default model's front end), or not (default none)")
    parser.add_argument("--audio-pitch-bins", type=whole(0), default=0,
                        help="with --audio: append to each frame how pitched it is at a cry's f0 (250-700 Hz) in this "
                             "many bins (docs/audio.md; default 0, none)")
    parser.add_argument("--audio-pitch-bands", type=whole(1), default=1,
                        help="with --audio-pitch-bins: parts of the spectrum whose pitch is measured apart (default 1)")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="DATA.npz")
    parser.set_defaults(handler=_build_command)
