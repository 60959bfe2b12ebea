"""The aarch64 lock installs on a Pi's Python (3.11, Bookworm's glibc 2.36): checked with pip against PyPI.

A lock resolved on another machine can pin a release whose Requires-Python excludes 3.11
(backports-strenum 1.3.1 did; pip refused it in the arm64 root). pip's dry run reads each pinned
file's metadata from PyPI and checks the hashes, without installing anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the manylinux tags Bookworm's glibc 2.36 takes on aarch64 (pip does not widen a --platform by itself)
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64", "any"]


@pytest.mark.slow
def test_every_pin_of_the_aarch64_lock_installs_on_cpython_3_11(tmp_path):
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
               "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
               "--target", str(tmp_path / "target"), "--require-hashes", "-r", str(REPO / "requirements/aarch64.txt")]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert result.returncode == 0, "\n".join(errors) or result.stderr[-2000:]
