"""Loading users' Keras models (Keras-2 ``.h5``, Keras-3 ``.keras``, SavedModel folders) and making them static.

Keras 3 mis-reads a Keras-2 Sequential ``.h5``: the ``batch_input_shape`` kept in the first
layer's config makes it build for inputs of one more dimension ("expected ndim=3, found ndim=4").
We rewrite that config in a temporary copy (an explicit InputLayer in front, as Keras 3 writes it)
and load the copy. TFLite needs static shapes and one subgraph: ``static_batch1`` rebuilds the
model from its config with batch 1 and unrolled recurrent layers, then copies the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelError

log = logging.getLogger(__name__)

RECURRENT_LAYERS = ("LSTM", "GRU", "SimpleRNN", "CuDNNLSTM", "CuDNNGRU")


@dataclass
class LoadedModel:
    """A Keras model with where it came from; ``framework`` is ``keras`` (3) or ``tf_keras`` (2)."""

    model: object
    framework: str
    path: Path
    source_format: str
    sha256: str


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a SavedModel folder's files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def import_tensorflow():
    """Import TensorFlow and Keras without their native start-up chatter on stderr.

    TensorFlow's C++ side logs CUDA probes and absl notes straight to file descriptor 2 at import,
    whatever TF_CPP_MIN_LOG_LEVEL says; the CLI promises one line on stderr for an error, so the
    descriptor points at /dev/null for the import only. Later native logs obey the level set here.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import sys

    if sys.modules.get("tensorflow") is not None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import keras  # noqa: F401
                import tensorflow  # noqa: F401
            except ImportError as error:
                raise ModelError(f"converting needs the convert extra (pip install 'cryedge[convert]'): {error}") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_installed() -> None:
    """ModelError when the convert extra is not installed, found without importing it (``cryedge convert``'s
    parent process, which leaves TensorFlow to its child)."""
    import importlib.util

    for name in ("keras", "tensorflow"):
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ModelError(f"converting needs the convert extra (pip install 'cryedge[convert]'): no module {name}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def load(path: str | Path) -> LoadedModel:
    """The model at ``path``; a ModelError (one line) when it is missing or not a Keras model."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    import_tensorflow()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        return LoadedModel(_load_saved_model(path), "tf_keras", path, "savedmodel", sha256_of(path))
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return LoadedModel(_load_h5(path), "keras", path, "keras2-h5", sha256_of(path))
    if suffix == ".keras":
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - Keras raises many kinds; the user needs the first line
            raise ModelError(f"cannot load {path} with Keras {keras.__version__}: {_first_line(error)}") from None
        return LoadedModel(model, "keras", path, "keras3", sha256_of(path))
    raise ModelError(f"{path}: unknown model format {suffix or '(none)'}; give a .h5, .keras or a SavedModel folder")


def legacy_h5_config(config: dict) -> dict:
    """A Keras-2 model config with Sequential input shapes moved into an explicit InputLayer.

    Pure: returns a new dict. Functional configs already have their InputLayer; in both, the
    convolution keys that tf.keras writes and Keras 3 refuses are dropped (``TF_KERAS_CONV_KEYS``).
    """
    config = copy.deepcopy(config)
    _drop_tf_keras_conv_keys(config)
    if config.get("class_name") != "Sequential":
        return config
    inner = config["config"]
    layers = inner["layers"] if isinstance(inner, dict) else inner  # Keras 2.2 wrote a bare list
    if not layers or layers[0].get("class_name") == "InputLayer":
        return config
    first = layers[0]["config"]
    shape = first.pop("batch_input_shape", None)
    if shape is None:
        return config
    input_layer = {
        "class_name": "InputLayer",
        "config": {"batch_input_shape": shape, "dtype": first.get("dtype", "float32"), "sparse": False,
                   "name": f"{inner.get('name', 'sequential') if isinstance(inner, dict) else 'sequential'}_input"},
    }
    layers.insert(0, input_layer)
    if not isinstance(inner, dict):
        config["config"] = {"name": "sequential", "layers": layers}
    return config


# tf.keras 2.3+ writes these into separable and depthwise convolution configs (inherited from Conv);
# the layers never used them, and Keras 3 refuses them ("Unrecognized keyword arguments").
TF_KERAS_CONV_KEYS = {
    "SeparableConv1D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "SeparableConv2D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "DepthwiseConv1D": ("groups", "filters", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "DepthwiseConv2D": ("groups", "filters", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
}


def _drop_tf_keras_conv_keys(config: dict) -> None:
    """Remove, in place, the keys of ``TF_KERAS_CONV_KEYS`` from every layer of a (nested) model config."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner if isinstance(inner, list) else None
    for layer in layers or ():
        if not isinstance(layer, dict):
            continue
        for key in TF_KERAS_CONV_KEYS.get(layer.get("class_name"), ()):
            layer.get("config", {}).pop(key, None)
        if isinstance(layer.get("config"), dict) and "layers" in layer["config"]:
            _drop_tf_keras_conv_keys(layer)


def _load_h5(path: Path):
    import h5py
    import keras

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as error:
        raise ModelError(f"cannot read {path} as HDF5: {_first_line(error)}") from None
    if raw is None:
        raise ModelError(f"{path} holds weights only (no model_config): save the whole model, or rebuild it and load_weights")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError: exit 70 ("a bug") before
        raise ModelError(f"{path}: its model_config is not JSON ({_first_line(error)}): not a Keras model file") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: its model_config is a JSON {type(config).__name__}, not a Keras model config")
    fixed = legacy_h5_config(config)
    with tempfile.TemporaryDirectory(prefix="cryedge-h5-") as tmp:
        copy_path = Path(tmp) / path.name
        shutil.copyfile(path, copy_path)
        with h5py.File(copy_path, "r+") as f:
            f.attrs["model_config"] = json.dumps(fixed).encode()
        try:
            return keras.models.load_model(copy_path, compile=False)
        except Exception as error:  # noqa: BLE001 - as above
            raise ModelError(f"cannot load Keras-2 file {path} with Keras {keras.__version__}: {_first_line(error)}") from None


def _load_saved_model(path: Path):
    try:
        import tf_keras
    except ImportError:
        raise ModelError("SavedModel folders need tf-keras: pip install 'cryedge[convert]'") from None
    try:
        return tf_keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - as above
        raise ModelError(f"cannot load SavedModel {path} as a Keras model: {_first_line(error)}") from None


def _rewrite(node, unroll: bool):
    """Batch 1 in every input shape, ``unroll`` on every recurrent layer, in place, at any depth."""
    if isinstance(node, dict):
        if node.get("class_name") in RECURRENT_LAYERS and isinstance(node.get("config"), dict):
            node["config"]["unroll"] = unroll
            if unroll:
                node["config"].pop("implementation", None)
        for key in ("batch_shape", "batch_input_shape"):
            if isinstance(node.get(key), (list, tuple)) and len(node[key]) > 0:
                node[key] = [1, *list(node[key])[1:]]
        for value in node.values():
            _rewrite(value, unroll)
    elif isinstance(node, list):
        for value in node:
            _rewrite(value, unroll)


def has_recurrent_layers(model) -> bool:
    return any(type(layer).__name__ in RECURRENT_LAYERS or has_recurrent_layers(layer) for layer in getattr(model, "layers", []))


def static_batch1(model, unroll: bool = True):
    """The same model rebuilt for batch 1 (and unrolled recurrent layers), with the same weights."""
    config = model.get_config()
    _rewrite(config, unroll)
    try:
        rebuilt = type(model).from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as error:  # noqa: BLE001 - as above
        raise ModelError(f"cannot rebuild {model.name} with a static batch of 1: {_first_line(error)}") from None
    shape = tuple(rebuilt.inputs[0].shape)
    if any(d is None for d in shape):
        raise ModelError(f"model {model.name} has a dynamic input shape {list(shape)}: cryedge needs fixed window and feature sizes")
    return rebuilt


def input_shape(model) -> tuple:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"model {model.name} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; cryedge needs one of each")
    return tuple(model.inputs[0].shape)


def export_saved_model(model, framework: str, directory: Path) -> Path:
    """A SavedModel with one batch-1 serving signature (its weights frozen in by the converter)."""
    import tensorflow as tf

    spec = tf.TensorSpec(tuple(model.inputs[0].shape), tf.float32, name="input")
    if framework == "keras":
        model.export(str(directory), format="tf_saved_model", verbose=False, input_signature=[spec])
    else:
        serve = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        tf.saved_model.save(model, str(directory), signatures=serve)
    return directory
