"""Shared fixtures: paths of real test data, the loopback mosquitto broker, a runtime directory of each test's own,
and a guard against leaks.

The whole suite is one process that hosts TensorFlow's, MediaPipe's and LiteRT's thread pools
besides every test's servers, clients and readers. A thread or socket that a test leaves behind
stays for the rest of the run and takes a task slot on a shared machine, where TensorFlow aborts
the process when the kernel refuses it one more thread (tests/isolated.py). So each test must
leave no Python thread running (``no_leaked_threads``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# TensorFlow sizes its inter- and intra-op pools by the CPU count (2 + 2 here, 64 + 64 on a large
# CI host); tests need no more than this. Read by TF at its first use, in this process and in the
# cryedge commands tests start.
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")

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


@pytest.fixture(autouse=True)
def runtime_directory_of_the_test(tmp_path_factory, monkeypatch) -> Path:
    """``$XDG_RUNTIME_DIR`` a fresh folder of this test's, ``$RUNTIME_DIRECTORY`` unset: an outbox that cannot be
    written keeps its events and notes what was delivered in the runtime directory (edge.outbox.runtime_directory),
    which was the developer's own ``/run/user/<uid>/cryedge``. The cryedge commands a test starts inherit it. A
    test that sets either variable itself (monkeypatch, after this) has its own."""
    directory = tmp_path_factory.mktemp("xdg-runtime")
    directory.chmod(0o700)  # as pam_systemd makes it
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    return directory


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



LEAK_GRACE_S = 10.0  # a thread told to stop may take a while to end on a loaded machine; only a leak waits it out


def threads_left(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads not in ``before`` still running after a grace of LEAK_GRACE_S."""
    deadline = time.monotonic() + LEAK_GRACE_S
    new = [thread for thread in threading.enumerate() if thread not in before]
    for thread in new:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in new if thread.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fails a test that leaves a thread running (threads of session and module fixtures excepted).

    Autouse fixtures are set up after the wider-scoped ones and torn down after the test's own,
    so what this sees is what the test and its function fixtures left behind. Descriptors are not
    checked here: pytest holds a test's fixture values (and their sockets) until after teardown.
    """
    before = set(threading.enumerate())
    yield
    left = threads_left(before)
    if left:
        pytest.fail(f"the test left {len(left)} thread(s) running: {', '.join(repr(t.name) for t in left[:8])}",
                    pytrace=False)
