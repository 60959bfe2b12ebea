"""``cryedge train``: group splits that never leak a person, metrics that mean what they say, plots and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert import train, zoo
from edge.errors import DataError

CRYEDGE = Path(sys.executable).with_name("cryedge")


def _dataset(path: Path, groups: int = 8, per_group: int = 40) -> Path:
    """SYNTHETIC separable windows (convert.zoo.synthetic_windows) in 'cryedge dataset build' layout."""
    x, y = zoo.synthetic_windows(groups * per_group, window=10, features=156, seed=3)
    np.savez(path, x=x, y=y, groups=np.repeat([f"subject-{i}" for i in range(groups)], per_group),
             labels=np.array(["not_crying", "crying"]), spec=np.array("openpose-face70-body8"),
             normalization=np.array("minmax"), window=np.array(10))
    return path


def test_group_split_never_puts_a_group_on_both_sides():
    rng = np.random.default_rng(0)
    groups = rng.choice([f"g{i}" for i in range(12)], size=600)
    y = rng.integers(0, 2, 600)
    for seed in range(20):
        train_rows, test_rows = train.group_split(groups, 0.25, seed, y=y)
        assert not set(groups[train_rows]) & set(groups[test_rows])
        assert len(train_rows) + len(test_rows) == 600
        assert 0.2 < len(test_rows) / 600 < 0.45


def test_holdout_patterns_name_the_test_groups():
    groups = np.array(["astronaut-00", "astronaut-01", "grace-hopper-00", "grace-hopper-mirror-01"])
    _train_rows, test_rows = train.group_split(groups, 0.25, 0, holdout=["grace-hopper*"])
    assert set(groups[test_rows]) == {"grace-hopper-00", "grace-hopper-mirror-01"}
    with pytest.raises(DataError, match="matches no group"):
        train.group_split(groups, 0.25, 0, holdout=["nobody*"])
    with pytest.raises(DataError, match="every group"):
        train.group_split(groups, 0.25, 0, holdout=["*"])


def test_stratified_group_folds_partition_the_rows_by_group():
    rng = np.random.default_rng(1)
    groups = np.repeat([f"g{i}" for i in range(10)], rng.integers(20, 60, 10))
    y = (rng.random(len(groups)) < 0.3).astype(int)
    folds = train.stratified_group_folds(groups, y, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for i, a in enumerate(folds):
        for b in folds[i + 1 :]:
            assert not set(groups[a]) & set(groups[b])
        assert abs(y[a].mean() - y.mean()) < 0.15


def test_metrics_match_hand_counts():
    y = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    m = train.binary_metrics(y, scores, 0.5)
    assert m["confusion"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert m["precision"] == round(2 / 3, 4) and m["recall"] == round(2 / 3, 4) and m["accuracy"] == round(4 / 6, 4)
    # 9 positive-negative pairs, the positive ranked higher in 8 of them
    assert train.roc_auc(y, scores) == pytest.approx(8 / 9)
    assert train.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    assert train.roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)


def test_augmented_copies_move_present_points_only():
    x = np.full((4, 10, 156), 0.7, np.float32)
    x[:, :, 140:] = 0.0  # absent body points
    out = train.augment(x, 2, seed=0)
    assert out.shape == (12, 10, 156)
    np.testing.assert_array_equal(out[:4], x)
    assert not out[4:, :, 140:].any()
    assert 0 < np.abs(out[4:, :, :140] - 0.7).mean() < 0.05
    x[:, :, 140:] = 0.4
    dropped = train.augment(x, 3, seed=1, body_from=140, body_drop=0.3)[4:]
    frames_without_body = (dropped[:, :, 140:] == 0).all(axis=2)
    assert 0.15 < frames_without_body.mean() < 0.45
    assert (dropped[:, :, :140] != 0).all()  # face points are never dropped


def _face_window(mouth_open: float, frames: int = 10) -> np.ndarray:
    """A window of one face-box-normalized openpose-face70 face (x then y a point), the mouth ``mouth_open`` apart."""
    rng = np.random.default_rng(5)
    points = rng.uniform(0.2, 0.8, (70, 2)).astype(np.float32)
    points[0], points[16], points[8], points[24] = (0, 0.3), (1, 0.3), (0.5, 1), (0.6, 0)  # the box's edges
    points[62], points[66] = (0.5, 0.7), (0.5, 0.7 + mouth_open)
    return np.repeat(points.reshape(1, 1, 140), frames, axis=1)


def test_reshaped_faces_are_other_faces_with_the_same_expression():
    x = np.concatenate([_face_window(0.0), _face_window(0.15), np.zeros((1, 10, 140), np.float32)])
    out = train.reshape_faces(np.repeat(x, 50, axis=0), 0.1, np.random.default_rng(0))
    closed, wide, empty = out[:50], out[50:100], out[100:]
    assert not empty.any()  # no face stays no face
    assert (out[:100].min(axis=2) >= 0).all() and (out[:100].max(axis=2) <= 1).all()
    pairs = out[:100].reshape(100, 10, 70, 2)
    assert np.allclose(pairs.min(axis=2), 0, atol=1e-6) and np.allclose(pairs.max(axis=2), 1, atol=1e-6)  # the face box again
    np.testing.assert_allclose(out[:, 1:], out[:, :1].repeat(9, axis=1))  # one shape for the whole window
    assert np.abs(closed - x[:1]).mean() > 0.01  # another face shape each window
    assert np.unique(closed[:, 0].round(4), axis=0).shape[0] == 50
    def opening(windows):
        return windows[:, 0, 133] - windows[:, 0, 125]  # y of point 66 minus y of point 62

    assert (opening(wide) > opening(closed) + 0.05).all()  # the mouth stays open


def test_reshaping_refuses_features_that_are_not_an_ibug_face(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    with pytest.raises(DataError, match="face-box"):
        train.train(train.TrainOptions(arch="conv1d", data=data, output=tmp_path / "m.keras", epochs=1, augment=1, reshape=0.1))


@pytest.mark.slow
def test_train_holds_out_whole_groups_and_writes_plots_and_metrics(tmp_path):
    data = _dataset(tmp_path / "data.npz")
    output = tmp_path / "model.keras"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([str(CRYEDGE), "train", "--arch", "conv1d", "--data", str(data), "--output", str(output),
                             "--epochs", "8", "--folds", "3"], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out groups" in result.stdout
    metrics = json.loads((tmp_path / "model.metrics.json").read_text())
    assert not set(metrics["test_groups"]) & set(metrics["train_groups"])
    assert not set(metrics["test_groups"]) & set(metrics["validation_groups"])
    assert not set(metrics["train_groups"]) & set(metrics["validation_groups"])
    assert len(metrics["cross_validation"]["folds"]) == 3
    held = metrics["held_out"]
    assert held["windows"] == sum(held["confusion"].values())
    assert held["accuracy"] > 0.8 and held["roc_auc"] > 0.9  # the synthetic windows are separable
    for name in ("history", "confusion", "roc"):
        png = Path(metrics["plots"][name])
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import keras

    model = keras.models.load_model(output)
    assert model.input_shape == (None, 10, 156)


def test_train_refuses_bad_data_in_one_line(tmp_path):
    np.savez(tmp_path / "three.npz", x=np.zeros((30, 10, 156), np.float32), y=np.arange(30) % 3,
             groups=np.repeat(["a", "b", "c"], 10), labels=np.array(["a", "b", "c"]))
    # an empty sound dataset (96x64 log-mel windows): a traceback (IndexError) while naming its one class
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 96, 64), np.float32), y=np.zeros(0, np.int64),
             groups=np.array([], "<U2"), labels=np.array(["not_crying", "crying"]))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for data, words in ((tmp_path / "missing.npz", "does not exist"), (tmp_path / "three.npz", "need 2"),
                        (tmp_path / "empty.npz", "has no windows")):
        result = subprocess.run([str(CRYEDGE), "train", "--arch", "conv1d", "--data", str(data), "--output",
                                 str(tmp_path / "m.keras")], capture_output=True, text=True, timeout=300, env=env, check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 7, result.stderr
        assert len(lines) == 1 and words in lines[0], result.stderr


def test_train_refuses_windows_with_nan_and_files_that_are_no_dataset_in_one_line(tmp_path):
    """Windows holding a NaN were trained on, silently ('val_loss: nan', exit 0, a model written); a folder was said
    not to exist, a file that is not an .npz drew numpy's advice on loading pickles unsafely, and one damaged inside
    was zlib.error, exit 70 ("a bug")."""
    nan = _dataset(tmp_path / "nan.npz")
    arrays = dict(np.load(nan))
    arrays["x"][37, 4, 11] = np.nan
    np.savez(nan, **arrays)
    (tmp_path / "notes.npz").write_text("not a dataset\n")
    (tmp_path / "windows").mkdir()
    np.savez_compressed(tmp_path / "damaged.npz", **arrays)
    damaged = bytearray((tmp_path / "damaged.npz").read_bytes())
    damaged[200:5000:7] = bytes(b ^ 0x5A for b in damaged[200:5000:7])  # bits flipped inside the compressed x
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for data, line in (
        (nan, f"cryedge: dataset {nan}: 1 of 320 windows hold NaN or infinite values (the first: window 37); "
              "'cryedge dataset build' writes none: rebuild it, or drop those windows"),
        (tmp_path / "notes.npz", f"cryedge: cannot read dataset {tmp_path / 'notes.npz'}: not an .npz file"),
        (tmp_path / "damaged.npz", f"cryedge: cannot read dataset {tmp_path / 'damaged.npz'}: Error -3 while "
                                   "decompressing data: invalid distance too far back"),
        (tmp_path / "windows", f"cryedge: dataset {tmp_path / 'windows'} is a folder; give the .npz that "
                               "'cryedge dataset build' wrote"),
    ):
        result = subprocess.run([str(CRYEDGE), "train", "--arch", "conv1d", "--epochs", "1", "--data", str(data),
                                 "--output", str(tmp_path / "m.keras")], capture_output=True, text=True, timeout=300,
                                env=env, check=False)
        assert (result.returncode, result.stderr.splitlines()) == (7, [line]), result.stderr
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_cryedge_train_of_the_conv2d_architecture_trains_on_windows_seen_as_images(tmp_path):
    """conv2d takes each 10 x 156 window as a 40 x 39 image; the old fit fed the windows as they were and
    died with a ValueError traceback ("expected axis -1 of input shape to have value 2560")."""
    data = _dataset(tmp_path / "data.npz", groups=4, per_group=20)
    output = tmp_path / "model.keras"
    result = subprocess.run([str(CRYEDGE), "train", "--arch", "conv2d", "--data", str(data), "--output", str(output),
                             "--epochs", "1"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "held-out groups" in result.stdout
    held = json.loads((tmp_path / "model.metrics.json").read_text())["held_out"]
    assert held["windows"] == sum(held["confusion"].values()) > 0
