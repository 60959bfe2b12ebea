"""A monitor with no camera (``[source] type = "none"``): a parent with only a microphone.

The sound comes from real files (the bundled demo clip's SYNTHETIC sound track: a cry at 5-14 s) and from
a network microphone on loopback (an endless WAV over HTTP) that goes away mid-run;
the events, states and discovery are what a subscriber of a real mosquitto receives.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import struct
import threading
import time
from itertools import pairwise

import pytest
from audio_models import tone
from test_daemon import REPO, run_cli

from edge.config import load_config

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
DEMO = REPO / "edge" / "data" / "demo.mp4"
PICTURE_ENTITIES = ("vision", "fps", "inference_ms", "face_share", "brightness")


def test_cryedge_run_with_no_camera_hears_the_demo_cry_once_and_leaves_a_retained_off(mosquitto, tmp_path):
    """`cryedge run --source none --audio-source FILE`: one cry_start, one cry_end, a retained OFF, and in Home
    Assistant the sound's entities without the picture's (removed, not left unknown forever)."""
    from mqtt import Subscriber

    config = tmp_path / "listen.toml"
    config.write_text(f'[device]\nid = "nursery"\n[health]\nenabled = false\n[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n')
    with Subscriber(mosquitto) as everything:
        done = run_cli("run", "--config", str(config), "--source", "none", "--audio-source", str(DEMO), "--fast",
                       "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
        assert done.returncode == 0, done.stderr
        everything.wait_for("cryedge/nursery/availability", lambda m: m.payload == b"offline")
    assert "no camera" in done.stderr and "landmark" not in done.stderr.lower()
    events = everything.json("cryedge/nursery/event")
    assert [e["event_type"] for e in events] == ["cry_start", "cry_end"], events
    start, end = events
    assert start["id"] == end["id"] and end["reason"] == "scores" and start["model"] == "cry-audio-default"
    assert 7.0 <= end["timestamp"] - start["timestamp"] <= 11.0  # the sound track's cry lasts 9 s (5-14 s)

    states = everything.json("cryedge/nursery/state")
    assert all("vision" not in state for state in states)  # no camera: no picture part, not a blind one
    heard = [state["audio"] for state in states if "audio" in state]
    assert {h["status"] for h in heard} == {"ok"} and max(h["probability"] for h in heard) > 0.9
    assert states[-1]["crying"] == "OFF"
    stats = everything.json("cryedge/nursery/stats")[-1]
    assert stats["source_state"] in ("open", "ended") and stats["fps"] is None and stats["sound_level_dbfs"] < 0

    discovery = json.loads(everything.on("homeassistant/device/nursery/config")[0].payload)
    cmps = discovery["cmps"]
    for key in ("crying", "probability", "cry", "heard", "sound_level", "hearing", "outbox"):
        assert cmps[key]["unique_id"] == f"cryedge_nursery_{key}", key
    for key in PICTURE_ENTITIES:
        assert cmps[key] == {"p": "sensor"}, key  # Home Assistant removes a component given only its platform
    assert cmps["snapshot"] == {"p": "image"} and cmps["hearing"]["options"] == ["ok", "no_sound_device", "no_sound", "model_error"]
    assert discovery["dev"]["mdl"] == "cryedge (cry-audio-default)"
    with Subscriber(mosquitto, topics=("cryedge/nursery/state",)) as late:
        assert json.loads(late.wait_for("cryedge/nursery/state").payload)["crying"] == "OFF"


@pytest.mark.parametrize(("args", "toml", "message"), [
    (["--source", "none"], "", 'source.type "none" (no camera) has no sound track'),
    (["--source", "none"], '[audio]\nenabled = false\n', "needs [audio] enabled = true"),
    ([], '[source]\ntype = "none"\n[audio.source]\ntype = "alsa"\n[fusion]\nmode = "vision"\n', 'fusion.mode "vision"'),
    (["--source", "none", "--audio-source", "alsa:1"], '[snapshot]\nenabled = true\n', "snapshot.enabled: there is no picture"),
])
def test_a_camera_less_config_that_cannot_work_is_one_line_and_the_config_exit_code(tmp_path, args, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    done = run_cli("run", "--config", str(config), *args, timeout=60)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("name", "message"), [
    ("missing.wav", "audio file not found"),
    ("folder", "folder is a directory, not an audio file: an audio source is an audio or video file, a microphone "
               "(alsa[:DEVICE]), the camera's sound (video) or a stream URL (rtsp://..., http://...)"),
    ("silent.mp4", "it has no sound track"),  # a video with a picture and no sound
])
def test_a_sound_file_that_cannot_be_heard_is_one_line_and_the_source_exit_code(tmp_path, name, message):
    """`--source none --audio-source FILE` with a file that is not there, or has no sound: one line, exit code 5,
    as `--source MISSING.mp4` is. It once retried a missing file forever, and exited 0 after saying it was
    retrying a file without sound: a parent's monitor that never listened and said it did."""
    import subprocess

    clip = tmp_path / name
    if name == "folder":
        clip.mkdir()
    if name == "silent.mp4":
        subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=d=2:s=160x120:r=10",
                        "-pix_fmt", "yuv420p", str(clip)], check=True)
    done = run_cli("run", "--no-health", "--source", "none", "--audio-source", str(clip), "--fast", timeout=60)
    assert done.returncode == 5, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cryedge: ") and message in last and "Traceback" not in done.stderr, done.stderr
    assert "retrying" not in done.stderr, done.stderr  # a file is not retried, and nothing says it is


@pytest.mark.parametrize("toml", [
    '[audio]\nenabled = false\n[fusion]\nmode = "audio"\n',
    '[source]\ntype = "http"\nurl = "http://127.0.0.1:9/cam.mjpg"\n[fusion]\nmode = "audio"\n',  # "auto": a camera is not heard
])
def test_fusion_audio_with_nothing_to_hear_is_one_line_and_the_config_exit_code(tmp_path, toml):
    """The alarm was to follow the sound alone; with hearing off it followed the picture, and nothing said so."""
    config = tmp_path / "deaf.toml"
    config.write_text(toml + "[health]\nenabled = false\n")
    done = run_cli("run", "--config", str(config), "--fast", timeout=60)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith('cryedge: fusion.mode "audio" with nothing to hear'), done.stderr
    assert "cry_start" not in done.stdout


def test_the_audio_source_flag_reads_as_the_readme_says(tmp_path):
    from edge.config import cli_overrides

    def sound(text):
        return load_config(None, cli_overrides(source="none", audio_source=text)).audio

    assert sound("alsa").source.type == "alsa" and sound("alsa").enabled is True
    assert sound("alsa:1").source.device == 1
    assert sound("alsa:plughw:CARD=Mic,DEV=0").source.device == "plughw:CARD=Mic,DEV=0"
    assert sound("rtsp://cam.local/live").source.url == "rtsp://cam.local/live"
    assert sound(str(DEMO)).source.path == DEMO
    # a file's [audio.source] is replaced by the flag, not merged with it
    config = tmp_path / "mic.toml"
    config.write_text('[audio.source]\ntype = "alsa"\ndevice = 2\n')
    assert load_config(config, cli_overrides(source="none", audio_source=str(DEMO))).audio.source.type == "file"


def test_config_check_of_a_camera_less_file_names_the_model_it_will_run(tmp_path):
    config = tmp_path / "mic.toml"
    config.write_text('[source]\ntype = "none"\n[audio.source]\ntype = "alsa"\ndevice = 1\n')
    done = run_cli("config", "check", str(config), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "source none" in done.stdout and "cry-audio-default.tflite" in done.stdout  # not the unused vision model
    shown = run_cli("config", "show", "--config", str(config), timeout=60).stdout
    assert '[source]\ntype = "none"\n' in shown and "[audio]\nenabled = true\n" in shown  # "auto" resolved


class HttpMicrophone:
    """A network microphone on loopback: ``http://127.0.0.1:PORT/mic.wav``, a 440 Hz tone as an endless 16 kHz mono
    WAV sent in real time. ``stop()`` hangs up and refuses connections, as a microphone unplugged or rebooting;
    ``start()`` brings it back on the same port. With ``credentials=(user, password)`` it asks for HTTP basic
    authentication (401 until the listener sends them), as a microphone with a password does."""

    def __init__(self, credentials: tuple[str, str] | None = None):
        from mqtt import free_port

        self.port = free_port()
        self.credentials = credentials
        self.level = 0.25  # 0: digital silence, as a muted microphone sends (read at each block: set it any time)
        self.refused = self.admitted = 0
        self.url = f"http://127.0.0.1:{self.port}/mic.wav"
        self._server = self._thread = None
        self._stopping = threading.Event()

    def start(self) -> HttpMicrophone:
        stopping = self._stopping = threading.Event()
        header = (b"RIFF" + (0xFFFFFFFF).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
                  + struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16) + b"data" + (0xFFFFFFFF).to_bytes(4, "little"))
        tones = {}
        wanted = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode() if self.credentials else None
        microphone = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if wanted is not None and self.headers.get("Authorization") != wanted:
                    microphone.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="microphone"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                microphone.admitted += 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.end_headers()
                try:
                    self.wfile.write(header)
                    while not stopping.wait(0.1):  # a block of 0.1 s every 0.1 s: real time
                        level = microphone.level
                        if level not in tones:
                            tones[level] = (tone(0.1, 440.0, level=level) * 32767).astype("<i2").tobytes()
                        self.wfile.write(tones[level])
                except OSError:
                    pass  # the listener hung up

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = False  # server_close() waits for the handlers: nothing left running
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-microphone")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None


def test_a_network_microphone_that_goes_away_shows_in_health_and_is_reopened_while_the_watchdog_is_fed(tmp_path):
    """No camera, the sound from a network microphone (an HTTP stream on loopback), `cryedge run` as systemd runs it
    (tests/edge/test_notify.py): while the microphone is gone /health says so (503, reconnecting, audio
    no_sound_device), it is retried with back-off, and the watchdog pings go on; once it is back, /health is
    ok again in the same process."""
    from test_notify import Service

    microphone = HttpMicrophone().start()
    service = Service(tmp_path, f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                                f'url = "{microphone.url}"\nstall_seconds = 3.0\n'
                                'reopen_min_seconds = 0.5\nreopen_max_seconds = 1.0', 4_000_000)
    try:
        body = service.wait_for_health(200, timeout=60)
        assert body["audio"] == "ok", body
        gone = time.monotonic()
        microphone.stop()  # the microphone is gone

        def until(predicate, seconds=30.0) -> tuple[int | None, dict]:
            deadline = time.monotonic() + seconds
            answer = service.health()
            while not predicate(*answer) and time.monotonic() < deadline:
                time.sleep(0.1)
                answer = service.health()
            return answer

        code, body = until(lambda code, body: body.get("status") == "reconnecting")
        assert (code, body["audio"]) == (503, "no_sound_device"), body
        reconnects = body["source_reconnects"]
        until(lambda code, body: body.get("source_reconnects", 0) > reconnects)
        assert {service.health()[0] for _ in range(10)} == {503}  # gone, or reopened but not heard yet: never ok
        stats = service.stats()
        assert stats["source_reconnects"] > reconnects and stats["audio"]["status"] in ("no_sound_device", "no_sound"), stats
        assert stats["source"].startswith("stream:") and stats["model"] == "cry-audio-default"
        microphone.start()
        body = service.wait_for_health(200, timeout=60)
        assert body["audio"] == "ok", body
        pings = service.pings(since=gone)
        assert len(pings) >= 3 and max(b - a for a, b in pairwise([gone, *pings])) < 4.0, pings  # never starved
    finally:
        stderr = service.terminate()
        microphone.stop()
    assert "no camera" in stderr and "Traceback" not in stderr


def test_a_muted_network_microphone_is_no_sound_not_ok_and_ok_again_once_it_hears(tmp_path):
    """A microphone muted (alsamixer's capture switch) or a camera's microphone turned off sends exact zeros in real
    time: the model judged them a silent room, /health and the state said ok all night while it was deaf."""
    from test_notify import Service

    microphone = HttpMicrophone()
    microphone.level = 0.0
    microphone.start()
    service = Service(tmp_path, f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                                f'url = "{microphone.url}"\nstall_seconds = 3.0', 4_000_000)
    try:
        deadline = time.monotonic() + 60
        while "the microphone is muted" not in service.stderr_so_far() and time.monotonic() < deadline:
            assert service.health()[1].get("audio") != "ok", "a muted microphone was said to hear"
            time.sleep(0.2)
        for _ in range(10):  # its windows go on being judged: each one says so
            code, body = service.health()
            assert body.get("audio") == "no_sound" and code == 503, (code, body)  # nothing else judges: not healthy
            time.sleep(0.2)
        assert service.stats()["audio"]["status"] == "no_sound"
        microphone.level = 0.25  # unmuted
        body = service.wait_for_health(200, timeout=30)
        assert body["audio"] == "ok", body
    finally:
        stderr = service.terminate()
        microphone.stop()
    assert "every sample has been 0 for 3 s: the microphone is muted" in stderr and "heard again" in stderr
    assert stderr.count("every sample has been 0") == 1 and "Traceback" not in stderr


def test_the_health_stats_of_a_monitor_with_no_camera_have_no_frame_rate_and_no_face_share(tmp_path):
    """/stats and /metrics say what is true with no camera: no frame rate (null, left out of /metrics; it was
    0, which reads as a camera that stopped), no share of frames with a face; the microphone is the source."""
    from edge.daemon import Daemon
    from edge.health import metric_families, stats_document

    toml = tmp_path / "listen.toml"
    toml.write_text(f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "file"\npath = "{DEMO}"\n'
                    f'[health]\nenabled = false\n[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n')
    with Daemon(load_config(toml)) as daemon:
        now = time.monotonic()
        stats = stats_document(daemon.health_stats(), now)
        names = {family.name for family in metric_families(daemon.health_stats(), now)}
    assert stats["fps"] is None and stats["face_share"] is None and stats["source"].startswith("file:demo.mp4")
    assert "cryedge_frames_per_second" not in names and "cryedge_face_ratio" not in names
    assert "cryedge_audio_up" in names


def test_a_cry_heard_start_to_end_before_the_loop_ran_is_still_on_and_off_on_the_state_topic(mosquitto, tmp_path):
    """A loaded machine starves the loop thread while the audio thread plays a file on: the loop then gets the
    whole cry in one batch. The retained state must still go ON (with the sound that started it) and then OFF;
    the state was published once per batch, so Home Assistant saw only OFF at p=0 (the flaky run's 0.0)."""
    from mqtt import Subscriber

    from edge.daemon import Daemon

    toml = tmp_path / "listen.toml"
    toml.write_text(f'[device]\nid = "nursery"\n[source]\ntype = "none"\n[audio]\nenabled = true\n'
                    f'[audio.source]\ntype = "file"\npath = "{DEMO}"\nrealtime = false\n[health]\nenabled = false\n'
                    f'[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n')
    with Subscriber(mosquitto, topics=("cryedge/nursery/state", "cryedge/nursery/event")) as seen:
        with Daemon(load_config(toml)) as daemon:
            monitor = daemon.hearing.monitor
            deadline = time.monotonic() + 60
            while not monitor.ended and time.monotonic() < deadline:  # every score waits for the loop, unread
                time.sleep(0.05)
            assert monitor.ended and monitor.chunks > 0
            assert daemon.run() == 0
        seen.wait_for("cryedge/nursery/event", count=2)
        states = seen.json("cryedge/nursery/state")
    crying = [state["crying"] for state in states]
    assert "ON" in crying and crying[-1] == "OFF", crying
    on = states[crying.index("ON")]
    assert on["audio"]["probability"] > 0.9 and on["event_id"] == seen.json("cryedge/nursery/event")[0]["id"], on


def test_a_password_protected_stream_microphone_is_heard_and_its_password_shows_nowhere(tmp_path):
    """[audio.source] type = "stream" with a user in the URL and the password in a file (as the service's
    LoadCredential hands it over): the microphone (HTTP basic authentication on loopback) is heard, and the
    password is in no command line (ps, /proc/PID/cmdline), log line, /stats or /health. It could not be
    configured before: the password was refused and there was no password field. (tests/streams.py's RTSP
    server, rtsp-server-perl, has no authentication: the RTSP URL goes the same way, url_on_pipe.)"""
    from streams import command_lines
    from test_notify import Service

    password = "hunter2-microphone"
    microphone = HttpMicrophone(credentials=("listener", password)).start()
    (tmp_path / "microphone_password").write_text(password + "\n")
    url = microphone.url.replace("http://", "http://listener@")
    service = Service(tmp_path, f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                                f'url = "{url}"\npassword_file = "{tmp_path / "microphone_password"}"\n', 4_000_000)
    try:
        body = service.wait_for_health(200, timeout=60)
        assert body["audio"] == "ok" and microphone.admitted >= 1, body
        assert not [line for line in command_lines() if password in line]
        stats = service.stats()
        assert stats["source"] == f"stream:http://listener:********@127.0.0.1:{microphone.port}/mic.wav", stats
        assert password not in json.dumps(stats) and password not in json.dumps(body)
    finally:
        stderr = service.terminate()
        microphone.stop()
    assert password not in stderr and "Traceback" not in stderr


def test_an_rtsp_microphones_password_from_its_file_is_in_the_url_ffmpeg_gets_on_its_pipe_only(tmp_path):
    """The RTSP test server has no authentication: what can be tested is the URL the backend opens (the
    password from password_file in it), the name it is shown by, and the ffmpeg command line (without it).
    tests/edge/test_audio_source.py hears such a URL through the pipe on the real RTSP server."""
    from edge.audio import sound_backend_factory

    (tmp_path / "pw").write_text("s3cret mic\n")
    toml = tmp_path / "listen.toml"
    toml.write_text('[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                    f'url = "rtsp://listener@mic.lan:8554/audio"\ntransport = "udp"\npassword_file = "{tmp_path / "pw"}"\n')
    make, follows_frames = sound_backend_factory(load_config(toml, environ={}))
    backend = make(16000)
    assert backend.uri == "rtsp://listener:s3cret%20mic@mic.lan:8554/audio" and not follows_frames
    assert backend.name == "stream:rtsp://listener:********@mic.lan:8554/audio"
    assert "s3cret" not in " ".join(backend.command) and "mic.lan" not in " ".join(backend.command)


def test_a_sound_model_stuck_on_its_first_window_with_no_camera_says_so_and_exits_70(mosquitto, tmp_path):
    """No camera, and the audio model's first invoke never returns (a delegate or kernel that deadlocks in native code):
    the loop had promised its first sound ([audio.source] stall_seconds and a stream's probe, 1 + 6 s here) and exited
    70 five seconds past it, but its one line named only the loop's own wait for the sound (`stuck at edge/daemon.py:N
    in _drain_heard (no progress for 13 s)`), not the model that hung. Now it names the sound's thread too, and that
    no sound was ever judged; no event (no cry ran), offline, exit 70."""
    import subprocess
    import sys

    from mqtt import Subscriber
    from seams import HANGING_MODEL

    hang = tmp_path / "hang"
    hang.touch()  # from the first invoke on
    config = tmp_path / "cryedge.toml"
    config.write_text(f'[device]\nid = "nursery"\n[health]\nenabled = false\n[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n'
                      f'[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "file"\npath = "{DEMO}"\n'
                      "stall_seconds = 1.0\n")
    with Subscriber(mosquitto, topics=("cryedge/#",)) as subscriber:
        process = subprocess.Popen([sys.executable, "-c", HANGING_MODEL, str(hang), "run", "--config", str(config),
                                    "--broker", f"mqtt://127.0.0.1:{mosquitto.port}"],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
            process.wait()
        assert process.returncode == 70, stderr
        assert subscriber.payloads("cryedge/nursery/event") == []
        assert subscriber.payloads("cryedge/nursery/availability")[-1] == "offline"
    stuck = [line for line in stderr.splitlines() if "frame loop is stuck" in line]
    assert len(stuck) == 1 and "ERROR" in stuck[0], stderr
    assert "the sound's thread at edge/model.py:" in stuck[0] and "before its first sound" in stuck[0], stderr
    assert "cry is ended" not in stuck[0] and "Traceback" not in stderr, stderr
