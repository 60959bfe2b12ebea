"""The command line as a user meets it when the machine says no: one line and an exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
LANDMARKS = REPO / "models" / "landmarks"


def cryedge(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


@pytest.mark.parametrize("command", ["models fetch", "suite build", "eval"])
def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, command):
    """Each of these wrote a FileExistsError or NotADirectoryError traceback when its output folder was a file."""
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder would go\n")
    if command == "models fetch":
        args = ["models", "fetch", "--output", taken / "bundles", "--face-bundle", LANDMARKS / "face_landmarker.task",
                "--pose-bundle", LANDMARKS / "pose_landmarker.task"]
        expected = f"cryedge: Not a directory: {taken / 'bundles'}"
    elif command == "suite build":
        pytest.importorskip("tensorflow")  # the converter extra, which the suite's command comes with
        args = ["suite", "build", taken]
        expected = f"cryedge: cannot write into {taken}: it is a file; OUTPUT_DIR is the folder the suite goes into"
    else:
        pytest.importorskip("tensorflow")
        import cv2

        clip = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
        for _ in range(12):
            writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.release()
        (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nclip.avi,0.2,0.8,crying\n")
        args, expected = ["eval", clip, "--labels", tmp_path / "labels.csv", "--output-dir", taken], f"cryedge: File exists: {taken}"
    done = cryedge(*args)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")] == [expected], done.stderr
