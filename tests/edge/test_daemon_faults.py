"""The daemon stopped by a fault during a cry: the episode still ends (a cry_end and an OFF) before it exits.

The clip and the face-position model are test_daemon.py's (synthetic: a real photo moved about; "crying" while
the face is in the right half of the frame, from 3 s to 7 s), run by `cryedge run` against a real mosquitto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_daemon import assets, config_file  # noqa: F401 - the module fixture and its config

REPO = Path(__file__).resolve().parents[2]

# `cryedge run` with MediaPipe's face landmarker raising on the n-th frame, as its graph does when it fails
# (detect_for_video raises RuntimeError): the one fault injected, at the narrowest seam (LandmarkExtractor._run,
# the call into MediaPipe); everything else is real. No real input was found that makes the frame loop raise.
FAILING_LANDMARKER = """
import sys
from edge import landmarks
from edge.cli import main

calls = 0
run = landmarks.LandmarkExtractor._run

def failing(self, task, image, timestamp_ms):
    global calls
    calls += 1
    if calls == int(sys.argv[1]):
        raise RuntimeError("CalculatorGraph::Run() failed in Run: \\nCalculator::Process() for node \\"facelandmarker\\"")
    return run(self, task, image, timestamp_ms)

landmarks.LandmarkExtractor._run = failing
sys.exit(main(sys.argv[2:]))
"""


def run_failing_at(frame: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAILING_LANDMARKER, str(frame), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_an_unexpected_error_mid_cry_ends_the_episode_at_once_with_one_line_and_exit_code_70(assets, mosquitto,  # noqa: F811
                                                                                              tmp_path):
    """Before, only a SourceError ended the episode: any other exception left its OFF to the publisher's close and
    its cry_end to the next run (reason restart, maybe never: systemd waits 10 s, and a code it does not restart
    stops it for good), and the command printed a traceback."""
    from mqtt import Subscriber

    from edge.outbox import Outbox

    clip, model, _ = assets
    config = config_file(tmp_path, model, clip, '[device]\nid = "nursery"\n')
    with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
        out = run_failing_at(90, "run", "--fast", "--config", str(config), "--broker",
                             f"mqtt://127.0.0.1:{mosquitto.port}")  # frame 90: 6 s into the clip, mid-cry
        start = subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_start" in m.payload, timeout=5)
        end = subscriber.wait_for("cryedge/nursery/event", lambda m: b"cry_end" in m.payload, timeout=5)
        assert json.loads(end.payload)["id"] == json.loads(start.payload)["id"]
        assert json.loads(end.payload)["reason"] == "error"
        assert subscriber.json("cryedge/nursery/state")[-1]["crying"] == "OFF"
        assert subscriber.payloads("cryedge/nursery/availability")[-1] == "offline"
    assert out.returncode == 70, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("cryedge: ")]
    assert len(errors) == 1, out.stderr
    assert "unexpected error at edge/landmarks.py:" in errors[0] and "RuntimeError: CalculatorGraph::Run()" in errors[0]
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:  # nothing left for a next run to end as "restart"
        assert list(outbox.open_episodes()) == [] and len(outbox) == 0


def test_an_unexpected_error_without_a_cry_is_the_same_one_line_and_no_event(assets, tmp_path):  # noqa: F811
    clip, model, _ = assets
    out = run_failing_at(20, "run", "--fast", "--config", str(config_file(tmp_path, model, clip)))
    assert out.returncode == 70, out.stderr
    assert "Traceback" not in out.stderr
    assert [json.loads(line)["type"] for line in out.stdout.splitlines()] in ([], ["state"])  # no event at all



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
    assert "hunter2" not in line and "rtsp://viewer:********@cam.lan/live" in line and "second line" not in line


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
