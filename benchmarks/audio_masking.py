"""How audible each held-out cry is, against whether the audio model decided it within 1.5 s.

    .venv/bin/python benchmarks/audio_masking.py [--model edge/data/models/cry-audio-default.tflite]

Re-makes the SYNTHETIC held-out clips of ``cryedge demo-audio build`` (seed 2027, 80 clips, the same bytes)
with their parts apart (``audio_synth.render_parts``): the cry, and everything else (room tone, speech, TV,
music, noise...). Per cry, over its first 1.5 s (what an alert within 1.5 s can use), in the front end's
64 mel bands of 25 ms frames: ``audible`` is the share of those time-frequency cells where the cry holds
more power than everything else together, and ``snr`` the cry's power over the rest's. A cry audible in
almost no cell is masked: no front end can show what the mix does not hold. Each clip then goes through the
device's audio path and alarm at the card's threshold and debounce (``audio_demo.evaluate``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]


def main() -> int:
    from convert import audio_demo, audio_synth
    from edge import paths
    from edge.audio_features import apply_filterbank, power_spectrogram
    from edge.card import AudioSpec, load_card

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=paths.default_model().parent / "cry-audio-default.tflite")
    parser.add_argument("--seed", type=int, default=audio_demo.SEED + 1)
    parser.add_argument("--clips", type=int, default=audio_demo.HELDOUT_CLIPS)
    args = parser.parse_args()
    card, spec = load_card(args.model), AudioSpec()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        labels = audio_demo.clips(Path(folder), args.clips, args.seed, "heldout")
        for index in range(args.clips):
            rng = np.random.default_rng([args.seed, index])
            events = audio_synth.random_events(rng, audio_demo.CLIP_SECONDS)
            room, parts = audio_synth.render_parts(events, audio_demo.CLIP_SECONDS, rng)
            cries = [(e, p) for e, p in zip(events, parts, strict=True) if e.kind == "crying"]
            if not cries:
                continue
            (event, cry), = cries
            rest = room + sum((p for e, p in zip(events, parts, strict=True) if e.kind != "crying"), np.zeros_like(room))
            mel_cry, mel_rest = (apply_filterbank(power_spectrogram(x, spec), spec) for x in (cry, rest))
            starts = np.arange(len(mel_cry)) * spec.hop_length / spec.rate
            early = (starts >= event.start) & (starts < event.start + 1.5)
            audible = float((mel_cry[early] > mel_rest[early]).mean())
            snr = 10 * np.log10(mel_cry[early].sum() / mel_rest[early].sum())
            name = f"heldout{index:04d}"
            found = audio_demo.evaluate(args.model, Path(folder), labels, card.threshold, only={name},
                                        min_on_seconds=card.audio.min_on_seconds)["decided_within_1_5_s"]
            kinds = "+".join(e.kind for e in events if e.kind != "crying")
            rows.append((audible, snr, name, kinds, bool(found)))
    print(f"{args.model.name}: threshold {card.threshold:g}, debounce {card.audio.min_on_seconds} s; "
          f"cries of the held-out set (seed {args.seed}), least audible first")
    print("| clip | other sounds | cry / rest, first 1.5 s | cells where the cry is on top | decided within 1.5 s |")
    print("|---|---|---|---|---|")
    for audible, snr, name, kinds, found in sorted(rows):
        print(f"| {name} | {kinds} | {snr:+.1f} dB | {100 * audible:.1f}% | {'yes' if found else 'NO'} |")
    for low, high in ((0.0, 0.05), (0.05, 0.25), (0.25, 1.01)):
        group = [r for r in rows if low <= r[0] < high]
        print(f"on top in {100 * low:.0f}-{min(100, 100 * high):.0f}% of cells: {sum(r[4] for r in group)}/{len(group)} decided")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
