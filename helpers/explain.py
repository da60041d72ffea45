"""Where a model looks: Grad-CAM heatmaps, their overlay on the image, and how much of them falls on the
lesion (pointing game, energy inside the lesion mask, background-to-lesion ratio, a centred-blob baseline)."""

from __future__ import annotations

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from scipy.ndimage import distance_transform_edt

from helpers.modelio import model_input_size, model_inputs
from helpers.models import unwrap_predictor

_CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


GRADCAM_MIN_SIDE = 8
"""Grad-CAM reads the last convolution block whose map is at least this many cells a side. The default's
last stage is 4x4 at 128 px, a cell per quarter of the lesion: too coarse to tell the lesion from the skin
beside it (on 64 px images whose only class evidence is a square, its heatmap peaks on the square in about
6 of 10 images, stage 3's in 10 of 10: tests/test_explain.py); stage 3 (8x8 at 128 px) is the last map fine
enough and still sees the whole lesion."""


def gradcam_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer Grad-CAM reads: the output of the last convolution block whose feature map is at least
    :data:`GRADCAM_MIN_SIDE` cells a side (else of the last one with a spatial map at all).

    That is the last such convolution layer, followed as far as the feature map keeps its size, so the
    BatchNorm, activation and residual Add after the convolution are included (``stage3_res_out`` of the
    default at 128 px).
    """
    convs = [
        i for i, layer in enumerate(model.layers) if isinstance(layer, _CONV_LAYERS) and _spatial(layer) > 1
    ]
    if not convs:
        raise ValueError(f"Model {model.name!r} has no convolution layer with a spatial output for Grad-CAM.")
    fine = [i for i in convs if min(model.layers[i].output.shape[1:3]) >= GRADCAM_MIN_SIDE]
    chosen = (fine or convs)[-1]
    last = model.layers[chosen]
    same_size = [
        layer
        for layer in model.layers[chosen:]
        if len(layer.output.shape) == 4 and layer.output.shape[1:3] == last.output.shape[1:3]
    ]
    return same_size[-1]


def _spatial(layer: keras.layers.Layer) -> int:
    shape = layer.output.shape
    return int(np.prod(shape[1:3])) if len(shape) == 4 else 0


def gradcam(
    model: keras.Model,
    image_uint8: np.ndarray,
    class_index: int | None = None,
    layer_name: str | None = None,
    metadata: np.ndarray | None = None,
) -> np.ndarray:
    """Grad-CAM heatmap ``(H, W)`` in [0, 1] of ``class_index`` (default: the predicted class) for one image.

    Reads the feature map of :func:`gradcam_layer` (or of ``layer_name``): channel weights are the mean
    gradients of the class score (the logit, before softmax, when the model ends in a softmax Dense layer);
    the weighted sum of channels goes through ReLU, is normalised to a maximum of 1 and resized to the image.
    For a :func:`helpers.models.predictor` (test-time augmentation) it explains the network inside, on the
    image as given (for an ensemble, its first member). A metadata model needs the image's encoded
    ``metadata`` (shape ``(METADATA_WIDTH,)`` or ``(1, METADATA_WIDTH)``).
    """
    network = unwrap_predictor(model)
    image = np.asarray(image_uint8)
    size = model_input_size(network)
    if image.shape != (size, size, 3):
        raise ValueError(f"image must be ({size}, {size}, 3) for this model, got {image.shape}.")
    n_classes = network.output_shape[-1]
    if class_index is not None and not 0 <= class_index < n_classes:
        raise ValueError(f"class_index must be in 0..{n_classes - 1}, got {class_index}.")
    classes = None if class_index is None else [class_index]
    metadata = None if metadata is None else np.asarray(metadata, np.float32).reshape(1, -1)
    return gradcam_maps(network, image[np.newaxis], classes, layer_name, metadata=metadata)[0]


def gradcam_maps(
    model: keras.Model,
    images: np.ndarray,
    class_indices: np.ndarray | list[int] | None = None,
    layer_name: str | None = None,
    batch_size: int = 32,
    metadata: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`gradcam` for a batch: heatmaps ``(N, H, W)`` of ``images`` ``(N, H, W, 3)``, each for its
    ``class_indices[i]`` (default: the predicted class) and normalised to its own maximum of 1.

    Computed ``batch_size`` images at a time with one gradient each (the network runs in inference mode, so
    the images do not influence one another). A metadata model needs the images' encoded ``metadata``."""
    model = unwrap_predictor(model)
    inputs = model_inputs(model, images, metadata)
    images = np.asarray(images, dtype=np.float32)
    n_classes = model.output_shape[-1]
    if class_indices is not None:
        class_indices = np.asarray(class_indices, dtype=np.int64)
        if (
            class_indices.shape != (len(images),)
            or not ((class_indices >= 0) & (class_indices < n_classes)).all()
        ):
            raise ValueError(
                f"class_indices must hold one class in 0..{n_classes - 1} per image ({len(images)}), got "
                f"{class_indices.tolist()[:5]}."
            )
    layer = model.get_layer(layer_name) if layer_name else gradcam_layer(model)
    head = model.layers[-1]
    use_logits = isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax
    model_inputs_ = model.inputs if len(model.inputs) > 1 else model.inputs[0]  # one input: fed a tensor
    grad_model = keras.Model(model_inputs_, [layer.output, head.input if use_logits else model.output])
    maps = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        x = (
            {k: tf.convert_to_tensor(v[rows]) for k, v in inputs.items()}
            if isinstance(inputs, dict)
            else inputs[rows]
        )
        n = len(images[rows])
        with tf.GradientTape() as tape:
            features, scores = grad_model(x, training=False)
            if use_logits:
                scores = tf.matmul(scores, head.kernel) + head.bias
            chosen = (
                tf.argmax(scores, axis=1)
                if class_indices is None
                else tf.constant(class_indices[start : start + n])
            )
            score = tf.reduce_sum(tf.gather(scores, chosen, axis=1, batch_dims=1))
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1, keepdims=True))
        maps.append(tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy())
    cams = np.concatenate(maps).astype(np.float32)
    peaks = cams.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, np.clip(cams / np.where(peaks > 0, peaks, 1.0), 0.0, 1.0), 0.0).astype(
        np.float32
    )


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


# --------------------------------------------------------------------------------------------- vs. masks
def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance_px: float) -> bool:
    """Whether the heatmap's maximum lies inside the lesion ``mask`` (bool ``(H, W)``) or within
    ``tolerance_px`` pixels of it (the pointing game's tolerance band)."""
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    if mask[peak]:
        return True
    return bool(tolerance_px > 0 and distance_transform_edt(~mask)[peak] <= tolerance_px)


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (positive) heatmap mass inside the lesion mask; NaN for an all-zero heatmap."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else float("nan")


def background_ratio(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Mean activation outside the lesion over mean activation inside it (Tschandl et al., Nat. Med. 2020:
    about 0.32 for most classes on a ResNet); NaN when either region is empty or the lesion gets none."""
    if mask.all() or not mask.any():
        return float("nan")
    inside = float(heatmap[mask].mean())
    return float(heatmap[~mask].mean()) / inside if inside > 0 else float("nan")


MISS_PLACES = ("no heatmap", "next to the lesion", "dark frame", "image border", "skin")
"""Where :func:`miss_place` finds the maximum of a heatmap that misses the lesion."""


def miss_place(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, near_px: float) -> str:
    """Where the maximum of a heatmap lies when it is not on the lesion (one of :data:`MISS_PLACES`), in
    this order: ``no heatmap`` (zero everywhere: no positive evidence for the class), ``next to the lesion``
    (within ``near_px`` of the mask, e.g. one Grad-CAM cell), ``dark frame`` (a pixel darker than half the
    median brightness of the skin: the dermoscope's vignette, hair or ink), ``image border`` (the outer
    eighth of the image) or ``skin``. ``image`` ``(H, W, 3)``, ``heatmap`` ``(H, W)`` and the bool ``mask``
    are the same size."""
    if image.shape[:2] != heatmap.shape or heatmap.shape != mask.shape:
        raise ValueError(
            f"image {image.shape[:2]}, heatmap {heatmap.shape} and mask {mask.shape} must be the same size."
        )
    if not heatmap.any():
        return MISS_PLACES[0]
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    if mask.any() and distance_transform_edt(~mask)[row, col] <= near_px:
        return MISS_PLACES[1]
    brightness = image.astype(np.float32).mean(axis=-1)
    skin = brightness[~mask] if not mask.all() else brightness.ravel()
    if brightness[row, col] < 0.5 * np.median(skin):
        return MISS_PLACES[2]
    height, width = mask.shape
    if min(row, col, height - 1 - row, width - 1 - col) < min(height, width) / 8:
        return MISS_PLACES[3]
    return MISS_PLACES[4]


def centred_blob(size: int, area_fraction: float) -> np.ndarray:
    """A centred Gaussian ``(size, size)`` whose one-sigma disc covers ``area_fraction`` of the image: the
    baseline that "the lesion is usually in the middle" scores without looking at the image."""
    sigma = size * float(np.sqrt(max(area_fraction, 1e-6) / np.pi))
    r = np.arange(size) - (size - 1) / 2
    return np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
