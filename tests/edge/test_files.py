"""What a command writes is whole or not there: a full disk leaves the previous output as it was, and says which file."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from filesystems import Tmpfs

from edge import files

REPO = Path(__file__).resolve().parents[2]
LANDMARKS = REPO / "models" / "landmarks"
OLD = b"the previous output, which must survive\n"


def cryedge(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


def test_a_write_that_fails_leaves_the_old_file_and_names_it(tmp_path):
    target = tmp_path / "model.tflite"
    target.write_bytes(OLD)
    with pytest.raises(KeyboardInterrupt), files.replacing(target) as (partial,):
        partial.write_bytes(b"half a model")
        raise KeyboardInterrupt  # Ctrl-C halfway
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
    with pytest.raises(OSError) as raised, files.replacing(target) as (partial,):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() says it: no file name
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))


def test_files_written_together_appear_together(tmp_path):
    model, card = tmp_path / "m.tflite", tmp_path / "m.json"
    with files.replacing(model, card) as (new_model, new_card):
        new_model.write_bytes(b"model")
        new_card.write_text("{}")
        assert not model.exists() and not card.exists()
    assert (model.read_bytes(), card.read_text()) == (b"model", "{}")


def _clip(path: Path, frames: int = 24) -> Path:
    """A real video: the bundled photo of a face, still, at 10 fps."""
    import cv2

    photo = cv2.resize(cv2.imread(str(REPO / "edge" / "data" / "astronaut.jpg")), (256, 256))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for _ in range(frames):
        writer.write(photo)
    writer.release()
    return path


def _windows(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((40, 10, 140), np.float32), y=np.arange(40) % 2, groups=np.array(list("abcd") * 10))
    return path


TOOLCHAIN = {"convert", "dataset build", "train", "eval"}


@pytest.mark.parametrize("command", ["landmarks --draw", "models fetch", "convert", "dataset build", "train", "eval"])
def test_a_full_disk_keeps_the_previous_output_and_names_the_file(tmp_path, command):
    """Each said only "cryedge: No space left on device" (write() names no file) and left a 0-byte file where the
    previous output had been: a model, bundle or dataset that no longer loads. Now the line names the file, exit 1,
    and the previous output is still there, with no partial file beside it."""
    if command in TOOLCHAIN:
        pytest.importorskip("tensorflow")  # the converter extra these commands come with
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    with Tmpfs(tmp_path / "disk", size="256k") as disk:
        out = disk.path
        if command == "landmarks --draw":
            args, written = ["landmarks", "--draw", out / "points.png"], [out / "points.png"]
        elif command == "models fetch":
            args = ["models", "fetch", "--output", out, "--face-bundle", LANDMARKS / "face_landmarker.task",
                    "--pose-bundle", LANDMARKS / "pose_landmarker.task"]
            written = [out / "face_landmarker.task"]
        elif command == "convert":
            args = ["convert", REPO / "edge" / "data" / "models" / "cry-default.keras", "--quantize", "float32",
                    "--output", out / "model.tflite"]
            written = [out / "model.tflite", out / "model.json"]
        elif command == "dataset build":
            _clip(inputs / "clip.avi")
            (inputs / "labels.csv").write_text("video,start_s,end_s,label\nclip.avi,1.0,2.0,crying\n")
            args = ["dataset", "build", inputs, inputs / "labels.csv", "--spec", "openpose-face70", "--positive",
                    "crying", "--output", out / "data.npz"]
            written = [out / "data.npz"]
        elif command == "train":
            args = ["train", "--arch", "conv1d", "--data", _windows(inputs / "data.npz"), "--epochs", "1",
                    "--output", out / "model.keras"]
            written = [out / "model.keras"]
        else:
            _clip(inputs / "clip.avi")
            (inputs / "labels.csv").write_text("video,start_s,end_s,label\nclip.avi,1.0,2.0,crying\n")
            args = ["eval", inputs / "clip.avi", "--labels", inputs / "labels.csv", "--output-dir", out]
            written = [out / "eval.json", out / "eval.md", out / "eval.png"]
        for path in written:
            path.write_bytes(OLD)
        disk.fill()
        done = cryedge(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")]
        assert lines == [f"cryedge: No space left on device: {written[0]}"], done.stderr
        assert [path.read_bytes() for path in written] == [OLD] * len(written)
        assert sorted(p.name for p in out.iterdir()) == sorted(["filler", *(path.name for path in written)])
