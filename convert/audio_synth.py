"""SYNTHETIC labelled sound: cry-like bursts against speech, music, noise and household sounds.

Debian holds no recording of an infant crying and the sound archives are out of reach, so the
default audio model is trained on sounds made here, reproducibly from a seed:

- crying: voiced bursts of 0.4-1.6 s with a fundamental of 300-650 Hz that rises and falls within
  each burst (the "wah" contour of a cry), harmonics to 8 kHz with a falling tilt, vibrato, jitter and
  breath noise, separated by short inhalations; sometimes a hoarse or a whimpering variant.
- hard negatives: speech from ``espeak-ng`` (men's, women's and children's voices, pitch raised up to
  cry range for some), singing-like tones with steady notes, music (chords and melodies of harmonic
  notes), a TV (speech and music through a small band-limited speaker), white and pink noise, a fan
  (low-passed noise with a motor hum), a door (a thud and a creak sweep), a dog barking (short
  harmonic bursts with a noisy onset), and a quiet room.

Every clip mixes its events over room tone at a random level, so levels in dBFS vary as they do
with a microphone across a room. This demonstrates the audio pipeline; a model trained on it is
not a cry detector for real babies.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError

RATE = 16000
NEGATIVES = ("speech", "singing", "music", "tv", "white_noise", "pink_noise", "fan", "door", "dog", "quiet")
# tones from the street and the town: a siren's glide, a car horn's chord, a bell's partials. Kept out of
# NEGATIVES, which every test set's plan draws from (its clips stay the same); trained on through tonal_events
TONAL_NEGATIVES = ("siren", "horn", "bell")
SENTENCES = (
    "good night little one, sleep well", "did you see where I put the keys", "the weather will be cold tomorrow",
    "shall we read another story", "dinner is ready in ten minutes", "oh no, not again, come here",
    "one two three four five six seven", "can you turn the light off please", "what a lovely day it was today",
    "hush now, everything is fine", "I will call you back later", "look at the big red bus",
)
VOICES = ("en+m3", "en+f2", "en+f4", "en+m1", "en-us+f3", "en-us+m2", "en+klatt", "en+f5")


def _db(level: float) -> float:
    return 10 ** (level / 20)


def _normalize(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    return (x / rms * _db(dbfs)).astype(np.float32)


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    n = min(len(x) // 2, int(seconds * RATE))
    if n > 0:
        ramp = np.linspace(0, 1, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    return np.fft.irfft(spectrum, n).astype(np.float32)


def lowpass(x: np.ndarray, hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    spectrum[int(hz / (RATE / 2) * len(spectrum)):] = 0
    return np.fft.irfft(spectrum, len(x)).astype(np.float32)


def bandpass(x: np.ndarray, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(x)).astype(np.float32)


def harmonic_tone(f0: np.ndarray, rng: np.random.Generator, tilt_db: float = -9.0, top: float = 7800.0,
                  formants=()) -> np.ndarray:
    """A voiced sound following the fundamental track ``f0`` (Hz a sample), harmonics up to ``top``."""
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    out = np.zeros(len(f0), np.float64)
    for k in range(1, int(top / max(80.0, float(f0.min()))) + 1):
        amplitude = _db(tilt_db * np.log2(k))
        for centre, width, gain in formants:  # resonances lift harmonics near them
            amplitude *= 1 + gain * np.exp(-0.5 * ((k * f0 - centre) / width) ** 2)
        audible = (k * f0) < top
        out += audible * amplitude * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out.astype(np.float32)


def cry(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Cry-like bursts with inhalations between them, filling ``seconds``."""
    out = np.zeros(int(seconds * RATE), np.float32)
    position = int(rng.uniform(0, 0.15) * RATE)
    variant = rng.choice(["full", "full", "hoarse", "whimper"])
    while position < len(out) - int(0.3 * RATE):
        burst = rng.uniform(0.4, 1.6) if variant != "whimper" else rng.uniform(0.3, 0.8)
        n = min(int(burst * RATE), len(out) - position)
        t = np.linspace(0, 1, n)
        base = rng.uniform(300, 650) if variant != "whimper" else rng.uniform(280, 450)
        rise = rng.uniform(0.15, 0.45)  # of the base: a rise to a peak, then a fall
        peak_at = rng.uniform(0.2, 0.6)
        contour = np.where(t < peak_at, t / peak_at, 1 - (t - peak_at) / (1 - peak_at) * rng.uniform(0.6, 1.2))
        vibrato = 0.02 * np.sin(2 * np.pi * rng.uniform(4, 9) * t * burst)
        jitter = np.cumsum(rng.standard_normal(n)) / np.sqrt(n) * 0.01
        f0 = base * (1 + rise * contour + vibrato + jitter)
        formants = ((rng.uniform(900, 1300), 250, 2.0), (rng.uniform(2500, 3500), 400, 1.5))
        voice = harmonic_tone(f0, rng, tilt_db=rng.uniform(-8, -4), formants=formants)
        breath = bandpass(rng.standard_normal(n).astype(np.float32), 1500, 7000)
        if variant == "hoarse":
            voice = voice * (1 + 0.5 * rng.standard_normal(n).astype(np.float32).clip(-2, 2))
        envelope = np.sin(np.pi * t) ** 0.5 * (1 + 0.1 * np.sin(2 * np.pi * 12 * t * burst))
        piece = envelope * (voice / (np.abs(voice).max() + 1e-9) + 0.05 * breath / (np.abs(breath).max() + 1e-9))
        out[position:position + n] += _fade(piece.astype(np.float32))
        position += n + int(rng.uniform(0.15, 0.5) * RATE)  # the inhalation
    return out


def speech(seconds: float, rng: np.random.Generator, raise_pitch: bool = False) -> np.ndarray:
    """Sentences from espeak-ng in a random voice (resampled to 16 kHz by sox)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise DataError(f"speech needs {tool}: apt install espeak-ng sox")
    out = np.zeros(int(seconds * RATE), np.float32)
    position = 0
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "s.wav"
        while position < len(out) - RATE // 2:
            pitch = int(rng.uniform(70, 99)) if raise_pitch else int(rng.uniform(20, 70))
            subprocess.run(["espeak-ng", "-v", str(rng.choice(VOICES)), "-p", str(pitch), "-s", str(int(rng.uniform(130, 190))),
                            "-w", str(wav), str(rng.choice(SENTENCES))], check=True, capture_output=True)
            raw = subprocess.run(["sox", str(wav), "-t", "raw", "-r", str(RATE), "-c", "1", "-e", "floating-point",
                                  "-b", "32", "-"], check=True, capture_output=True).stdout
            piece = np.frombuffer(raw, np.float32)[: len(out) - position]
            out[position:position + len(piece)] += piece
            position += len(piece) + int(rng.uniform(0.2, 0.8) * RATE)
    return out


def music(seconds: float, rng: np.random.Generator, sung: bool = False) -> np.ndarray:
    """Notes of a scale (a melody over chords), harmonic like instruments; ``sung``: one steady voice."""
    n = int(seconds * RATE)
    out = np.zeros(n, np.float32)
    root = rng.uniform(110, 330) if not sung else rng.uniform(200, 500)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    position = 0
    while position < n:
        length = min(int(rng.uniform(0.2, 0.8 if not sung else 1.2) * RATE), n - position)
        t = np.arange(length) / RATE
        notes = [root * 2 ** (rng.choice(scale) / 12)]
        if not sung:
            notes += [root / 2 * 2 ** (s / 12) for s in (0, 4, 7)]
        piece = np.zeros(length, np.float32)
        for f in notes:
            f0 = np.full(length, f) * (1 + (0.006 * np.sin(2 * np.pi * 5.5 * t) if sung else 0))
            piece += harmonic_tone(f0, rng, tilt_db=-6 if sung else -10, top=6000) * np.exp(-t * (0.5 if sung else 2.5))
        out[position:position + length] += _fade(piece)
        position += length
    return out


def household(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "white_noise":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "pink_noise":
        return pink_noise(n, rng)
    if kind == "fan":
        hum = sum(np.sin(2 * np.pi * rng.uniform(48, 62) * k * t) / k for k in range(1, 4))
        return (lowpass(pink_noise(n, rng), rng.uniform(600, 2500)) * 3 + 0.2 * hum).astype(np.float32)
    if kind == "quiet":
        return 0.02 * pink_noise(n, rng)
    out = np.zeros(n, np.float32)
    if kind == "door":
        for start in rng.uniform(0, max(0.1, seconds - 1.0), size=rng.integers(1, 3)):
            i = int(start * RATE)
            creak_n = min(int(rng.uniform(0.3, 0.9) * RATE), n - i)
            f0 = np.linspace(rng.uniform(150, 400), rng.uniform(300, 900), creak_n)
            creak = harmonic_tone(f0, rng, tilt_db=-4) * (0.5 + 0.5 * (rng.random(creak_n) > 0.3))
            out[i:i + creak_n] += 0.3 * _fade(creak)
            j = min(n - 1, i + creak_n)
            thud_n = min(int(0.25 * RATE), n - j)
            out[j:j + thud_n] += lowpass(rng.standard_normal(thud_n).astype(np.float32), 300) * np.exp(-np.arange(thud_n) / (0.04 * RATE)) * 4
        return out
    if kind == "dog":
        position = int(rng.uniform(0, 0.5) * RATE)
        while position < n - int(0.3 * RATE):
            bark_n = int(rng.uniform(0.12, 0.3) * RATE)
            f0 = np.linspace(rng.uniform(350, 700), rng.uniform(250, 450), bark_n)
            bark = harmonic_tone(f0, rng, tilt_db=-5, formants=((rng.uniform(800, 1500), 300, 2.0),))
            onset = rng.standard_normal(bark_n).astype(np.float32) * np.exp(-np.arange(bark_n) / (0.02 * RATE))
            envelope = np.exp(-np.arange(bark_n) / (0.08 * RATE))
            out[position:position + bark_n] += _fade((bark / (np.abs(bark).max() + 1e-9) + 0.5 * onset) * envelope)
            position += bark_n + int(rng.uniform(0.15, 1.0) * RATE)
        return out
    raise DataError(f"unknown sound {kind!r}")


def tonal(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A siren (a harmonic tone gliding up and down, slowly or fast), a car horn (blasts of a bright two-note
    chord) or bells (struck, inharmonic partials ringing down)."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "siren":
        low, high = rng.uniform(450, 800), rng.uniform(1000, 1700)
        period = rng.uniform(2.0, 6.0) if rng.random() < 0.6 else rng.uniform(0.25, 0.6)  # a wail or a yelp
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        return harmonic_tone(low + (high - low) * sweep, rng, tilt_db=rng.uniform(-14, -8), top=6000)
    if kind == "horn":
        out = np.zeros(n, np.float32)
        root = rng.uniform(300, 480)
        position = int(rng.uniform(0, 0.5) * RATE)
        while position < n - int(0.15 * RATE):
            blast = min(int(rng.uniform(0.2, 1.5) * RATE), n - position)
            chord = sum(harmonic_tone(np.full(blast, root * ratio), rng, tilt_db=rng.uniform(-4, -2))
                        for ratio in (1.0, rng.choice([1.2, 1.26, 1.33])))
            out[position:position + blast] += _fade(chord.astype(np.float32))
            position += blast + int(rng.uniform(0.1, 1.0) * RATE)
        return out
    if kind == "bell":
        out = np.zeros(n, np.float32)
        strike = rng.uniform(200, 800)
        position = int(rng.uniform(0, 0.3) * RATE)
        while position < n:
            ring = np.arange(n - position) / RATE
            for ratio, decay in ((0.5, 3.0), (1.0, 2.0), (1.2, 1.5), (1.5, 1.2), (2.0, 1.0), (2.5, 0.7), (3.0, 0.5),
                                 (4.2, 0.3)):
                partial = np.sin(2 * np.pi * strike * ratio * rng.uniform(0.99, 1.01) * ring + rng.uniform(0, 6.3))
                out[position:] += (partial * np.exp(-ring / (decay * rng.uniform(0.6, 1.4))) / ratio).astype(np.float32)
            position += int(rng.uniform(0.6, 2.0) * RATE)
            strike = strike * rng.choice([1.0, 0.89, 0.84, 0.75]) if rng.random() < 0.5 else strike
        return out
    raise DataError(f"unknown sound {kind!r}")


def sound(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of ``kind`` (``crying`` or one of NEGATIVES), at -20 dBFS RMS."""
    if kind == "crying":
        x = cry(seconds, rng)
    elif kind == "speech":
        x = speech(seconds, rng, raise_pitch=rng.random() < 0.4)
    elif kind == "singing":
        x = music(seconds, rng, sung=True)
    elif kind == "music":
        x = music(seconds, rng)
    elif kind == "tv":
        x = bandpass(speech(seconds, rng) + 0.5 * _normalize(music(seconds, rng), -30), 200, 5000)
    elif kind in TONAL_NEGATIVES:
        x = tonal(kind, seconds, rng)
    else:
        x = household(kind, seconds, rng)
    return _normalize(x, -20.0)


@dataclass(frozen=True)
class Event:
    kind: str
    start: float
    end: float
    dbfs: float | None = None  # its RMS level; None: a random one (render)


def render(events: list[Event], seconds: float, rng: np.random.Generator, room_dbfs: float | None = None) -> np.ndarray:
    """Events mixed over room tone; each at its own level (``dbfs``, else -38 to -12 dBFS), clipped to [-1, 1]."""
    out, parts = render_parts(events, seconds, rng, room_dbfs)
    for part in parts:  # in the order they were always added, so every clip made before stays the same
        out += part
    return np.clip(out, -1.0, 1.0)


def render_parts(events: list[Event], seconds: float, rng: np.random.Generator,
                 room_dbfs: float | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """What ``render`` mixes, apart: the room tone and each event's sound in place, the clip's length each,
    so how much of a cry stands above everything else can be measured."""
    room = room_dbfs if room_dbfs is not None else rng.uniform(-62, -45)
    tone = _normalize(pink_noise(int(seconds * RATE), rng), room)
    parts = []
    for event in events:
        piece = sound(event.kind, event.end - event.start, rng)  # at -20 dBFS; drawn before the level, as always
        piece = piece * _db(event.dbfs + 20.0 if event.dbfs is not None else rng.uniform(-18, 8))
        a = int(event.start * RATE)
        part = np.zeros_like(tone)
        part[a:a + len(piece)] += piece[: len(tone) - a]
        parts.append(part)
    return tone, parts


def random_events(rng: np.random.Generator, seconds: float, cry_share: float = 0.5) -> list[Event]:
    """A clip's plan: a cry with probability ``cry_share`` and one or two other sounds, some overlapping."""
    events = []
    if rng.random() < cry_share:
        length = rng.uniform(2.0, min(seconds - 1.0, 6.0))
        start = rng.uniform(0.5, seconds - length)
        events.append(Event("crying", start, start + length))
    for _ in range(rng.integers(1, 3)):
        kind = str(rng.choice(NEGATIVES))
        length = rng.uniform(1.5, seconds - 0.5)
        start = rng.uniform(0, seconds - length)
        events.append(Event(kind, start, start + length))
    return events


def masked_events(rng: np.random.Generator, seconds: float, cry_share: float = 0.5,
                  under_db: tuple[float, float] = (0.0, 20.0)) -> list[Event]:
    """A clip's plan of a cry under a louder sound: one sound of any kind the whole clip long at -32 to -12 dBFS
    and, with probability ``cry_share``, a cry 0 to 20 dB below it; otherwise that sound alone at the same
    levels, so a loud background on its own stays a hard negative. ``random_events`` rarely buries a cry
    this deep (two independent levels), where a monitor beside a TV, a fan or music needs to hear it."""
    kind = str(rng.choice([k for k in NEGATIVES if k != "quiet"]))  # every sound is levelled, quiet too
    level = rng.uniform(-32, -12)
    events = [Event(kind, 0.0, seconds, level)]
    if rng.random() < cry_share:
        length = rng.uniform(2.0, min(seconds - 1.0, 6.0))
        start = rng.uniform(0.5, seconds - length)
        events.insert(0, Event("crying", start, start + length, level - rng.uniform(*under_db)))
    return events


# the sounds earlier models raised false alarms on, and the ones that hid the cries they missed
HARD_NEGATIVES = ("speech", "singing", "music", "tv", "white_noise", "fan", "door", "dog")
# how often each is drawn: singing held the most false alarms of a model trained with crib clips drawn evenly
HARD_NEGATIVE_SHARES = (0.15, 0.3, 0.08, 0.1, 0.1, 0.09, 0.09, 0.09)
AUDIBLE_SHARE = 0.15  # a cry on top in fewer of its cells than this is not heard: it is not trained on as crying


def crib_events(rng: np.random.Generator, seconds: float, cry_share: float = 0.5) -> list[Event]:
    """A clip's plan of the hard negatives a crib hears (singing most often), loud (-32 to -10 dBFS), one the
    whole clip long and sometimes a second over part of it; with probability ``cry_share`` a cry 24 dB under to 12 dB over them.
    ``generate`` keeps a cry only where it is audible (``audible_share``): a cry buried under singing or a dog
    and labelled crying teaches a model that singing or a dog is crying, which is how the masked clips of
    ``masked_events`` raised false alarms."""
    kinds = [str(k) for k in rng.choice(HARD_NEGATIVES, size=int(rng.integers(1, 3)), replace=False,
                                        p=HARD_NEGATIVE_SHARES)]
    level = rng.uniform(-32, -10)
    events = [Event(kinds[0], 0.0, seconds, level)]
    for kind in kinds[1:]:
        length = rng.uniform(1.5, seconds - 0.5)
        start = rng.uniform(0, seconds - length)
        events.append(Event(kind, start, start + length, level + rng.uniform(-6, 3)))
    if rng.random() < cry_share:
        events.insert(0, _cry_against(rng, seconds, level))
    return events


def _cry_against(rng: np.random.Generator, seconds: float, level: float) -> Event:
    """A cry of 2 to 6 s, from 0.5 s in at the earliest, 24 dB under to 12 dB over a sound at ``level`` dBFS."""
    length = rng.uniform(2.0, min(seconds - 1.0, 6.0))
    start = rng.uniform(0.5, seconds - length)
    return Event("crying", start, start + length, level + rng.uniform(-24, 12))


def tonal_events(rng: np.random.Generator, seconds: float, cry_share: float = 0.5) -> list[Event]:
    """A clip's plan of a siren, a car horn or bells, loud (-32 to -10 dBFS) the whole clip long, sometimes one
    of the usual sounds over part of it; with probability ``cry_share`` a cry 24 dB under to 12 dB over them
    (``generate(audible=...)`` keeps it only where audible, as for ``crib_events``)."""
    level = rng.uniform(-32, -10)
    events = [Event(str(rng.choice(TONAL_NEGATIVES)), 0.0, seconds, level)]
    if rng.random() < 0.4:
        length = rng.uniform(1.5, seconds - 0.5)
        start = rng.uniform(0, seconds - length)
        events.append(Event(str(rng.choice(NEGATIVES)), start, start + length, level + rng.uniform(-6, 3)))
    if rng.random() < cry_share:
        events.insert(0, _cry_against(rng, seconds, level))
    return events


def mining_events(rng: np.random.Generator, seconds: float, cry_share: float = 0.0) -> list[Event]:
    """A clip's plan for hard-negative mining (``demo-audio build --mine-clips``): no cry, whatever ``cry_share``;
    half of the clips ``random_events``' sounds (one or two of every kind at random levels, where the test sets'
    false alarms were), half ``crib_events``' (the hard negatives loud, singing most often)."""
    plan = random_events if rng.random() < 0.5 else crib_events
    return plan(rng, seconds, 0.0)


def audible_share(cry: np.ndarray, rest: np.ndarray, start: float, end: float) -> float:
    """The share of the front end's mel cells (64 bands x 25 ms frames) from ``start`` to ``end`` s where
    ``cry`` holds more power than ``rest``: what of a cry a mix shows (benchmarks/audio_masking.py)."""
    from edge.audio_features import apply_filterbank, power_spectrogram
    from edge.card import AudioSpec

    spec = AudioSpec()
    mel_cry, mel_rest = (apply_filterbank(power_spectrogram(x, spec), spec) for x in (cry, rest))
    starts = np.arange(len(mel_cry)) * spec.hop_length / spec.rate
    inside = (starts >= start) & (starts < end)
    return float((mel_cry[inside] > mel_rest[inside]).mean()) if inside.any() else 0.0


def _audible_plan(plan, seed: int, index: int, seconds: float, cry_share: float, share: float):
    """The events and samples of clip ``index``: drawn again (another generator of the same seed and index)
    while a cry in it is not audible over the rest (under ``share`` of its cells on top)."""
    for attempt in range(50):
        rng = np.random.default_rng([seed, index] + ([attempt] if attempt else []))
        events = plan(rng, seconds, cry_share)
        room, parts = render_parts(events, seconds, rng)
        rest = room + sum((p for e, p in zip(events, parts, strict=True) if e.kind != "crying"), np.zeros_like(room))
        if all(audible_share(p, rest, e.start, e.end) >= share for e, p in zip(events, parts, strict=True)
               if e.kind == "crying"):
            return events, np.clip(room + sum(parts, np.zeros_like(room)), -1.0, 1.0)
    raise DataError(f"clip {index} of seed {seed}: no audible cry in 50 draws")


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def generate(out_dir: Path, clips: int, seconds: float = 8.0, seed: int = 0, cry_share: float = 0.5,
             prefix: str = "clip", plan=random_events, labels_name: str = "labels.csv", audible: float = 0.0) -> Path:
    """``clips`` WAV files and ``labels_name`` (video,start_s,end_s,label,subject) in ``out_dir``.

    Only crying is labelled (``crying``); every other second is ``not_crying`` by default. The subject
    of a clip is its index, so a group split never shares a clip across sides. ``plan`` draws each clip's
    events (``random_events``, ``masked_events`` for cries under a louder sound, ``crib_events``); with
    ``audible``, a clip whose cry is on top in fewer than that share of its cells is drawn again.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(clips):
        name = f"{prefix}{index:04d}.wav"
        if audible:
            events, samples = _audible_plan(plan, seed, index, seconds, cry_share, audible)
        else:
            rng = np.random.default_rng([seed, index])
            events = plan(rng, seconds, cry_share)
            samples = render(events, seconds, rng)
        write_wav(out_dir / name, samples)
        kinds = "+".join(sorted({e.kind for e in events if e.kind != "crying"}))
        for event in events:
            if event.kind == "crying":
                rows.append((name, round(event.start, 3), round(event.end, 3), "crying", f"{prefix}{index:04d}"))
        if not any(e.kind == "crying" for e in events):
            # a row that labels nothing as crying keeps the clip in the dataset, with its sounds named
            rows.append((name, 0.0, round(seconds, 3), "not_crying", f"{prefix}{index:04d}"))
        (out_dir / f"{prefix}{index:04d}.txt").write_text(kinds + "\n")
    with open(out_dir / labels_name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "start_s", "end_s", "label", "subject"])
        writer.writerows(rows)
    return out_dir / labels_name
