"""An audio model on RECORDED sound: folders of cry recordings and of recordings with no cry.

    .venv/bin/python benchmarks/recorded_sound.py --cries DIR [DIR ...] --negatives DIR [DIR ...]
        [--model edge/data/models/cry-audio-default.tflite] [--csv per-clip.csv]

No recording ships with cryedge (docs/audio.md, "Recorded sound" says which public corpora were used and how
to get them). Every file a folder holds that ffmpeg reads (wav, ogg, m4a, mp3, caf, 3gp...) goes through the
device's audio path at the model's rate (``convert.audio_demo.clip_scores``: capture, resampling, front end,
model, the card's evidence rule) and the daemon's fusion and alarm on sound alone at the card's threshold and
debounce (``audio_demo.alarm_events``), as the synthetic sets are judged. A recording is a clip of its own:
the monitor starts listening at its first sample.

Per folder of cries: how many recordings raise a cry start at all, and within 1.5 s of the recording's start
(a cut recording may begin before the cry; the window needs 0.975 s of sound first). Per folder of
negatives: the start events, each a false alarm, and their rate an hour with its exact 95% interval. Then how
well the clips' highest scores rank cries over negatives (ROC AUC): what any threshold could do.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]


def sound_suffixes() -> set[str]:
    """What `cryedge dataset build` reads as sound, and what phones record in (donateacry's uploads: caf, 3gp)."""
    from convert.dataset import AUDIO_SUFFIXES

    return {*AUDIO_SUFFIXES, ".oga", ".caf", ".3gp", ".aac", ".webm"}


def recordings(folder: Path) -> list[Path]:
    suffixes = sound_suffixes()
    found = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise SystemExit(f"{folder}: no recording (looked for {', '.join(sorted(suffixes))})")
    return found


def main() -> int:
    from convert.evaluate import poisson_interval, wilson_interval
    from convert.recordings import heard
    from convert.train import roc_auc
    from edge import paths
    from edge.card import load_card

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=paths.default_model().parent / "cry-audio-default.tflite")
    parser.add_argument("--cries", type=Path, nargs="+", default=[], metavar="DIR")
    parser.add_argument("--negatives", type=Path, nargs="+", default=[], metavar="DIR")
    parser.add_argument("--csv", type=Path, help="write each recording's figures here")
    args = parser.parse_args()
    if not args.cries and not args.negatives:
        parser.error("give --cries and/or --negatives: folders of recordings")
    card = load_card(args.model)
    threshold, min_on = card.threshold, card.audio.min_on_seconds
    print(f"model {args.model.name}: threshold {threshold:g}, debounce {min_on if min_on is not None else 'alarm'} s")
    rows, maxima = [], {"cry": [], "negative": []}
    for side, folders in (("cry", args.cries), ("negative", args.negatives)):
        for folder in folders:
            results = [heard(args.model, path, threshold, min_on) | {"side": side, "folder": str(folder)}
                       for path in recordings(folder)]
            scored = [r for r in results if r["scores"]]
            maxima[side] += [r["max_score"] for r in scored]
            rows += results
            minutes = sum(r["seconds"] for r in scored) / 60
            too_short = len(results) - len(scored)
            head = f"{folder}: {len(scored)} recordings, {minutes:.1f} min" + (
                f" ({too_short} shorter than a window, left out)" if too_short else "")
            if side == "cry":
                found = [r for r in scored if r["starts"]]
                fast = [r for r in found if r["first_decided_s"] <= 1.5]
                low, high = wilson_interval(len(found), len(scored)) or (0.0, 0.0)
                decided = np.median([r["first_decided_s"] for r in found]) if found else float("nan")
                print(f"{head}; a cry start raised in {len(found)} ({len(found) / max(1, len(scored)):.0%}, "
                      f"95% {low:.0%}-{high:.0%}), within 1.5 s of the recording's start in {len(fast)}; "
                      f"median decided {decided:.2f} s in")
            else:
                alarms = sum(r["starts"] for r in scored)
                low, high = poisson_interval(alarms)
                hours = max(minutes / 60, 1e-9)
                print(f"{head}; {alarms} false alarms in {sum(1 for r in scored if r['starts'])} recordings: "
                      f"{alarms / hours:.1f} an hour (95% {low / hours:.1f}-{high / hours:.1f})")
    auc = roc_auc(np.r_[np.ones(len(maxima["cry"])), np.zeros(len(maxima["negative"]))],
                  np.asarray(maxima["cry"] + maxima["negative"], dtype=float))
    if auc is not None:
        print(f"recordings' highest scores, cries over negatives: ROC AUC {auc:.3f} "
              f"({len(maxima['cry'])} cries, {len(maxima['negative'])} negatives)")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
