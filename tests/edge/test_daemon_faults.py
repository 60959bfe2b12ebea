"""The daemon stopped by a fault during a cry: the episode still ends (a cry_end and an OFF) before it exits; a fault
of one sense (MediaPipe raising on every frame) is that sense's model_error instead, and the other sense still alarms.

The clip and the face-position model are test_daemon.py's (synthetic: a real photo moved about; "crying" while
the face is in the right half of the frame, from 3 s to 7 s), run by `cryedge run` against a real mosquitto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from seams import FAILING_LANDMARKER
from test_daemon import assets, config_file  # noqa: F401 - the module fixture and its config

REPO = Path(__file__).resolve().parents[2]

# the same for an error outside the senses: the alarm raising on its n-th score (Alarm.update). No real input was
# found that makes the frame loop raise.
FAILING_ALARM = """
import sys
from edge import alarm
from edge.cli import main

calls = 0
update = alarm.Alarm.update

def failing(self, score):
    global calls
    calls += 1
    if calls == int(sys.argv[1]):
        raise RuntimeError("a fault of the alarm")
    return update(self, score)

alarm.Alarm.update = failing
sys.exit(main(sys.argv[2:]))
"""


def run_failing_at(frames: str, *args: str, script: str = FAILING_LANDMARKER) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, frames, *args], capture_output=True,
                          text=True, timeout=150, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_an_unexpected_error_mid_cry_ends_the_episode_at_once_with_one_line_and_exit_code_70(assets, mosquitto,  # noqa: F811
                                                                                              tmp_path):
    """Before, only a SourceError ended the episode: any other exception left its OFF to the publisher's close and
    its cry_end to the next run (reason restart, maybe never: systemd waits 10 s, and a code it does not restart
    stops it for good), and the command printed a traceback."""
    from mqtt import Subscriber

    clip, model, _ = assets
    config = config_file(tmp_path, model, clip, '[device]\nid = "nursery"\n')
    with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
        out = run_failing_at("81", "run", "--fast", "--config", str(config), "--broker",
                             f"mqtt://127.0.0.1:{mosquitto.port}", script=FAILING_ALARM)  # frame 90: 6 s in, mid-cry
        assert_episode_ended_by_the_error(subscriber, tmp_path)
    assert out.returncode == 70, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("cryedge: ")]
    assert len(errors) == 1, out.stderr
    assert "unexpected error at edge/daemon.py:" in errors[0] and "RuntimeError: a fault of the alarm" in errors[0]


def assert_episode_ended_by_the_error(subscriber, folder: Path) -> None:
    """What a subscriber of device "nursery" saw: a cry_start, its cry_end with reason "error", the retained state
    OFF and offline; nothing left in ``folder``'s outbox for a next run to end as "restart"."""
    from edge.outbox import Outbox

    start = subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_start" in m.payload, timeout=5)
    end = subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_end" in m.payload, timeout=5)
    assert json.loads(end.payload)["id"] == json.loads(start.payload)["id"]
    assert json.loads(end.payload)["reason"] == "error"
    assert subscriber.json("cryedge/nursery/state")[-1]["crying"] == "OFF"
    assert subscriber.payloads("cryedge/nursery/availability")[-1] == "offline"
    with Outbox(folder / "outbox.sqlite3") as outbox:
        assert list(outbox.open_episodes()) == [] and len(outbox) == 0


def test_an_unexpected_error_without_a_cry_is_the_same_one_line_and_no_event(assets, tmp_path):  # noqa: F811
    clip, model, _ = assets
    out = run_failing_at("11", "run", "--fast", "--config", str(config_file(tmp_path, model, clip)), script=FAILING_ALARM)
    assert out.returncode == 70, out.stderr
    assert "Traceback" not in out.stderr
    assert [json.loads(line)["type"] for line in out.stdout.splitlines()] in ([], ["state"])  # no event at all




# ----------------------------------------------------------------------------- a fault of the landmark stage


def fault_lines(stderr: str) -> tuple[list[str], list[str]]:
    """The log's lines saying the landmark stage's fault started, and that it ended."""
    lines = stderr.splitlines()
    return ([line for line in lines if "MediaPipe fails on every frame" in line],
            [line for line in lines if "MediaPipe answers again" in line])


def test_mediapipe_failing_on_every_frame_is_the_cameras_model_error_and_the_microphone_still_alarms(mosquitto,
                                                                                                     tmp_path):
    """The demo clip (a cry heard from 5 s to 14 s) as the camera and its sound track as the microphone, MediaPipe
    raising on every frame. Before, the first frame stopped `cryedge run` (exit 70, restarted by systemd every ~20 s
    for ever) and the sound's alarm with it. Now Home Assistant's "Camera sees" says model_error, the cry heard
    starts and ends, and the log says the fault once, with no traceback."""
    from mqtt import Subscriber

    config = tmp_path / "cryedge.toml"
    config.write_text(f'[device]\nid = "nursery"\n[health]\nenabled = false\n'
                      f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    demo = str(REPO / "edge" / "data" / "demo.mp4")
    with Subscriber(mosquitto, topics=("cryedge/nursery/#", "homeassistant/#")) as subscriber:
        out = run_failing_at("1-", "run", "--fast", "--config", str(config), "--source", demo, "--audio-source", demo,
                             "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
        subscriber.wait_for("cryedge/nursery/availability", lambda m: m.payload == b"offline", timeout=10)
        events = subscriber.json("cryedge/nursery/event")
        states = subscriber.json("cryedge/nursery/state")
        discovery = subscriber.json("homeassistant/device/nursery/config")[-1]
    assert out.returncode == 0, out.stderr
    assert [(e["event_type"], e.get("reason")) for e in events] == [("cry_start", None), ("cry_end", "scores")]
    assert events[0]["id"] == events[1]["id"]
    crying = [s for s in states if s["crying"] == "ON"]
    # (the sound's status is the one held since before its first window: ok is said once it has stood 5 s, --fast
    # runs the clip in about 2 s)
    assert crying and all(s["vision"]["status"] == "model_error" and s["audio"]["probability"] >= 0.5
                          for s in crying), json.dumps(states)
    assert "model_error" in discovery["cmps"]["vision"]["options"]
    assert states[-1]["crying"] == "OFF" and states[-1]["probability"] is None  # stopped: nothing measured
    started, ended = fault_lines(out.stderr)
    assert len(started) == 1 and "RuntimeError: CalculatorGraph::Run() failed" in started[0] and ended == []
    assert 'Calculator::Process() for node "facelandmarker"' in started[0]  # the cause, on MediaPipe's second line
    assert "Traceback" not in out.stderr


def test_a_fault_of_the_landmark_stage_is_said_once_as_it_starts_and_once_as_it_ends_and_the_camera_alarms_again(
        assets, tmp_path):  # noqa: F811
    """MediaPipe failing on frames 5 to 30 (0.3 s to 2 s) of the clip whose face-on-the-right cry is 3 s to 7 s."""
    clip, model, _ = assets
    out = run_failing_at("5-30", "-v", "run", "--fast", "--config", str(config_file(tmp_path, model, clip)))
    assert out.returncode == 0, out.stderr
    started, ended = fault_lines(out.stderr)
    assert len(started) == 1 and len(ended) == 1 and "Traceback" not in out.stderr, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if json.loads(line)["type"] == "event"]
    assert [(e["event_type"], e.get("reason")) for e in events] == [("cry_start", None), ("cry_end", "scores")]


def test_one_frame_mediapipe_fails_on_is_dropped_and_says_nothing(assets, tmp_path):  # noqa: F811
    """Frame 90, mid-cry: before, exit 70 and the episode ended with reason error; now the frame is lost, no more."""
    clip, model, _ = assets
    out = run_failing_at("90", "run", "--fast", "--config", str(config_file(tmp_path, model, clip)))
    assert out.returncode == 0, out.stderr
    assert fault_lines(out.stderr) == ([], []) and "WARNING" not in out.stderr, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(e["event_type"], e.get("reason")) for e in lines if e["type"] == "event"] == [("cry_start", None),
                                                                                            ("cry_end", "scores")]
    assert all(line["vision"]["status"] != "model_error" for line in lines if "vision" in line)


def test_a_landmark_fault_mid_cry_without_a_microphone_ends_the_episode_after_blind_seconds(assets, tmp_path):  # noqa: F811
    """No sound to decide: the alarm's blind rule (`[alarm] blind_seconds`) ends the episode, the reason model_error;
    before, the daemon stopped (exit 70, reason error)."""
    clip, model, _ = assets
    config = config_file(tmp_path, model, clip)
    config.write_text(config.read_text().replace("hold_seconds = 1.0\n", "hold_seconds = 1.0\nblind_seconds = 1.5\n"))
    out = run_failing_at("75-", "run", "--fast", "--config", str(config))  # from 5 s on, mid-cry
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if json.loads(line)["type"] == "event"]
    assert [(e["event_type"], e.get("reason")) for e in events] == [("cry_start", None), ("cry_end", "model_error")]
    start, end = (datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in events)
    assert 1.0 < (end - start).total_seconds() < 3.0  # ended when last seen (5 s in), not at the clip's end


def test_health_names_the_landmarker_that_fails_and_the_camera_model_error(assets, tmp_path):  # noqa: F811
    """/health, as a monitoring check reads it, once the landmarker has failed for [source] stall_seconds."""
    import signal
    import time
    import urllib.error
    import urllib.request

    from test_daemon import free_port

    clip, model, _ = assets
    port = free_port()
    config = config_file(tmp_path, model, clip)
    config.write_text(config.read_text().replace("[source]\n", "[source]\nstall_seconds = 2.0\n")
                      .replace("[health]\nenabled = false\n", f"[health]\nport = {port}\n"))
    process = subprocess.Popen([sys.executable, "-c", FAILING_LANDMARKER, "1-", "run", "--config", str(config)],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    body, deadline = {}, time.monotonic() + 60
    try:
        while body.get("status") != "model_error" and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    body = json.loads(answer.read())
            except urllib.error.HTTPError as error:
                body = json.loads(error.read())
            except OSError:
                continue
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert body.get("status") == "model_error" and body.get("model_error") == "vision", body
    assert "MediaPipe landmarker" in body["reason"] and "RuntimeError: CalculatorGraph::Run() failed" in body["reason"]
    assert process.returncode == 0 and "Traceback" not in stderr, stderr

def test_the_unexpected_error_line_is_one_line_naming_the_exception_and_where_in_cryedge():
    from edge.cli import unexpected_error_line
    from edge.errors import mask_password

    try:
        mask_password(None)  # raised in re, called from edge/errors.py: the line names cryedge's frame
    except TypeError as error:
        line = unexpected_error_line(error)
    assert line.startswith("unexpected error at edge/errors.py:") and ": TypeError: " in line
    try:
        raise ValueError("cannot parse rtsp://viewer:hunter2@cam.lan/live\nsecond line")
    except ValueError as error:
        line = mask_password(unexpected_error_line(error))
    assert "hunter2" not in line and "rtsp://viewer:********@cam.lan/live" in line
    # MediaPipe's first line is often only 'CalculatorGraph::Run() failed in Run: ', its cause on the next ones
    assert "\n" not in line and "rtsp://viewer:********@cam.lan/live second line" in line
    try:  # a message of kilobytes is cut; a password where it is cut is masked all the same
        raise RuntimeError("x" * 379 + " rtsp://viewer:hunter2@cam.lan/live " + "y" * 5000)  # cut in the password
    except RuntimeError as error:
        line = unexpected_error_line(error)
    assert "\n" not in line and len(line) < 600 and "hun" not in line and "yyy" not in line, line


# the same with no camera: the fusion of the sound raising on its n-th score (Fusion.fuse, the one injected fault)
FAILING_FUSION = """
import sys
from edge import fusion
from edge.cli import main

calls = 0
fuse = fusion.Fusion.fuse

def failing(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(sys.argv[1]):
        raise RuntimeError("a fault of the fusion")
    return fuse(self, *args, **kwargs)

fusion.Fusion.fuse = failing
sys.exit(main(sys.argv[2:]))
"""


def test_an_unexpected_error_mid_cry_with_no_camera_ends_the_episode_too(tmp_path):
    """The listening loop (`[source] type = "none"`) had no ending of its own on an error: no cry_end at all."""
    config = tmp_path / "mic.toml"
    config.write_text(f'[health]\nenabled = false\n[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    out = subprocess.run([sys.executable, "-c", FAILING_FUSION, "22", "run", "--fast", "--source", "none",
                          "--audio-source", str(REPO / "edge" / "data" / "demo.mp4"), "--config", str(config)],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 70, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    events = [(line["event_type"], line["id"], line.get("reason")) for line in lines if line["type"] == "event"]
    assert [(kind, reason) for kind, _, reason in events] == [("cry_start", None), ("cry_end", "error")], out.stdout
    assert events[0][1] == events[1][1] and lines[-1]["type"] == "state" and lines[-1]["crying"] == "OFF"
    assert "Traceback" not in out.stderr and "RuntimeError: a fault of the fusion" in out.stderr


def test_a_region_of_interest_too_small_to_hold_a_face_is_a_config_error_not_a_restart_loop(assets, tmp_path):  # noqa: F811
    """`[landmarks] roi = [0.5, 0.5, 0.5001, 0.5001]` (a typo) passed the check and cropped every frame to no pixel:
    MediaPipe raised on the first frame, a traceback and exit 1, restarted by systemd every 10 s for ever. Now a
    crop under 5% of the frame either way is refused at load, in one line naming the key (exit 3: not restarted)."""
    clip, model, _ = assets
    config = config_file(tmp_path, model, clip)
    config.write_text(config.read_text().replace("[landmarks]\npose = false\n",
                                                 "[landmarks]\npose = false\nroi = [0.5, 0.5, 0.5001, 0.5001]\n"))
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--fast", "--config", str(config)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 3, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("cryedge: ")]
    assert len(errors) == 1 and "landmarks: roi is 0.01% of the frame wide" in errors[0] and "at least 5%" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
