"""``cryedge suite build``: a SYNTHETIC condition suite to judge a model where a baby monitor is used.

From held-out faces (``convert.demo.SUITE_PHOTOS``: photos no training clip of the default model
uses), seeded and offline, the same bytes every time:

- a cry story per face (neutral, crying, talking, neutral), rendered once and then seen as a night
  camera would see it: ``colour`` (reference), ``grey`` (a NoIR camera), ``dark-50/25/12`` (grey,
  50/25/12% of the light, with sensor noise), ``noise`` (grey, dim, strong noise), ``blur``,
  ``lowres`` (160x120 scaled back up), ``glare`` (overexposed, an IR LED's hot spot), ``body-hidden``
  (a blanket over everything below the chin) and ``face-away`` (the face out of frame for 3.5 s
  during the cry);
- hard negatives per face: yawning, laughing, talking, coughing, sneezing, a pacifier, neutral and
  sleeping, each between neutral seconds; the first face's also at night (``dark-25``).
- with ``--sound``, a fused section (clips with a sound track, for ``cryedge eval --fusion``): per face
  the cry story heard while the face is hidden for the whole cry (``heard-face-turned``: out of frame;
  ``heard-face-covered``: a blanket over it, at night) and while it is also seen (``seen-heard``,
  ``seen-heard-night``), and hard negatives where the picture and the sound both mislead: a face that
  talks, laughs, yawns, coughs or sleeps with speech, a TV, music, singing, white noise, a fan, a dog or
  a door (``sound-SPEECH`` ...). The sound is ``convert.audio_synth``'s from this suite's own seed (never
  the default audio model's training seeds); the cry is 6-15 dB above what else plays, as at a crib.

Writes ``NAME.mp4`` clips, ``labels.csv`` (the intervals layout ``cryedge eval`` and ``cryedge
dataset build`` read, plus ``condition``), ``suite.json`` (what each clip is) and ``README.txt``.
Everything here is synthetic (animated photos of adults) and must stay out of training data.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError

SEED = 1111
CRY_STORY = (("neutral", 3.0), ("crying", 8.0), ("talking", 3.0), ("neutral", 4.0))
CRY_SPAN_S = (3.0, 11.0)  # the story's crying
FACE_AWAY_S = (7.0, 10.5)  # inside the story's crying (3-11 s)
HARD_NEGATIVE_KINDS = ("yawning", "laughing", "talking", "coughing", "sneezing", "pacifier", "neutral", "sleeping")
HARD_NEGATIVE_SECONDS = 8.0
NIGHT = "dark-25"


# --- conditions: pure functions of a frame (RGB uint8), its face points and a seeded generator ---------

def grey(image: np.ndarray) -> np.ndarray:
    """Luminance in all three channels: what a NoIR camera under IR light delivers."""
    import cv2

    return np.dstack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)] * 3)


def expose(image: np.ndarray, gain: float, bias: float = 0.0) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def sensor_noise(image: np.ndarray, sigma: float, rng: np.random.Generator, mono: bool = True) -> np.ndarray:
    """Gaussian read noise (one value a pixel for a mono sensor)."""
    shape = image.shape[:2] + ((1,) if mono else (image.shape[2],))
    noise = rng.normal(0.0, sigma, shape).astype(np.float32)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def night(gain: float, sigma: float) -> Callable:
    return lambda image, points, t, rng: sensor_noise(expose(grey(image), gain), sigma, rng)


def blur(image, points, t, rng):
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 3.0)


def lowres(image, points, t, rng):
    import cv2

    small = cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def glare(image, points, t, rng):
    """Overexposed grey with an IR LED's hot spot beside the face."""
    height, width = image.shape[:2]
    out = expose(grey(image), 1.6, 45).astype(np.float32)
    cx, cy = points[:, 0].max() + 0.6 * np.ptp(points[:, 0]), points[:, 1].min()
    ys, xs = np.mgrid[0:height, 0:width]
    spot = 230 * np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (0.12 * width) ** 2)))
    return np.clip(out + spot[..., None], 0, 255).astype(np.uint8)


def body_hidden(image, points, t, rng):
    """A blanket (dull, lightly textured) over everything from just below the chin down."""
    out = image.copy()
    eye = float(np.linalg.norm(points[36:42].mean(axis=0) - points[42:48].mean(axis=0)))
    top = int(min(image.shape[0] - 1, points[8, 1] + 0.25 * eye))
    texture = rng.normal(0, 4, (image.shape[0] - top, image.shape[1], 1))
    out[top:] = np.clip(np.array([170, 150, 160], np.float32) + texture, 0, 255).astype(np.uint8)
    return out


def face_away(image, points, t, rng):
    """During FACE_AWAY_S the camera sees only the crib beside the baby (the face out of frame)."""
    return _slide_face_out(image, points) if FACE_AWAY_S[0] <= t < FACE_AWAY_S[1] else image


def _slide_face_out(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = image.copy()
    shift = image.shape[1] // 2
    if float(points[:, 0].mean()) < image.shape[1] / 2:  # slide the side away from the face over it
        out[:, :-shift] = image[:, shift:]
        out[:, -shift:] = image[:, -1:]
    else:
        out[:, shift:] = image[:, :-shift]
        out[:, :shift] = image[:, :1]
    return out


def face_turned(image, points, t, rng):
    """For the whole cry (CRY_SPAN_S) the camera sees only the crib beside the baby: heard, never seen.

    The picture slides until the whole head (the face points and half their width around) has left it,
    and the edge left behind is stretched over the gap.
    """
    if not (CRY_SPAN_S[0] <= t < CRY_SPAN_S[1]):
        return image
    width = image.shape[1]
    x0, x1 = float(points[:, 0].min()), float(points[:, 0].max())
    pad = 0.5 * (x1 - x0)
    out = np.empty_like(image)
    if (x0 + x1) / 2 >= width / 2:  # slide right: the face leaves by the right edge
        shift = int(np.clip(width - (x0 - pad), 1, width - 1))
        out[:, shift:] = image[:, :width - shift]
        out[:, :shift] = image[:, :1]
    else:
        shift = int(np.clip(x1 + pad, 1, width - 1))
        out[:, :width - shift] = image[:, shift:]
        out[:, width - shift:] = image[:, -1:]
    return out


def face_covered_night(image, points, t, rng):
    """Night (dark-25), and for the whole cry a blanket pulled over the face, from the brow down."""
    out = CONDITIONS["dark-25"](image, points, t, rng)
    if not (CRY_SPAN_S[0] <= t < CRY_SPAN_S[1]):
        return out
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    pad = 0.25 * (x1 - x0)
    top, bottom = int(max(0, y0 - pad)), out.shape[0]
    left, right = int(max(0, x0 - pad)), int(min(out.shape[1], x1 + pad))
    texture = rng.normal(0, 2, (bottom - top, right - left, 1))
    out[top:bottom, left:right] = np.clip(60 + texture, 0, 255).astype(np.uint8)  # grey: the night's blanket
    return out


CONDITIONS: dict[str, Callable | None] = {
    "colour": None,
    "grey": lambda image, points, t, rng: grey(image),
    "dark-50": night(0.5, 3.0),
    "dark-25": night(0.25, 4.0),
    "dark-12": night(0.12, 4.0),
    "noise": night(0.4, 14.0),
    "blur": blur,
    "lowres": lowres,
    "glare": glare,
    "body-hidden": body_hidden,
    "face-away": face_away,
}
# where the face can still be seen for the whole clip (face-away: not for 3.5 s)
FACE_ALWAYS_VISIBLE = tuple(name for name in CONDITIONS if name != "face-away")


# --- the suite ---------------------------------------------------------------------------------

# the fused section (--sound): picture conditions of the cry clips, and the hard negatives' face and sound
SOUND_CRY_CONDITIONS: dict[str, Callable | None] = {
    "heard-face-turned": face_turned,
    "heard-face-covered": face_covered_night,
    "seen-heard": None,
    "seen-heard-night": CONDITIONS[NIGHT],
}
CRY_BACKGROUNDS = ("quiet", "fan", "tv", "white_noise", "music", "speech")  # what else plays during a cry
SOUND_NEGATIVES = (("talking", "speech"), ("laughing", "tv"), ("yawning", "music"), ("neutral", "singing"),
                   ("sleeping", "white_noise"), ("neutral", "fan"), ("coughing", "dog"), ("neutral", "door"))
SOUND_SEED_SALT = 77  # the sound's generator: [seed, SOUND_SEED_SALT, clip number]


@dataclass(frozen=True)
class SuiteClip:
    name: str
    subject: str
    condition: str
    story: tuple[tuple[str, float], ...]
    seed: int
    kind: str  # "cry" or "hard-negative"
    sound: tuple = ()  # convert.audio_synth.Event's of its sound track (the fused section); () : no sound track


def plan_suite(photos: tuple[str, ...], seed: int = SEED, vision: bool = True, sound: bool = False) -> list[SuiteClip]:
    """Every clip of the suite, deterministic in ``photos`` and ``seed``: the vision section, the fused one or both."""
    if not photos:
        raise DataError("the suite needs at least one held-out photo")
    clips = plan_vision(photos, seed) if vision else []
    return clips + (plan_sound(photos, seed) if sound else [])


def plan_sound(photos: tuple[str, ...], seed: int = SEED) -> list[SuiteClip]:
    """The fused section: cries heard with the face hidden or seen, hard negatives for both senses."""
    from convert.audio_synth import Event

    rng = np.random.default_rng([seed, SOUND_SEED_SALT])
    seconds = sum(s for _, s in CRY_STORY)
    clips = []
    for number, photo in enumerate(photos):
        cry_seed = seed + 100 * number
        for k, condition in enumerate(SOUND_CRY_CONDITIONS):
            background = CRY_BACKGROUNDS[(number * len(SOUND_CRY_CONDITIONS) + k) % len(CRY_BACKGROUNDS)]
            cry_dbfs = float(rng.uniform(-30, -16))
            sound = (Event(background, 0.0, seconds, round(cry_dbfs - float(rng.uniform(6, 15)), 1)),
                     Event("crying", *CRY_SPAN_S, round(cry_dbfs, 1)))
            clips.append(SuiteClip(f"{photo}-cry-{condition}", photo, condition, CRY_STORY, cry_seed, "cry", sound))
        for k, (face, heard) in enumerate(SOUND_NEGATIVES):
            story = (("neutral", 2.0), (face, HARD_NEGATIVE_SECONDS), ("neutral", 2.0))
            sound = (Event(heard, 1.0, 1.0 + HARD_NEGATIVE_SECONDS + 1.0, round(float(rng.uniform(-30, -14)), 1)),)
            clips.append(SuiteClip(f"{photo}-{face}-sound-{heard}", photo, f"sound-{heard}", story,
                                   cry_seed + 50 + k, "hard-negative", sound))
    return clips


def plan_vision(photos: tuple[str, ...], seed: int = SEED) -> list[SuiteClip]:
    clips = []
    for number, photo in enumerate(photos):
        cry_seed = seed + 100 * number
        for condition in CONDITIONS:
            clips.append(SuiteClip(f"{photo}-cry-{condition}", photo, condition, CRY_STORY, cry_seed, "cry"))
        for k, kind in enumerate(HARD_NEGATIVE_KINDS):
            story = (("neutral", 2.0), (kind, HARD_NEGATIVE_SECONDS), ("neutral", 2.0))
            conditions = ("colour", NIGHT) if number == 0 else ("colour",)
            for condition in conditions:
                clips.append(SuiteClip(f"{photo}-{kind}-{condition}", photo, condition, story, cry_seed + 1 + k, "hard-negative"))
    return clips


def build_suite(out_dir: Path, photos: tuple[str, ...] | None = None, seed: int = SEED, progress=None,
                vision: bool = True, sound: bool = False, only: set[str] | None = None) -> Path:
    """Render the suite into ``out_dir``; returns its ``labels.csv``. ``sound``: with the fused section;
    ``only``: just the clips of these names (each the same as in the whole suite)."""
    from convert import demo, synth

    photos = tuple(dict.fromkeys(photos or demo.SUITE_PHOTOS))  # a face given twice is one subject, not two
    trained = set(demo.TRAIN_PHOTOS)
    leaked = [p for p in photos if p in trained]
    if leaked:
        raise DataError(f"{', '.join(leaked)}: the default model trained on this face; the suite holds held-out faces only")
    for name in photos:  # all of them before the first clip: an unknown last one stopped a half-rendered suite
        synth.check_photo(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_suite(photos, seed, vision, sound)
    rows, manifest = [], []
    rendered: dict[tuple, list] = {}
    loaded = {}
    for number, clip in enumerate(plans):
        if only is not None and clip.name not in only:
            continue
        key = (clip.subject, clip.story, clip.seed)
        if key not in rendered:
            rendered.clear()  # one story in memory at a time: the plan keeps a story's conditions together
            if clip.subject not in loaded:
                loaded[clip.subject] = synth.load_photo(clip.subject)
            rendered[key] = list(synth.render_clip(loaded[clip.subject], list(clip.story), clip.seed, synth.FPS,
                                                   vary_identity=False, with_points=True))
        frames = rendered[key]
        condition = {**CONDITIONS, **SOUND_CRY_CONDITIONS}.get(clip.condition)  # sound-*: the picture as it is
        rng = np.random.default_rng([seed, number])

        def shown(frames=frames, condition=condition, rng=rng):
            for i, (image, _, points) in enumerate(frames):
                yield image if condition is None else condition(image, points, i / synth.FPS, rng)

        synth.write_video(out_dir / f"{clip.name}.mp4", shown(), synth.FPS)
        if clip.sound:
            add_sound(out_dir / f"{clip.name}.mp4", clip, len(frames) / synth.FPS, seed, number)
        labels = [label for _, label, _ in frames]
        for start, end, label in synth.label_intervals(labels, synth.FPS):
            rows.append((f"{clip.name}.mp4", start, end, label, clip.subject, clip.condition))
        manifest.append({"video": f"{clip.name}.mp4", "subject": clip.subject, "condition": clip.condition,
                         "kind": clip.kind, "story": [list(s) for s in clip.story], "seed": clip.seed,
                         "face_always_visible": clip.condition in FACE_ALWAYS_VISIBLE,
                         **({"sound": [{"kind": e.kind, "start_s": e.start, "end_s": e.end, "dbfs": e.dbfs}
                                       for e in clip.sound]} if clip.sound else {})})
        if progress is not None:
            progress(number + 1, len(plans))
    labels_path = out_dir / "labels.csv"
    with labels_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow((*synth.INTERVALS_HEADER, "condition"))
        writer.writerows(rows)
    (out_dir / "suite.json").write_text(json.dumps({
        "synthetic": True, "made_by": "cryedge suite build", "seed": seed, "photos": list(photos),
        "held_out": "no clip of these faces was used to train the default model (convert/demo.py TRAIN_PHOTOS)",
        "conditions": list(CONDITIONS), "face_away_s": list(FACE_AWAY_S), "clips": manifest,
        **({"sound": {"synthetic": True, "made_by": "convert/audio_synth.py", "seed": [seed, SOUND_SEED_SALT],
                      "conditions": list(SOUND_CRY_CONDITIONS), "cry_s": list(CRY_SPAN_S),
                      "note": "never the default audio model's training seeds; the cry 6-15 dB above the rest"}}
           if sound else {})}, indent=2) + "\n")
    (out_dir / "README.txt").write_text(
        "SYNTHETIC condition suite made by 'cryedge suite build' (convert/conditions.py): real photos of adults\n"
        "animated into expressions and degraded like a night camera. Not babies, not real footage.\n"
        + ("The clips with a sound track (--sound) have SYNTHETIC sound (convert/audio_synth.py): no baby's cry.\n"
           "Judge them with 'cryedge eval DIR --fusion either'.\n" if sound else "")
        + "For evaluation only ('cryedge eval'); never train on it.\n")
    return labels_path


def add_sound(video: Path, clip: SuiteClip, seconds: float, seed: int, number: int) -> None:
    """Give ``video`` the clip's SYNTHETIC sound track (16 kHz mono AAC), from the suite's own seed."""
    from convert.audio_demo import add_sound_track
    from convert.audio_synth import render

    rng = np.random.default_rng([seed, SOUND_SEED_SALT, number])
    add_sound_track(video, render(list(clip.sound), seconds, rng))


def _build_command(args) -> int:
    from convert.dataset import Progress

    vision, sound = not args.sound_only, args.sound or args.sound_only
    bar = Progress(len(plan_suite(tuple(dict.fromkeys(args.photo or ())) or _default_photos(), args.seed, vision, sound)),
                   "suite clips")
    labels = build_suite(args.output_dir, tuple(args.photo or ()) or None, args.seed, lambda done, total: bar.update(done),
                         vision, sound)
    print(f"{labels.parent}: {sum(1 for _ in labels.parent.glob('*.mp4'))} SYNTHETIC clips; judge a model with: "
          f"cryedge eval {labels.parent}")
    return 0


def _default_photos() -> tuple[str, ...]:
    from convert import demo

    return tuple(demo.SUITE_PHOTOS)


def add_commands(subparsers) -> None:
    from convert.arguments import whole

    suite = subparsers.add_parser("suite", help="build the SYNTHETIC held-out condition suite (night, hidden body, hard negatives)")
    commands = suite.add_subparsers(dest="suite_command", metavar="COMMAND", required=True)
    parser = commands.add_parser("build", help="render the condition suite for 'cryedge eval'",
                                 description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    parser.add_argument("--photo", action="append", help="held-out photo (repeatable; default: convert.demo.SUITE_PHOTOS)")
    parser.add_argument("--seed", type=whole(0), default=SEED)
    parser.add_argument("--sound", action="store_true",
                        help="add the fused section: clips with SYNTHETIC sound tracks, cries heard with the face hidden, "
                             "hard negatives with speech, music and noise (judge with 'cryedge eval --fusion either')")
    parser.add_argument("--sound-only", action="store_true", help="only the fused section")
    parser.set_defaults(handler=_build_command)
