"""A wheel of cryedge installed outside the checkout runs the demo from any directory.

The wheel goes into a fresh venv without its dependencies; the heavy ones (mediapipe, LiteRT, OpenCV)
come from the test venv's site-packages through a .pth file, so nothing is downloaded. The bundles
land in the user's data directory (``$XDG_DATA_HOME``, a temporary one here), where the daemon reads
them; the default model comes from the package.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_default_model_and_its_card_but_not_the_keras_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("cry-default.tflite", "cry-default.json", "cry-default.md"):
        assert f"edge/data/models/{name}" in names
    assert "edge/data/demo.mp4" in names and "edge/data/landmark_sources.json" in names
    assert not any(name.endswith(".keras") for name in names)


def test_the_build_has_an_spdx_license_and_no_deprecation(wheel):
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    assert any(n.endswith("licenses/LICENSE") for n in zipfile.ZipFile(wheel).namelist())
    log = (wheel.parent / "build.log").read_text()
    assert "project.license" not in log and "SetuptoolsDeprecationWarning" not in log


@pytest.fixture
def venv_with_wheel(tmp_path, wheel) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    # the dependencies from the test venv, after the venv's own packages (the wheel's edge comes first)
    own = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip())
    (own / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


@pytest.mark.slow
def test_a_wheel_fetches_the_bundles_and_runs_the_demo_from_elsewhere(tmp_path, venv_with_wheel):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CRYEDGE_MODELS", "PYTHONPATH")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    cryedge = venv_with_wheel / "bin" / "cryedge"

    where = subprocess.run([str(venv_with_wheel / "bin/python"), "-c", "import edge; print(edge.__file__)"],
                           capture_output=True, text=True, check=True, cwd=elsewhere, env=env).stdout
    assert where.startswith(str(venv_with_wheel))  # not the checkout

    fetch = subprocess.run([str(cryedge), "models", "fetch"], capture_output=True, text=True, timeout=600,
                           cwd=elsewhere, env=env)
    assert fetch.returncode == 0, fetch.stderr
    landmarks = tmp_path / "data" / "cryedge" / "models" / "landmarks"
    assert {p.name for p in landmarks.glob("*.task")} == {"face_landmarker.task", "pose_landmarker.task"}

    run = subprocess.run([str(cryedge), "run", "--fast", "--no-health"], capture_output=True, text=True,
                         timeout=600, cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if '"event"' in line]
    kinds = [e["event_type"] for e in events if e.get("type") == "event"]
    assert kinds == ["cry_start", "cry_end"], run.stdout


@pytest.mark.slow
def test_a_default_model_damaged_on_disk_is_refused_in_one_line(tmp_path, venv_with_wheel):
    """4 KiB of zeros at 80% of the installed default model (an SD card's damage): LiteRT loaded it without an
    error and scored the same window -127 where the sound model says -96 (int8), so the alarm ran on wrong scores.
    pip's RECORD holds the sha256 of every file it installed: the model is checked against it at load; one line,
    exit 4 (systemd does not restart), naming the file."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CRYEDGE_MODELS"] = str(REPO / "models")  # the checkout's bundles
    model = next(venv_with_wheel.glob("lib/python*/site-packages/edge/data/models/cry-default.tflite"))
    data = bytearray(model.read_bytes())
    start = int(len(data) * 0.8)
    data[start:start + 4096] = bytes(4096)
    model.write_bytes(data)
    run = subprocess.run([str(venv_with_wheel / "bin" / "cryedge"), "run", "--fast", "--no-health"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 4, (run.returncode, run.stdout[-300:])
    said = [line for line in run.stderr.splitlines() if line.startswith("cryedge:")]
    assert said == [f"cryedge: model {model} is not the file installed with cryedge (its sha256 differs from the one "
                    "pip recorded): damaged on disk; install cryedge again (pip install --force-reinstall --no-deps "
                    "cryedge)"], run.stderr
