"""The audio front end: the numbers a model sees, and that the card decides them."""

from __future__ import annotations

import numpy as np
import pytest
from audio_models import tone
from pydantic import ValidationError

from edge import paths
from edge.audio import AudioWindow
from edge.audio_features import AudioFrontEnd, audio_features, hz_to_mel, log_mel, mel_to_hz
from edge.card import (
    FEATURE_BOUND,
    FLOAT32_MAX,
    FLOAT32_TINY,
    AudioSpec,
    card_from_dict,
    load_card,
    pitch_quefrencies,
)
from edge.errors import ModelError

RNG = np.random.default_rng(7)
NOISE = (0.1 * RNG.standard_normal(15600)).astype(np.float32)


def test_a_window_gives_the_frames_the_card_promises():
    spec = AudioSpec()
    assert spec.frames == 96  # YAMNet's patch: 15,600 samples, 25 ms frames every 10 ms
    assert audio_features(NOISE, spec).shape == (96, 64)
    assert audio_features(NOISE, AudioSpec(features="mfcc", n_mfcc=13)).shape == (96, 13)


@pytest.mark.parametrize("hz", [300.0, 1000.0, 4000.0])
def test_a_tone_lights_the_band_that_holds_it(hz):
    spec = AudioSpec(fmin=0, fmax=8000)
    bands = log_mel(tone(0.975, hz), spec).mean(axis=0)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0, "slaney"), hz_to_mel(8000.0, "slaney"), 66), "slaney")
    peak = int(np.argmax(bands))
    assert edges[peak] <= hz <= edges[peak + 2]  # band k spans edges k .. k + 2
    assert bands.max() - np.median(bands) > 30  # dB above the rest


def test_silence_sits_on_the_floor_the_card_names():
    silence = np.zeros(15600, np.float32)
    assert np.allclose(log_mel(silence, AudioSpec()), -100.0)  # amin 1e-10 -> -100 dB
    assert np.allclose(log_mel(silence, AudioSpec(log="ln-offset", log_offset=0.01)), np.log(0.01))


def test_every_card_parameter_changes_the_features():
    base = audio_features(NOISE, AudioSpec())
    for change in ({"mel_scale": "htk"}, {"fmin": 60.0}, {"fmax": 7000.0}, {"amin": 1e-3}, {"n_fft": 1024},
                   {"log": "ln-offset"}, {"normalization": "fixed", "mean": -30.0, "std": 20.0}):
        other = audio_features(NOISE, AudioSpec(**change))
        assert other.shape != base.shape or not np.allclose(other, base), change


def test_normalization_fixed_uses_the_training_statistics():
    raw = audio_features(NOISE, AudioSpec())
    fixed = audio_features(NOISE, AudioSpec(normalization="fixed", mean=-40.0, std=10.0))
    np.testing.assert_allclose(fixed, (raw + 40.0) / 10.0, rtol=1e-5, atol=1e-5)
    patch = audio_features(NOISE, AudioSpec(normalization="patch"))
    assert abs(patch.mean()) < 1e-4 and abs(patch.std() - 1) < 1e-3


@pytest.mark.parametrize("audio, message", [
    ({"fmax": 9000.0}, "Nyquist"),
    ({"fmin": 8000.0, "fmax": 7000.0}, "fmin must be below fmax"),
    ({"win_length": 600}, "win_length must not exceed n_fft"),
    ({"features": "mfcc", "n_mfcc": 80}, "n_mfcc"),
])
def test_an_impossible_front_end_is_refused_with_the_reason(audio, message):
    card = {"name": "a", "kind": "audio-window", "input_shape": [1, 96, 64, 1], "labels": ["no", "yes"],
            "positive_label": "yes", "output": "sigmoid", "audio": audio}
    with pytest.raises(ModelError, match=message):
        card_from_dict(card)


@pytest.mark.parametrize("spec", [
    AudioSpec(),
    AudioSpec(mel_scale="htk", mel_bands=40, fmin=0.0, fmax=8000.0),
    AudioSpec(features="mfcc", n_mfcc=20),
    AudioSpec(rate=22050, window_samples=22050, win_length=512, hop_length=256, n_fft=1024, mel_bands=128,
              fmin=0.0, fmax=11025.0),
])
def test_features_agree_with_librosa(spec):
    """The device's numpy front end against librosa (dev extra only; never on the device).

    librosa frames n_fft samples and windows their middle; ours frames win_length samples. Padding
    librosa's input by (n_fft - win_length) / 2 each side lines the frames up.
    """
    librosa = pytest.importorskip("librosa")
    x = (0.1 * np.random.default_rng(1).standard_normal(spec.window_samples)).astype(np.float32)
    pad = (spec.n_fft - spec.win_length) // 2
    power = librosa.feature.melspectrogram(
        y=np.pad(x, (pad, spec.n_fft - spec.win_length - pad)), sr=spec.rate, n_fft=spec.n_fft,
        hop_length=spec.hop_length, win_length=spec.win_length, window="hann", center=False, power=2.0,
        n_mels=spec.mel_bands, fmin=spec.fmin, fmax=spec.fmax, htk=spec.mel_scale == "htk",
        norm="slaney" if spec.mel_scale == "slaney" else None)
    expected = librosa.power_to_db(power, ref=1.0, amin=spec.amin, top_db=None)
    if spec.features == "mfcc":
        expected = librosa.feature.mfcc(S=expected, n_mfcc=spec.n_mfcc)
    ours = audio_features(x, spec)
    assert ours.shape == expected.T.shape
    np.testing.assert_allclose(ours, expected.T, atol=1e-3)


# --- the background floor: a front end with state from one window to the next ------------------------

FLOOR = AudioSpec(hop_seconds=0.25, background="floor")


def windows_of(samples: np.ndarray, spec: AudioSpec, chunks: list[int]):
    """The windows a device hears of ``samples`` delivered in ``chunks`` (sizes), as AudioPipeline cuts them."""
    window, out, start = AudioWindow(spec.window_samples, spec.rate, spec.hop_seconds), [], 0
    for size in chunks:
        out += [w for _, w in window.push(samples[start:start + size])]
        start += size
    return out


def test_streamed_windows_get_the_features_of_the_whole_sound_at_once():
    """Any chunking of a sound gives the features of one pass over all its frames: the floor follows each
    frame once, in order, and each window subtracts the floor of its last frame."""
    rng = np.random.default_rng(3)
    samples = (0.05 * rng.standard_normal(16000 * 5)).astype(np.float32)
    samples[30000:52000] += tone(22000 / 16000, 450.0)[:22000] * 0.3
    frames = log_mel(samples, FLOOR).astype(np.float64)  # the whole sound's frames in one go
    level, floors = frames[0].copy(), []
    for frame in frames:  # the floor, written out once more, frame by frame
        rate = np.where(frame > level, 1 - np.exp(-0.01 / FLOOR.floor_rise_seconds),
                        1 - np.exp(-0.01 / FLOOR.floor_fall_seconds))
        level = level + (frame - level) * rate
        floors.append(level.copy())
    expected = [frames[25 * k:25 * k + 96] - floors[25 * k + 95] for k in range(1 + (len(frames) - 96) // 25)]
    assert len(expected) == 17
    for chunks in ([samples.size], [1600] * 50, list(rng.integers(1, 7000, 40))):
        front_end = AudioFrontEnd(FLOOR)
        streamed = [front_end(w) for w in windows_of(samples, FLOOR, chunks)]
        assert len(streamed) == len(expected)
        np.testing.assert_allclose(np.array(streamed), np.array(expected), atol=2e-3)


def test_the_floor_takes_away_a_steady_noise_at_any_gain_and_leaves_a_cry_standing():
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(16000 * 6).astype(np.float32)
    heard = {}
    for gain in (0.01, 0.3):
        front_end = AudioFrontEnd(FLOOR)
        heard[gain] = [front_end(w) for w in windows_of(gain * noise, FLOOR, [16000] * 6)][-1]
    # the same noise 30 dB louder looks the same above its floor (without the floor: 30 dB apart)
    assert abs(heard[0.3].mean() - heard[0.01].mean()) < 0.5
    assert log_mel(0.3 * noise[:15600], FLOOR).mean() - log_mel(0.01 * noise[:15600], FLOOR).mean() > 29
    # a cry-band tone 10 dB under the noise's power: a second after it began, its band stands out of what the
    # noise alone shows there, and the other bands show what they showed
    front_end = AudioFrontEnd(FLOOR)
    alone = [front_end(w) for w in windows_of(0.3 * noise, FLOOR, [16000] * 6)]
    with_tone = 0.3 * noise
    with_tone[16000 * 4:] += tone(2.0, 500.0, level=0.3 * np.sqrt(2) * 10 ** (-10 / 20))
    front_end = AudioFrontEnd(FLOOR)
    heard_tone = [front_end(w) for w in windows_of(with_tone, FLOOR, [16000] * 6)]
    second_in = 16  # the window ending at 4.975 s
    lift = heard_tone[second_in].mean(axis=0) - alone[second_in].mean(axis=0)
    assert lift.max() > 6 and abs(np.median(lift)) < 0.1


def test_a_cry_with_breaths_does_not_lift_the_floor_to_itself():
    """Bursts of a cry with short inhalations between them, 6 s over room tone: the last window still
    shows the cry well above the floor, because each breath pulls the floor back down."""
    rng = np.random.default_rng(9)
    sound = (0.002 * rng.standard_normal(16000 * 8)).astype(np.float32)
    position = 16000 * 2
    while position < sound.size - 12000:  # the last burst ends 0.25 s before the sound
        sound[position:position + 12000] += 0.3 * tone(0.75, 480.0)
        position += 12000 + 4000  # 0.75 s of voice, a 0.25 s breath
    room = AudioFrontEnd(FLOOR)
    for w in windows_of(sound[:32000], FLOOR, [4000] * 8):
        room(w)
    front_end = AudioFrontEnd(FLOOR)
    last = [front_end(w) for w in windows_of(sound, FLOOR, [4000] * 32)][-1]
    band = int(np.argmax(last.max(axis=0)))
    assert last[:, band].max() > 30  # dB above the floor, after 5.75 s of crying
    assert front_end.floor.level[band] - room.floor.level[band] < 10  # the floor stayed near the room's


def test_a_gap_in_the_sound_starts_the_floor_afresh(tmp_path):
    """The bundled model's graph with a card whose front end has a floor: after a gap (the device reopened),
    the first window is scored as the first window of a new sound, not over the floor of the old one."""
    import json
    import shutil

    from edge import paths
    from edge.audio import AudioPipeline, AudioScorer
    from edge.audio_source import AudioChunk
    from edge.model import TFLiteModel

    bundled = paths.data_file("models/cry-audio-default.tflite")
    model = shutil.copyfile(bundled, tmp_path / "floor.tflite")
    card = json.loads(bundled.with_suffix(".json").read_text())
    card["audio"].update(background="floor", hop_seconds=0.25)
    (tmp_path / "floor.json").write_text(json.dumps(card))
    pipeline = AudioPipeline(AudioScorer(TFLiteModel(model)))
    front_end = pipeline.scorer.front_end
    loud = (0.5 * RNG.standard_normal(16000 * 3)).astype(np.float32)
    assert len(pipeline.process(AudioChunk(loud, 0.0, 16000, 0))) == 9
    assert front_end.floor.level is not None
    pipeline.reset()
    assert front_end.floor.level is None
    assert pipeline.process(AudioChunk(NOISE[:15599], 10.0, 16000, 0)) == []  # a fresh window to fill first
    np.testing.assert_allclose(front_end(NOISE), audio_features(NOISE, front_end.spec))  # as a first window


def test_cards_from_before_the_floor_load_and_compute_what_they_always_did():
    card = {"name": "a", "kind": "audio-window", "input_shape": [1, 96, 64], "labels": ["no", "yes"],
            "positive_label": "yes", "output": "sigmoid",
            "audio": {"hop_seconds": 0.25, "normalization": "fixed", "mean": -34.6, "std": 17.4}}
    spec = card_from_dict(card).audio
    assert spec.background == "none"
    front_end = AudioFrontEnd(spec)
    for _ in range(3):  # no state: every window on its own, as before
        np.testing.assert_allclose(front_end(NOISE), (log_mel(NOISE, spec) + 34.6) / 17.4, rtol=1e-5, atol=1e-5)


def test_a_floor_needs_windows_a_whole_number_of_frames_apart():
    card = {"name": "a", "kind": "audio-window", "input_shape": [1, 96, 64], "labels": ["no", "yes"],
            "positive_label": "yes", "output": "sigmoid", "audio": {"hop_seconds": 0.3333, "background": "floor"}}
    with pytest.raises(ModelError, match="whole number of frames"):
        card_from_dict(card)
    assert card_from_dict({**card, "audio": {"hop_seconds": 0.5, "background": "floor"}}).audio.hop_frames == 50


def test_a_card_whose_windows_are_further_apart_than_they_are_long_is_refused_at_load(tmp_path):
    """A hop of 1.5 s over 0.975 s windows loaded, and half a second in every 1.5 s went unheard."""
    import json
    import shutil

    from edge import paths
    from edge.card import load_card

    bundled = paths.data_file("models/cry-audio-default.tflite")
    model = shutil.copyfile(bundled, tmp_path / "gappy.tflite")
    card = json.loads(bundled.with_suffix(".json").read_text())
    card["audio"]["hop_seconds"] = 1.5
    (tmp_path / "gappy.json").write_text(json.dumps(card))
    with pytest.raises(ModelError) as refused:
        load_card(model)
    assert str(refused.value) == (f"model card {tmp_path / 'gappy.json'}: audio.hop_seconds: 1.5 s is longer "
                                  "than the window (15600 samples at 16000 Hz, 0.975 s): the sound between windows "
                                  "would not be heard")
    card["audio"]["hop_seconds"] = 0.975  # windows end to end: nothing missed
    (tmp_path / "gappy.json").write_text(json.dumps(card))
    assert load_card(model).audio.hop_seconds == 0.975


# --- pitch channels: how pitched each frame is at a cry's fundamental ------------------------------------

PITCH = AudioSpec(pitch_bins=12, pitch_bands=3)


def voiced(f0: float, seconds: float = 0.975, level: float = 0.3, tilt_db: float = -6.0) -> np.ndarray:
    """A voice held on ``f0``: every harmonic below 7.8 kHz, falling ``tilt_db`` an octave."""
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(10 ** (tilt_db * np.log2(k) / 20) * np.sin(2 * np.pi * k * f0 * t + k) for k in range(1, int(7800 / f0) + 1))
    return (level * x / np.abs(x).max()).astype(np.float32)


def pitch_part(features: np.ndarray, spec: AudioSpec = PITCH) -> np.ndarray:
    """(frames, bands, bins): the pitch channels after the log-mel bands."""
    return features[:, spec.mel_bands:].reshape(len(features), spec.pitch_bands, spec.pitch_bins)


def test_pitch_channels_follow_the_log_mel_bands_and_the_card_counts_them():
    assert PITCH.feature_size == 64 + 36
    features = audio_features(NOISE, PITCH)
    assert features.shape == (96, 100)
    np.testing.assert_allclose(features[:, :64], audio_features(NOISE, AudioSpec()))  # the log-mel unchanged
    assert audio_features(NOISE, AudioSpec(features="mfcc", n_mfcc=13, pitch_bins=8)).shape == (96, 21)


@pytest.mark.parametrize("f0", [270.0, 330.0, 450.0, 520.0, 640.0])
def test_a_voice_at_a_cry_pitch_lights_the_bin_that_holds_its_f0_in_every_band(f0):
    edges = np.geomspace(PITCH.pitch_fmin, PITCH.pitch_fmax, PITCH.pitch_bins + 1)
    expected = int(np.searchsorted(edges, f0) - 1)
    pitch = np.median(pitch_part(audio_features(voiced(f0), PITCH)), axis=0)  # (bands, bins)
    for band in pitch:
        assert abs(int(np.argmax(band)) - expected) <= 1, (f0, np.round(band, 1))
        assert band.max() > 15.0  # dB of harmonic ripple, where noise gives a few


def test_noise_a_fan_and_a_mans_voice_leave_the_pitch_channels_low():
    rng = np.random.default_rng(11)
    white = (0.2 * rng.standard_normal(15600)).astype(np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(15600))
    spectrum[np.fft.rfftfreq(15600, 1 / 16000) > 800] *= 0.05
    fan = (0.05 * np.fft.irfft(spectrum, 15600) + tone(0.975, 100.0, 0.05)).astype(np.float32)
    cry_like = np.median(pitch_part(audio_features(voiced(450.0), PITCH)), axis=0).max()
    for name, sound in {"white noise": white, "fan": fan, "a man's voice at 120 Hz": voiced(120.0)}.items():
        pitch = np.median(pitch_part(audio_features(sound, PITCH)), axis=0)
        assert pitch.max() < 8.0 and pitch.max() < cry_like / 4, (name, cry_like, np.round(pitch, 1))


def test_fixed_normalization_moves_the_spectrum_and_only_scales_the_pitch_channels():
    """The training mean is the spectrum's; 0 dB of ripple (not pitched) stays 0, so the spectrum is
    normalized as it is without pitch channels."""
    raw = audio_features(voiced(400.0), PITCH)
    fixed = audio_features(voiced(400.0), PITCH.model_copy(update={"normalization": "fixed", "mean": -30.0, "std": 20.0}))
    np.testing.assert_allclose(fixed[:, :64], (raw[:, :64] + 30.0) / 20.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fixed[:, 64:], raw[:, 64:] / 20.0, rtol=1e-5, atol=1e-5)


def test_pitch_channels_do_not_change_with_the_microphones_gain():
    quiet, loud = (audio_features(voiced(400.0, level=g) + g * NOISE, PITCH) for g in (0.003, 0.6))
    np.testing.assert_allclose(pitch_part(quiet), pitch_part(loud), atol=0.05)


def test_a_cry_under_a_louder_sound_that_leaves_its_top_harmonics_shows_in_the_top_band():
    """A TV's small speaker plays 200-5000 Hz: a cry 20 dB under it is buried there but stands alone above."""
    rng = np.random.default_rng(12)
    spectrum = np.fft.rfft(rng.standard_normal(15600))
    spectrum[(np.fft.rfftfreq(15600, 1 / 16000) < 200) | (np.fft.rfftfreq(15600, 1 / 16000) > 5000)] = 0
    tv = np.fft.irfft(spectrum, 15600).astype(np.float32)
    cry = voiced(500.0, tilt_db=-2.0)
    tv *= 10 * np.sqrt(np.mean(cry ** 2) / np.mean(tv ** 2))  # 20 dB over the cry
    with_cry = np.median(pitch_part(audio_features(tv + cry, PITCH)), axis=0)
    alone = np.median(pitch_part(audio_features(tv, PITCH)), axis=0)
    assert with_cry[2].max() > alone[2].max() + 10.0  # the band above the TV's
    assert with_cry[0].max() < alone[0].max() + 3.0  # the band the TV fills


@pytest.mark.parametrize("audio, message", [
    ({"pitch_bins": 40}, "more than the 250-700 Hz pitch range can tell apart"),
    ({"pitch_bins": 8, "pitch_fmin": 700.0, "pitch_fmax": 250.0}, "pitch_fmin must be below pitch_fmax"),
    ({"pitch_bins": 8, "pitch_fmin": 60.0}, "two of its periods must fit in a frame"),
    ({"pitch_bins": 8, "pitch_bands": 5}, "each band of 125-7500 Hz must hold 3 harmonics"),
])
def test_a_pitch_front_end_that_cannot_work_is_refused_with_the_reason(audio, message):
    card = {"name": "a", "kind": "audio-window", "input_shape": [1, 96, 72], "labels": ["no", "yes"],
            "positive_label": "yes", "output": "sigmoid", "audio": audio}
    with pytest.raises(ModelError, match=message):
        card_from_dict(card)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000])
def test_the_card_refuses_exactly_the_pitch_bins_the_front_end_would_leave_without_a_period_of_their_own(rate):
    """Counted here the long way, period by period: a bin [edge, next edge) (the last closed) holds the whole
    periods whose f0 falls in it. The card accepts the bins only when each holds one, and then the front end
    takes each bin's channel over exactly those periods (an empty bin would take a neighbour's)."""
    for fmin, fmax in [(250.0, 700.0), (300.0, 1000.0), (123.4, 456.7), (1000.0, 1100.0)]:
        f0 = {q: rate / q for q in range(1, rate // 40) if fmin <= rate / q <= fmax}
        for bins in range(1, 65):
            edges = np.geomspace(fmin, fmax, bins + 1)
            periods = [[q for q, f in sorted(f0.items(), reverse=True)
                        if edges[i] <= f < edges[i + 1] or (i == bins - 1 and f == edges[-1])] for i in range(bins)]
            try:  # frames long enough and bands wide enough that only the bins can be refused
                AudioSpec(rate=rate, fmin=0.0, fmax=rate / 2, n_fft=2048, win_length=2048, pitch_bins=bins,
                          pitch_fmin=fmin, pitch_fmax=fmax)
            except ValidationError as error:
                assert "pitch_bins" in str(error) and not all(periods), (rate, fmin, fmax, bins)
                continue
            assert all(periods), (rate, fmin, fmax, bins)
            quefrencies, starts = pitch_quefrencies(rate, fmin, fmax, bins)
            taken = np.split(quefrencies, starts[1:])
            assert [list(part) for part in taken] == periods, (rate, fmin, fmax, bins)


def test_cards_from_before_the_pitch_channels_compute_what_they_always_did():
    card = {"name": "a", "kind": "audio-window", "input_shape": [1, 96, 64], "labels": ["no", "yes"],
            "positive_label": "yes", "output": "sigmoid",
            "audio": {"hop_seconds": 0.25, "normalization": "fixed", "mean": -34.6, "std": 17.4}}
    spec = card_from_dict(card).audio
    assert spec.pitch_bins == 0 and spec.feature_size == 64
    # to the bit, as before the pitch channels: the default model's training data is made again from these
    np.testing.assert_array_equal(AudioFrontEnd(spec)(NOISE), (log_mel(NOISE, spec) - np.float32(-34.6)) / np.float32(17.4))
    bundled = load_card(paths.default_model().parent / "cry-audio-default.tflite")  # the default audio model as shipped
    assert bundled.input_shape[-1] == bundled.audio.feature_size


@pytest.mark.parametrize("front", [{}, {"features": "mfcc", "n_mfcc": 64}, {"background": "floor"}, {"pitch_bins": 4},
                                   {"log": "ln-offset", "log_offset": FLOAT32_TINY}])
@pytest.mark.parametrize("mean", [0.0, -FLOAT32_MAX, FLOAT32_MAX / 2])
def test_the_furthest_numbers_a_card_may_give_keep_the_features_finite(front, mean):
    """The card refuses what float32 cannot hold (test_model_card); at the edge of what it takes (the smallest
    dB floor, the smallest std for the mean) silence, a tone and full-scale noise still give finite features."""
    spec = AudioSpec(amin=FLOAT32_TINY, normalization="fixed", mean=mean,
                     std=(FEATURE_BOUND + abs(mean)) / FLOAT32_MAX * (1 + 1e-9), **front)
    with pytest.raises(ValidationError, match="takes features past float32's range"):
        AudioSpec.model_validate(spec.model_dump() | {"std": spec.std / 2})
    loud = np.clip(np.random.default_rng(0).standard_normal(15600), -1.0, 1.0).astype(np.float32)
    for sound in (np.zeros(15600, np.float32), tone(0.975, 440.0), loud):
        assert np.isfinite(audio_features(sound, spec)).all()
