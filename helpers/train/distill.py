"""Knowledge distillation: the teacher a student learns from (``train(teacher=...)``), checked and recorded.

The teacher runs online in the training pipeline (:func:`helpers.pipeline.make_dataset`'s ``teacher``), on
exactly the augmented and mixed batch the student sees; the loss is :class:`~helpers.train.recipes.
SoftTargetLoss`. A finished predictor (test-time augmentation and prior shift around a network) teaches
through its network: its averaging over views the student does not see and its re-weighting of the classes
would blur the very image-by-image signal distillation is for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from helpers.classes import NUM_CLASSES
from helpers.modelio import load_keras_model
from helpers.models import predictor_members, uses_metadata


def load_teacher(teacher: str | Path | keras.Model) -> tuple[keras.Model, dict]:
    """The teacher network and its record for the manifest: ``path``, ``sha256`` of the file,
    ``weights_sha256`` of the network's weights (the run's identity: the same teacher saved again is still
    the same teacher), ``name``, ``img_size``, ``predictor_unwrapped``. ValueError for a teacher that
    cannot teach: other classes, a metadata input, an ensemble; FileNotFoundError for a missing file."""
    if isinstance(teacher, str | Path):
        path = Path(teacher).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Teacher model not found: {path}. Pass the .keras file of a trained model (e.g. "
                "models/<run>/best.keras)."
            )
        model, digest = load_keras_model(path), _file_sha256(path)
    elif isinstance(teacher, keras.Model):
        path, model, digest = None, teacher, None
    else:
        raise ValueError(
            f"teacher must be None, a .keras path or a Keras model, got {type(teacher).__name__}."
        )
    members = predictor_members(model)
    if len(members) > 1:
        raise ValueError(
            f"The teacher {path or model.name} is an ensemble of {len(members)} networks; pass one network "
            "(e.g. a run's best.keras) as the teacher."
        )
    network = members[0]
    if network.output_shape[-1] != NUM_CLASSES:
        raise ValueError(
            f"The teacher {path or model.name} predicts {network.output_shape[-1]} classes; a teacher must "
            f"predict this project's {NUM_CLASSES} (akiec, bcc, bkl, df, mel, nv, vasc)."
        )
    if uses_metadata(network):
        raise ValueError(
            f"The teacher {path or model.name} takes a metadata input; distillation needs an image-only "
            "teacher (train one with metadata=False)."
        )
    record = {
        "path": None if path is None else str(path.resolve()),
        "sha256": digest,
        "weights_sha256": _weights_sha256(network),
        "name": network.name,
        "img_size": int(network.inputs[0].shape[1]),
        "predictor_unwrapped": network is not model,
    }
    network.trainable = False
    return network, record


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_sha256(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()
