"""Shared fixtures: paths of real test data, and the loopback mosquitto broker."""

from __future__ import annotations

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
