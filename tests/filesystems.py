"""A real small file system for faults that chmod cannot make for root: a full disk, a read-only mount."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    """A tmpfs of ``size`` mounted on ``path``: ``fill()`` it up, or remount it ``read_only()``.

    Mounting needs root (CAP_SYS_ADMIN); elsewhere the test that asks for one is skipped, with the reason.
    Use as a context manager: it is unmounted at the end.
    """

    def __init__(self, path: Path, size: str = "512k"):
        self.path = Path(path)
        self.size = size
        self._mounts = 0

    def _mount(self, *options: str) -> None:
        subprocess.run(["mount", *options], check=True, capture_output=True, text=True)

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._mount("-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path))
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {getattr(error, 'stderr', error)}")
        self._mounts = 1
        return self

    def fill(self) -> None:
        """Write a file until the file system says it is full."""
        with open(self.path / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error

    def read_only(self) -> None:
        """From now on opening or creating a file there fails with EROFS, as after the kernel remounted it
        read-only on an error. (A plain remount is refused while a file is open for writing: a read-only bind
        mount over it is what a process that keeps its database open sees.)"""
        self._mount("--bind", "-o", "ro", str(self.path), str(self.path))
        self._mounts += 1

    def writable(self) -> None:
        """Undo ``fill()`` and ``read_only()``: the card freed or repaired."""
        while self._mounts > 1:
            subprocess.run(["umount", "-l", str(self.path)], check=True, capture_output=True)
            self._mounts -= 1
        (self.path / "filler").unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        for _ in range(self._mounts):
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
