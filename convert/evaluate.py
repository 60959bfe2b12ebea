"""``cryedge eval``: judge a model on labelled footage with the daemon's own pipeline, as events.

Each video goes through ``edge.daemon.build_pipeline`` (the same landmarks, features, window, model
and alarm code and settings as ``cryedge run``), decoded as fast as it goes. The alarm's episodes are
compared with the crying intervals of the truth (the intervals CSV ``cryedge dataset build`` reads:
``video,start_s,end_s,label[,subject]``):

- a cry (one run of the positive label) is *found* when an episode overlaps it (``tolerance``
  seconds of slack each side); its start and end errors are the first overlapping episode's start
  and the last one's end minus the truth's (positive: late);
- an episode that overlaps no cry is a *false alarm*; alarm-on time outside every cry (widened by
  the tolerance) is *false-alarm time*; both are also given per hour of footage;
- per clip: *blind* frames, where the landmarks the model needs (the face; the body too for a model that
  uses it) were not found or the landmark stage failed (*landmark faults*, counted apart too); the share
  of frames with a face and with a body, of windows the model could see
  (status ``ok``) and of windows scored as crying (ok and at or above the ON threshold), also by the
  truth's label at the window's end (how often a yawn is scored as crying). With ``--fusion`` other
  than ``vision`` these are the fused scores the alarm followed (the sound's among them), not the
  picture's alone;
- how sure the counts are: the found share with its 95% Wilson interval, the false alarms an hour with the
  exact (Garwood) 95% Poisson interval: 13 false alarms in 53 minutes is 14.6 an hour, and anything from 7.8
  to 25 an hour would give that count as often as not;
- with a ``condition`` column in the labels (``cryedge suite build`` writes one: night, body hidden, hard
  negatives, ...) all of these per condition too, since a model is judged where it breaks.

With ``--fusion`` other than ``vision`` only clips with sound are judged: when none of them has a sound track
the command stops before judging any (one line naming them); a clip without one, or whose sound was not
heard, is left out of the figures and named (``left_out`` in ``eval.json``, a line under the table), never
judged on its picture under an audio or fused heading.

Outputs: ``eval.json`` (everything), ``eval.md`` (the table, also printed) and ``eval.png`` (score,
alarm state and truth over time, one row per clip) in ``--output-dir``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError
from edge.files import replacing

TOLERANCE_S = 1.5
log = logging.getLogger(__name__)
PLOT_NAME, JSON_NAME, TABLE_NAME = "eval.png", "eval.json", "eval.md"


# --- matching (pure) ---------------------------------------------------------------------------

def merge_intervals(intervals: list[tuple[float, float]], gap: float = 1e-3) -> list[tuple[float, float]]:
    """Sorted intervals with touching or overlapping ones joined."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def overlap(a: tuple[float, float], b: tuple[float, float], slack: float = 0.0) -> bool:
    return a[0] < b[1] + slack and b[0] < a[1] + slack


def covered_seconds(intervals: list[tuple[float, float]], outside: list[tuple[float, float]]) -> float:
    """Seconds of ``intervals`` that fall outside every interval of ``outside``."""
    total = 0.0
    for start, end in intervals:
        inside = sum(max(0.0, min(end, b) - max(start, a)) for a, b in merge_intervals(outside))
        total += max(0.0, (end - start) - inside)
    return total


@dataclass
class Match:
    """Episodes against truth for one clip; seconds throughout."""

    cries: int
    found: int
    missed: int
    start_errors: list[float]  # per found cry: episode start - truth start
    end_errors: list[float]
    false_alarms: int
    false_alarm_seconds: float


def match_episodes(truth: list[tuple[float, float]], episodes: list[tuple[float, float]],
                   tolerance: float = TOLERANCE_S) -> Match:
    """Which cries the episodes found, how far off they were, and which episodes were false alarms."""
    truth = merge_intervals(truth)
    start_errors, end_errors = [], []
    for cry in truth:
        hits = [e for e in episodes if overlap(e, cry, tolerance)]
        if hits:
            start_errors.append(round(hits[0][0] - cry[0], 3))
            end_errors.append(round(hits[-1][1] - cry[1], 3))
    false_alarms = sum(1 for e in episodes if not any(overlap(e, cry, tolerance) for cry in truth))
    widened = [(a - tolerance, b + tolerance) for a, b in truth]
    return Match(len(truth), len(start_errors), len(truth) - len(start_errors), start_errors, end_errors,
                 false_alarms, round(covered_seconds(episodes, widened), 3))


# --- how sure a count is (pure) ------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a share ``k`` of ``n`` (95% at the default ``z``); None for n = 0."""
    if n <= 0:
        return None
    share, z2 = k / n, z * z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _poisson_at_most(k: int, mean: float) -> float:
    """P(X <= k) for X ~ Poisson(``mean``), summed in logs (k of thousands, means far from 1)."""
    if mean <= 0:
        return 1.0
    logs = [i * math.log(mean) - mean - math.lgamma(i + 1) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def poisson_interval(k: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Garwood) interval of a Poisson mean given ``k`` events: the means under which seeing k or
    more, or k or fewer, has probability (1 - level) / 2 each. Solved by bisection (no scipy on the host)."""
    tail = (1 - level) / 2

    def solve(above) -> float:  # the mean where above(mean) turns True, above() False at 0 and True far out
        low, high = 0.0, k + 10 * math.sqrt(k + 1) + 10
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (low, middle) if above(middle) else (middle, high)
        return (low + high) / 2

    lower = 0.0 if k == 0 else solve(lambda mean: 1 - _poisson_at_most(k - 1, mean) >= tail)
    upper = solve(lambda mean: _poisson_at_most(k, mean) <= tail)
    return lower, upper


# --- running the pipeline ----------------------------------------------------------------------

@dataclass
class ClipResult:
    """One clip's evaluation; ``trace`` holds the per-window series for the plot."""

    video: str
    duration_s: float
    frames: int
    truth: list[tuple[float, float]]
    episodes: list[dict]  # start_s, end_s, end_reason
    match: Match
    face_share: float
    body_share: float
    blind_frames: int  # frames without the landmarks the model needs (no face, no body it uses, or a fault)
    landmark_faults: int  # frames the landmark stage raised on (MediaPipe failed): lost, not looked at
    seen_share: float  # windows whose score could see (status ok)
    scored_crying_share: float  # windows ok and >= the ON threshold
    by_label: dict  # truth label at the window's end -> {windows, scored_crying}
    statuses: dict  # Score.status -> windows
    trace: dict = field(default_factory=dict, repr=False)
    sound_heard: bool | None = None  # with --fusion other than vision: whether any of the clip's sound was heard
    condition: str | None = None  # the labels' condition column, if any

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("trace")
        return data


def clip_truth(labels, positive: str) -> list[tuple[float, float]]:
    """The positive label's intervals of one video's ``VideoLabels`` (intervals layout)."""
    if labels is None:
        return []
    if labels.ends is None:
        raise DataError(f"labels of {labels.video}: cryedge eval needs an intervals CSV (video,start_s,end_s,label)")
    return merge_intervals([(float(s), float(e)) for s, e, name in zip(labels.times, labels.ends, labels.labels, strict=True)
                            if name == positive])


def evaluate_clip(video: Path, pipeline, labels=None, positive: str = "crying", tolerance: float = TOLERANCE_S,
                  default_label: str = "not_crying", progress=None, hearing=None) -> ClipResult:
    """Run ``video`` through ``pipeline`` (fresh: its window and alarm start empty) and judge its episodes.

    With ``hearing`` (``edge.audio.Hearing`` of the clip's own sound track) the alarm follows the fused scores,
    and the per-window figures and the plot are theirs.
    """
    from edge.errors import SourceError
    from edge.source import FileSource

    source = FileSource(video, realtime=False)
    try:
        source.open()
    except SourceError as error:
        raise DataError(str(error)) from None
    total_frames = _frame_count(video)
    faces = bodies = frames = blind = faults = 0
    needs_body = "body" in pipeline.card.required_parts
    t0 = last_t = None
    fused = []  # with hearing: the scores the alarm followed at the latest frame (what the table judges)
    if hearing is not None:
        hearing.video_origin = lambda: t0

        def fuse(vision, t):
            scores = hearing.fuse(vision, t)
            fused.extend(scores)
            return scores

        pipeline.fuse = fuse
    times, probabilities, statuses, crying = [], [], [], []
    events, decided = [], []  # decided: the frame time each event was raised at (an alert goes out then)
    try:
        while (frame := source.read()) is not None:
            t0 = frame.t if t0 is None else t0
            last_t = frame.t
            result = pipeline.process(frame)
            frames += 1
            faces += result.face_seen
            bodies += result.body_seen
            faults += result.landmark_fault
            blind += not result.face_seen or (needs_body and not result.body_seen)
            events += result.events
            decided += [frame.t] * len(result.events)
            followed = list(fused) if hearing is not None else [result.score] if result.score is not None else []
            fused.clear()
            for score in followed:
                times.append(score.t - t0)
                probabilities.append(score.probability)
                statuses.append(score.status)
                crying.append(pipeline.alarm.crying)
            if progress is not None and (frames % 25 == 0 or frames == total_frames):
                progress(frames, total_frames)
    finally:
        source.close()
    if not frames:
        raise DataError(f"video {video} has no frames")
    finished = pipeline.alarm.finish(last_t)
    events += finished
    decided += [last_t] * len(finished)
    duration = frames / source.file_fps
    episodes = [{"start_s": round(s.t - t0, 3), "end_s": round(e.t - t0, 3), "end_reason": e.reason,
                 "start_decided_s": round(ds - t0, 3), "end_decided_s": round(de - t0, 3)}
                for s, e, ds, de in zip(events[::2], events[1::2], decided[::2], decided[1::2], strict=True)]
    truth = clip_truth(labels, positive)
    match = match_episodes(truth, [(e["start_s"], e["end_s"]) for e in episodes], tolerance)

    times_a, p = np.array(times), np.array(probabilities)
    ok = np.array([s == "ok" for s in statuses], bool)
    scored = ok & (p >= pipeline.alarm.on_threshold)
    names = np.array([labels.label_at(float(t)) if labels is not None else default_label for t in times_a])
    by_label = {str(name): {"windows": int((names == name).sum()), "scored_crying": _share(scored[names == name])}
                for name in sorted(set(names.tolist()))}
    return ClipResult(
        video=video.name, duration_s=round(duration, 3), frames=frames, truth=truth, episodes=episodes, match=match,
        face_share=round(faces / frames, 4), body_share=round(bodies / frames, 4), blind_frames=blind,
        landmark_faults=faults, seen_share=_share(ok),
        scored_crying_share=_share(scored), by_label=by_label,
        statuses={s: statuses.count(s) for s in sorted(set(statuses))},
        trace={"t": times_a, "p": p, "ok": ok, "crying": np.array(crying, bool)},
    )


def _share(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 4) if mask.size else 0.0


def _frame_count(video: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()


def by_condition(results: list[ClipResult]) -> dict[str, dict]:
    """``totals`` of each condition's clips (the labels' condition column; "-" for a clip with none), or {} when no
    clip has one."""
    if all(r.condition is None for r in results):
        return {}
    names = sorted({r.condition or "-" for r in results})
    return {name: totals([r for r in results if (r.condition or "-") == name]) for name in names}


def totals(results: list[ClipResult], left_out: dict[str, str] | None = None) -> dict:
    """The whole footage: counts summed, shares weighted by frames or windows, errors as medians and maxima,
    the found share's and the false-alarm rate's 95% intervals.

    ``left_out``: clip -> why it was not judged (no sound to judge a fusion with); named, counted nowhere."""
    hours = sum(r.duration_s for r in results) / 3600
    frames = sum(r.frames for r in results)
    windows = sum(len(r.trace["t"]) for r in results)
    starts = [e for r in results for e in r.match.start_errors]
    ends = [e for r in results for e in r.match.end_errors]
    false_alarms = sum(r.match.false_alarms for r in results)
    fa_seconds = sum(r.match.false_alarm_seconds for r in results)
    by_label: dict[str, dict] = {}
    for r in results:
        for name, v in r.by_label.items():
            entry = by_label.setdefault(name, {"windows": 0, "crying_windows": 0.0})
            entry["windows"] += v["windows"]
            entry["crying_windows"] += v["scored_crying"] * v["windows"]

    def weighted(attr: str, weights) -> float:
        total = sum(weights(r) for r in results)
        return round(sum(getattr(r, attr) * weights(r) for r in results) / total, 4) if total else 0.0

    cries, found = sum(r.match.cries for r in results), sum(r.match.found for r in results)
    found_interval = wilson_interval(found, cries)
    fa_interval = poisson_interval(false_alarms)
    return {
        "clips": len(results), "hours": round(hours, 4), "frames": frames, "windows": windows,
        "cries": cries, "found": found,
        "found_share_ci95": [round(v, 4) for v in found_interval] if found_interval else None,
        "missed": sum(r.match.missed for r in results),
        "start_error_median_s": round(float(np.median(starts)), 3) if starts else None,
        "start_error_max_abs_s": round(float(np.max(np.abs(starts))), 3) if starts else None,
        "end_error_median_s": round(float(np.median(ends)), 3) if ends else None,
        "end_error_max_abs_s": round(float(np.max(np.abs(ends))), 3) if ends else None,
        "false_alarms": false_alarms, "false_alarms_per_hour": round(false_alarms / hours, 2) if hours else 0.0,
        "false_alarms_per_hour_ci95": [round(v / hours, 2) for v in fa_interval] if hours else None,
        "false_alarm_minutes_per_hour": round(fa_seconds / 60 / hours, 2) if hours else 0.0,
        "blind_frames": sum(r.blind_frames for r in results), "landmark_faults": sum(r.landmark_faults for r in results),
        "face_share": weighted("face_share", lambda r: r.frames), "body_share": weighted("body_share", lambda r: r.frames),
        "seen_share": weighted("seen_share", lambda r: len(r.trace["t"])),
        "scored_crying_share": weighted("scored_crying_share", lambda r: len(r.trace["t"])),
        "by_label": {name: {"windows": v["windows"], "scored_crying": round(v["crying_windows"] / v["windows"], 4)}
                     for name, v in sorted(by_label.items()) if v["windows"]},
        "left_out": dict(sorted((left_out or {}).items())),
    }


# --- reporting ---------------------------------------------------------------------------------

def _errors(values: list[float]) -> str:
    return " ".join(f"{v:+.1f}" for v in values) if values else "-"


def _error_range(median, worst) -> str:
    return "-" if median is None else f"med {median:+.2f}, max {worst:.2f}"


def _found(t: dict) -> str:
    """``found of cries (share, 95% interval)``."""
    if not t["cries"]:
        return "0 of 0"
    low, high = t["found_share_ci95"]
    return f"{t['found']} of {t['cries']} ({100 * t['found'] / t['cries']:.0f}%, {100 * low:.0f}-{100 * high:.0f}%)"


def _false_alarms(t: dict) -> str:
    """``count (rate an hour, its 95% interval)``."""
    if t["false_alarms_per_hour_ci95"] is None:
        return str(t["false_alarms"])
    low, high = t["false_alarms_per_hour_ci95"]
    return f"{t['false_alarms']} ({t['false_alarms_per_hour']:.1f}/h, {low:.1f}-{high:.1f}/h)"


def markdown_table(results: list[ClipResult], total: dict, conditions: dict[str, dict] | None = None) -> str:
    """Per clip and in total, then per condition (``by_condition``) when the labels give one; errors in seconds
    (positive: late), shares in percent, blind frames of all frames, 95% intervals of the found share and of the
    false alarms an hour."""
    head = ("| clip | s | cries | found | missed | start err s | end err s | false alarms | FA min/h "
            "| blind frames | landmark faults | face | body | seen | scored crying |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        m = r.match
        fa_per_hour = m.false_alarm_seconds / 60 / (r.duration_s / 3600) if r.duration_s else 0.0
        rows.append(f"| {r.video} | {r.duration_s:.0f} | {m.cries} | {m.found} | {m.missed} | {_errors(m.start_errors)} "
                    f"| {_errors(m.end_errors)} | {m.false_alarms} | {fa_per_hour:.1f} | {r.blind_frames} of {r.frames} "
                    f"| {r.landmark_faults} | {100 * r.face_share:.0f}% "
                    f"| {100 * r.body_share:.0f}% | {100 * r.seen_share:.0f}% | {100 * r.scored_crying_share:.0f}% |")
    t = total
    rows.append(f"| **total** ({t['clips']} clips) | {3600 * t['hours']:.0f} | {t['cries']} | {t['found']} | {t['missed']} "
                f"| {_error_range(t['start_error_median_s'], t['start_error_max_abs_s'])} "
                f"| {_error_range(t['end_error_median_s'], t['end_error_max_abs_s'])} | {t['false_alarms']} "
                f"({t['false_alarms_per_hour']:.1f}/h) | {t['false_alarm_minutes_per_hour']:.1f} "
                f"| {t['blind_frames']} of {t['frames']} | {t['landmark_faults']} | {100 * t['face_share']:.0f}% "
                f"| {100 * t['body_share']:.0f}% | {100 * t['seen_share']:.0f}% | {100 * t['scored_crying_share']:.0f}% |")
    sure = (f"\nIn all: cries found {_found(t)}; false alarms {_false_alarms(t)} in {60 * t['hours']:.1f} min "
            "(95% intervals: Wilson for the share, exact Poisson for the rate).\n")
    by_condition = ""
    if conditions:
        by_condition = ("\nBy condition (the labels' condition column):\n\n"
                        "| condition | clips | s | cries found (95%) | start err s | end err s | false alarms (95%) "
                        "| face | body |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(
                            f"| {name} | {c['clips']} | {3600 * c['hours']:.0f} | {_found(c)} "
                            f"| {_error_range(c['start_error_median_s'], c['start_error_max_abs_s'])} "
                            f"| {_error_range(c['end_error_median_s'], c['end_error_max_abs_s'])} | {_false_alarms(c)} "
                            f"| {100 * c['face_share']:.0f}% | {100 * c['body_share']:.0f}% |"
                            for name, c in conditions.items()) + "\n")
    labels = "\n".join(f"| {name} | {v['windows']} | {100 * v['scored_crying']:.0f}% |" for name, v in t["by_label"].items())
    left_out = t.get("left_out") or {}
    note = ("\n**Left out** (not judged, in no figure above): "
            + "; ".join(f"{name}: {why}" for name, why in left_out.items()) + "\n") if left_out else ""
    return (head + "\n" + "\n".join(rows) + "\n" + note + sure + by_condition
            + "\nWindows scored as crying, by the truth's label at the window's end:\n\n"
            "| label | windows | scored crying |\n|---|---|---|\n" + labels + "\n")


def plot(results: list[ClipResult], path: Path, threshold: float, title: str = "") -> Path:
    """One row per clip: the window score, the alarm's episodes (upper half), the truth, where the model could not see."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(results))
    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.2 + 1.5 * rows), sharex=False, squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=False):
        tr = r.trace
        for k, (start, end) in enumerate(r.truth):
            ax.axvspan(start, end, color="tab:green", alpha=0.25, lw=0, label="truth: crying" if k == 0 else None)
        for k, episode in enumerate(r.episodes):  # as the events date them, not when the rule fired
            ax.axvspan(episode["start_s"], episode["end_s"], ymin=0.5, color="tab:red", alpha=0.25, lw=0,
                       label="alarm episode" if k == 0 else None)
        if len(tr["t"]):
            blind = ~tr["ok"]
            if blind.any():
                ax.fill_between(tr["t"], 0, 0.08, where=blind, step="post", color="0.35", lw=0, label="cannot see")
            p = np.where(tr["ok"], tr["p"], np.nan)
            ax.plot(tr["t"], p, color="tab:blue", lw=1.0, label="score")
        ax.axhline(threshold, color="0.4", lw=0.7, ls="--")
        ax.set_xlim(0, max(r.duration_s, 1.0))
        ax.set_ylim(0, 1)
        ax.set_yticks([0, threshold, 1])
        ax.set_title(r.video, fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=4, framealpha=0.8)
    axes[-1, 0].set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- command -----------------------------------------------------------------------------------

def clips_of(videos: Path, labels_path: Path | None, default_label: str) -> tuple[list[Path], dict]:
    """The videos to evaluate and their labels: every video of a folder (unlabelled ones hold no cry), or one file."""
    from convert.dataset import VIDEO_SUFFIXES, check_within_clips, read_interval_labels

    videos = Path(videos)
    if videos.is_file():
        files, folder = [videos], videos.parent
    elif videos.is_dir():
        files, folder = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES), videos
        if not files:
            raise DataError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {videos}")
    else:
        raise DataError(f"{videos} is neither a video nor a folder of videos")
    if labels_path is None:
        labels_path = folder / "labels.csv"
        if not labels_path.is_file():
            raise DataError(f"no truth: give --labels (an intervals CSV: video,start_s,end_s,label), or put labels.csv in {folder}")
    if not Path(labels_path).is_file():
        raise DataError(f"labels {labels_path} do not exist (an intervals CSV: video,start_s,end_s,label)")
    labels = read_interval_labels(Path(labels_path), default_label)
    names = {f.name for f in files}
    missing = sorted(set(labels) - names) if videos.is_dir() else []
    if missing:
        raise DataError(f"video {missing[0]} named in {labels_path} is not in {folder}")
    check_within_clips({name: truth for name, truth in labels.items() if name in names}, folder, labels_path)
    return files, labels


def check_readable(files: list[Path]) -> None:
    """Every video opens and gives a frame, before any is judged: a broken one found an hour into a folder
    cost everything judged until then."""
    import cv2

    from edge.errors import SourceError
    from edge.source import opencv_name

    broken = []
    for video in files:
        try:
            capture = cv2.VideoCapture(opencv_name(video))
        except SourceError as error:
            raise DataError(f"{error}; nothing was judged") from None
        try:
            if not (capture.isOpened() and capture.read()[0]):
                broken.append(video.name)
        finally:
            capture.release()
    if broken:
        raise DataError(f"cannot decode video file {_named(broken)}; nothing was judged")


def run_clip(video: Path, config, model, labels=None, positive: str = "crying", tolerance: float = TOLERANCE_S,
             default_label: str = "not_crying", progress=None) -> ClipResult:
    """One clip through a fresh copy of the daemon's pipeline (``build_pipeline``) for the open ``model``, as ``config`` sets it."""
    from edge.daemon import build_pipeline

    pipeline = build_pipeline(config, model, wall_clock=lambda t: t)
    hearing = None
    try:
        if config.audio.enabled is True:
            from edge.audio import open_hearing
            from edge.config import FileSourceConfig

            clip_config = config.model_copy(deep=True)  # the clip's own sound track, in step with its frames
            clip_config.source = FileSourceConfig(path=video, realtime=False)
            hearing = open_hearing(clip_config, pipeline.alarm.on_threshold)
        result = evaluate_clip(video, pipeline, labels, positive, tolerance, default_label, progress, hearing)
        result.condition = labels.condition if labels is not None else None
        if hearing is not None:
            result.sound_heard = hearing.monitor.chunks > 0
            if not result.sound_heard:  # evaluate leaves it out: no figure may say "fused" of a picture alone
                log.warning("%s: no sound heard (%s)", video.name, hearing.monitor.status.last_error or "nothing came")
        return result
    finally:
        pipeline.close()
        if hearing is not None:
            hearing.close()


def evaluate(videos: Path, labels_path: Path | None, config, positive: str = "crying", tolerance: float = TOLERANCE_S,
             default_label: str = "not_crying", show_progress: bool = False) -> tuple[list[ClipResult], dict, object]:
    """Every clip through a fresh copy of the daemon's pipeline; (per-clip results, totals, model card)."""
    from convert.dataset import Progress
    from edge.model import TFLiteModel

    files, labels = clips_of(videos, labels_path, default_label)
    check_readable(files)
    left_out = {}
    if config.audio.enabled is True:
        silent = without_sound(files, config.fusion.mode)
        left_out = {video.name: "no sound track" for video in silent}
        files = [video for video in files if video not in silent]
    results = []
    with TFLiteModel(config.model.path, num_threads=config.model.num_threads, edgetpu=config.model.edgetpu) as model:
        if positive not in model.card.labels:
            raise DataError(f"positive label {positive!r} is not one of the model's labels {list(model.card.labels)}")
        for number, video in enumerate(files):
            bar = Progress(1, f"[{number + 1}/{len(files)}] {video.name}") if show_progress else None
            progress = (lambda done, total, bar=bar: (setattr(bar, "total", max(1, total)), bar.update(done))) if bar else None
            result = run_clip(video, config, model, labels.get(video.name), positive, tolerance, default_label, progress)
            if result.sound_heard is False:
                left_out[video.name] = "no sound heard"
            else:
                results.append(result)
        card = model.card
    if not results:
        raise DataError(f"--fusion {config.fusion.mode}: no sound heard in {_named(sorted(left_out))}: "
                        "nothing could be judged on it")
    if left_out:
        log.warning("left out of the --fusion %s figures (no sound to judge): %s; %d of %d clips judged",
                    config.fusion.mode, _named(sorted(left_out)), len(results), len(results) + len(left_out))
    return results, totals(results, left_out), card


def without_sound(files: list[Path], mode: str) -> list[Path]:
    """The clips with no sound track; DataError, before any is judged, when that is all of them: ``--fusion``
    ``mode`` would judge their pictures alone (``audio``: nothing) under a heading that says sound."""
    import shutil

    from edge.audio import has_sound_track

    if shutil.which("ffprobe") is None:
        raise DataError(f"--fusion {mode} reads the clips' sound tracks with ffmpeg: ffprobe is not installed "
                        "(apt install ffmpeg)")
    silent = [video for video in files if not has_sound_track(video)]
    if silent and len(silent) == len(files):
        raise DataError(f"--fusion {mode} judges the clips' sound, and {_named([v.name for v in silent])} "
                        f"{'has' if len(silent) == 1 else 'have'} no sound track; nothing was judged "
                        "(--fusion vision judges the picture alone)")
    return silent


def _named(names: list[str]) -> str:
    """``a.mp4``, or ``a.mp4 (and 2 more: b.mp4, c.mp4)``: a folder's worth in one line."""
    if len(names) <= 1:
        return "".join(names)
    rest = names[1:]
    return f"{names[0]} (and {len(rest)} more: {', '.join(rest[:3])}{' ...' if len(rest) > 3 else ''})"


def _eval_command(args) -> int:
    from edge.config import load_config

    # made before the clips are run, so an output that cannot be written fails now, not after them
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    overrides = {"model": {"path": str(args.model)}} if args.model else {}
    if args.fusion != "vision":  # the clips' own sound tracks through the audio model, fused as the daemon fuses
        overrides["audio"] = {"enabled": True, "source": {"type": "video"},
                              **({"model": str(args.audio_model)} if args.audio_model else {})}
        overrides["fusion"] = {"mode": args.fusion}
    else:
        overrides["audio"] = {"enabled": False}
    config = load_config(args.config, overrides)
    show_progress = args.progress or sys.stderr.isatty()
    results, total, card = evaluate(args.videos, args.labels, config, args.positive, args.tolerance, args.default_label,
                                    show_progress)
    on, _ = config.alarm.thresholds(card.threshold)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    conditions = by_condition(results)
    table = markdown_table(results, total, conditions)
    report = {"model": card.name, "model_path": str(config.model.path), "videos": str(args.videos),
              "fusion": args.fusion, "audio_model": str(config.audio.model) if args.fusion != "vision" else None,
              "positive": args.positive, "tolerance_s": args.tolerance, "on_threshold": on,
              "alarm": config.alarm.model_dump(), "total": total,
              "by_condition": conditions, "clips": [r.summary() for r in results]}
    with replacing(out / JSON_NAME, out / TABLE_NAME, out / PLOT_NAME) as (json_file, table_file, plot_file):
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        table_file.write_text(f"# cryedge eval: {card.name} on {args.videos}\n\n{table}")
        plot(results, plot_file, on, f"{card.name} on {Path(args.videos).name}")
    print(table)
    print(f"wrote {out / JSON_NAME}, {out / TABLE_NAME}, {out / PLOT_NAME}")
    return 0


def _tolerance(text: str) -> float:
    """Seconds of slack: nan matched no episode to any cry (every cry missed, every episode a false alarm)."""
    import argparse
    import math

    value = float(text)
    if not (math.isfinite(value) and 0 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"{text}: seconds from 0 to 3600")
    return value


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="judge a model on labelled videos with the daemon's own pipeline (events, false alarms)",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("videos", type=Path, metavar="VIDEOS", help="a folder of videos, or one video")
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="intervals CSV video,start_s,end_s,label (default: VIDEOS/labels.csv)")
    parser.add_argument("--model", type=Path, help="the .tflite to judge (default: the config's, else the default model)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config whose landmarks and alarm settings to use")
    parser.add_argument("--positive", default="crying", help="the label the alarm is for (default crying)")
    parser.add_argument("--default-label", default="not_crying", help="label of time outside every interval")
    parser.add_argument("--tolerance", type=_tolerance, default=TOLERANCE_S,
                        help=f"seconds of slack when matching episodes to cries (default {TOLERANCE_S})")
    parser.add_argument("--output-dir", "-o", type=Path, default=Path("cryedge-eval"), help="where eval.{json,md,png} go")
    parser.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")
    parser.add_argument("--fusion", choices=("vision", "audio", "either", "mean"), default="vision",
                        help="what the alarm follows: the picture (default), the clips' sound tracks through the audio "
                             "model, or both fused as [fusion] mode does; run it once a mode to compare them")
    parser.add_argument("--audio-model", type=Path, help="the audio .tflite (default: the config's, else the bundled one)")
    parser.set_defaults(handler=_eval_command)
