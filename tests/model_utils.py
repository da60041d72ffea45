"""Test-only model utilities shared by the export and prediction tests."""

from __future__ import annotations

import keras
import numpy as np


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
