"""Classifier re-training (cRT): refit a trained network's last layer on its frozen features.

Kang et al., *Decoupling representation and classifier for long-tailed recognition* (ICLR 2020): the features
a network learns are good, but its softmax layer was fitted while they moved, with augmentation noise, dropout
and label smoothing. Fitting that one layer again, as a converged L2-regularised multinomial logistic
regression on the features of the training images (each of their 8 flips / rotations), with class weights of
a chosen strength, often helps the rare classes without costing accuracy. The result has the same
architecture and parameter count as the input model (only the last layer's weights change), so it saves,
exports and quantizes like it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from helpers.classes import CLASS_NAMES
from helpers.data import class_weights
from helpers.evaluate import label_ids, selection_score
from helpers.models import check_views, dihedral_view

CLASS_WEIGHT_POWERS = (0.25, 0.5, 0.75)
"""Strengths tried by :func:`fit_classifier`: balanced class weights raised to this power (on DermaMNIST
0, no weighting, and 1, fully balanced, were each worse on the validation split than one of these)."""


def feature_model(model: keras.Model) -> keras.Model:
    """``model`` up to the input of its last layer, which must be a softmax ``Dense`` classifier."""
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense) or head.activation is not keras.activations.softmax:
        raise ValueError(
            f"{model.name}'s last layer {head.name!r} is not a softmax Dense classifier; re-train the "
            "classifier of the network itself (helpers.models.unwrap_predictor), not of a predictor wrapper."
        )
    return keras.Model(model.inputs, head.input, name=f"{model.name}_features")


def view_features(
    features: keras.Model, images: np.ndarray, views: int = 8, batch_size: int = 256
) -> np.ndarray:
    """Features of the first ``views`` dihedral views of ``images``: shape ``(views, n, d)``."""
    views = check_views(views)
    x = np.asarray(images, dtype=np.float32)
    return np.stack(
        [
            features.predict(np.asarray(dihedral_view(x, v)), batch_size=batch_size, verbose=0)
            for v in range(views)
        ]
    )


def retrain_classifier(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: Sequence | np.ndarray,
    class_weight_power: float = 0.5,
    inverse_l2: float = 0.1,
) -> keras.Model:
    """A copy of ``model`` whose last layer is the logistic regression fitted on ``train_features``
    (``(views, n, d)`` from :func:`view_features`; every view of image ``i`` has label ``train_labels[i]``)
    with balanced class weights raised to ``class_weight_power`` and scikit-learn's ``C = inverse_l2``."""
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
    weights = {c: w**class_weight_power for c, w in class_weights(y).items()}
    views = train_features.shape[0]
    f = train_features.reshape(-1, train_features.shape[-1]).astype(np.float32)  # float32: twice as fast
    mean, scale = f.mean(axis=0), f.std(axis=0) + 1e-6
    regression = LogisticRegression(C=inverse_l2, class_weight=weights, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # near-converged after max_iter is still fine
        regression.fit((f - mean) / scale, np.tile(y, views))
    kernel = (regression.coef_ / scale).T  # undo the standardisation: one Dense layer on the raw features
    bias = regression.intercept_ - (mean / scale) @ regression.coef_.T
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.layers[-1].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return copy


def fit_classifier(
    model: keras.Model,
    train_images: np.ndarray,
    train_labels: Sequence | np.ndarray,
    val_images: np.ndarray,
    val_labels: Sequence | np.ndarray,
    powers: Sequence[float] = CLASS_WEIGHT_POWERS,
    views: int = 8,
) -> tuple[keras.Model, float]:
    """:func:`retrain_classifier` for each class-weight power; returns the model whose ``views``-view
    averaged validation predictions have the best :func:`~helpers.evaluate.selection_score`, and its power.
    Train images fit the layer, validation images only choose the power (never the test split)."""
    features = feature_model(model)
    train_f = view_features(features, train_images, views)
    val_f = view_features(features, val_images, views)
    candidates = [(retrain_classifier(model, train_f, train_labels, p), float(p)) for p in powers]

    def val_score(candidate: tuple[keras.Model, float]) -> float:
        probs = keras.ops.convert_to_numpy(candidate[0].layers[-1](val_f)).mean(axis=0)
        return selection_score(val_labels, probs)

    return max(candidates, key=val_score)  # ties: the first, i.e. the weaker weighting
