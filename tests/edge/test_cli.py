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
        expected = f"cryedge: cannot write into {taken / 'bundles'}: {taken} is a file"
    elif command == "suite build":
        pytest.importorskip("tensorflow")  # the converter extra, which the suite's command comes with
        args = ["suite", "build", taken]
        expected = f"cryedge: cannot write into {taken}: it is a file"
    else:
        pytest.importorskip("tensorflow")
        import cv2

        clip = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
        for _ in range(12):
            writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.release()
        (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nclip.avi,0.2,0.8,crying\n")
        args, expected = ["eval", clip, "--labels", tmp_path / "labels.csv", "--output-dir", taken], f"cryedge: cannot write into {taken}: it is a file"
    done = cryedge(*args)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")] == [expected], done.stderr


WRITERS = {  # every command that writes an output, given OUT (a path under a regular file); inputs that are not there
    "eval": ["eval", "no-such-videos", "--output-dir", "{out}"],
    "dataset build": ["dataset", "build", "no-such-videos", "no-such-labels.csv", "--output", "{out}/data.npz"],
    "train": ["train", "--arch", "conv1d", "--data", "no-such.npz", "--output", "{out}/model.keras"],
    "convert": ["convert", "no-such.keras", "--output", "{out}/model.tflite"],
    "suite build": ["suite", "build", "{out}"],
    "demo build": ["demo", "build", "--output-dir", "{out}"],
    "demo-audio build": ["demo-audio", "build", "--output-dir", "{out}"],
    "models fetch": ["models", "fetch", "--output", "{out}"],
    "landmarks --draw": ["landmarks", "--draw", "{out}/points.png"],
    "service import-boot-config": ["service", "import-boot-config", "--boot-file", "{boot}", "--config-dir", "{out}"],
}


@pytest.mark.parametrize("command", WRITERS)
def test_an_output_under_a_file_is_said_before_any_work(tmp_path, command):
    """Each said "File exists" or "Not a directory" (or drew a traceback), and eval, dataset build, train and
    convert said it only after all their work: now one line naming the file in the way, exit 1, before the inputs."""
    if command.split()[0] in {"eval", "dataset", "train", "convert", "suite", "demo", "demo-audio"}:
        pytest.importorskip("tensorflow")  # the converter extra these commands come with
    notes = tmp_path / "notes"
    notes.write_text("a file where a folder would go\n")
    boot = tmp_path / "cryedge.toml"
    boot.write_text('[mqtt]\nhost = "broker.local"\n')
    out = notes / "out"
    done = cryedge(*(arg.format(out=out, boot=boot) for arg in WRITERS[command]), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    wanted = out / "points.png" if command == "landmarks --draw" else out
    assert [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")] == [
        f"cryedge: cannot write into {wanted}: {notes} is a file"], done.stderr
    assert notes.read_text() == "a file where a folder would go\n"


def test_a_drawing_in_a_format_there_is_none_for_is_one_line(tmp_path):
    """cv2.imwrite raised a cv2.error traceback for OUT.xyz."""
    done = cryedge("landmarks", "--draw", tmp_path / "points.xyz")
    assert done.returncode == 7 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == f"cryedge: cannot write {tmp_path / 'points.xyz'}: no picture format " \
                                           "for its suffix (give .png or .jpg)"
