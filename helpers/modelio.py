"""Saved models: load and save ``.keras`` files, find a run's model and manifest, the input size, predict.

Every module that touches a model file goes through here, so a corrupt file, a model for another number of
classes or a non-RGB input gets the same clear message everywhere.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers.classes import CLASS_NAMES, NUM_CLASSES
from helpers.files import atomic_folder
from helpers.models import IMAGE_INPUT, METADATA_INPUT, DihedralViews, image_shape, uses_metadata
from helpers.paths import MODELS_DIR, resolve_input


# --------------------------------------------------------------------------------------------- files
def load_keras_model(model_or_path: keras.Model | str | Path) -> keras.Model:
    """Return ``model_or_path`` when it is a Keras model, else load the ``.keras`` file (not compiled)."""
    if isinstance(model_or_path, keras.Model):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}")
    if path.suffix != ".keras":
        raise ValueError(f"Expected a .keras model file, got {path}; pass a keras.Model or a .keras path.")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for bad zip/config files
        raise ValueError(f"Cannot load Keras model {path}: {err}. Re-save or re-train it.") from err


def save_keras_model(model: keras.Model, path: str | Path) -> Path:
    """Save ``model`` as a ``.keras`` file atomically: a failed save leaves any previous file untouched."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        model.save(tmp)
    return path


def model_input_size(model: keras.Model) -> int:
    """Side in pixels of the square RGB image input of ``model``."""
    shape = image_shape(model)
    if shape[0] != shape[1] or shape[0] is None or shape[2] != 3:
        raise ValueError(f"Expected a model with a square RGB input (None, S, S, 3), got (None, *{shape}).")
    return int(shape[0])


# --------------------------------------------------------------------------------------------- runs
def latest_model_path(models_dir: str | Path | None = None) -> Path:
    """The most recently written ``<models_dir>/*/best.keras`` (``models/`` by default)."""
    folder = Path(models_dir) if models_dir is not None else MODELS_DIR
    found = sorted(folder.glob("*/best.keras"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"No trained model found in {folder} (no */best.keras). Train one with notebook 04 or "
            "`python -m helpers.train`, or pass model_path= to a .keras file."
        )
    return found[-1]


def resolve_model_path(model_path: str | Path | None) -> Path:
    """An existing model file: ``None`` means :func:`latest_model_path`; a relative path is looked up from the
    working directory, then from the project root (as from a notebook in ``notebooks/``)."""
    if model_path is None:
        return latest_model_path()
    path = resolve_input(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model_path {str(model_path)!r} is not a file. Pass the best.keras of a training run "
            "(e.g. models/<run_name>/best.keras) or model_path=None for the newest run."
        )
    return path.resolve()


def load_classifier(model_path: str | Path | None) -> keras.Model:
    """Load a ``.keras`` classifier (:func:`resolve_model_path`) and check it has a square RGB input and one
    output per class.

    Raises FileNotFoundError for a missing file, ValueError for a corrupt file or a wrong number of classes.
    """
    path = resolve_model_path(model_path)
    model = load_keras_model(path)
    outputs = model.output_shape[-1]
    if outputs != NUM_CLASSES:
        raise ValueError(
            f"Model {path} has {outputs} outputs but there are {NUM_CLASSES} classes {list(CLASS_NAMES)}; "
            "evaluate a model trained on the seven HAM10000 classes."
        )
    try:
        model_input_size(model)
    except ValueError as err:
        raise ValueError(f"Model {path} cannot classify RGB images: {err}") from err
    return model


def read_manifest(model_path: str | Path) -> dict:
    """The ``manifest.json`` written by :func:`helpers.train.train` beside the model (``{}`` when absent)."""
    path = Path(model_path).with_name("manifest.json")
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        warnings.warn(f"Ignoring unreadable run manifest {path}: {err}.", stacklevel=2)
        return {}


# --------------------------------------------------------------------------------------------- predicting
def model_inputs(model: keras.Model, images, metadata: np.ndarray | None = None):
    """What ``model`` takes for ``images`` (float32): the images alone, or for a metadata model
    ``{"image": images, "metadata": metadata}`` (encoded by :func:`helpers.clinical.encode_metadata`).
    ``images`` may already be such a dict. ValueError when a metadata model gets no metadata, or an image
    model gets some."""
    if isinstance(images, dict):
        images, metadata = images[IMAGE_INPUT], images.get(METADATA_INPUT)
    images = np.asarray(images, dtype=np.float32)
    if not uses_metadata(model):
        if metadata is not None:
            raise ValueError(
                f"{model.name} takes images only; it has no metadata input (pass metadata=None)."
            )
        return images
    if metadata is None:
        raise ValueError(
            f"{model.name} also takes the patient's metadata (age, sex, body site): pass metadata= "
            "(helpers.clinical.encode_metadata(df), or helpers.clinical.missing_vector(n) when unknown)."
        )
    metadata = np.asarray(metadata, dtype=np.float32)
    if metadata.shape[0] != len(images):
        raise ValueError(f"metadata has {metadata.shape[0]} rows for {len(images)} images; they must match.")
    return {IMAGE_INPUT: images, METADATA_INPUT: metadata}


def keras_predict(
    model: keras.Model, images, batch_size: int = 64, metadata: np.ndarray | None = None
) -> np.ndarray:
    """Probabilities from eager inference-mode calls (no tracing: quicker than ``predict`` on few images).
    ``images`` and ``metadata``: see :func:`model_inputs`; ``batch_size`` as :func:`per_view_batch`."""
    inputs = model_inputs(model, images, metadata)
    batch_size = per_view_batch(model, batch_size)
    n = len(inputs[IMAGE_INPUT] if isinstance(inputs, dict) else inputs)
    batches = [
        model(_rows(inputs, slice(i, i + batch_size)), training=False) for i in range(0, n, batch_size)
    ]
    return np.concatenate([np.asarray(b) for b in batches]).astype(np.float32)


def predict_images(
    model: keras.Model, images, batch_size: int = 256, metadata: np.ndarray | None = None
) -> np.ndarray:
    """``model``'s predictions for an in-memory batch of images (and their encoded metadata, for a metadata
    model), fed as a plain batched ``tf.data`` pipeline. A test-time-augmentation predictor runs every view
    of a batch at once, so it gets ``batch_size`` divided by its views (memory stays that of one batch).

    Same values as ``model.predict(images)``, but Keras's own array adapter adds a parallel map that, once
    TensorFlow op determinism is on (:func:`helpers.train.train` turns it on), TensorFlow rewrites while
    logging a "NodeDef mentions attribute use_unbounded_threadpool" error on every new model."""
    dataset = tf.data.Dataset.from_tensor_slices(model_inputs(model, images, metadata))
    dataset = dataset.batch(per_view_batch(model, batch_size))
    return model.predict(dataset, verbose=0)


def per_view_batch(model: keras.Model, batch_size: int) -> int:
    """``batch_size`` divided by the test-time-augmentation views of a predictor (it runs every view of a
    batch at once), so that its memory stays that of one batch of images."""
    views = max([layer.views for layer in model.layers if isinstance(layer, DihedralViews)], default=1)
    return max(1, batch_size // views)


def _rows(inputs, rows: slice):
    return {k: v[rows] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[rows]
