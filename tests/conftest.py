"""Shared fixtures: paths of real test data, and the loopback mosquitto broker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto on a free loopback port (tests/mqtt.py); ``stop()``/``start()`` keep the port."""
    from mqtt import Broker  # tests/ is on sys.path: this conftest's folder

    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built offline from a copy (the build must not write into the repo)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for package in ("edge", "convert"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(work), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (work / "build.log").write_text(build.stdout + build.stderr)  # what setuptools said, for the tests
    return next(work.glob("cryedge-*.whl"))
