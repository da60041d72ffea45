"""Does training repeat bit for bit in this process? A check anyone can run (see :mod:`helpers.runtime`)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from helpers.classes import CLASS_NAMES
from helpers.models import build_model


def differing_steps(
    reps: int = 30, batch_size: int = 128, img_size: int = 64, model_name: str = "fast", seed: int = 0
) -> int:
    """How many of ``reps`` identical gradient steps differ from the first, in any bit (0: they repeat).

    The step is one ``tf.function`` (forward pass with ``training=True``, dropout off, and the gradients of
    every weight) of ``model_name`` on a fixed random batch, with op determinism on; the weights are not
    updated, so every repeat computes exactly the same thing. With TensorFlow's default inter-op threads some
    steps of the fast network at batch 128 differ in their last bits (``benchmarks/inter_op.py`` measures
    it); one op at a time (:mod:`helpers.runtime`) makes them repeat.
    """
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    model = build_model(model_name, img_size, len(CLASS_NAMES))
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.uniform(0, 255, (batch_size, img_size, img_size, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, len(CLASS_NAMES), batch_size))
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step() -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        return [loss, *tape.gradient(loss, model.trainable_weights)]

    first, *others = (np.concatenate([np.ravel(t.numpy()) for t in step()]) for _ in range(reps))
    return sum(int(np.any(other != first)) for other in others)
