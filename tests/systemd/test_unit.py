"""The service unit verifies, its exposure stays low, it agrees with the code, and cryedge runs under it.

There is no systemd as PID 1 here, so the unit is checked with ``systemd-analyze`` (offline) and its
kernel-enforced restrictions (system call filter, W^X, no new privileges) are applied to real
processes by ``sandbox.py``, the way systemd applies them before it starts the service.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge import config, outbox, paths
from edge.errors import ConfigError, InstallError, ModelError

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cryedge.service"
FIRSTBOOT_UNIT = REPO / "image" / "stage-cryedge" / "01-cryedge" / "files" / "cryedge-firstboot.service"
SANDBOX = Path(__file__).with_name("sandbox.py")

sys.path.insert(0, str(SANDBOX.parent))
from sandbox import unit_settings

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")

SETTINGS = unit_settings(UNIT)


def setting(key: str) -> str:
    return SETTINGS[key][-1]


def verify_root(tmp_path: Path, units: list[Path], executable: bool = True) -> Path:
    """A root holding the system's own units, ours, and (if asked) a program at each one's ExecStart path.

    ``systemd-analyze verify`` checks the unit's syntax, its dependencies (hence the system units)
    and that ExecStart names an executable; the real executable is checked in test_install.py,
    where install.sh makes it.
    """
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for unit in units if executable else ():
        program = root / unit_settings(unit)["ExecStart"][-1].split()[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_units_verify_without_a_warning(tmp_path):
    root = verify_root(tmp_path, [UNIT, FIRSTBOOT_UNIT])
    for name in (UNIT.name, FIRSTBOOT_UNIT.name):
        result = analyze("verify", f"--root={root}", name)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "" and result.stdout == "", (result.stdout, result.stderr)


def test_verify_would_catch_a_missing_program(tmp_path):
    root = verify_root(tmp_path, [UNIT], executable=False)
    result = analyze("verify", f"--root={root}", UNIT.name)
    assert result.returncode != 0
    assert "/opt/cryedge/libexec/cryedge-start is not executable" in result.stderr


def test_security_exposure_is_at_most_3(tmp_path):
    result = analyze("security", "--offline=true", str(UNIT))
    assert result.returncode == 0, result.stderr
    exposure = float(
        re.search(r"Overall exposure level for cryedge\.service: (\d+\.\d)", result.stdout).group(1)
    )
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 3.0
    # the same as a gate: --threshold fails when the exposure (x10) is above it
    assert analyze("security", "--offline=true", "--threshold=30", str(UNIT)).returncode == 0


def test_unit_agrees_with_the_code():
    assert setting("Type") == "notify"
    assert setting("NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", setting("WatchdogSec"))
    assert setting("Restart") == "on-failure"
    # a bad config or model, or software this machine cannot run, must not restart in a loop
    assert set(setting("RestartPreventExitStatus").split()) == {
        str(ConfigError.exit_code),
        str(ModelError.exit_code),
        str(InstallError.exit_code),
    }
    exec_start = setting("ExecStart").split()
    # the venv's cryedge, through the check that its venv can run it (tests/systemd/test_start.py)
    assert exec_start[:3] == ["/opt/cryedge/libexec/cryedge-start", "/opt/cryedge/venv/bin/cryedge", "run"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/cryedge/cryedge.toml"
    assert setting("ConfigurationDirectory") == "cryedge"
    # the daemon finds the outbox in $STATE_DIRECTORY and the password in $CREDENTIALS_DIRECTORY
    assert setting("StateDirectory") == "cryedge"
    assert config.default_state_dir({"STATE_DIRECTORY": "/var/lib/cryedge"}) == Path("/var/lib/cryedge")
    # ... and an outbox that cannot be written notes what it delivered in $RUNTIME_DIRECTORY, kept across restarts
    assert (setting("RuntimeDirectory"), setting("RuntimeDirectoryPreserve")) == ("cryedge", "yes")
    assert outbox.runtime_directory({"RUNTIME_DIRECTORY": "/run/cryedge"}) == Path("/run/cryedge")
    name, source = setting("LoadCredential").lstrip("-").split(":")
    assert (name, source) == (config.CREDENTIAL_NAME, "/etc/cryedge/mqtt_password")
    environment = dict(item.split("=", 1) for line in SETTINGS["Environment"] for item in line.split())
    assert Path(environment["CRYEDGE_MODELS"]) == paths.INSTALLED_MODELS
    assert set(setting("SupplementaryGroups").split()) >= {"video", "render"}
    allowed = {line.split()[0] for line in SETTINGS["DeviceAllow"]}
    assert {"char-video4linux", "char-media", "char-dma_heap", "char-apex", "char-usb_device"} <= allowed
    assert setting("User") == "cryedge"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert setting(key) == "yes", key
    assert setting("ProtectSystem") == "strict"


def run_sandboxed(script: str, tmp_path: Path, *args: str, unit: Path = UNIT) -> subprocess.CompletedProcess:
    path = tmp_path / "probe.py"
    path.write_text(textwrap.dedent(script))
    command = [sys.executable, str(SANDBOX), str(unit), "--", sys.executable, str(path), *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, cwd=REPO)


KERNEL_REFUSALS = """
    import mmap, os
    def outcome(call):
        try:
            call()
            return "allowed"
        except OSError as error:
            return f"refused {error.errno}"
    print("wx", outcome(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)))
    print("affinity", outcome(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))))
    print("chroot", outcome(lambda: os.chroot("/")))
"""


def test_the_sandbox_enforces_what_the_unit_says(tmp_path):
    """The control for the tests below: under the unit's rules the kernel refuses these calls."""
    inside = run_sandboxed(KERNEL_REFUSALS, tmp_path)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split("\n")[:3] == ["wx refused 13", "affinity refused 1", "chroot refused 1"]
    path = tmp_path / "outside.py"
    path.write_text(textwrap.dedent(KERNEL_REFUSALS))
    outside = subprocess.run(
        [sys.executable, str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert outside.stdout.split("\n")[:2] == ["wx allowed", "affinity allowed"]


SERVICE_PIECES = """
    import ctypes, json, socket, sys, time, urllib.request
    import numpy as np

    # sd_notify over AF_UNIX, as the daemon does it
    from edge.notify import Notifier
    assert Notifier(sys.argv[1]).ready("probe")

    # the health server: bind, listen and answer on loopback
    from edge.health import HealthServer, HealthStats
    stats = HealthStats(started=time.monotonic(), last_frame=time.monotonic(), state="running")
    with HealthServer(lambda: stats, port=0) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as response:
            assert response.status == 200

    # MQTT to a real broker
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
    client.connect("127.0.0.1", int(sys.argv[2]))
    client.loop_start()
    client.publish("cryedge/probe", "hello", qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()

    # ctypes callbacks need executable trampolines: libffi must get them without W+X memory
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
    assert callback(1) == 2

    # OpenCV and MediaPipe load, and MediaPipe's native graph runs (an image round trip)
    import cv2
    assert cv2.resize(np.zeros((480, 640, 3), np.uint8), (320, 240)).shape == (240, 320, 3)
    import mediapipe as mp
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((48, 64, 3), np.uint8))
    assert image.numpy_view().shape == (48, 64, 3)
    print("pieces ok")
"""


@pytest.mark.slow
def test_service_pieces_run_under_the_units_restrictions(tmp_path, mosquitto):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"cryedge-probe-{uuid.uuid4().hex}"
    notify.bind("\0" + name)
    notify.settimeout(10)
    with notify:
        result = run_sandboxed(SERVICE_PIECES, tmp_path, "@" + name, str(mosquitto.port))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "pieces ok" in result.stdout
        assert notify.recv(4096) == b"READY=1\nSTATUS=probe"


LITERT_UNDER_WX = """
    import sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=sys.argv[1], num_threads=2)  # XNNPACK delegate on
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], np.ones(inp["shape"], inp["dtype"]))
    interpreter.invoke()
    print(float(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).ravel()[0]))
"""


@pytest.mark.slow
@pytest.mark.tensorflow
def test_litert_with_xnnpack_runs_under_the_units_restrictions(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tf.keras.utils.set_random_seed(3)
    inputs = tf.keras.Input((10, 156), batch_size=1)
    x = tf.keras.layers.Conv1D(8, 3, activation="relu")(inputs)
    x = tf.keras.layers.LSTM(8, unroll=True)(x)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid")(x)
    model = tf.keras.Model(inputs, outputs)
    path = tmp_path / "window.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    expected = float(model(np.ones((1, 10, 156), np.float32)).numpy().ravel()[0])
    result = run_sandboxed(LITERT_UNDER_WX, tmp_path, str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) == pytest.approx(expected, abs=1e-5)


def window_model(folder: Path) -> Path:
    """A small untrained landmark-window model (Conv1D, 10 x 156) with its card beside it."""
    tf = pytest.importorskip("tensorflow")
    from edge.card import ModelCard

    tf.keras.utils.set_random_seed(5)
    inputs = tf.keras.Input((10, 156), batch_size=1)
    x = tf.keras.layers.Conv1D(8, 3, activation="relu")(inputs)
    x = tf.keras.layers.GlobalAveragePooling1D()(x)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid")(x)
    path = folder / "window.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs)).convert())
    card = ModelCard.model_validate(
        {
            "name": "window",
            "kind": "landmark-window",
            "input_shape": [1, 10, 156],
            "labels": ["not_crying", "crying"],
            "positive_label": "crying",
            "output": "sigmoid",
            "window": 10,
            "features": {"spec": "openpose-face70-body8", "normalization": "minmax"},
        }
    )
    path.with_suffix(".json").write_text(card.to_json())
    return path


def face_clip(path: Path, seconds: float = 3.0, fps: int = 15) -> Path:
    """A clip of a real face photo (the astronaut shipped with the package), slowly panning."""
    import cv2

    image = cv2.imread(str(paths.data_file("astronaut.jpg")))
    image = cv2.resize(image, (640, 640))[80:560]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for index in range(int(seconds * fps)):
        writer.write(np.roll(image, index, axis=1))
    writer.release()
    return path


@pytest.mark.slow
@pytest.mark.tensorflow
def test_cryedge_run_under_the_units_restrictions_notifies_systemd(tmp_path, mosquitto):
    """The real daemon on a real clip, under the unit's kernel rules, with systemd's environment.

    systemd is stood in for by a notification socket: READY=1 once up, WATCHDOG=1 while frames flow
    (WATCHDOG_USEC=0.4 s: a ping every 0.2 s), STOPPING=1 at the end; MQTT to a real mosquitto and
    the health server on loopback on the way.
    """
    if not (paths.landmarks_dir() / "face_landmarker.task").exists():
        pytest.skip("landmark bundles not built (cryedge models fetch)")
    model = window_model(tmp_path)
    clip = face_clip(tmp_path / "clip.mp4")
    config_file = tmp_path / "cryedge.toml"
    config_file.write_text(
        f'[source]\nuri = "{clip}"\n[model]\npath = "{model}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
        f"[health]\nport = {free_port()}\n"
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"cryedge-run-{uuid.uuid4().hex}"
    notify.bind("\0" + name)
    cryedge = Path(sys.executable).with_name("cryedge")
    command = [
        sys.executable,
        str(SANDBOX),
        str(UNIT),
        "--",
        str(cryedge),
        "run",
        "--config",
        str(config_file),
    ]
    environ = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"}
    messages: list[str] = []
    with notify:
        notify.settimeout(0.2)

        def listen() -> None:  # read as systemd does, while the service runs
            while not finished.is_set():
                try:
                    messages.append(notify.recv(4096).decode())
                except TimeoutError:
                    pass

        finished = threading.Event()
        listener = threading.Thread(target=listen)
        listener.start()
        try:
            result = subprocess.run(
                command, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environ
            )
        finally:
            time.sleep(0.3)
            finished.set()
            listener.join()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Operation not permitted" not in result.stderr
    fields = [dict(line.split("=", 1) for line in message.split("\n")) for message in messages]
    kinds = [next(key for key in ("READY", "WATCHDOG", "STOPPING", "STATUS", "EXTEND_TIMEOUT_USEC") if key in f)
             for f in fields]
    assert "READY" in kinds and "STOPPING" in kinds
    assert kinds.index("READY") < kinds.index("STOPPING")
    pings = kinds.count("WATCHDOG")
    assert pings >= 5, kinds  # a 3 s clip in real time, a ping every 0.2 s while frames flow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
