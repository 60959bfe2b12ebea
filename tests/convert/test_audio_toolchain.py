"""The audio toolchain: synthetic sounds -> dataset build --audio -> train audio-cnn -> convert int8 -> the device.

The sounds are SYNTHETIC (convert/audio_synth.py); the point here is that every step hands the next the
same front end, so the device computes exactly the features the model was trained on.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from convert import audio_synth
from convert.dataset import build_sound, sound_track
from edge.card import AudioSpec, load_card

pytest.importorskip("tensorflow")
needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("ffmpeg", "espeak-ng", "sox")),
                                 reason="needs ffmpeg, espeak-ng and sox (apt)")


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * audio_synth.RATE / len(x))


def test_synthetic_sounds_are_reproducible_and_cries_sit_in_the_cry_band():
    a = audio_synth.sound("crying", 3.0, np.random.default_rng(1))
    b = audio_synth.sound("crying", 3.0, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    voiced = a[np.abs(a) > 0.3 * np.abs(a).max()]
    assert 250 <= dominant_hz(voiced[:4096]) <= 1200  # the fundamental or a low harmonic of a 300-650 Hz cry
    assert 20 * np.log10(np.sqrt(np.mean(a ** 2))) == pytest.approx(-20.0, abs=0.1)
    for kind in ("music", "fan", "dog", "door", "white_noise", "pink_noise", "singing", "quiet"):
        assert audio_synth.sound(kind, 1.0, np.random.default_rng(2)).shape == (16000,)


def test_a_clips_parts_apart_add_up_to_the_clip():
    """benchmarks/audio_masking.py measures a cry against the rest from the parts: they must be the clip's."""
    events = audio_synth.random_events(np.random.default_rng([7, 1]), 4.0, cry_share=1.0)
    mixed = audio_synth.render(events, 4.0, np.random.default_rng([7, 2]))
    room, parts = audio_synth.render_parts(events, 4.0, np.random.default_rng([7, 2]))
    np.testing.assert_allclose(mixed, np.clip(room + sum(parts), -1, 1), atol=1e-6)
    cry = parts[[e.kind for e in events].index("crying")]
    start, end = (round(t * audio_synth.RATE) for t in (events[0].start, events[0].end))
    assert not cry[:start - 1].any() and not cry[end + 1:].any() and np.abs(cry[start:end]).max() > 0


def test_masked_clips_bury_a_cry_0_to_20_db_under_a_louder_sound_or_play_that_sound_alone():
    rng = np.random.default_rng(1)
    plans = [audio_synth.masked_events(rng, 8.0) for _ in range(300)]
    backgrounds = [plan[-1] for plan in plans]
    assert all((b.start, b.end) == (0.0, 8.0) and -32 <= b.dbfs <= -12 for b in backgrounds)
    assert {b.kind for b in backgrounds} == set(audio_synth.NEGATIVES) - {"quiet"}  # every sound, levelled
    cries = [(plan[0], plan[1]) for plan in plans if plan[0].kind == "crying"]
    assert 110 < len(cries) < 190 and all(len(plan) == 1 for plan in plans if plan[0].kind != "crying")
    under = np.array([background.dbfs - cry.dbfs for cry, background in cries])
    assert under.min() >= 0 and under.max() <= 20 and under.min() < 2 and under.max() > 18


@needs_tools
def test_crib_clips_play_the_hard_negatives_loud_and_a_cry_in_them_is_always_audible():
    def share(events, room, parts):
        rest = room + sum((p for e, p in zip(events, parts, strict=True) if e.kind != "crying"), np.zeros_like(room))
        return [audio_synth.audible_share(p, rest, e.start, e.end)
                for e, p in zip(events, parts, strict=True) if e.kind == "crying"]

    drawn = []
    for index in range(12):  # as drawn, without the audibility check: some cries are buried
        rng = np.random.default_rng([9, index])
        events = audio_synth.crib_events(rng, 8.0, cry_share=1.0)
        drawn += share(events, *audio_synth.render_parts(events, 8.0, rng))
        assert {e.kind for e in events} - {"crying"} <= set(audio_synth.HARD_NEGATIVES)
        assert all(-38 <= e.dbfs <= -7 for e in events if e.kind != "crying")
    assert min(drawn) < audio_synth.AUDIBLE_SHARE < max(drawn)
    for index in range(6):  # as generate(audible=...) makes them: every cry on top in enough of its cells
        events, samples = audio_synth._audible_plan(audio_synth.crib_events, 9, index, 8.0, 1.0, audio_synth.AUDIBLE_SHARE)
        attempt = next(a for a in range(50) if audio_synth.crib_events(
            np.random.default_rng([9, index] + ([a] if a else [])), 8.0, 1.0) == events)
        rng = np.random.default_rng([9, index] + ([attempt] if attempt else []))
        audio_synth.crib_events(rng, 8.0, 1.0)
        room, parts = audio_synth.render_parts(events, 8.0, rng)
        assert np.array_equal(np.clip(room + sum(parts), -1, 1), samples)  # the clip is the plan's
        assert min(share(events, room, parts)) >= audio_synth.AUDIBLE_SHARE


def test_added_clips_neither_join_nor_move_the_validation_clips(tmp_path):
    from convert.audio_demo import validation_groups
    from convert.train import group_split

    rng = np.random.default_rng(3)
    own = np.repeat([f"train{i:04d}" for i in range(40)], 30)
    y = (rng.random(own.size) < 0.4).astype(np.int64)
    np.savez(tmp_path / "own.npz", groups=own, y=y)
    crib = np.repeat([f"crib{i:04d}" for i in range(30)], 30)
    np.savez(tmp_path / "more.npz", groups=np.concatenate([crib[:450], own, crib[450:]]),
             y=np.concatenate([y[:450], y, y[:450]]))
    _, test = group_split(own, 0.25, 2026, y=y)
    alone = validation_groups(tmp_path / "own.npz", 2026)
    assert alone == tuple(sorted(set(own[test])))  # what the build held out before crib clips existed
    assert validation_groups(tmp_path / "more.npz", 2026) == alone


@needs_tools
def test_the_training_set_joins_the_random_and_the_masked_clips_in_one_labels_file(tmp_path):
    from convert.audio_demo import clips, truth_of

    labels = clips(tmp_path, 3, 5, "train", masked=3)
    truth = truth_of(labels)
    assert sorted(truth) == [f"{p}{i:04d}.wav" for p in ("masked", "train") for i in range(3)]
    assert labels.read_bytes().count(b"video,start_s") == 1
    assert labels.read_bytes().startswith((tmp_path / "train.csv").read_bytes())  # as generate() writes it
    assert all((tmp_path / name).is_file() for name in truth)
    # the held-out set, made without masked clips, is what it always was: the random plans alone
    again = clips(tmp_path / "again", 3, 5, "train")
    assert truth_of(again) == {k: v for k, v in truth.items() if k.startswith("train")}
    assert (tmp_path / "again" / "train0002.wav").read_bytes() == (tmp_path / "train0002.wav").read_bytes()


@needs_tools
def test_crib_clips_join_the_training_set_and_clips_already_made_are_not_made_again(tmp_path):
    from convert.audio_demo import clips, truth_of

    first = clips(tmp_path / "a", 2, 5, "train")
    (tmp_path / "b").mkdir()
    for name in ("train.csv", "train0000.wav", "train0001.wav", "train0000.txt", "train0001.txt"):
        (tmp_path / "b" / name).symlink_to(tmp_path / "a" / name)  # read-only clips shared with another build
    labels = clips(tmp_path / "b", 2, 5, "train", crib=2)
    assert sorted(truth_of(labels)) == ["crib0000.wav", "crib0001.wav", "train0000.wav", "train0001.wav"]
    assert labels.read_bytes().startswith(first.read_bytes())
    assert (tmp_path / "b" / "train0000.wav").is_symlink()  # reused, not written again


@needs_tools
def test_more_clips_are_the_same_plan_from_a_seed_of_their_own_added_to_the_clips_already_made(tmp_path):
    from convert.audio_demo import MORE_SEED_OFFSET, clips, truth_of

    first = clips(tmp_path / "a", 2, 5, "train")
    (tmp_path / "b").mkdir()
    for name in ("train.csv", "train0000.wav", "train0001.wav", "train0000.txt", "train0001.txt"):
        (tmp_path / "b" / name).symlink_to(tmp_path / "a" / name)
    labels = clips(tmp_path / "b", 2, 5, "train", more=3)
    assert sorted(truth_of(labels)) == [f"{p}{i:04d}.wav" for p in ("more", "train") for i in range(3 if p == "more" else 2)]
    assert labels.read_bytes().startswith(first.read_bytes())  # the old clips, as they were
    assert (tmp_path / "b" / "train0000.wav").is_symlink()
    # random_events from seed + MORE_SEED_OFFSET: ordinary clips, not the training seed's again
    alone = audio_synth.generate(tmp_path / "c", 3, 8.0, 5 + MORE_SEED_OFFSET, prefix="more")
    assert all((tmp_path / "b" / f"more{i:04d}.wav").read_bytes() == (tmp_path / "c" / f"more{i:04d}.wav").read_bytes()
               for i in range(3))
    assert {k: v for k, v in truth_of(labels).items() if k.startswith("more")} == truth_of(alone)
    assert (tmp_path / "b" / "more0000.wav").read_bytes() != (tmp_path / "b" / "train0000.wav").read_bytes()


def test_sirens_glide_horns_hold_a_chord_and_bells_ring_down():
    rate = audio_synth.RATE
    for kind in audio_synth.TONAL_NEGATIVES:
        a, b = (audio_synth.sound(kind, 4.0, np.random.default_rng(5)) for _ in range(2))
        np.testing.assert_array_equal(a, b)
        assert 20 * np.log10(np.sqrt(np.mean(a ** 2))) == pytest.approx(-20.0, abs=0.1)
    siren = audio_synth.tonal("siren", 8.0, np.random.default_rng(1))
    pitches = [dominant_hz(siren[i:i + 2048]) for i in range(0, len(siren) - 2048, rate // 4)]
    assert min(pitches) >= 440 and max(pitches) - min(pitches) > 150  # a tone that glides, not a note
    horn = audio_synth.tonal("horn", 8.0, np.random.default_rng(2))
    loud = np.flatnonzero(np.abs(horn) > 0.3 * np.abs(horn).max())
    blast = horn[loud[0] + 800:loud[0] + 800 + 4096]
    assert 290 <= dominant_hz(blast) <= 2000  # the chord's notes or their low harmonics
    bell = audio_synth.tonal("bell", 2.0, np.random.default_rng(3))
    struck = np.flatnonzero(bell)[0]  # the first strike; the next comes at least 0.6 s later

    def rms(x):
        return np.sqrt(np.mean(x ** 2))

    assert rms(bell[struck:struck + 800]) > 1.2 * rms(bell[struck + rate // 2:struck + rate // 2 + 800])  # it rings down


def test_tonal_clips_play_a_siren_horn_or_bells_loud_and_leave_the_test_sets_plans_alone():
    rng = np.random.default_rng(4)
    plans = [audio_synth.tonal_events(rng, 8.0) for _ in range(200)]
    tones = [next(e for e in plan if e.kind != "crying") for plan in plans]
    assert {t.kind for t in tones} == set(audio_synth.TONAL_NEGATIVES)
    assert all((t.start, t.end) == (0.0, 8.0) and -32 <= t.dbfs <= -10 for t in tones)
    assert 60 < sum(plan[0].kind == "crying" for plan in plans) < 140
    # random_events, every test set's plan, never draws the new sounds: clips made before stay the same
    drawn = {e.kind for i in range(300) for e in audio_synth.random_events(np.random.default_rng(i), 8.0)}
    assert not drawn & set(audio_synth.TONAL_NEGATIVES)


@needs_tools
def test_tonal_clips_join_the_training_set_with_every_cry_audible_and_never_as_validation(tmp_path):
    from convert.audio_demo import TONAL_SEED_OFFSET, clips, truth_of

    labels = clips(tmp_path, 2, 5, "train", tonal=3)
    assert sorted(truth_of(labels)) == ["tonal0000.wav", "tonal0001.wav", "tonal0002.wav", "train0000.wav",
                                        "train0001.wav"]
    kinds = [(tmp_path / f"tonal{i:04d}.txt").read_text().strip().split("+") for i in range(3)]
    assert all(set(k) & set(audio_synth.TONAL_NEGATIVES) for k in kinds)
    for index in range(3):  # as made: the plan of seed + TONAL_SEED_OFFSET, drawn again while a cry is not audible
        events, _ = audio_synth._audible_plan(audio_synth.tonal_events, 5 + TONAL_SEED_OFFSET, index, 8.0, 0.5,
                                              audio_synth.AUDIBLE_SHARE)
        assert truth_of(labels)[f"tonal{index:04d}.wav"] == [(round(e.start, 3), round(e.end, 3)) for e in events
                                                             if e.kind == "crying"]


@needs_tools
def test_sound_files_and_video_sound_tracks_become_labelled_windows_of_the_device_features(tmp_path):
    labels = audio_synth.generate(tmp_path / "clips", 6, seconds=4.0, seed=3, cry_share=0.7)
    video = tmp_path / "clips" / "film.mp4"  # a video whose sound track is clip0000's
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=4",
                    "-i", str(tmp_path / "clips" / "clip0000.wav"), "-c:v", "libx264", "-c:a", "aac", "-shortest",
                    str(video)], check=True)
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows + [row.replace("clip0000.wav", "film.mp4").replace(",clip0000", ",film")
                                        for row in rows if row.startswith("clip0000.wav")]) + "\n")
    data = build_sound(tmp_path / "clips", labels, AudioSpec(), positive="crying", progress=False)
    assert data.x.shape[1:] == (96, 64) and data.labels == ("not_crying", "crying")
    assert data.audio.normalization == "fixed" and abs(float(data.x.mean())) < 0.05
    assert set(data.videos.tolist()) >= {"clip0000.wav", "film.mp4"}
    # windows end every half second from 0.975 s; a window is crying when its last sample is
    truth = {row.split(",")[0]: row.split(",") for row in rows[1:]}
    name = next(v for v, r in truth.items() if r[3] == "crying")
    start, end = float(truth[name][1]), float(truth[name][2])
    for t, y in zip(data.t_end[data.videos == name], data.y[data.videos == name], strict=True):
        assert y == int(start <= t - 1e-3 < end)


@needs_tools
@pytest.mark.parametrize("front_end", [
    {"features": "mfcc", "n_mfcc": 20, "background": "floor"},
    {"pitch_bins": 12, "pitch_bands": 3},  # 64 log-mel bands and 36 pitch channels a frame
    {"mel_bands": 128, "n_fft": 1024},  # demo-audio build --mel-bands 128 --n-fft 1024: audio-cnn takes its bands from the data
])
def test_trained_converted_model_sees_on_the_device_the_features_it_was_trained_on(tmp_path, front_end):
    from convert.convert import ConvertOptions, convert
    from convert.train import TrainOptions, train
    from edge.audio import AudioScorer, AudioWindow
    from edge.audio_features import audio_features
    from edge.model import TFLiteModel

    labels = audio_synth.generate(tmp_path / "clips", 16, seconds=4.0, seed=4, cry_share=0.6)
    data = build_sound(tmp_path / "clips", labels, AudioSpec(**front_end), positive="crying", progress=False)
    assert data.x.shape[1:] == (96, AudioSpec(**front_end).feature_size)
    assert data.x.dtype == np.float32  # the device's own type: float64 rows trained other weights
    if front_end.get("pitch_bins"):  # the normalization's statistics are the spectrum's, as without pitch channels
        plain = build_sound(tmp_path / "clips", labels, AudioSpec(), positive="crying", progress=False)
        assert (data.audio.mean, data.audio.std) == (plain.audio.mean, plain.audio.std)
        np.testing.assert_array_equal(data.x[..., :64], plain.x)
    data.save(tmp_path / "sound.npz")
    metrics = train(TrainOptions(arch="audio-cnn", data=tmp_path / "sound.npz", output=tmp_path / "a.keras",
                                 epochs=2, verbose=0))
    assert metrics["audio"]["features"] == front_end.get("features", "log-mel")
    report = convert(ConvertOptions(model=tmp_path / "a.keras", output=tmp_path / "a.tflite",
                                    calibration=str(tmp_path / "sound.npz")))
    assert report.fidelity["samples"] > 0
    card = load_card(tmp_path / "a.tflite")
    # a 2-epoch model on 128 bands agrees too little with its int8 copy: the converter falls back to int16x8
    assert card.kind == "audio-window" and card.quantization.scheme in (("int8", "int16x8") if "n_fft" in front_end else ("int8",))
    assert card.audio == data.audio  # the dataset's front end, normalization statistics and all
    sidecar = json.loads((tmp_path / "a.json").read_text())["audio"]
    assert {key: sidecar[key] for key in front_end} == front_end
    assert card.input_shape == (1, 96, card.audio.feature_size)
    # the device's features of each window, heard in chunks as a microphone gives them and carrying the
    # background floor from window to window, are the training rows of that clip
    samples = sound_track(tmp_path / "clips" / "clip0001.wav", 16000)
    rows = data.x[data.videos == "clip0001.wav"]
    window = AudioWindow(card.audio.window_samples, card.audio.rate, card.audio.hop_seconds)
    scorer = AudioScorer(TFLiteModel(tmp_path / "a.tflite"))
    heard = [scorer.front_end(w) for start in range(0, samples.size, 1234) for _, w in window.push(samples[start:start + 1234])]
    np.testing.assert_allclose(np.array(heard), rows, atol=1e-3)
    end = card.audio.window_samples + round(card.audio.hop_seconds * 16000) * (len(rows) - 1)
    alone = audio_features(samples[end - card.audio.window_samples:end], card.audio)
    if card.audio.background == "floor":  # one window on its own (no floor followed before it) is not what the model saw
        assert not np.allclose(alone, rows[-1], atol=1e-3)
    else:  # without a floor every window stands alone, to the bit
        np.testing.assert_array_equal(alone, rows[-1])
    assert 0.0 <= scorer.score(samples[:card.audio.window_samples], 1.0).probability <= 1.0


def test_training_leaves_out_windows_whose_end_label_misdescribes_them(tmp_path):
    """A window is labelled at its last sample: just after a cry began it holds almost no cry yet says
    "crying", just after it stopped it is mostly cry yet says "not crying"; neither is trained on."""
    from convert.audio_demo import drop_ambiguous_windows

    labels = tmp_path / "labels.csv"
    labels.write_text("video,start_s,end_s,label,subject\na.wav,2.0,4.0,crying,a\nb.wav,0.0,8.0,not_crying,b\n")
    ends = np.array([1.75, 2.0, 2.1, 2.25, 3.0, 4.0, 4.25, 4.5, 5.0, 2.1, 4.25], np.float32)
    videos = np.array(["a.wav"] * 9 + ["b.wav"] * 2)
    y = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    data = tmp_path / "train.npz"
    np.savez_compressed(data, x=np.arange(11, dtype=np.float32).reshape(11, 1, 1), y=y, groups=videos, videos=videos,
                        t_end=ends, labels=np.array(["not_crying", "crying"]), audio=np.array("{}"), kind=np.array("audio-window"))
    assert drop_ambiguous_windows(data, labels) == 4
    kept = np.load(data)
    assert kept["t_end"].tolist() == pytest.approx([1.75, 2.25, 3.0, 4.5, 5.0, 2.1, 4.25])  # b.wav: no cry, all kept
    assert kept["x"].ravel().tolist() == [0, 3, 4, 7, 8, 9, 10] and kept["y"].tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert kept["labels"].tolist() == ["not_crying", "crying"] and str(kept["kind"]) == "audio-window"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_a_cap_on_validation_false_alarms_chooses_a_threshold_that_keeps_to_it(tmp_path):
    from audio_models import tone, write_wav, yamnet_card, yamnet_signature_model

    from convert.audio_demo import choose_threshold

    clips = tmp_path / "clips"
    clips.mkdir()
    silence = np.zeros(32000, np.float32)
    # two faint cries and a louder sound in the cry band: no threshold decides the cries without an alarm
    # on the sound, so fewest misses plus false alarms (2 + 0 against 0 + 1) takes the alarm
    for name, level in (("cry1", 0.02), ("cry2", 0.02), ("hum", 0.035)):
        write_wav(clips / f"{name}.wav", np.concatenate([silence, tone(4.0, 450.0, level), silence]))
        (clips / f"{name}.txt").write_text("singing\n" if name == "hum" else "quiet\n")
    labels = clips / "labels.csv"
    labels.write_text("video,start_s,end_s,label,subject\ncry1.wav,2.0,6.0,crying,cry1\n"
                      "cry2.wav,2.0,6.0,crying,cry2\nhum.wav,0.0,8.0,not_crying,hum\n")
    model = yamnet_signature_model(tmp_path / "m.tflite", card=yamnet_card(hop_seconds=0.25))
    names = ["cry1", "cry2", "hum"]
    _, _, free, _ = choose_threshold(model, clips, labels, names)
    assert (free["decided_within_1_5_s"], free["false_alarms"]) == (2, 1)
    threshold, _, capped, _ = choose_threshold(model, clips, labels, names, max_false_alarms=0)
    assert capped["false_alarms"] == 0 and capped["decided_within_1_5_s"] < 2
    assert choose_threshold(model, clips, labels, names, max_false_alarms=1)[2] == free  # the cap already kept


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_the_card_evidence_rule_is_applied_alike_by_the_device_path_and_by_the_choice_of_threshold(tmp_path):
    from audio_models import tone, write_wav, yamnet_card, yamnet_signature_model

    from convert.audio_demo import choose_threshold, clip_scores, evaluate, truth_of
    from edge.audio import evidence_trace

    clips = tmp_path / "clips"
    clips.mkdir()
    # a cry from 2 s to 7 s, and a clip with one short blip: a 0.975 s window scored every 0.25 s holds
    # the 0.2 s blip in 4 windows, which 5 of the last 6 never are
    cry = np.concatenate([np.zeros(32000, np.float32), tone(5.0, 450.0), np.zeros(16000, np.float32)])
    blip = np.concatenate([np.zeros(40000, np.float32), tone(0.2, 450.0), np.zeros(84800, np.float32)])
    write_wav(clips / "cry.wav", cry)
    write_wav(clips / "blip.wav", blip)
    (clips / "cry.txt").write_text("quiet\n")
    (clips / "blip.txt").write_text("dog\n")
    labels = clips / "labels.csv"
    labels.write_text("video,start_s,end_s,label,subject\ncry.wav,2.0,7.0,crying,cry\nblip.wav,0.0,8.0,not_crying,blip\n")
    plain = yamnet_signature_model(tmp_path / "plain.tflite", card=yamnet_card(hop_seconds=0.25))
    ruled = yamnet_signature_model(tmp_path / "ruled.tflite", card=yamnet_card(hop_seconds=0.25, evidence=[5, 6]))

    windows = {}
    for wav in truth_of(labels):
        times, windows[wav] = clip_scores(plain, clips / wav)
        assert np.allclose(clip_scores(plain, clips / wav, windows=True)[1], windows[wav])  # no rule: the same
        ruled_times, heard = clip_scores(ruled, clips / wav)
        assert np.allclose(ruled_times, times)
        assert np.allclose(clip_scores(ruled, clips / wav, windows=True)[1], windows[wav])
        assert np.allclose(heard, evidence_trace(windows[wav], (5, 6)))  # the device's rule, as the choice applies it

    plain_figures = evaluate(plain, clips, labels, 0.5, min_on_seconds=0.0)
    ruled_figures = evaluate(ruled, clips, labels, 0.5, min_on_seconds=0.0)
    assert plain_figures["false_alarms"] == 1 and ruled_figures["false_alarms"] == 0  # the blip
    assert plain_figures["decided_within_1_5_s"] == ruled_figures["decided_within_1_5_s"] == 1
    # what choose_threshold computes for a rule is what the device with that rule on its card does
    traces = {wav: (clip_scores(plain, clips / wav)[0], evidence_trace(p, (5, 6))) for wav, p in windows.items()}
    assert evaluate(plain, clips, labels, 0.5, traces, min_on_seconds=0.0) == ruled_figures
    threshold, min_on, figures, rule = choose_threshold(plain, clips, labels, ["cry", "blip"])
    assert rule is None  # offered no rule, it keeps each window's own score
    threshold, min_on, figures, rule = choose_threshold(plain, clips, labels, ["cry", "blip"], ((5, 6),))
    assert figures["false_alarms"] == 0 and figures["decided_within_1_5_s"] == 1


@needs_tools
def test_audio_cnn_with_the_time_head_trains_converts_to_int8_and_runs_on_the_device_path(tmp_path):
    """``cryedge train --audio-head time``: the option reaches the graph (pooled over time only, 8 frequency bins
    kept), the card records it, int8 conversion reports its fidelity, and edge's audio path scores with it."""
    from convert.audio_demo import clip_scores
    from convert.convert import ConvertOptions, convert
    from edge.cli import build_parser

    labels = audio_synth.generate(tmp_path / "clips", 8, seconds=3.0, seed=5, cry_share=0.6)
    build_sound(tmp_path / "clips", labels, AudioSpec(), positive="crying", progress=False).save(tmp_path / "sound.npz")
    args = build_parser().parse_args(["train", "--arch", "audio-cnn", "--data", str(tmp_path / "sound.npz"),
                                      "-o", str(tmp_path / "a.keras"), "--epochs", "1", "--audio-head", "time"])
    assert args.handler(args) == 0
    report = convert(ConvertOptions(model=tmp_path / "a.keras", output=tmp_path / "a.tflite",
                                    calibration=str(tmp_path / "sound.npz")))
    assert report.fidelity["samples"] > 0 and 0.0 <= report.fidelity["label_agreement"] <= 1.0
    card = load_card(tmp_path / "a.tflite")
    assert card.quantization.scheme == "int8" and card.training["sizes"] == {"head": "time"}
    import tensorflow as tf

    graph = tf.lite.Interpreter(model_path=str(tmp_path / "a.tflite"))
    shapes = {tuple(int(d) for d in t["shape"]) for t in graph.get_tensor_details()}
    assert (1, 1, 8, 32) in shapes and (1, 256) in shapes  # the time-pooled maps, flattened: not a global average
    times, probabilities = clip_scores(tmp_path / "a.tflite", tmp_path / "clips" / "clip0000.wav")  # every 0.5 s from 0.975 s
    assert len(times) == 5 and np.all((probabilities >= 0) & (probabilities <= 1))


def test_a_longer_window_makes_a_wider_audio_cnn_that_converts_and_runs_on_the_device_path(tmp_path):
    """``demo-audio build --window-seconds 2``: the card's window is 32000 samples, the audio-cnn takes its 198
    frames from the data, int8 conversion keeps them, and edge's audio path scores every 0.25 s from 2 s on.
    Without the option the front end is the default model's (0.975 s, 15600 samples)."""
    from convert.audio_demo import clip_scores, front_end, front_end_of
    from convert.convert import ConvertOptions, convert
    from edge.cli import build_parser

    assert front_end_of(build_parser().parse_args(["demo-audio", "build"])) == front_end()
    assert front_end().window_samples == 15600
    audio = front_end_of(build_parser().parse_args(["demo-audio", "build", "--window-seconds", "2"]))
    assert (audio.window_samples, audio.frames, audio.hop_seconds) == (32000, 198, 0.25)
    labels = audio_synth.generate(tmp_path / "clips", 8, seconds=3.0, seed=5, cry_share=0.6)
    data = build_sound(tmp_path / "clips", labels, audio, positive="crying", progress=False)
    assert data.x.shape[1:] == (198, 64)
    data.save(tmp_path / "sound.npz")
    args = build_parser().parse_args(["train", "--arch", "audio-cnn", "--data", str(tmp_path / "sound.npz"),
                                      "-o", str(tmp_path / "a.keras"), "--epochs", "1"])
    assert args.handler(args) == 0
    report = convert(ConvertOptions(model=tmp_path / "a.keras", output=tmp_path / "a.tflite",
                                    calibration=str(tmp_path / "sound.npz")))
    assert report.fidelity["samples"] > 0
    card = load_card(tmp_path / "a.tflite")
    assert card.input_shape == (1, 198, 64) and card.audio.window_samples == 32000
    times, probabilities = clip_scores(tmp_path / "a.tflite", tmp_path / "clips" / "clip0000.wav")
    np.testing.assert_allclose(times, [2.0, 2.25, 2.5, 2.75, 3.0])
    assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.parametrize("seconds, reason", [("0.1", "longer than the window"), ("61", "at most 60 s")])
def test_a_window_the_front_end_cannot_have_is_refused_before_any_clip_is_made(seconds, reason):
    from convert.audio_demo import front_end_of
    from edge.cli import build_parser
    from edge.errors import DataError

    with pytest.raises(DataError, match=f"^audio front end: .*{reason}"):
        front_end_of(build_parser().parse_args(["demo-audio", "build", "--window-seconds", seconds]))


def test_mining_clips_hold_no_cry_and_draw_both_plans_of_hard_negatives():
    kinds = set()
    for index in range(40):
        events = audio_synth.mining_events(np.random.default_rng([6026, index]), 8.0, cry_share=1.0)
        assert events and all(e.kind != "crying" for e in events)
        kinds.add("loud" if events[0].dbfs is not None else "random")  # crib_events levels its sounds, random_events not
    assert kinds == {"loud", "random"}


@needs_tools
def test_hard_negative_mining_adds_the_windows_a_first_model_scores_high_and_trains_again(tmp_path):
    """``demo-audio build --mine-clips N``: clips with no cry from a seed of their own, scored by a first model; the
    windows at or above the level join the training data as not crying (never validation clips) and the model is
    trained again; the int8 model runs on the device path. Without it, nothing of this is made."""
    from convert.audio_demo import MINE_SEED_OFFSET, SEED, build, mine_hard_negatives, truth_of
    from convert.dataset import load
    from convert.keras_io import import_tensorflow
    from convert.train import _scores

    tiny = {"epochs": 1, "train_clips": 8, "heldout_clips": 3, "crib_clips": 0, "more_clips": 0}
    plain = build(tmp_path / "plain", None, tmp_path / "w0", **tiny)
    assert "mined" not in plain and not (tmp_path / "w0" / "mine").exists()
    assert not list((tmp_path / "w0").glob("*first*")) and not (tmp_path / "w0" / "train-mined.npz").exists()
    assert "mining" not in load_card(tmp_path / "plain" / "cry-audio-default.tflite").training["data"]

    summary = build(tmp_path / "mined", None, tmp_path / "w", mine_clips=3, mine_level=1e-9, **tiny)
    work = tmp_path / "w"
    mined = summary["mined"]
    assert mined["seed"] == SEED + MINE_SEED_OFFSET and mined["clips"] == 3 and mined["mined_clips"] == 3
    assert all(not any(spans) for spans in truth_of(work / "mine" / "labels.csv").values())  # no cry in them
    assert sorted(p.name for p in (work / "mine").glob("*.wav")) == ["mine0000.wav", "mine0001.wav", "mine0002.wav"]
    own, both = load(work / "train.npz"), load(work / "train-mined.npz")
    added = len(both["y"]) - len(own["y"])
    assert added == mined["mined"] == mined["windows"] > 0  # every window scores above 1e-9
    np.testing.assert_array_equal(both["x"][:len(own["y"])], own["x"])
    assert (both["y"][len(own["y"]):] == list(own["labels"]).index("not_crying")).all()
    assert all(str(g).startswith("mine") for g in both["groups"][len(own["y"]):])
    first = json.loads((work / "cry-audio-default.first.metrics.json").read_text())
    second = json.loads((work / "cry-audio-default.metrics.json").read_text())
    assert second["windows"] == first["windows"] + added and second["data"].endswith("train-mined.npz")
    assert second["test_groups"] == first["test_groups"]  # the validation clips: the training seed's, not mined ones
    assert not any(g.startswith("mine") for g in second["test_groups"])
    card = load_card(tmp_path / "mined" / "cry-audio-default.tflite")
    assert f"hard-negative mining: {added} windows of 3 clips" in card.training["data"]
    assert summary["held_out_set"]["clips"] == 3  # the int8 model scored the held-out clips on the device path

    # the level chooses: at the first model's median score about half the windows are mined, each at or above it
    import_tensorflow()
    import keras

    x = both["x"][len(own["y"]):]
    scores = _scores(keras.models.load_model(work / "cry-audio-default.first.keras", compile=False), x)
    level = float(np.median(scores))
    half = mine_hard_negatives(work / "cry-audio-default.first.keras", work / "train.npz", work / "mine", 3,
                               SEED + MINE_SEED_OFFSET, level, tmp_path / "half.npz")
    assert half["mined"] == int((scores >= level).sum()) < half["windows"]
    assert len(load(tmp_path / "half.npz")["y"]) == len(own["y"]) + half["mined"]


@needs_tools
def test_an_ensemble_build_averages_nets_from_seeds_of_their_own_into_one_int8_model(tmp_path):
    """``demo-audio build --ensemble 2``: member 0 is the net the build makes without the option (the same weights),
    member 1 the same training from the weights' seed seed + 1 (the same held-out clips); the Keras model converted
    is their mean, one graph, and its int8 .tflite runs on the device path; the card names both seeds. The default
    (K = 1) leaves the card as it was: one net, no ensemble."""
    import keras

    from convert.audio_demo import build, clip_scores
    from edge.cli import build_parser

    assert build_parser().parse_args(["demo-audio", "build"]).ensemble == 1
    assert build_parser().parse_args(["demo-audio", "build", "--ensemble", "3"]).ensemble == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo-audio", "build", "--ensemble", "0"])
    work, single, average = tmp_path / "work", tmp_path / "single", tmp_path / "average"
    options = dict(work_dir=work, epochs=1, seed=7, train_clips=8, heldout_clips=2, crib_clips=0, more_clips=0)
    build(single, None, **options)
    build(average, None, ensemble=2, **options)

    one = load_card(single / "cry-audio-default.tflite")
    assert "ensemble" not in one.training and "average" not in (single / "cry-audio-default.md").read_text()
    card = load_card(average / "cry-audio-default.tflite")
    assert [net["init_seed"] for net in card.training["ensemble"]["nets"]] == [7, 8]
    assert "average (mean of the sigmoid outputs, one graph) of 2 audio-cnn nets" in (average / "cry-audio-default.md").read_text()
    assert "from the weights' seeds 7, 8" in (average / "cry-audio-default.md").read_text()
    assert card.training["test_groups"] == one.training["test_groups"] and card.quantization.scheme == "int8"

    net = keras.saving.load_model(single / "cry-audio-default.keras")
    members = [keras.saving.load_model(work / f"cry-audio-default.member{i}.keras") for i in range(2)]
    for a, b in zip(net.get_weights(), members[0].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # member 0 is the single build's net
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])  # initialised apart
    mean = keras.saving.load_model(average / "cry-audio-default.keras")
    x = np.random.default_rng(0).normal(size=(4, *mean.input_shape[1:])).astype(np.float32)
    expected = (members[0].predict(x, verbose=0) + members[1].predict(x, verbose=0)) / 2
    np.testing.assert_allclose(mean.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    times, probabilities = clip_scores(average / "cry-audio-default.tflite", work / "heldout" / "heldout0000.wav")
    assert len(times) > 20 and np.all((probabilities >= 0) & (probabilities <= 1))
