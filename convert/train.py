"""``cryedge train``: a zoo architecture trained on a ``cryedge dataset build`` file, tested on unseen groups.

The split is by ``groups`` (subject or video): no group is in both training and test, since windows
of one person look alike and a random split measures memory, not generalization (the original
work's hard lesson). Test groups are drawn at random until about ``--test-fraction`` of the windows
is held out, or named with ``--holdout``; validation groups for early stopping are drawn the same
way from the training groups. ``--folds K`` adds a stratified group k-fold cross-validation
(groups dealt to folds so each fold's share of positives is near the whole set's).

Classes are balanced with class weights. Outputs beside ``MODEL.keras``: ``MODEL.metrics.json``
(accuracy, precision, recall, F1, ROC AUC on the held-out groups, which groups were held out),
``MODEL.history.png`` (accuracy and loss curves), ``MODEL.confusion.png``, ``MODEL.roc.png``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import files
from edge.errors import DataError

log = logging.getLogger(__name__)

# --- splits (pure numpy) -----------------------------------------------------------------------

def group_split(groups: np.ndarray, test_fraction: float, seed: int, holdout: list[str] | None = None,
                y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with whole groups on one side. ``holdout`` patterns (fnmatch) name the test groups.

    Otherwise groups are taken in a seeded random order until at least ``test_fraction`` of the rows
    are in the test side; with ``y``, orders whose test side lacks a class are skipped when possible.
    """
    groups = np.asarray(groups).astype(str)
    unique = np.unique(groups)
    if holdout:
        chosen = [g for g in unique if any(fnmatch.fnmatchcase(g, pattern) for pattern in holdout)]
        if not chosen:
            raise DataError(f"--holdout {' '.join(holdout)} matches no group; groups: {', '.join(unique[:8])}")
        if len(chosen) == len(unique):
            raise DataError(f"--holdout {' '.join(holdout)} matches every group: nothing left to train on")
        test = np.isin(groups, chosen)
        return np.flatnonzero(~test), np.flatnonzero(test)
    if len(unique) < 2:
        raise DataError(f"the data has {len(unique)} group; a group split needs at least 2 (subjects or videos)")
    rng = np.random.default_rng(seed)
    counts = {g: int((groups == g).sum()) for g in unique}
    best = None
    for _ in range(50):
        order = rng.permutation(unique)
        chosen, total = [], 0
        for g in order[:-1]:  # always leave one group to train on
            if total >= test_fraction * len(groups):
                break
            chosen.append(g)
            total += counts[g]
        test = np.isin(groups, chosen)
        if y is None or (len(np.unique(y[test])) == len(np.unique(y)) and len(np.unique(y[~test])) == len(np.unique(y))):
            best = test
            break
        best = test if best is None else best
    return np.flatnonzero(~best), np.flatnonzero(best)


def stratified_group_folds(groups: np.ndarray, y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint index arrays covering every row, whole groups each, positives spread evenly.

    Groups go, largest first, to the fold whose positive share and size stay nearest the whole set's.
    """
    groups = np.asarray(groups).astype(str)
    unique = np.unique(groups)
    if k < 2 or k > len(unique):
        raise DataError(f"--folds {k}: needs 2 <= K <= the number of groups ({len(unique)})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(unique)
    sizes = {g: int((groups == g).sum()) for g in order}
    positives = {g: int(y[groups == g].sum()) for g in order}
    order = sorted(order, key=lambda g: -sizes[g])
    target = y.mean()
    folds: list[list[str]] = [[] for _ in range(k)]
    fold_n, fold_pos = np.zeros(k), np.zeros(k)
    for g in order:
        cost = [abs((fold_pos[i] + positives[g]) / (fold_n[i] + sizes[g]) - target) + (fold_n[i] + sizes[g]) / len(y)
                for i in range(k)]
        i = int(np.argmin(cost))
        folds[i].append(g)
        fold_n[i] += sizes[g]
        fold_pos[i] += positives[g]
    return [np.flatnonzero(np.isin(groups, fold)) for fold in folds]


# --- metrics (pure numpy) ----------------------------------------------------------------------

def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates over every threshold (descending scores)."""
    order = np.argsort(-scores, kind="stable")
    y_sorted = y[order].astype(bool)
    tp = np.concatenate([[0], np.cumsum(y_sorted)])
    fp = np.concatenate([[0], np.cumsum(~y_sorted)])
    return fp / max(1, fp[-1]), tp / max(1, tp[-1])


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (ties count half); None with only one class."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC AUC and the confusion matrix at ``threshold``."""
    y = np.asarray(y).astype(int)
    predicted = (scores >= threshold).astype(int)
    tp = int(((predicted == 1) & (y == 1)).sum())
    fp = int(((predicted == 1) & (y == 0)).sum())
    fn = int(((predicted == 0) & (y == 1)).sum())
    tn = int(((predicted == 0) & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = roc_auc(y, scores)
    return {
        "windows": len(y), "positives": int(y.sum()), "threshold": threshold,
        "accuracy": round((tp + tn) / max(1, len(y)), 4), "precision": round(precision, 4), "recall": round(recall, 4),
        "f1": round(f1, 4), "roc_auc": None if auc is None else round(auc, 4),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights: n / (classes * count of the class)."""
    counts = np.bincount(y)
    return {i: float(len(y) / (len(counts) * c)) for i, c in enumerate(counts) if c}


# --- plots -------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(np.arange(1, len(history[prefix + metric]) + 1), history[prefix + metric], style,
                        label="training" if not prefix else "validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_confusion(confusion: dict, labels: tuple[str, ...], path: Path, title: str) -> Path:
    plt = _pyplot()
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="black" if value < matrix.max() / 2 else "white")
    ax.set_xticks([0, 1], [f"pred {label}" for label in labels])
    ax.set_yticks([0, 1], [f"true {label}" for label in labels])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_roc(y: np.ndarray, scores: np.ndarray, auc: float | None, path: Path, title: str) -> Path:
    plt = _pyplot()
    fpr, tpr = roc_curve(y, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}" if auc is not None else "one class only")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --- training ----------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    arch: str
    data: Path
    output: Path
    epochs: int = 40
    batch_size: int = 64
    patience: int = 6
    folds: int = 0
    test_fraction: float = 0.25
    holdout: tuple[str, ...] = ()
    seed: int = 0
    # the weights' own seed (their initialisation, dropout and the order of the batches), when it is not ``seed``:
    # nets that differ only in it see the same splits (an ensemble's members, ``demo-audio build --ensemble``)
    init_seed: int | None = None
    threshold: float = 0.5
    verbose: int | None = None
    augment: int = 0  # noisy copies of each training window (see ``augment``)
    body_from: int | None = None  # first body feature, from the dataset's spec (set by ``train``)
    body_window_drop: float = 0.0  # share of augmented windows whose body is gone altogether
    reshape: float = 0.0  # per-window face-shape change of augmented copies (see ``reshape_faces``); iBUG-68 faces only
    pitch_channels: int = 0  # the sound windows' last features that are pitch channels (set by ``train``)
    sizes: dict = field(default_factory=dict)  # the architecture's own options, e.g. audio-cnn's {"head": "time"}


# The iBUG-68 face's parts (the first 68 face points of the openpose-face70 specs; 68-69 are the pupils,
# which move with the eyes): each is moved as a whole by ``reshape_faces``.
FACE_PARTS = {"jaw": tuple(range(0, 17)), "brows": tuple(range(17, 27)), "nose": tuple(range(27, 36)),
              "eyes": tuple(range(36, 48)) + (68, 69), "mouth": tuple(range(48, 68))}


def reshape_faces(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Windows (N, T, F) of face-box features with each window's face reshaped: another person, same expression.

    Per window (a face does not change shape within one), each part of the face is scaled about its
    centre by up to ``amount`` in x and y, and moved by up to ``amount / 2`` of the face box; then the
    face is normalized to its box again, as ``edge.features.normalize`` does on the device (the box is
    the min and max over the face points). Frames without a face (all zeros) stay zero. The first 140
    features must be the openpose-face70 face, face-box normalized. Pure but for ``rng``.
    """
    n = len(x)
    pairs = x[..., :140].reshape(n, x.shape[1], 70, 2).copy()
    seen = np.any(pairs != 0, axis=(2, 3))  # (N, T): frames with a face
    for part in FACE_PARTS.values():
        idx = list(part)
        centre = pairs[:, :, idx].mean(axis=2, keepdims=True)
        scale = 1 + rng.uniform(-amount, amount, (n, 1, 1, 2)).astype(np.float32)
        shift = rng.uniform(-amount / 2, amount / 2, (n, 1, 1, 2)).astype(np.float32)
        pairs[:, :, idx] = centre + (pairs[:, :, idx] - centre) * scale + shift
    low = pairs.min(axis=2, keepdims=True)
    span = pairs.max(axis=2, keepdims=True) - low
    span[span == 0] = 1.0
    pairs = np.where(seen[:, :, None, None], (pairs - low) / span, 0.0).astype(np.float32)
    out = x.copy()
    out[..., :140] = pairs.reshape(n, x.shape[1], 140)
    return out


def augment(x: np.ndarray, copies: int, seed: int, jitter: float = 0.01, stretch: float = 0.06,
            body_from: int | None = None, body_drop: float = 0.3, body_window_drop: float = 0.0,
            reshape: float = 0.0) -> np.ndarray:
    """``copies`` noisy copies of windows (N, T, F) stacked after the originals: (N * (1 + copies), T, F).

    Each copy stretches a window's x and y values about 0.5 by up to ``stretch`` (another face shape,
    another distance) and adds ``jitter`` noise to every point; absent points (exact zeros) stay zero.
    With ``body_from`` (index of the first body feature), each frame's body points are also dropped
    (zeroed, as an unseen pose is) with probability ``body_drop``: pose visibility flickers, and a
    model should not hang on it; and with probability ``body_window_drop`` a whole window's body is
    gone (hidden under a blanket, or out of a close head crop). With ``reshape``, each copy's faces are
    first reshaped (``reshape_faces``). Pure but for the seeded generator.
    """
    rng = np.random.default_rng(seed)
    out = [x]
    for _ in range(copies):
        source = reshape_faces(x, reshape, rng) if reshape else x
        scale = 1 + rng.uniform(-stretch, stretch, (len(x), 1, 2)).astype(np.float32)
        pairs = source.reshape(len(x), x.shape[1], -1, 2)
        moved = 0.5 + (pairs - 0.5) * scale[:, :, None, :] + rng.normal(0, jitter, pairs.shape).astype(np.float32)
        copy = np.where(pairs == 0, 0, moved).reshape(x.shape).astype(np.float32)
        if body_from is not None and body_from < x.shape[2]:
            dropped = rng.random((len(x), x.shape[1])) < body_drop
            dropped |= (rng.random(len(x)) < body_window_drop)[:, None]
            copy[..., body_from:][dropped] = 0.0
        out.append(copy)
    return np.concatenate(out)


def _fit(arch: str, x_train, y_train, x_val, y_val, options: TrainOptions):
    """A fresh zoo model fitted with class weights and early stopping on validation loss."""
    from convert import zoo
    from convert.keras_io import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(options.seed if options.init_seed is None else options.init_seed)
    pitch = {"pitch": options.pitch_channels} if options.pitch_channels and arch in zoo.AUDIO_WINDOW else {}
    model = zoo.build(arch, window=x_train.shape[1], features=x_train.shape[2], **pitch, **options.sizes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    verbose = options.verbose if options.verbose is not None else (1 if sys.stdout.isatty() else 2)
    if options.augment:
        x_train = augment(x_train, options.augment, options.seed, body_from=options.body_from,
                          body_window_drop=options.body_window_drop, reshape=options.reshape)
        y_train = np.tile(y_train, options.augment + 1)
    x_train, x_val = _as_input_of(model, x_train), _as_input_of(model, x_val)
    history = model.fit(
        x_train, y_train.astype(np.float32), validation_data=(x_val, y_val.astype(np.float32)),
        epochs=options.epochs, batch_size=options.batch_size, class_weight=class_weights(y_train), verbose=verbose,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience, restore_best_weights=True)],
    )
    return model, {k: [float(v) for v in values] for k, values in history.history.items()}


def _as_input_of(model, x: np.ndarray) -> np.ndarray:
    """Windows in the model's input shape: conv2d takes each (window, features) as an image, the same
    row-major values reshaped, as the runtime feeds it (fitting the windows as given failed on Dense's size)."""
    shape = tuple(model.input_shape[1:])
    return x if x.shape[1:] == shape else x.reshape((len(x), *shape))


def _scores(model, x) -> np.ndarray:
    return np.asarray(model.predict(_as_input_of(model, x), verbose=0, batch_size=256), dtype=np.float32).reshape(-1)


def _train_val(train: np.ndarray, groups: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Validation rows for early stopping: whole groups of ``train`` when it has several, else its last 15%."""
    if len(np.unique(groups[train])) >= 3:
        fit, val = group_split(groups[train], 0.2, seed + 1, y=y[train])
        return train[fit], train[val], "groups"
    cut = int(len(train) * 0.85)
    return train[:cut], train[cut:], "last 15% of the training rows (too few groups to hold some out)"


def train(options: TrainOptions) -> dict:
    """Train, test on held-out groups, save the model, plots and metrics; returns the metrics dict."""
    from convert.dataset import load, non_finite_windows
    from convert.zoo import AUDIO_WINDOW

    if options.sizes and options.arch not in AUDIO_WINDOW:  # before a dataset is read
        raise DataError(f"--arch {options.arch}: {', '.join(options.sizes)} is an option of the audio models only")
    data = load(options.data)
    # the windows out of ``data`` and not copied when already float32: a sound dataset of 2 s windows is 1.8 GiB
    x, y, groups = data.pop("x").astype(np.float32, copy=False), data["y"].astype(np.int64), data["groups"].astype(str)
    labels = tuple(str(v) for v in data["labels"]) if "labels" in data else ("negative", "positive")
    if x.ndim != 3:
        raise DataError(f"dataset {options.data}: x has shape {x.shape}; window training needs (N, T, F) "
                        "(landmark windows, or sound windows of frames x bands)")
    if not len(x):
        raise DataError(f"dataset {options.data} has no windows")
    bad = non_finite_windows(x)
    if len(bad):  # trained on them silently: a validation loss of nan, weights that may be too
        raise DataError(f"dataset {options.data}: {len(bad)} of {len(x)} windows hold NaN or infinite values (the first: "
                        f"window {bad[0]}); 'cryedge dataset build' writes none: rebuild it, or drop those windows")
    if len(labels) != 2 or not set(np.unique(y)) <= {0, 1}:
        raise DataError(f"dataset {options.data} has classes {list(labels)}; the zoo's sigmoid models need 2 "
                        "(build the data with --positive)")
    if len(np.unique(y)) < 2:
        raise DataError(f"dataset {options.data} has one class only ({labels[int(y[0])]})")
    if "spec" in data and options.augment:
        from dataclasses import replace

        from edge.features import get_spec

        options = replace(options, body_from=2 * len(get_spec(str(data["spec"])).face_points))
    if options.reshape and (not str(data.get("spec", "")).startswith("openpose-face70")
                            or str(data.get("normalization", "")) != "face-box"):
        raise DataError(f"dataset {options.data}: reshaping faces needs openpose-face70 features (iBUG-68 points first) "
                        f"with face-box normalization, not {str(data.get('spec', 'unnamed features'))!r} "
                        f"with {str(data.get('normalization', 'unnamed'))!r}")
    output = Path(options.output)
    if output.suffix != ".keras":
        raise DataError(f"--output {output}: give a .keras path")
    output.parent.mkdir(parents=True, exist_ok=True)
    stem = output.with_suffix("")

    metrics: dict = {
        "data": str(options.data), "arch": options.arch, "windows": len(y), "labels": list(labels),
        "window": int(x.shape[1]), "features": int(x.shape[2]), "augment": options.augment, "reshape": options.reshape,
        "spec": str(data["spec"]) if "spec" in data else None,
        "normalization": str(data["normalization"]) if "normalization" in data else None, "seed": options.seed,
        **({"init_seed": options.init_seed} if options.init_seed is not None else {}),
        **({"sizes": dict(options.sizes)} if options.sizes else {}),
    }
    if "audio" in data:  # a sound dataset: its front end goes to the card through convert
        metrics["audio"] = json.loads(str(data["audio"]))
        pitch = metrics["audio"].get("pitch_bins", 0) * metrics["audio"].get("pitch_bands", 1)
        if pitch:  # a branch of their own in audio-cnn
            from dataclasses import replace

            options = replace(options, pitch_channels=pitch)
    if options.folds:
        folds = stratified_group_folds(groups, y, options.folds, options.seed)
        per_fold = []
        for number, test in enumerate(folds):
            rest = np.setdiff1d(np.arange(len(y)), test)
            fit, val, _ = _train_val(rest, groups, y, options.seed + number)
            assert not set(groups[test]) & set(groups[rest]), "a group leaked between folds"
            print(f"fold {number + 1}/{options.folds}: test groups {', '.join(sorted(set(groups[test])))}", flush=True)
            model, _ = _fit(options.arch, x[fit], y[fit], x[val], y[val], options)
            result = binary_metrics(y[test], _scores(model, x[test]), options.threshold)
            result["test_groups"] = sorted(set(groups[test].tolist()))
            per_fold.append(result)
        metrics["cross_validation"] = {
            "folds": per_fold,
            **{f"{name}_mean": round(float(np.mean([f[name] for f in per_fold if f[name] is not None])), 4)
               for name in ("accuracy", "precision", "recall", "f1", "roc_auc")},
            **{f"{name}_std": round(float(np.std([f[name] for f in per_fold if f[name] is not None])), 4)
               for name in ("accuracy", "f1")},
        }

    train_rows, test_rows = group_split(groups, options.test_fraction, options.seed, list(options.holdout), y)
    leaked = set(groups[train_rows]) & set(groups[test_rows])
    assert not leaked, f"groups in both training and test: {leaked}"
    fit, val, val_how = _train_val(train_rows, groups, y, options.seed)
    print(f"train: {len(fit)} windows, validation: {len(val)}, test: {len(test_rows)} "
          f"(held-out groups: {', '.join(sorted(set(groups[test_rows])))})", flush=True)
    # the rows split out before the fit and every window let go: one copy of the windows fewer in memory while it fits
    x_fit, x_val, x_test = x[fit], x[val], x[test_rows]
    del x
    model, history = _fit(options.arch, x_fit, y[fit], x_val, y[val], options)
    del x_fit, x_val
    with files.replacing(output) as (partial,):
        model.save(partial)
    scores = _scores(model, x_test)
    held_out = binary_metrics(y[test_rows], scores, options.threshold)
    metrics.update({
        "split": "by group: no group is in both training and test",
        "train_groups": sorted(set(groups[fit].tolist())), "validation_groups": sorted(set(groups[val].tolist())),
        "validation": val_how, "test_groups": sorted(set(groups[test_rows].tolist())),
        "epochs_run": len(history.get("loss", [])), "held_out": held_out,
        "validation_loss": round(min(history["val_loss"]), 5) if history.get("val_loss") else None,
        "class_weights": {labels[k]: round(v, 4) for k, v in class_weights(y[fit]).items()},
        "plots": {
            "history": str(plot_history(history, Path(f"{stem}.history.png"), f"{options.arch}: training")),
            "confusion": str(plot_confusion(held_out["confusion"], labels, Path(f"{stem}.confusion.png"),
                                            f"held-out groups, threshold {options.threshold}")),
            "roc": str(plot_roc(y[test_rows], scores, held_out["roc_auc"], Path(f"{stem}.roc.png"), "held-out groups")),
        },
    })
    files.write_text(Path(f"{stem}.metrics.json"), json.dumps(metrics, indent=2) + "\n")
    return metrics


def _run(args) -> int:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # fails now, not after the training
    metrics = train(TrainOptions(arch=args.arch, data=args.data, output=args.output, epochs=args.epochs,
                                 batch_size=args.batch_size, patience=args.patience, folds=args.folds,
                                 test_fraction=args.test_fraction, holdout=tuple(args.holdout or ()), seed=args.seed,
                                 augment=args.augment, sizes=audio_sizes(args)))
    held = metrics["held_out"]
    print(f"{args.output}: held-out groups {', '.join(metrics['test_groups'])}: accuracy {held['accuracy']:.3f}, "
          f"precision {held['precision']:.3f}, recall {held['recall']:.3f}, F1 {held['f1']:.3f}, "
          f"ROC AUC {held['roc_auc'] if held['roc_auc'] is not None else 'n/a'} ({held['windows']} windows)")
    if "cross_validation" in metrics:
        cv = metrics["cross_validation"]
        print(f"{args.folds}-fold group cross-validation: accuracy {cv['accuracy_mean']:.3f} +- {cv['accuracy_std']:.3f}, "
              f"F1 {cv['f1_mean']:.3f} +- {cv['f1_std']:.3f}")
    print(f"metrics: {Path(args.output).with_suffix('')}.metrics.json")
    return 0


def add_commands(subparsers) -> None:
    from convert.arguments import fraction, whole
    from convert.zoo import AUDIO_WINDOW, LANDMARK_WINDOW

    parser = subparsers.add_parser(
        "train", help="train a zoo architecture on a dataset, tested on held-out groups",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=tuple(LANDMARK_WINDOW) + tuple(AUDIO_WINDOW))
    parser.add_argument("--data", type=Path, required=True, metavar="DATA.npz", help="from 'cryedge dataset build'")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="MODEL.keras")
    parser.add_argument("--epochs", type=whole(1), default=40, help="at most this many (early stopping; default 40)")
    parser.add_argument("--batch-size", type=whole(1), default=64)
    parser.add_argument("--patience", type=whole(0), default=6, help="epochs without a better validation loss before stopping")
    parser.add_argument("--folds", type=whole(0), default=0, metavar="K", help="also run a stratified group K-fold cross-validation")
    parser.add_argument("--test-fraction", type=fraction, default=0.25, help="share of windows in held-out groups (default 0.25)")
    parser.add_argument("--holdout", action="append", metavar="GROUP", help="hold out these groups (fnmatch pattern; repeatable)")
    parser.add_argument("--seed", type=whole(0), default=0)
    parser.add_argument("--augment", type=whole(0), default=0, metavar="N",
                        help="add N noisy copies of each training window (stretched and jittered points)")
    add_audio_size_arguments(parser)
    parser.set_defaults(handler=_run)


def add_audio_size_arguments(parser) -> None:
    """audio-cnn's options, for ``cryedge train`` and ``cryedge demo-audio build``; unset, the defaults' model."""
    from convert.arguments import whole
    from convert.zoo import AUDIO_HEADS

    parser.add_argument("--audio-head", choices=AUDIO_HEADS,
                        help="audio-cnn: average the last feature maps over time and frequency (global, the default "
                             "model's) or over time only, keeping the frequency bins (time; docs/audio.md)")
    parser.add_argument("--audio-filters", type=whole(1), metavar="N",
                        help="audio-cnn: filters of the first conv block, twice that in the next two (default 16)")


def audio_sizes(args) -> dict:
    """The audio-cnn options given on the command line (``add_audio_size_arguments``), none when unset."""
    given = {"head": args.audio_head, "filters": args.audio_filters}
    return {name: value for name, value in given.items() if value is not None}
