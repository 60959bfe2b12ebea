"""The audio path: window -> model -> Score, with a real TFLite graph of YAMNet's signature built here,
and the monitor thread that keeps listening when the microphone fails."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from audio_models import YAMNET_SAMPLES, alsa_stand_in, tone, write_wav, yamnet_card, yamnet_signature_model

from edge.audio import (
    NO_SOUND_DEVICE,
    AudioMonitor,
    AudioPipeline,
    AudioScorer,
    AudioWindow,
    Evidence,
    evidence_trace,
)
from edge.audio_source import AlsaAudioSource, AudioChunk, FfmpegAudioSource
from edge.errors import ModelError
from edge.model import TFLiteModel

pytest.importorskip("tensorflow")  # builds the model


@pytest.fixture(scope="module")
def yamnet_like(tmp_path_factory):
    return yamnet_signature_model(tmp_path_factory.mktemp("yamnet") / "yamnet.tflite", card=yamnet_card())


def chunks_of(samples: np.ndarray, t0: float = 100.0, block: int = 1600):
    return [AudioChunk(samples[i:i + block], t0 + i / 16000, 16000, i) for i in range(0, samples.size, block)]


def test_a_window_is_due_every_hop_once_full():
    window = AudioWindow(size=16000, rate=16000, hop_seconds=0.5)
    due = [window.push(np.full(1600, i, np.float32)) for i in range(30)]  # 3 s in 100 ms blocks
    ends = [(i, offset) for i, result in enumerate(due) for offset, _ in result]
    assert ends == [(9, 1600), (14, 1600), (19, 1600), (24, 1600), (29, 1600)]  # at 1.0, 1.5, ... 3.0 s
    last = due[29][0][1]
    assert last.size == 16000 and last[-1] == 29 and last[0] == 20  # the newest second


def test_the_yamnet_signature_model_loads_and_hears_a_cry_tone(yamnet_like):
    model = TFLiteModel(yamnet_like)
    assert model.input_shape == (YAMNET_SAMPLES,)
    scorer = AudioScorer(model)
    assert scorer.score(tone(0.975, 450.0, level=0.3), 1.0).probability > 0.95
    assert scorer.score(np.zeros(YAMNET_SAMPLES, np.float32), 1.0).probability < 0.05
    assert scorer.score(tone(0.975, 3000.0, level=0.3), 1.0).probability < 0.05  # outside the cry band


def test_a_batched_waveform_graph_is_accepted_too(tmp_path):
    card = dict(yamnet_card(), input_shape=[1, YAMNET_SAMPLES])
    path = yamnet_signature_model(tmp_path / "b.tflite", batchless=False, card=card)
    assert AudioScorer(TFLiteModel(path)).score(tone(0.975, 450.0), 0.0).probability > 0.95


@pytest.mark.parametrize("change, message", [
    ({"samples": 16000}, r"input shape \[16000\] disagrees with its card \[15600\]"),
    ({"classes": 527}, r"its card expects 521 class scores \(YAMNet: 521\), the graph's outputs are \[1, 527\]"),
])
def test_a_model_that_does_not_match_the_yamnet_signature_is_refused_in_one_line(tmp_path, change, message):
    path = yamnet_signature_model(tmp_path / "m.tflite", card=yamnet_card(), **change)
    with pytest.raises(ModelError, match=message) as caught:
        TFLiteModel(path)
    assert "\n" not in str(caught.value)


def test_the_card_must_say_which_classes_are_crying(tmp_path):
    card = yamnet_card()
    card["audio"]["cry_classes"] = []
    path = yamnet_signature_model(tmp_path / "m.tflite", card=card)
    with pytest.raises(ModelError, match="cry_classes"):
        TFLiteModel(path)
    card["audio"]["cry_classes"] = [521]
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="below classes"):
        TFLiteModel(path)


def test_the_pipeline_scores_every_half_second_with_time_and_level(yamnet_like):
    pipeline = AudioPipeline(AudioScorer(TFLiteModel(yamnet_like)))
    sound = np.concatenate([np.zeros(32000, np.float32), tone(2.0, 450.0, level=0.3), np.zeros(32000, np.float32)])
    results = [r for chunk in chunks_of(sound) for r in pipeline.process(chunk)]
    times = [round(r.score.t - 100.0, 3) for r in results]
    assert times[0] == pytest.approx(YAMNET_SAMPLES / 16000, abs=0.1)
    assert np.allclose(np.diff(times), 0.5)
    crying = [round(r.score.t - 100.0, 1) for r in results if r.score.probability > 0.5]
    assert crying and 2.0 <= min(crying) <= 2.6 and max(crying) <= 5.0
    loud = [r.level_dbfs for r in results if 2.5 < r.score.t - 100 < 4.0]
    quiet = [r.level_dbfs for r in results if r.score.t - 100 < 2.0]
    assert all(level == pytest.approx(-13.5, abs=0.5) for level in loud)  # 0.3 sine: 20 log10(0.3 / sqrt 2)
    assert all(level == -120.0 for level in quiet)
    assert all(r.score.ok for r in results)


def test_evidence_k_of_n_is_the_kth_highest_of_the_last_n_window_scores():
    flicker = [0.83, 0.96, 0.80, 0.20, 0.90, 0.10, 0.10]
    assert evidence_trace(flicker, None).tolist() == flicker  # no rule: each window's own score
    assert evidence_trace(flicker, (1, 1)).tolist() == flicker
    # 2 of the last 3: a cry flickering around 0.85 stays above 0.8 throughout; one window of 0.9 in a song
    # between two low ones never lifts it; windows not heard yet count as nothing
    assert evidence_trace(flicker, (2, 3)).tolist() == [0.0, 0.83, 0.83, 0.80, 0.80, 0.20, 0.10]
    assert evidence_trace(flicker, (2, 2)).tolist() == [0.0, 0.83, 0.80, 0.20, 0.20, 0.10, 0.10]
    evidence = Evidence((2, 3))
    assert [evidence.add(p) for p in (0.9, 0.9)] == [0.0, 0.9]
    evidence.reset()  # a gap in the sound: the windows before it are no evidence
    assert evidence.add(0.9) == 0.0


def test_a_card_without_evidence_keeps_each_windows_score_and_one_with_it_needs_k_of_n(tmp_path):
    sound = np.concatenate([np.zeros(32000, np.float32), tone(0.3, 450.0), np.zeros(24000, np.float32),
                            tone(3.0, 450.0), np.zeros(16000, np.float32)])  # a blip at 2 s, a cry at 3.8-6.8 s

    def heard(**audio):
        path = yamnet_signature_model(tmp_path / f"m{len(audio)}.tflite", card=yamnet_card(**audio))
        pipeline = AudioPipeline(AudioScorer(TFLiteModel(path)))
        return [r for chunk in chunks_of(sound, t0=0.0) for r in pipeline.process(chunk)]

    before, after = heard(), heard(evidence=[3, 3])
    windows = [r.score.probability for r in before]
    assert [r.window_probability for r in before] == windows  # no rule: the alarm sees each window's score
    assert [r.window_probability for r in after] == pytest.approx(windows)
    assert [r.score.probability for r in after] == pytest.approx(evidence_trace(windows, (3, 3)).tolist())
    blip = [round(r.score.t, 2) for r in before if r.score.probability > 0.5 and r.score.t < 3.5]
    assert blip  # one window alone hears the blip ...
    assert not [r for r in after if r.score.probability > 0.5 and r.score.t < 3.5]  # ... 3 of 3 do not
    cry = [r.score.t for r in after if r.score.probability > 0.5]
    first = min(r.score.t for r in before if r.score.probability > 0.5 and r.score.t > 3.5)
    assert cry and min(cry) == pytest.approx(first + 1.0)  # the cry is heard, two hops later


def test_a_card_with_an_evidence_rule_that_cannot_be_met_is_refused_in_one_line(tmp_path):
    path = yamnet_signature_model(tmp_path / "m.tflite", card=yamnet_card())
    (tmp_path / "m.json").write_text(json.dumps(yamnet_card(evidence=[3, 2])))
    with pytest.raises(ModelError, match=r"evidence \[k, n\] needs 1 <= k <= n <= 20") as caught:
        TFLiteModel(path)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_the_monitor_follows_a_file_in_step_with_the_frame_loop(yamnet_like, tmp_path):
    sound = np.concatenate([np.zeros(48000, np.float32), tone(2.0, 450.0), np.zeros(48000, np.float32)])
    wav = write_wav(tmp_path / "s.wav", sound)
    pipeline = AudioPipeline(AudioScorer(TFLiteModel(yamnet_like)))
    monitor = AudioMonitor(lambda: FfmpegAudioSource(wav, realtime=False), pipeline, follow_frames=True)
    monitor.start()
    try:
        seen = []
        monitor.advance_to(0.0)  # a frame at the start: the file may play its first second
        deadline = time.monotonic() + 10
        while monitor.status.first_frame_t is None and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = monitor.status.first_frame_t
        for step in range(16):  # a frame loop at 2 frames a second of the file's time
            t = t0 + 1.0 + step * 0.5
            monitor.advance_to(t)
            latest = monitor.latest(t)
            seen.append((round(t - t0, 1), latest.score.probability if latest else None))
    finally:
        monitor.close()
    crying = [t for t, p in seen if p is not None and p > 0.5]
    assert crying and 3.0 <= min(crying) <= 3.6 and max(crying) <= 6.1
    assert monitor.overruns == 0


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs arecord")
def test_a_microphone_that_is_missing_is_retried_until_it_appears(yamnet_like, tmp_path, monkeypatch):
    conf = tmp_path / "alsa.conf"
    conf.write_text(open("/usr/share/alsa/alsa.conf").read())  # no "mic" yet
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    pipeline = AudioPipeline(AudioScorer(TFLiteModel(yamnet_like)))
    monitor = AudioMonitor(lambda: AlsaAudioSource("mic"), pipeline, backoff_first=0.2, backoff_limit=0.4)
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while monitor.status.reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.status.state == "reopening"
        assert monitor.blind_score(time.monotonic()).status == NO_SOUND_DEVICE
        assert "cannot open the capture device" in monitor.status.last_error
        (tmp_path / "later").mkdir()
        alsa_stand_in(tmp_path / "later", monkeypatch, seconds=5.0, hz=450.0)  # the microphone is plugged in
        deadline = time.monotonic() + 10
        while monitor.chunks == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.chunks > 0
    finally:
        monitor.close()


def test_a_file_slow_to_start_is_not_taken_for_an_empty_one(yamnet_like, tmp_path):
    """A loaded machine can take over a second to start the decoder; that is not the end of the file."""
    from edge.audio_source import PipeAudioSource

    raw = tmp_path / "s.raw"
    (tone(2.0, 450.0) * 32767).astype("<i2").tofile(raw)

    class SlowFile(PipeAudioSource):
        live = False

    pipeline = AudioPipeline(AudioScorer(TFLiteModel(yamnet_like)))
    monitor = AudioMonitor(lambda: SlowFile(["sh", "-c", f"sleep 1.5; cat {raw}"], "file:slow", 16000), pipeline)
    monitor.start()
    deadline = time.monotonic() + 15
    while not monitor.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    monitor.close()
    assert monitor.chunks == 20 and monitor.status.state == "closed"
    assert monitor.latest(monitor.status.last_frame_t + 0.1).score.probability > 0.9


def test_yamnets_full_graph_with_three_outputs_and_any_length_input_is_read_by_its_class_scores(tmp_path):
    from audio_models import yamnet_full_graph_model

    path = yamnet_full_graph_model(tmp_path / "full.tflite", card=yamnet_card())
    model = TFLiteModel(path)
    assert model.input_shape == (YAMNET_SAMPLES,)  # the [-1] input given the card's window
    scorer = AudioScorer(model)
    assert scorer.score(tone(0.975, 450.0, level=0.3), 1.0).probability > 0.95
    assert scorer.score(np.zeros(YAMNET_SAMPLES, np.float32), 1.0).probability < 0.05
