"""The alert path when the sound misbehaves: an audio model that fails at run time, an audio thread that dies.

Real components: sound files played through ffmpeg, real TFLite graphs (tests/audio_models.py: one that hears a
300-700 Hz tone as a baby's cry and fails on a loud window, by a LiteRT invoke error or NaN scores), the daemon
as `cryedge run` builds it. The promise checked: an alert is never lost, an ON is always followed by an OFF, and
a fault of the sound path is said (state topic, /health), never a traceback, a silent zero or a hung daemon.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from audio_models import faulty_model, tone, write_wav, yamnet_card
from taps import record_published

from edge.config import load_config
from edge.daemon import Daemon

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
RATE = 16000


def knocked_cry(path, cry=(2.0, 10.0), knock=(5.0, 6.5), seconds=18.0):
    """A quiet room; a cry (a 450 Hz tone, peak 0.15) over ``cry``; a loud knock (peak 0.9) over ``knock``."""
    rng = np.random.default_rng(5)
    sound = (0.003 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    if cry is not None:
        a, b = (int(x * RATE) for x in cry)
        sound[a:b] += tone(cry[1] - cry[0], 450.0, level=0.15)
    a, b = (int(x * RATE) for x in knock)
    sound[a:b] += 0.9 * np.sign(np.sin(2 * np.pi * 90.0 * np.arange(b - a) / RATE)).astype(np.float32)
    return write_wav(path, sound)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("faulty")
    return {fault: faulty_model(folder / f"{fault}.tflite", fault, card=yamnet_card(name=f"faulty-{fault}"))
            for fault in ("raise", "nan")}


def listening_config(tmp_path, model, sound, extra="", realtime=False):
    toml = tmp_path / "listen.toml"
    toml.write_text(f'[device]\nid = "nursery"\n[source]\ntype = "none"\n[audio]\nenabled = true\nmodel = "{model}"\n'
                    f'[audio.source]\ntype = "file"\npath = "{sound}"\nrealtime = {str(realtime).lower()}\n[health]\nenabled = false\n'
                    f'[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n' + extra)
    return load_config(toml)


def run_to_the_end(daemon, seconds=60.0):
    """daemon.run() on a thread of its own; its return value, or None if it did not end within ``seconds``."""
    result = []
    runner = threading.Thread(target=lambda: result.append(daemon.run()))
    runner.start()
    runner.join(seconds)
    if runner.is_alive():
        daemon.stop()
        runner.join(30)
    return result[0] if result else None


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that ended a thread (each would print a traceback to the journal)."""
    caught = []
    monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(args.exc_value))
    return caught


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_an_audio_model_failing_mid_cry_costs_no_alert_and_says_so(models, tmp_path, caplog, thread_errors, fault):
    """No camera; the audio model fails on every window a loud knock is in (2.5 s of windows) in the middle of a
    heard cry. The cry still has one start and one end (by its scores), the sound file is played to its end, the
    state says "model_error" while it fails (not "ok" with a probability of 0: NaN was read as a quiet room), in
    one log line. Before, an invoke error killed the audio thread with a traceback and the daemon never ended.

    Played in real time, as a microphone is: the daemon hands the newest state over once per pass, and at full
    decoding speed a loaded machine heard the whole knock, and the windows after it, within one pass."""
    daemon = Daemon(listening_config(tmp_path, models[fault], knocked_cry(tmp_path / "knock.wav"), realtime=True))
    events, states = [], []
    with daemon:
        record_published(daemon.publisher, events, states)
        assert run_to_the_end(daemon) == 0
    assert thread_errors == []
    assert [(e.kind, e.reason) for e in events] == [("start", ""), ("end", "scores")], events
    heard = [state.senses["audio"] for state in states if state.senses and "audio" in state.senses]
    failing = [h for h in heard if h["status"] == "model_error"]
    assert failing and all(h["probability"] is None for h in failing), heard
    assert all(h["probability"] is not None and np.isfinite(h["probability"]) for h in heard if h["status"] == "ok")
    assert heard[-1]["status"] == "ok"  # judged again after the knock
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "faulty-" in r.getMessage()]
    assert len(warned) == 1 and "Traceback" not in caplog.text, warned


def test_an_audio_model_that_keeps_failing_ends_the_episode_as_blind_and_health_says_why(models, tmp_path,
                                                                                           thread_errors):
    """The model fails from the middle of a cry to the end of the sound: the episode ends after
    alarm.blind_seconds with the reason model_error (an ON followed by its OFF), and /health says the sound is
    not judged (503 once the last judged score is stale), with the audio status model_error."""
    from edge.health import health_document

    sound = knocked_cry(tmp_path / "knock-to-end.wav", cry=(2.0, 18.0), knock=(5.0, 18.0))
    daemon = Daemon(listening_config(tmp_path, models["raise"], sound, "[alarm]\nblind_seconds = 2.0\n"))
    events = []
    with daemon:
        record_published(daemon.publisher, events)
        assert run_to_the_end(daemon) == 0
        code, body = health_document(daemon.health_stats(), daemon.last_frame + 60, stale_after=10)
    assert thread_errors == []
    assert [(e.kind, e.reason) for e in events] == [("start", ""), ("end", "model_error")], events
    assert code == 503 and body["audio"] == "model_error", body


def test_an_audio_model_failing_all_night_keeps_one_short_error_and_its_memory(models):
    """LiteRT appends every failed invoke's error to the text of all the earlier ones (66 characters each: 1.3 million after
    20,000 failures, about 80 minutes of windows). The error said is the newest one alone, and the interpreter is
    loaded afresh before that text passes INVOKE_ERRORS_KEPT; the model then still judges a quiet window."""
    from edge.audio import AudioScorer
    from edge.errors import ModelError
    from edge.model import INVOKE_ERRORS_KEPT, TFLiteModel

    scorer = AudioScorer(TFLiteModel(models["raise"]))
    loud, quiet = tone(0.975, 90.0, level=0.9), tone(0.975, 450.0, level=0.15)
    messages = set()
    for _ in range(2 * INVOKE_ERRORS_KEPT // 66):
        with pytest.raises(ModelError) as failed:
            scorer.score(loud, 0.0)
        messages.add(str(failed.value))
    assert messages == {"model faulty-raise failed: gather index out of bounds"
                        "Node number 5 (GATHER) failed to invoke."}, messages
    assert scorer.model.reloads == 1  # its interpreter made afresh
    assert scorer.score(quiet, 1.0).probability > 0.9


def test_an_exception_in_the_audio_thread_reopens_the_microphone_and_hearing_goes_on(tmp_path, thread_errors):
    """A live network microphone (tests/edge/test_audio_only.py's, on loopback); something on the audio thread
    raises once (here a listener of the scores). Before, the thread died with a traceback and the microphone was
    never heard again, while the monitor ran on deaf. Now it is one warning, the microphone is reopened with
    back-off, and its scores come again."""
    import time

    from test_audio_only import HttpMicrophone

    microphone = HttpMicrophone().start()
    toml = tmp_path / "listen.toml"
    toml.write_text(f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                    f'url = "{microphone.url}"\nreopen_min_seconds = 0.2\nreopen_max_seconds = 0.5\n'
                    f'[health]\nenabled = false\n[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n')
    heard, failed = [], []

    def consumer(score):
        heard.append(score)
        if not failed:
            failed.append(score)
            raise RuntimeError("a bug in a consumer of the scores")

    try:
        with Daemon(load_config(toml)) as daemon:
            monitor = daemon.hearing.monitor
            monitor.on_score(consumer)
            deadline = time.monotonic() + 30
            while (monitor.status.reconnects < 1 or len(heard) < 3) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert monitor.status.reconnects >= 1 and len(heard) >= 3 and not monitor.ended, (monitor.status, heard)
            assert "RuntimeError: a bug in a consumer" in monitor.status.last_error
    finally:
        microphone.stop()
    assert thread_errors == []


def test_with_a_camera_an_audio_model_that_failed_on_a_knock_still_hears_the_cry_after_it(models, tmp_path):
    """A camera that sees no face (an empty room, tests/edge/test_hearing.py's clip) and a sound track with a loud
    knock at 1-2 s, then a cry at 5-8 s. The audio model fails on the knock; the cry after it is still heard
    (before, the knock killed the audio thread and the cry raised nothing), and the state said model_error,
    not no_sound, while the model failed."""
    from test_daemon import write_position_model
    from test_hearing import empty_room, run, with_sound

    sound = knocked_cry(tmp_path / "knock-first.wav", cry=(5.0, 8.0), knock=(1.0, 2.0), seconds=13.0)
    clip = with_sound(empty_room(tmp_path / "room.avi", seconds=13.0), sound, tmp_path / "room-knock.avi")
    events, states = run(tmp_path, write_position_model(tmp_path / "position.tflite"), models["raise"], clip)
    assert [kind for kind, _, _ in events] == ["start", "end"], events
    assert 5.0 <= events[0][1] <= 6.5 and events[1][2] == "scores", events
    statuses = [state.senses["audio"]["status"] for state in states if state.senses and "audio" in state.senses]
    assert "model_error" in statuses and statuses[-2] == "ok", statuses


def alsa_flood(tmp_path, monkeypatch) -> str:
    """An ALSA capture PCM ``flood`` that delivers sound as fast as it is read, never in real time: a device
    opened at a rate it does not have (``hw:1,0`` at 48 kHz asked for 16 kHz) delivers three times too much. ALSA's
    ``file`` PCM over ``null`` (tests/audio_models.alsa_stand_in) reading ``/dev/urandom``: endless white noise."""
    conf = tmp_path / "alsa.conf"
    conf.write_text(open("/usr/share/alsa/alsa.conf").read()
                    + '\npcm.flood { type file; slave.pcm "null"; file "/dev/null"; infile "/dev/urandom"; format "raw" }\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    return "flood"


def hear_for(tmp_path, source_toml: str, seconds: float, until=lambda monitor: False):
    """A monitor with no camera on ``[audio.source]`` ``source_toml`` for up to ``seconds`` (or ``until``); its
    monitor's status and the /health answer at the end."""
    import time

    from edge.health import health_document

    toml = tmp_path / f"listen-{time.monotonic_ns()}.toml"
    toml.write_text(f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\n{source_toml}\n'
                    f'[health]\nenabled = false\n[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n')
    with Daemon(load_config(toml)) as daemon:
        runner = threading.Thread(target=daemon.run)
        runner.start()
        monitor = daemon.hearing.monitor
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until(monitor):
            time.sleep(0.2)
        answer = health_document(daemon.health_stats(), time.monotonic(), stale_after=daemon._stall_after())
        daemon.stop()
        runner.join(30)
    return monitor, answer


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs arecord (alsa-utils)")
def test_a_microphone_that_delivers_more_sound_than_real_time_is_said_not_heard_as_ok(tmp_path, monkeypatch):
    """A capture device that delivers sound faster than real time (a hw: device at its own rate) was "ok" for ever
    while most of its sound was dropped as overruns and the rest heard pitched down: a deaf monitor. It is said
    in one line naming the rate, the sound is no_sound_device (/health 503) and the device is reopened with a
    growing back-off. A network microphone that keeps real time (tests/edge/test_audio_only.py's) is not."""
    from test_audio_only import HttpMicrophone

    device = alsa_flood(tmp_path, monkeypatch)
    monitor, (code, body) = hear_for(tmp_path, f'type = "alsa"\ndevice = "{device}"\nreopen_min_seconds = 0.5', 40.0,
                                     until=lambda monitor: bool(monitor.status.last_error))
    assert "alsa:flood delivers about" in (monitor.status.last_error or ""), (monitor.status, monitor.overruns)
    assert "does not capture at 16000 Hz" in monitor.status.last_error
    assert code == 503 and body["audio"] == "no_sound_device", body

    microphone = HttpMicrophone().start()
    try:
        monitor, (code, body) = hear_for(tmp_path, f'type = "stream"\nurl = "{microphone.url}"', 20.0)
    finally:
        microphone.stop()
    assert not monitor.status.last_error and monitor.status.reconnects == 0, monitor.status
    assert code == 200 and body["audio"] == "ok", body
