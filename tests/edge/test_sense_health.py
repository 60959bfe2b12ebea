"""What home automation sees when a sense fails: /health, /metrics and the retained state, one rule for both senses.

A configured sense that does not judge (its camera or microphone gone, or its model failing) is a degraded monitor
(200 "degraded") while another sense the alarm follows still judges, and 503 when none does; /metrics says the
same; the state topic says a sense's new trouble at once and holds it while the sense flickers (edge.publish.
HeldStatus), never at the cost of a cry event. Real components: ``cryedge run`` on a loopback MJPEG camera and a loopback network microphone
(tests/streams.py, tests/edge/test_audio_only.py) with the bundled models, the real health port, a real mosquitto.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
import urllib.request

import numpy as np
import pytest

from edge.health import HealthStats, ModelFault, health_document

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

BOTH = ("vision", "audio")


def heard(**changes) -> dict:
    """A camera at 15 fps and a microphone, both judged a moment ago (now = 100 s, /health waits 5 s)."""
    base = dict(started=0.0, last_frame=99.9, state="running", fps=15.0, source="rtsp://camera/stream",
                audio={"source": "alsa:mic", "state": "open", "status": "ok", "reconnects": 0}, last_heard=99.5,
                alarm_follows=BOTH)
    return {**base, **changes}


GONE_MICROPHONE = {"source": "alsa:mic", "state": "reopening", "status": "no_sound_device", "reconnects": 3}
FAILING = ModelFault("a-model", "invoke failed", since=90.0)


@pytest.mark.parametrize(("stats", "code", "status", "not_judged", "follows"), [
    (heard(), 200, "ok", None, None),
    # the microphone gone while the camera sees: was 200 "ok", as if it heard
    (heard(audio=GONE_MICROPHONE, last_heard=80.0), 200, "degraded", {"audio": "reconnecting"}, ["vision"]),
    (heard(audio=GONE_MICROPHONE, last_heard=80.0, alarm_follows=("audio",)), 503, "reconnecting",
     {"audio": "reconnecting"}, []),
    # open, but no sound judged for longer than /health waits
    (heard(audio={**GONE_MICROPHONE, "state": "open", "status": "no_sound"}, last_heard=90.0), 200, "degraded",
     {"audio": "stalled"}, ["vision"]),
    (heard(model_faults={"audio": FAILING}, audio={**GONE_MICROPHONE, "state": "open", "status": "model_error"},
           last_heard=88.0), 200, "degraded", {"audio": "model_error"}, ["vision"]),
    (heard(model_faults={"audio": FAILING}, last_heard=88.0, alarm_follows=("audio",)), 503, "model_error",
     {"audio": "model_error"}, []),
    # the camera gone, or its model failing, while the microphone hears: the same rule (was 503 either way)
    (heard(state="reconnecting", source_reconnects=4, last_frame=60.0), 200, "degraded", {"vision": "reconnecting"},
     ["audio"]),
    (heard(model_faults={"vision": FAILING}), 200, "degraded", {"vision": "model_error"}, ["audio"]),
    (heard(state="reconnecting", last_frame=60.0, alarm_follows=("vision",)), 503, "reconnecting",
     {"vision": "reconnecting"}, []),
    (heard(state="reconnecting", last_frame=60.0, audio=GONE_MICROPHONE, last_heard=60.0), 503, "reconnecting",
     {"vision": "reconnecting", "audio": "reconnecting"}, []),
    (heard(model_faults={"vision": FAILING}, audio=None, alarm_follows=("vision",)), 503, "model_error",
     {"vision": "model_error"}, []),
    (heard(state="reconnecting", last_frame=60.0, audio=None, alarm_follows=("vision",)), 503, "reconnecting", None,
     None),  # a camera alone: the answer it always gave
])
def test_health_says_degraded_while_another_sense_can_still_raise_the_alarm_and_503_when_none_can(
        stats, code, status, not_judged, follows):
    """The decision table of docs/service.md: a configured sense that does not judge is 200 "degraded" while a sense
    the alarm follows ([fusion] mode) still judges, else 503 with why the camera (or the sound) does not."""
    stats = HealthStats(**stats)
    answer, body = health_document(stats, 100.0, stale_after=5.0)
    assert (answer, body["status"]) == (code, status), body
    assert body.get("not_judged") == not_judged and body.get("alarm_follows") == follows, body
    if not_judged:
        assert body["reason"].endswith("can still raise the alarm" if follows else "nothing can raise the alarm")
    for sense in stats.model_faults:
        assert f"the {sense} model a-model has failed for 10 s (invoke failed)" in body["reason"], body["reason"]
    if body.get("not_judged", {}).get("vision") == "reconnecting":
        assert body["source_reconnects"] == stats.source_reconnects


def test_a_sense_not_judged_for_less_than_health_waits_is_not_a_fault():
    """One failed window, a microphone whose first window is not due yet: ok (not a flapping /health)."""
    failed_once = HealthStats(**heard(model_faults={"audio": ModelFault("m", "e", since=97.0)}))
    assert health_document(failed_once, 100.0, 5.0)[0] == 200
    starting = HealthStats(**heard(started=97.0, last_heard=None,
                                   audio={**GONE_MICROPHONE, "state": "open", "status": "no_sound"}))
    assert health_document(starting, 100.0, 5.0)[1]["status"] == "ok"
    assert health_document(starting, 103.0, 5.0)[1]["not_judged"] == {"audio": "starting"}


# ----------------------------------------------------------------------------- through the real daemon


def scrape(port: int) -> dict[str, dict]:
    from test_health import parse_exposition

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return parse_exposition(answer.read().decode())


def health_in_metrics(families: dict) -> tuple[str, dict[str, float]]:
    """(the status cryedge_health_status says, cryedge_sense_judging by sense)."""
    statuses = [labels for labels, value in families["cryedge_health_status"]["samples"].items() if value == 1.0]
    judging = {labels.split('"')[1]: value for labels, value in families["cryedge_sense_judging"]["samples"].items()}
    assert len(statuses) == 1, families["cryedge_health_status"]
    return statuses[0].split('"')[1], judging


def wait_for_status(service, status: str, timeout: float, audio: str | None = None) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        code, body = service.health()
        if body.get("status") == status and audio in (None, body.get("audio")):
            return code, body
        seen.append(body.get("status"))
        time.sleep(0.3)
    raise AssertionError(f"/health never said {status!r} in {timeout} s: {seen[-20:]}; "
                         f"stderr: {service.stderr_so_far()[-2000:]}")


@pytest.mark.timeout(300)
def test_a_microphone_or_a_camera_gone_is_degraded_while_the_other_still_alarms_and_metrics_say_so(tmp_path):
    """``cryedge run`` under a watchdog, seeing a loopback MJPEG camera and hearing a loopback network microphone.
    The microphone hangs up: /health said 200 "ok" (as if it heard) while it was reopened with back-off; now 200
    "degraded" naming the sound, and /metrics says it (cryedge_up stayed 1 whatever failed). Back: "ok". The camera
    goes while the microphone hears: "degraded" too (it was 503 although the sound still raises the alarm); both
    gone: 503 "reconnecting". The watchdog is pinged throughout."""
    from streams import MjpegServer
    from test_audio_only import HttpMicrophone
    from test_notify import Service

    camera = MjpegServer([np.full((240, 320, 3), 60 + n, np.uint8) for n in range(3)], fps=5)
    microphone = HttpMicrophone().start()
    camera.__enter__()
    reopen = "reopen_min_seconds = 0.5\nreopen_max_seconds = 1.0\n"
    service = Service(tmp_path, f'[source]\nuri = "{camera.url}"\nstall_seconds = 3.0\n{reopen}'
                                f'[audio]\nenabled = true\n[audio.source]\ntype = "stream"\nurl = "{microphone.url}"\n'
                                f'stall_seconds = 3.0\n{reopen}', 2_000_000)
    scraped = []  # (what /health said, /metrics then): checked at the end, /health's rule first
    try:
        wait_for_status(service, "ok", 120, audio="ok")
        scraped.append(("ok", scrape(service.health_port)))

        microphone.stop()
        code, body = wait_for_status(service, "degraded", 30)
        assert code == 200 and body["not_judged"] == {"audio": "reconnecting"}, body
        assert body["alarm_follows"] == ["vision"] and body["audio"] == "no_sound_device", body
        scraped.append(("microphone gone", scrape(service.health_port)))

        microphone.start()
        wait_for_status(service, "ok", 60, audio="ok")

        camera.__exit__()
        code, body = wait_for_status(service, "degraded", 30)
        assert code == 200 and body["not_judged"] == {"vision": "reconnecting"}, body
        assert body["alarm_follows"] == ["audio"] and "source_reconnects" in body, body
        scraped.append(("camera gone", scrape(service.health_port)))

        microphone.stop()
        code, body = wait_for_status(service, "reconnecting", 30)
        assert code == 503 and body["alarm_follows"] == [], body
        scraped.append(("both gone", scrape(service.health_port)))
    finally:
        stderr = service.terminate()
        microphone.stop()
        camera.__exit__()
    assert "Traceback" not in stderr, stderr[-3000:]
    gaps = [b - a for a, b in itertools.pairwise(service.pings())]
    assert len(gaps) > 5 and max(gaps) < 2.0, gaps  # within WATCHDOG_USEC: never restarted for a lost sense
    said = {phase: health_in_metrics(families) for phase, families in scraped}
    assert said == {"ok": ("ok", {"vision": 1.0, "audio": 1.0}),
                    "microphone gone": ("degraded", {"vision": 1.0, "audio": 0.0}),
                    "camera gone": ("degraded", {"vision": 0.0, "audio": 1.0}),
                    "both gone": ("reconnecting", {"vision": 0.0, "audio": 0.0})}, said
    assert scraped[1][1]["cryedge_up"]["samples"] == {"": 1.0}  # frames flow: "up" alone could not tell


# ----------------------------------------------------------------------------- the state topic


def test_a_short_model_error_reaches_the_retained_state_at_once_and_its_end_too(tmp_path, mosquitto):
    """No camera; the audio model fails on a 0.6 s knock in a quiet room (about 1.5 s of windows), played in real time,
    with [mqtt] state_interval = 30 s (probability updates rarely). The knock's model_error, and the ok after it,
    reached only the log: the state was published at most every state_interval. Now the model_error is on the
    retained state topic within a second, the ok after it once the sound has been judged for STATUS_HOLD (5 s; the
    clip goes on 9 s after the knock), and no cry event is raised by it."""
    from audio_models import faulty_model, yamnet_card
    from mqtt import Subscriber
    from test_audio_faults import knocked_cry, listening_config, run_to_the_end

    from edge.daemon import Daemon

    pytest.importorskip("tensorflow")
    model = faulty_model(tmp_path / "raise.tflite", "raise", card=yamnet_card(name="faulty-raise"))
    sound = knocked_cry(tmp_path / "knock.wav", cry=None, knock=(4.0, 4.6), seconds=14.0)
    config = listening_config(tmp_path, model, sound, realtime=True,
                              extra=f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\nstate_interval = 30\n')
    with Subscriber(mosquitto, topics=("cryedge/nursery/#",)) as subscriber:
        daemon = Daemon(config)
        with daemon:
            assert run_to_the_end(daemon) == 0
        states = [(m.timestamp, json.loads(m.payload)) for m in subscriber.on("cryedge/nursery/state")]
        events = subscriber.on("cryedge/nursery/event")
    statuses = [state.get("audio", {}).get("status") for _, state in states]
    assert "model_error" in statuses, statuses
    assert "ok" in statuses[statuses.index("model_error"):], statuses  # and its end
    assert events == [], [m.payload for m in events]


def state_publisher(tmp_path, mosquitto, state_interval: float):
    from edge.config import load_config
    from edge.publish import make_publisher

    toml = tmp_path / "cryedge.toml"
    toml.write_text(f'[device]\nid = "nursery"\n[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
                    f'state_interval = {state_interval}\n[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    return make_publisher(load_config(toml), "cry-default")


def said(messages, sense: str) -> list[tuple[float, str]]:
    """(arrival, status) of each state message that changed what ``sense``'s status is said to be."""
    changes = []
    for message in messages:
        status = json.loads(message.payload).get(sense, {}).get("status")
        if status is not None and (not changes or changes[-1][1] != status):
            changes.append((message.timestamp, status))
    return changes


def test_a_flapping_status_is_said_once_and_never_holds_up_a_cry(tmp_path, mosquitto):
    """A sense's status flapping 100 times a second for 3 s (a model failing on every other window), a cry start
    published in the middle: the broker gets the trouble at once and no state for the flapping after it; a new
    trouble after the flapping is said once the first has stood STATUS_HOLD, even with no state handed over after
    it; the cry start at once."""
    from mqtt import Subscriber

    from edge.alarm import AlarmState
    from edge.publish import STATUS_HOLD
    from edge.records import AlarmEvent

    publisher = state_publisher(tmp_path, mosquitto, state_interval=30)

    def state(status: str) -> AlarmState:
        return AlarmState(False, None, None, 0.1, senses={"audio": {"probability": None, "status": status}})

    with Subscriber(mosquitto, topics=("cryedge/nursery/state", "cryedge/nursery/event")) as subscriber:
        publisher.start()
        try:
            subscriber.wait_for("cryedge/nursery/state")  # the one on connect
            for n in range(300):
                publisher.publish_state(state("model_error" if n % 2 == 0 else "ok"))
                if n == 150:
                    sent = time.monotonic()
                    publisher.publish_event(AlarmEvent("start", "flap-1", 0.0, time.time(), 0.9))
                time.sleep(0.01)
            publisher.publish_state(state("no_sound"))
            last = subscriber.wait_for("cryedge/nursery/state", lambda m: b'"no_sound"' in m.payload,
                                       timeout=STATUS_HOLD + 3)
            start = subscriber.wait_for("cryedge/nursery/event")
        finally:
            publisher.close()
        # after the one on connect, but the final one of the stopped monitor (no sense, no probability)
        states = [m for m in subscriber.on("cryedge/nursery/state")[1:] if "audio" in json.loads(m.payload)]
    assert [json.loads(m.payload)["audio"]["status"] for m in states] == ["model_error", "no_sound"]
    first = states[0].timestamp
    assert STATUS_HOLD - 0.1 <= last.timestamp - first < STATUS_HOLD + 1.5, last.timestamp - first
    assert json.loads(start.payload)["id"] == "flap-1" and start.timestamp - sent < 0.5


def test_a_face_flickering_at_night_is_said_once_and_every_crying_change_goes_at_once(tmp_path, mosquitto):
    """The face found in some frames and lost in the next (a dark room, a NoIR camera), at 15 fps for 4 s, with
    [mqtt] state_interval = 1, and a cry starting and ending during it. Each change of the camera's status went
    out at once, at most once a second: Home Assistant's "Camera sees" entity, its logbook and its database
    changed every second all night. Now it is said no_face once, and ok again once the face has been seen for
    STATUS_HOLD seconds, also in the periodic states; the crying ON and OFF still reach the broker at once."""
    from mqtt import Subscriber

    from edge.alarm import AlarmState
    from edge.publish import STATUS_HOLD

    publisher = state_publisher(tmp_path, mosquitto, state_interval=1)

    def state(status: str, crying: bool = False) -> AlarmState:
        return AlarmState(crying, None, None, 0.9 if crying else 0.1, event_id="cry-1" if crying else None,
                          senses={"vision": {"probability": 0.5, "status": status}})

    crying_sent = {}
    with Subscriber(mosquitto, topics=("cryedge/nursery/state",)) as subscriber:
        publisher.start()
        try:
            subscriber.wait_for("cryedge/nursery/state")  # the one on connect
            for frame in range(60):  # 4 s at 15 fps: seen 3 frames, lost 3
                crying = 20 <= frame < 45
                if crying and "ON" not in crying_sent or not crying and "ON" in crying_sent and "OFF" not in crying_sent:
                    crying_sent["ON" if crying else "OFF"] = time.monotonic()
                publisher.publish_state(state("ok" if frame % 6 < 3 else "no_face", crying))
                if frame % 6 == 5:
                    lost_last = time.monotonic()
                time.sleep(1 / 15)
            while time.monotonic() - lost_last < STATUS_HOLD + 1.5:  # then the face stays in sight
                publisher.publish_state(state("ok"))
                time.sleep(1 / 15)
        finally:
            publisher.close()
        states = subscriber.on("cryedge/nursery/state")[1:]
    changes = said(states, "vision")
    assert [status for _, status in changes] == ["ok", "no_face", "ok"], changes
    ok_again = changes[-1][0]
    assert STATUS_HOLD - 0.2 <= ok_again - lost_last < STATUS_HOLD + 1.0, ok_again - lost_last
    assert len(states) < 4 + 2 + (ok_again - changes[0][0]) * 1.2  # the periodic states and the changes only
    for value, sent in crying_sent.items():
        arrived = next(m.timestamp for m in states if json.loads(m.payload)["crying"] == value
                       and m.timestamp >= sent)
        assert arrived - sent < 0.5, (value, arrived - sent)
