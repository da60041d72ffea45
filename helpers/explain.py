"""Where a model looks: Grad-CAM heatmaps and their overlay on the image."""

from __future__ import annotations

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from helpers.modelio import model_input_size
from helpers.models import unwrap_predictor

_CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def gradcam_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer Grad-CAM reads: the output of the last convolution block.

    That is the last convolution layer with a spatial output (H, W > 1), followed as far as the feature map
    keeps its size, so the BatchNorm, activation and residual Add after the convolution are included.
    """
    convs = [
        i for i, layer in enumerate(model.layers) if isinstance(layer, _CONV_LAYERS) and _spatial(layer) > 1
    ]
    if not convs:
        raise ValueError(f"Model {model.name!r} has no convolution layer with a spatial output for Grad-CAM.")
    last = model.layers[convs[-1]]
    same_size = [
        layer
        for layer in model.layers[convs[-1] :]
        if len(layer.output.shape) == 4 and layer.output.shape[1:3] == last.output.shape[1:3]
    ]
    return same_size[-1]


def _spatial(layer: keras.layers.Layer) -> int:
    shape = layer.output.shape
    return int(np.prod(shape[1:3])) if len(shape) == 4 else 0


def gradcam(
    model: keras.Model, image_uint8: np.ndarray, class_index: int | None = None, layer_name: str | None = None
) -> np.ndarray:
    """Grad-CAM heatmap ``(H, W)`` in [0, 1] of ``class_index`` (default: the predicted class) for one image.

    Reads the feature map of :func:`gradcam_layer` (or of ``layer_name``): channel weights are the mean
    gradients of the class score (the logit, before softmax, when the model ends in a softmax Dense layer);
    the weighted sum of channels goes through ReLU, is normalised to a maximum of 1 and resized to the image.
    For a :func:`helpers.models.predictor` (test-time augmentation) it explains the network inside, on the
    image as given (for an ensemble, its first member).
    """
    model = unwrap_predictor(model)
    image = np.asarray(image_uint8)
    size = model_input_size(model)
    if image.shape != (size, size, 3):
        raise ValueError(f"image must be ({size}, {size}, 3) for this model, got {image.shape}.")
    n_classes = model.output_shape[-1]
    if class_index is not None and not 0 <= class_index < n_classes:
        raise ValueError(f"class_index must be in 0..{n_classes - 1}, got {class_index}.")
    layer = model.get_layer(layer_name) if layer_name else gradcam_layer(model)
    head = model.layers[-1]
    use_logits = isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax
    grad_model = keras.Model(model.inputs, [layer.output, head.input if use_logits else model.output])
    x = tf.convert_to_tensor(image[np.newaxis], tf.float32)
    with tf.GradientTape() as tape:
        features, scores = grad_model(x, training=False)
        if use_logits:
            scores = tf.matmul(scores, head.kernel) + head.bias
        if class_index is None:
            class_index = int(tf.argmax(scores[0]))
        score = scores[0, class_index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(features[0] * weights[0], axis=-1))
    cam = tf.image.resize(cam[..., tf.newaxis], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = cam.max()
    return (np.clip(cam / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(cam)).astype(np.float32)


def overlay_heatmap(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet"
) -> np.ndarray:
    """Blend a [0, 1] heatmap (coloured with ``cmap``, resized to the image) over a uint8 RGB image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {image.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.shape != image.shape[:2]:
        heat = tf.image.resize(heat[..., np.newaxis], image.shape[:2])[..., 0].numpy()
    colours = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
