"""Test-only model utilities shared by the export, prediction and evaluation tests."""

from __future__ import annotations

import keras
import numpy as np

from helpers.classes import CLASS_NAMES


def set_batchnorm_statistics(model: keras.Model, images: np.ndarray) -> None:
    """Set every BatchNorm's moving mean/variance to the statistics of ``images`` (one training-mode pass).

    A few epochs are too few for the moving averages to catch up, so a briefly trained model would predict
    one class in inference mode; re-estimating them makes it behave like a properly trained one.
    """
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images.astype(np.float32), training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


def tiny_model(size: int, seed: int = 0) -> keras.Model:
    """A small seeded CNN on ``size`` px images; Flatten keeps it sensitive to flips and shifts."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x))
