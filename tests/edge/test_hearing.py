"""The daemon hearing: a video's sound track through a real TFLite audio graph, fused with the picture.

Clips are synthetic (test_daemon's astronaut clip, or an empty room) with a sound track made here; the
audio model has YAMNet's signature and hears a 300-700 Hz tone as "Baby cry, infant cry"
(tests/audio_models.py), the vision model says "crying" while the face is in the right half of the frame
(test_daemon.py). So every answer is known to the frame.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from audio_models import tone, write_wav, yamnet_card, yamnet_signature_model
from taps import record_published
from test_daemon import FPS, config_file, write_clip, write_position_model

from edge.config import load_config
from edge.daemon import Daemon

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
SECONDS = 10.0
CRY = (4.0, 7.0)  # seconds of the sound track with the cry tone


def sound_track(folder: Path, cry=CRY, seconds=SECONDS) -> Path:
    rng = np.random.default_rng(3)
    sound = (0.003 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)  # a quiet room
    if cry is not None:
        a, b = (int(x * 16000) for x in cry)
        sound[a:b] += tone(cry[1] - cry[0], 450.0, level=0.3)
    return write_wav(folder / f"sound-{cry}.wav", sound)


def empty_room(path: Path, seconds=SECONDS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for n in range(int(seconds * FPS)):
        writer.write(np.full((480, 640, 3), 60 + n % 3, np.uint8))
    writer.release()
    return path


def with_sound(video: Path, wav: Path, out: Path) -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(video), "-i", str(wav), "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "pcm_s16le", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hearing")
    pytest.importorskip("tensorflow")
    audio_model = yamnet_signature_model(folder / "yamnet-like.tflite", card=yamnet_card())
    return folder, write_position_model(folder / "position.tflite"), audio_model


def run_daemon(config) -> tuple[list, list, float]:
    """The daemon over its whole clip: (events, states published, the clip's time 0 on the monotonic clock)."""
    daemon = Daemon(config)
    events, states = [], []
    with daemon:
        record_published(daemon.publisher, events, states)
        assert daemon.run() == 0
        origin = daemon.source.status.first_frame_t
    return events, states, origin


def run(folder, vision_model, audio_model, clip, extra=""):
    toml = f'[audio]\nenabled = true\nmodel = "{audio_model}"\n' + extra
    events, states, origin = run_daemon(load_config(config_file(folder, vision_model, clip, toml),
                                                    {"source": {"realtime": False}}))
    return [(e.kind, round(e.t - origin, 2), e.reason) for e in events], states


def test_with_no_face_in_sight_the_cry_is_heard_within_a_second_and_a_half(assets):
    folder, vision_model, audio_model = assets
    clip = with_sound(empty_room(folder / "room.avi"), sound_track(folder), folder / "room-cry.avi")
    events, states = run(folder, vision_model, audio_model, clip)
    assert [kind for kind, _, _ in events] == ["start", "end"]
    (_, start, _), (_, end, reason) = events
    assert CRY[0] <= start <= CRY[0] + 1.5
    assert CRY[1] <= end <= CRY[1] + 2.0 and reason == "scores"
    last = states[-2].senses  # the last state of the run (the final one is the OFF at shutdown)
    assert (last["vision"]["probability"], last["vision"]["status"]) == (None, "no_face")
    assert last["audio"]["status"] == "ok" and last["audio"]["level_dbfs"] < -40


def test_silence_does_not_hide_what_the_camera_sees(assets):
    folder, vision_model, audio_model = assets
    clip = with_sound(write_clip(folder / "face.avi", SECONDS, (3.0, 7.0)), sound_track(folder, cry=None),
                      folder / "face-quiet.avi")
    events, _ = run(folder, vision_model, audio_model, clip)
    assert [kind for kind, _, _ in events] == ["start", "end"]
    assert abs(events[0][1] - 3.0) < 1.0 and abs(events[1][1] - 7.0) < 1.0


def test_vision_only_fusion_ignores_the_sound_but_still_reports_it(assets):
    folder, vision_model, audio_model = assets
    clip = with_sound(empty_room(folder / "room2.avi"), sound_track(folder), folder / "room-cry2.avi")
    events, states = run(folder, vision_model, audio_model, clip, '[fusion]\nmode = "vision"\n')
    assert events == []
    heard = [s.senses["audio"]["probability"] for s in states if s.senses and s.senses["audio"]["probability"]]
    assert max(heard) > 0.9


def test_a_video_without_a_sound_track_runs_on_the_picture_alone(assets):
    folder, vision_model, audio_model = assets
    clip = write_clip(folder / "face-only.avi", SECONDS, (3.0, 7.0))
    events, states = run(folder, vision_model, audio_model, clip)
    assert [kind for kind, _, _ in events] == ["start", "end"]
    assert states[-2].senses["audio"] == {"probability": None, "status": "no_sound_device"}


ALLOWED_STATE_KEYS = {"crying", "probability", "since", "event_id", "model", "vision", "audio"}
ALLOWED_SENSE_KEYS = {"probability", "status", "level_dbfs", "brightness"}  # brightness: the picture's, 0-1


def test_home_assistant_gets_the_heard_cry_and_the_sound_level_and_nothing_else_leaves(assets, mosquitto):
    """Privacy, checked at a subscriber of '#' on a real broker: only scores, levels and statuses leave."""
    from mqtt import Subscriber
    from test_publish import render_like_home_assistant

    folder, vision_model, audio_model = assets
    clip = with_sound(empty_room(folder / "room3.avi"), sound_track(folder), folder / "room-cry3.avi")
    before = {p for p in folder.rglob("*")}
    broker = f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\nstate_interval = 0\n'
    with Subscriber(mosquitto) as everything:
        events, _ = run(folder, vision_model, audio_model, clip, broker)
        everything.wait_for(next(m.topic for m in everything.messages if m.topic.endswith("/availability")),
                            lambda m: m.payload == b"offline")
    assert [kind for kind, _, _ in events] == ["start", "end"]
    messages = list(everything.messages)
    topics = {m.topic for m in messages}
    prefix = next(t for t in topics if t.endswith("/state")).rsplit("/", 1)[0]
    assert topics <= {f"{prefix}/state", f"{prefix}/event", f"{prefix}/stats", f"{prefix}/availability",
                      next(t for t in topics if t.startswith("homeassistant/device/"))}
    discovery = json.loads(next(m.payload for m in messages if m.topic.startswith("homeassistant/")))
    for message in messages:
        assert len(message.payload) < 8192, message.topic  # a second of sound as text would be ~100 kB
        if message.topic.endswith("/availability"):
            assert message.payload in (b"online", b"offline")
            continue
        payload = json.loads(message.payload)
        if message.topic.endswith("/state"):
            assert set(payload) <= ALLOWED_STATE_KEYS
            for sense in ("vision", "audio"):
                assert set(payload.get(sense, {})) <= ALLOWED_SENSE_KEYS
        if message.topic.endswith("/stats"):
            assert all(isinstance(v, (int, float, str, bool, type(None))) for v in payload.values()), payload
    # nothing was written beside the clip but the outbox (and the config files the test wrote)
    written = {p for p in folder.rglob("*")} - before
    assert all(p.name.startswith(("outbox", "cryedge-")) for p in written), written

    cmps = discovery["cmps"]
    assert cmps["heard"]["unit_of_measurement"] == "%" and cmps["heard"]["icon"] == "mdi:ear-hearing"
    assert cmps["sound_level"]["unit_of_measurement"] == "dBFS" and "device_class" not in cmps["sound_level"]
    states = [m.payload for m in messages if m.topic.endswith("/state")]
    heard = [render_like_home_assistant(cmps["heard"]["value_template"], s) for s in states]
    levels = [render_like_home_assistant(cmps["sound_level"]["value_template"], s) for s in states]
    assert max(float(h) for h in heard if h != "None") > 90
    assert -60 < min(float(v) for v in levels if v != "None") < -40  # the quiet room
    assert max(float(v) for v in levels if v != "None") > -20  # the cry tone
    assert "None" in heard  # the state sent on connect has no audio part yet: unknown, not an error


def test_cryedge_eval_scores_vision_audio_and_their_fusion_on_the_same_clips(assets, caplog):
    """The hidden-face cry: missed by the picture, found by the sound and by the fusion, within 1.5 s."""
    from convert.evaluate import evaluate

    folder, vision_model, audio_model = assets
    clips = folder / "eval"
    clips.mkdir()
    with_sound(empty_room(folder / "room4.avi"), sound_track(folder), clips / "hidden-cry.avi")
    with_sound(empty_room(folder / "room5.avi"), sound_track(folder, cry=None), clips / "quiet.avi")
    empty_room(clips / "silent.avi", seconds=3.0)  # a picture with no sound track: named, not judged as fused
    labels = clips / "labels.csv"
    # the test vision model's positive label is "right" (test_daemon.py): the cry is labelled so
    labels.write_text(f"video,start_s,end_s,label\nhidden-cry.avi,{CRY[0]},{CRY[1]},right\n")
    found = {}
    for mode in ("vision", "audio", "either"):
        overrides = {"audio": {"enabled": mode != "vision", "model": str(audio_model)}, "fusion": {"mode": mode}}
        config = load_config(config_file(folder, vision_model, clips / "quiet.avi"), overrides)
        results, total, _ = evaluate(clips, labels, config, positive="right", default_label="left")
        found[mode] = total
        by_clip = {r.video: r for r in results}
        assert by_clip["quiet.avi"].episodes == []  # no false alarm on the quiet room in any mode
        # the per-window figures are those of the scores the alarm followed: in audio and either modes the
        # sound's (the picture sees no face at all); they once stayed the picture's whatever the mode
        hidden = by_clip["hidden-cry.avi"]
        heard = mode != "vision"
        # the clip with no sound track is left out of the sound's figures and named, not judged on its picture
        assert sorted(by_clip) == (["hidden-cry.avi", "quiet.avi"] if heard else ["hidden-cry.avi", "quiet.avi", "silent.avi"])
        assert total["left_out"] == ({"silent.avi": "no sound track"} if heard else {})
        assert [by_clip[name].sound_heard for name in ("hidden-cry.avi", "quiet.avi")] == ([True] * 2 if heard else [None] * 2)
        said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
        assert said == ([f"left out of the --fusion {mode} figures (no sound to judge): silent.avi; 2 of 3 clips judged"]
                        if heard else []), said
        caplog.clear()
        assert hidden.face_share == 0.0 and (hidden.seen_share > 0.9) == heard, (mode, hidden.statuses)
        assert (hidden.by_label["right"]["scored_crying"] > 0.5) == heard, (mode, hidden.by_label)
        assert hidden.by_label["left"]["scored_crying"] < 0.2
    assert found["vision"]["found"] == 0
    for mode in ("audio", "either"):
        assert found[mode]["found"] == 1 and found[mode]["false_alarms"] == 0
        assert abs(found[mode]["start_error_median_s"]) <= 1.5


def test_the_readme_command_hears_and_sees_the_demo_clip(tmp_path):
    """`cryedge run` with no arguments: the bundled clip's picture and SYNTHETIC sound track, one cry, both senses.
    The default audio model was trained on synthetic sound and public recordings: its card says so, with their
    licences (the Open Database License's notice among them) and its figures on recordings it never trained on."""
    from edge import paths
    from edge.audio import has_sound_track, hearing_enabled
    from edge.card import load_card

    card = load_card(paths.bundled("models", "cry-audio-default.tflite"))
    assert card.kind == "audio-window" and card.training["held_out_set"]["cries"] > 0
    assert card.training["synthetic"] is False and "recordings" in card.description
    recorded = card.training["recorded"]
    assert any("Open Database License" in source for source in recorded["sources"])
    assert "Produced Work of gveres/donateacry-corpus" in paths.bundled("models", "cry-audio-default.md").read_text()
    assert all(entry["recordings"] > 0 for entry in recorded["held_out"]["by_kind"].values())
    assert has_sound_track(paths.data_file("demo.mp4"))
    truth = json.loads(paths.data_file("demo.json").read_text())
    config = load_config(None, {"source": {"realtime": False}, "health": {"enabled": False},
                                "outbox": {"path": str(tmp_path / "outbox.sqlite3")}})
    assert hearing_enabled(config)
    events, states, origin = run_daemon(config)
    assert [e.kind for e in events] == ["start", "end"]
    assert abs(events[0].t - origin - truth["crying"][0]["start_s"]) <= 1.5
    heard = [s.senses["audio"] for s in states if s.senses and s.senses["audio"]["status"] == "ok"]
    seen = [s.senses["vision"] for s in states if s.senses and s.senses["vision"]["status"] == "ok"]
    assert heard and seen
    assert max(h["probability"] for h in heard) > 0.9 and min(h["level_dbfs"] for h in heard) < -45


def camera_gone_mid_cry(folder, vision_model, audio_model, crying, seconds, until_events, extra="") -> tuple:
    """A real HTTP camera (an empty room) that disappears once the first episode starts, the sound from a
    WAV file in real time with the cry tone over ``crying``: (events as (kind, seconds into the sound,
    reason, the camera's state then), the camera's state at the end)."""
    import threading
    import time

    from streams import MjpegServer

    rng = np.random.default_rng(5)
    sound = (0.003 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    for a, b in crying:
        sound[int(a * 16000):int(b * 16000)] += tone(b - a, 450.0, level=0.3)
    wav = write_wav(folder / f"cries-{crying}-{seconds}.wav", sound)
    camera = MjpegServer([np.full((240, 320, 3), 60 + n, np.uint8) for n in range(3)], fps=15)
    camera.__enter__()
    toml_file = folder / "camera-gone.toml"
    toml_file.write_text(
        f'[source]\nuri = "{camera.url}"\nstall_seconds = 1.0\nreopen_min_seconds = 0.5\nreopen_max_seconds = 1.0\n'
        f'[model]\npath = "{vision_model}"\n[landmarks]\npose = false\n'
        f'[audio]\nenabled = true\nmodel = "{audio_model}"\n[audio.source]\ntype = "file"\npath = "{wav}"\n'
        '[alarm]\nmin_on_seconds = 0.5\nhold_seconds = 1.0\ncooldown_seconds = 1.0\n' + extra +
        f'[health]\nenabled = false\n[outbox]\npath = "{folder / "outbox-gone.sqlite3"}"\n')
    daemon = Daemon(load_config(toml_file))
    events = []
    try:
        with daemon:
            publish_event = daemon.publisher.publish_event

            def record(event):
                origin = daemon.hearing.monitor.status.first_frame_t
                events.append((event.kind, round(event.t - origin, 2), event.reason, daemon.source.status.state))
                publish_event(event)

            daemon.publisher.publish_event = record
            runner = threading.Thread(target=daemon.run)
            runner.start()
            deadline = time.monotonic() + seconds + 15
            while not events and time.monotonic() < deadline:
                time.sleep(0.05)
            assert events and events[0][0] == "start", events
            camera.__exit__()  # the camera is gone, mid-cry
            while len(events) < until_events and time.monotonic() < deadline:
                time.sleep(0.1)
            state = daemon.source.status.state
            daemon.stop()
            runner.join(30)
    finally:
        camera.__exit__()
    return events, state


def test_with_the_camera_gone_the_sound_alone_ends_an_episode_and_raises_the_next(assets):
    """The alarm keeps following the sound while the camera reconnects (before: frozen ON until frames came back)."""
    folder, vision_model, audio_model = assets
    crying = ((2.0, 5.0), (7.5, 9.5))  # seconds of the sound file
    events, state = camera_gone_mid_cry(folder, vision_model, audio_model, crying, 14.0, until_events=4)
    assert state == "reconnecting"
    assert [(kind, reason) for kind, _, reason, _ in events] == [("start", ""), ("end", "scores"), ("start", ""),
                                                                  ("end", "scores")], events
    (_, start1, _, seen1), (_, end1, _, seen2), (_, start2, _, seen3), (_, end2, _, seen4) = events
    assert seen1 == "open" and seen2 == seen3 == seen4 == "reconnecting"
    # the end is dated when the smoothed sound fell: the ~1 s window and the median of 5 hops after the cry
    assert crying[0][0] <= start1 <= crying[0][0] + 1.5 and crying[0][1] <= end1 <= crying[0][1] + 2.5
    assert crying[1][0] <= start2 <= crying[1][0] + 1.5 and crying[1][1] <= end2 <= crying[1][1] + 2.5


def test_with_the_camera_gone_and_the_sound_ended_mid_cry_the_episode_ends_as_blind(assets):
    """Neither camera nor sound: the episode ends after blind_seconds with reason no_camera, not at shutdown."""
    folder, vision_model, audio_model = assets
    events, _ = camera_gone_mid_cry(folder, vision_model, audio_model, ((1.5, 6.0),), 6.0, until_events=2,
                                    extra="blind_seconds = 1.0\n")
    assert [(kind, reason, camera) for kind, _, reason, camera in events] == [
        ("start", "", "open"), ("end", "no_camera", "reconnecting")], events
    assert events[1][1] >= 5.0  # dated at the last score that could hear, the cry still on


def test_a_short_cry_heard_between_two_frames_of_a_slow_camera_raises_the_alarm(assets):
    """A camera at 1 fps, the sound scored every 0.1 s, a 0.5 s cry: every score heard between two frames reaches
    the alarm in time order (before: each frame fused only the newest, the cry fell between frames, no alarm)."""
    from audio_models import yamnet_signature_model

    folder, vision_model, _ = assets
    audio_model = yamnet_signature_model(folder / "yamnet-hop-0.1.tflite", card=yamnet_card(hop_seconds=0.1))
    seconds, cry = 16.0, (12.0, 12.5)  # after the vision window (10 frames) has filled
    slow = folder / "room-1fps.avi"
    writer = cv2.VideoWriter(str(slow), cv2.VideoWriter_fourcc(*"MJPG"), 1.0, (640, 480))
    for n in range(int(seconds)):
        writer.write(np.full((480, 640, 3), 60 + n % 3, np.uint8))
    writer.release()
    clip = with_sound(slow, sound_track(folder, cry=cry, seconds=seconds), folder / "room-1fps-cry.avi")
    events, states = run(folder, vision_model, audio_model, clip)
    assert [kind for kind, _, _ in events] == ["start", "end"], events
    assert cry[0] <= events[0][1] <= cry[0] + 1.5
    assert all(s.senses["vision"]["status"] == "no_face" for s in states if s.senses and "vision" in s.senses)
