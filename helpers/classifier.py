"""Classifier re-training (cRT): refit a trained network's last layer on its frozen features.

Kang et al., *Decoupling representation and classifier for long-tailed recognition* (ICLR 2020): the features
a network learns are good, but its softmax layer was fitted while they moved, with augmentation noise, dropout
and label smoothing. Fitting that one layer again, as a converged L2-regularised multinomial logistic
regression on the features of the training images (each of their flips / rotations), with class weights of
a chosen strength, often helps the rare classes without costing accuracy. By default the result has the
same architecture and parameter count as the input model (only the last layer's weights change), so it
saves, exports and quantizes like it. With ``pooled`` layers, the new last layer also sees those layers'
globally averaged outputs (multi-scale features: earlier stages keep finer texture and colour detail that
the last stage has pooled away), at the cost of 7 weights per extra feature.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from helpers.classes import CLASS_NAMES
from helpers.clinical import drop_fields, encode_metadata
from helpers.metrics import (
    balanced_accuracy,
    fit_prior_shift,
    label_ids,
    prior_shift_weights,
    selection_score,
)
from helpers.modelio import model_inputs, predict_images
from helpers.models import (
    ALL_FIELDS_DROPOUT,
    FIELD_DROPOUT,
    IMAGE_INPUT,
    METADATA_INPUT,
    check_views,
    dihedral_view,
    predictor,
    uses_metadata,
)
from helpers.pipeline import load_images
from helpers.splits import class_weights

CONSTANT_FEATURE_STD = 1e-2
"""A feature whose spread over the training images is below this fraction of the largest spread, or of its
own mean, is treated as constant by :func:`retrain_classifier` (its weights are 0)."""

FIT_VIEWS = 4
"""Views of each training image :func:`retrained_network` fits the classifier on: the first 4 (the flips,
no transposes; the other 4 are their transposes): half the training features and half the fitting time of
all 8. The benchmark's finishing row (``benchmarks/ham10000.py``) is measured with it."""

CLASS_WEIGHT_POWERS = (0.25, 0.5, 0.75)
"""Strengths tried by :func:`fit_classifier`: balanced class weights raised to this power (on DermaMNIST
0, no weighting, and 1, fully balanced, were each worse on the validation split than one of these)."""


def feature_model(model: keras.Model, pooled: Sequence[str] = ()) -> keras.Model:
    """``model`` up to the input of its last layer, which must be a softmax ``Dense`` classifier; with
    ``pooled`` layer names (4-D outputs), their global average pools are concatenated after those features."""
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense) or head.activation is not keras.activations.softmax:
        raise ValueError(
            f"{model.name}'s last layer {head.name!r} is not a softmax Dense classifier; re-train the "
            "classifier of the network itself (helpers.models.unwrap_predictor), not of a predictor wrapper."
        )
    outputs = [head.input] + [_pooled_output(model, name) for name in pooled]
    features = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="features")(outputs)
    return keras.Model(_inputs(model), features, name=f"{model.name}_features")


def _inputs(model: keras.Model):
    return model.inputs if len(model.inputs) > 1 else model.inputs[0]


def dihedral_inputs(inputs, view: int):
    """View ``view`` of the images in ``inputs`` (an image array, or a metadata model's ``{"image",
    "metadata"}`` dict, whose metadata stays as it is)."""
    if isinstance(inputs, dict):
        return {**inputs, IMAGE_INPUT: dihedral_view(np.asarray(inputs[IMAGE_INPUT], np.float32), view)}
    return dihedral_view(np.asarray(inputs, dtype=np.float32), view)


def _pooled_output(model: keras.Model, name: str):
    """The global average pool of layer ``name``'s feature map."""
    layers = {layer.name: layer for layer in model.layers}
    if name not in layers or len(layers[name].output.shape) != 4:
        maps = [n for n, layer in layers.items() if len(layer.output.shape) == 4]
        raise ValueError(
            f"{model.name} has no layer {name!r} with a feature map to pool; choose from its layers with "
            f"4-D outputs, e.g. {maps[-3:]}."
        )
    return keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(layers[name].output)


def view_features(
    features: keras.Model, images, views: int = 8, batch_size: int = 256, drop_metadata: bool = False
) -> np.ndarray:
    """Features of the first ``views`` dihedral views of ``images`` (an array, or a metadata model's
    ``{"image", "metadata"}`` dict): shape ``(views, n, d)``. ``drop_metadata``: each view sees the metadata
    with fields set to missing as in training (:func:`helpers.clinical.drop_fields`, seeded by the view), so
    that a classifier fitted on them answers sensibly when fields are unknown."""
    views = check_views(views)
    per_view = [_dropped(images, v) if drop_metadata else images for v in range(views)]
    return np.stack(
        [predict_images(features, dihedral_inputs(x, v), batch_size) for v, x in enumerate(per_view)]
    )


def _dropped(inputs, seed: int):
    """A metadata model's inputs with metadata fields dropped as in training; other inputs as they are."""
    if not isinstance(inputs, dict):
        return inputs
    vectors = drop_fields(np.asarray(inputs[METADATA_INPUT]), FIELD_DROPOUT, ALL_FIELDS_DROPOUT, seed)
    return {**inputs, METADATA_INPUT: vectors}


def standardising_scale(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """What :func:`retrain_classifier` divides each feature by: its spread ``std``, or ``inf`` (the feature is
    left out, its weights 0) for a (nearly) constant feature, whose spread is below
    :data:`CONSTANT_FEATURE_STD` x the largest spread or x its own mean ``mean``: dividing by a tiny spread
    gives the layer weights of ~1e4-1e6 cancelled by as large a bias, which a float16 export cannot hold (its
    largest number is 65,504, its precision 3 digits)."""
    largest = max(float(std.max()), 1e-12)
    varies = (std > CONSTANT_FEATURE_STD * largest) & (std > CONSTANT_FEATURE_STD * np.abs(mean))
    return np.where(varies, std, np.inf)


def retrain_classifier(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: Sequence | np.ndarray,
    class_weight_power: float = 0.5,
    inverse_l2: float = 0.1,
    pooled: Sequence[str] = (),
) -> keras.Model:
    """A copy of ``model`` whose last layer is the logistic regression fitted on ``train_features``
    (``(views, n, d)`` from :func:`view_features` of ``feature_model(model, pooled)``; every view of image
    ``i`` has label ``train_labels[i]``) with balanced class weights raised to ``class_weight_power`` and
    scikit-learn's ``C = inverse_l2``."""
    return retrain_classifiers(
        model, train_features, train_labels, (class_weight_power,), inverse_l2, pooled
    )[0]


def retrain_classifiers(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: Sequence | np.ndarray,
    powers: Sequence[float] = CLASS_WEIGHT_POWERS,
    inverse_l2: float = 0.1,
    pooled: Sequence[str] = (),
) -> list[keras.Model]:
    """:func:`retrain_classifier` for each class-weight power in ``powers``, in turn: each fit starts from
    the previous one's weights (a warm start: the same optimum, reached in about half the L-BFGS
    iterations)."""
    y = label_ids(train_labels)
    if train_features.ndim != 3 or train_features.shape[1] != len(y):
        raise ValueError(
            f"train_features must have shape (views, {len(y)}, d) for {len(y)} labels, "
            f"got {train_features.shape}."
        )
    counts = np.bincount(y, minlength=len(CLASS_NAMES))
    missing = [name for name, n in zip(CLASS_NAMES, counts, strict=True) if n == 0]
    if missing:
        raise ValueError(
            f"Cannot re-train the classifier: no training images of {', '.join(missing)}; every class "
            "needs at least one (use more data or a split with all classes)."
        )
    features = feature_model(model, pooled)
    got, expected = train_features.shape[-1], features.output.shape[-1]
    if got != expected:
        raise ValueError(
            f"train_features have {got} features but feature_model({model.name}, pooled={pooled}) gives "
            f"{expected}; compute them with the same pooled layers."
        )
    views = train_features.shape[0]
    f = train_features.reshape(-1, train_features.shape[-1]).astype(np.float32)  # float32: twice as fast
    mean = f.mean(axis=0)
    scale = standardising_scale(f.std(axis=0), mean)
    f = (f - mean) / scale
    regression = LogisticRegression(C=inverse_l2, max_iter=2000, warm_start=True)
    refits = []
    for power in powers:
        regression.set_params(class_weight={c: w**power for c, w in class_weights(y).items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # near-converged after max_iter is still fine
            regression.fit(f, np.tile(y, views))
        kernel = (regression.coef_ / scale).T  # undo the standardisation: one Dense layer on the raw features
        bias = regression.intercept_ - (mean / scale) @ regression.coef_.T
        refits.append(_with_head(features, model.name, kernel, bias))
    return refits


def _with_head(features: keras.Model, name: str, kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    """A copy of ``features`` topped by a softmax ``Dense`` layer with these weights, named ``name``."""
    body = keras.models.clone_model(features)
    body.set_weights(features.get_weights())
    head = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")
    refit = keras.Model(_inputs(body), head(body.output), name=name)
    head.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return refit


def fit_classifier(
    model: keras.Model,
    train_images,
    train_labels: Sequence | np.ndarray,
    val_images,
    val_labels: Sequence | np.ndarray,
    powers: Sequence[float] = CLASS_WEIGHT_POWERS,
    views: int = 8,
    pooled: Sequence[str] = (),
) -> tuple[keras.Model, float]:
    """:func:`retrain_classifier` for each class-weight power; returns the model whose ``views``-view
    averaged validation predictions have the best :func:`~helpers.metrics.selection_score`, and its power.
    Train images fit the layer, validation images only choose the power (never the test split). ``pooled``:
    see :func:`feature_model`. For a metadata model, the images are ``{"image", "metadata"}`` dicts, and the
    layer is fitted on training features with metadata fields dropped as in training (so that it keeps
    working when fields are unknown); validation keeps the real metadata."""
    features = feature_model(model, pooled)
    train_f = view_features(features, train_images, views, drop_metadata=True)
    val_f = view_features(features, val_images, views)
    return classifier_from_features(model, train_f, train_labels, val_f, val_labels, powers, pooled=pooled)


def classifier_from_features(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: Sequence | np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence | np.ndarray,
    powers: Sequence[float] = CLASS_WEIGHT_POWERS,
    pooled: Sequence[str] = (),
) -> tuple[keras.Model, float]:
    """:func:`fit_classifier` on features already computed by :func:`view_features` (``(views, n, d)`` for
    train and val)."""
    refits = retrain_classifiers(model, train_features, train_labels, powers, pooled=pooled)
    candidates = [(refit, float(p)) for refit, p in zip(refits, powers, strict=True)]

    def val_score(candidate: tuple[keras.Model, float]) -> float:
        return selection_score(val_labels, view_probs(candidate[0], val_features).mean(axis=0))

    return max(candidates, key=val_score)  # ties: the first, i.e. the weaker weighting


def view_probs(refit: keras.Model, features: np.ndarray) -> np.ndarray:
    """``refit``'s last layer on ``(views, n, d)`` features: its probabilities ``(views, n, classes)`` for
    each view, without running the network again (their mean over the views is its test-time
    augmentation)."""
    return keras.ops.convert_to_numpy(refit.layers[-1](features))


def multi_scale_layers(model: keras.Model) -> tuple[str, ...]:
    """The outputs of every residual stage of ``model`` but the last (``stage1_res_out`` ... of
    :func:`~helpers.models.dermsep_net`; the last stage is already the features): the ``pooled`` layers of a
    multi-scale re-training. Empty for a model without such stages."""
    stages = [layer.name for layer in model.layers if re.fullmatch(r"stage\d+_res_out", layer.name)]
    return tuple(stages[:-1])


def tta_score(model: keras.Model, val_images, val_labels: np.ndarray, views: int = 8) -> float:
    """:func:`~helpers.metrics.selection_score` of ``model``'s ``views``-view averaged predictions on val."""
    return selection_score(val_labels, predict_images(predictor(model, views), val_images))


def finalize_predictor(
    model: keras.Model, df: pd.DataFrame, img_size: int, views: int = 8, multi_scale: bool = True
) -> tuple[keras.Model, dict]:
    """The benchmark's finishing steps for a trained network, as one Keras model: :func:`retrained_network`
    (the classifier re-trained with the class-weight power chosen on val, single- or multi-scale, whichever
    ``views``-view val predictions score better; ties: single-scale), then ``views``-view test-time
    augmentation and a prior shift (``tau`` chosen on val by :func:`~helpers.metrics.fit_prior_shift`).
    Reads only the ``train`` and ``val`` rows of ``df`` (needs ``path``, ``dx`` and ``split``). Returns the
    predictor and its choices (``class_weight_power``, ``pooled``, ``tau``), ``val_balanced_accuracy`` of the
    ``network`` and of the ``predictor``, and ``better``: the one val prefers (the steps can lower it; ties:
    the network)."""
    if not isinstance(df, pd.DataFrame) or not {"path", "dx", "split"} <= set(df.columns):
        raise ValueError("df needs 'path', 'dx' and 'split' columns: use helpers.train.prepare_data(...).")
    parts = {name: df[df["split"] == name] for name in ("train", "val")}
    empty = [name for name, part in parts.items() if part.empty]
    if empty:
        raise ValueError(
            f"df has no {' or '.join(empty)} rows: finishing needs both (train fits, val chooses)."
        )
    images = {n: load_images(p["path"].tolist(), img_size, progress=False) for n, p in parts.items()}
    metadata = {n: encode_metadata(p) if uses_metadata(model) else None for n, p in parts.items()}
    x = {n: model_inputs(model, images[n].astype("float32"), metadata[n]) for n in parts}
    y = {n: label_ids(p["dx"]) for n, p in parts.items()}
    refit, choices, val_probs = retrained_network(
        model, x["train"], y["train"], x["val"], y["val"], views, multi_scale
    )
    final, tau = prior_shifted_from_probs(refit, val_probs.mean(axis=0), y["val"], y["train"], views)
    shifted = val_probs.mean(axis=0) * prior_shift_weights(y["train"], tau)
    network = predict_images(model, images["val"], metadata=metadata["val"])
    on_val = {
        name: balanced_accuracy(y["val"], probs)
        for name, probs in (("network", network), ("predictor", shifted))
    }
    better = "predictor" if on_val["predictor"] > on_val["network"] else "network"
    return final, {**choices, "tau": tau, "val_balanced_accuracy": on_val, "better": better}


def retrained_network(
    model: keras.Model,
    train_inputs,
    train_labels: np.ndarray,
    val_inputs,
    val_labels: np.ndarray,
    views: int = 8,
    multi_scale: bool = True,
) -> tuple[keras.Model, dict, np.ndarray]:
    """:func:`fit_classifier` once on the network's features and, with ``multi_scale`` and a model that has
    stages, once more with the :func:`multi_scale_layers` pooled in; the one whose ``views``-view val
    predictions (:func:`view_probs`) score better (ties: single-scale), its choices (``class_weight_power``,
    ``pooled``) and its per-view val probabilities ``(views, n_val, classes)`` (their mean is its
    ``views``-view TTA, view 0 the plain images). The classifier is fitted on the first :data:`FIT_VIEWS`
    views of the training images. The view features are computed once, with the stages pooled in: the
    network's own features are their first columns."""
    stages = multi_scale_layers(model) if multi_scale else ()
    features = feature_model(model, stages)
    train_f = view_features(features, train_inputs, min(views, FIT_VIEWS), drop_metadata=True)
    val_f = view_features(features, val_inputs, views)
    width = feature_model(model).output.shape[-1]
    candidates = []
    for pooled in [()] + ([stages] if stages else []):
        columns = slice(None) if pooled else slice(0, width)
        train_p, val_p = train_f[..., columns], val_f[..., columns]
        refit, power = classifier_from_features(
            model, train_p, train_labels, val_p, val_labels, pooled=pooled
        )
        probs = view_probs(refit, val_p)
        candidates.append((selection_score(val_labels, probs.mean(axis=0)), refit, power, pooled, probs))
    _, refit, power, pooled, probs = max(candidates, key=lambda c: c[0])  # ties: the first, single-scale
    return refit, {"class_weight_power": power, "pooled": list(pooled)}, probs


def prior_shifted_predictor(
    model: keras.Model | Sequence[keras.Model],
    val_images,
    val_labels: np.ndarray,
    train_labels: np.ndarray,
    views: int = 8,
) -> tuple[keras.Model, float]:
    """``predictor(model, views)`` (one network or an ensemble) with the prior shift whose ``tau``
    :func:`~helpers.metrics.fit_prior_shift` chooses on its val predictions; returns (predictor, tau)."""
    val_probs = predict_images(predictor(model, views), val_images)
    return prior_shifted_from_probs(model, val_probs, val_labels, train_labels, views)


def prior_shifted_from_probs(
    model: keras.Model | Sequence[keras.Model],
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    train_labels: np.ndarray,
    views: int = 8,
) -> tuple[keras.Model, float]:
    """:func:`prior_shifted_predictor` from its ``views``-view val predictions ``val_probs``, already
    computed (e.g. the mean of :func:`retrained_network`'s per-view val probabilities)."""
    tau = fit_prior_shift(val_labels, val_probs, train_labels)
    return predictor(model, views, prior_shift_weights(train_labels, tau)), tau
