"""Scores of predictions: pure functions of labels and probabilities (numpy / scikit-learn, no TensorFlow).

Accuracy, balanced accuracy, F1, per-class tables, one-vs-rest AUC, bootstrap confidence intervals,
calibration (reliability bins, ECE, temperature scaling), the majority baseline, the prior shift and the
score validation choices maximise. Functions take ``y_true`` (label ids in ``CLASS_NAMES`` order, or class
codes) and ``probs`` (an ``(N, C)`` array of softmax probabilities).

Conventions for classes missing from ``y_true`` (small or unusual test sets):

* per-class sensitivity and AUC are ``None`` (undefined) and precision is ``None`` when a class is never
  predicted; F1 is ``None`` only when a class is neither true nor predicted;
* macro averages follow scikit-learn's defaults: balanced accuracy averages recall over classes present in
  ``y_true``, macro F1 averages over classes present in ``y_true`` or the predictions, and macro AUC
  averages one-vs-rest AUC over classes with both positives and negatives in ``y_true``
  (listed under ``"auc_classes"``).

Undefined values are ``None`` in the returned dicts so they serialise as strict JSON.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX, MELANOMA
from helpers.files import json_ready

HEADLINE_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_auc",
    "mel_sensitivity",
    "mel_specificity",
    "ece",
)
"""Columns of :func:`summary_table`, in display order."""

BOOTSTRAP_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_auc",
    "mel_sensitivity",
)
"""Headline figures that get a bootstrap 95% confidence interval."""

_SUM_TOLERANCE = 1e-3
_BOOTSTRAP_CHUNK_CELLS = 4_000_000  # resamples x images held in memory at once


# ----------------------------------------------------------------------------------------------- validation
def label_ids(y_true: Sequence | np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Return ``y_true`` as a 1-D int array of ids into ``class_names``; accepts ids or class codes."""
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise ValueError(f"y_true must be 1-D (one label per image); got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError("y_true is empty: there are no predictions to evaluate.")
    if arr.dtype.kind in "OUS":
        lookup = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({str(v) for v in arr if v not in lookup})
        if unknown:
            raise ValueError(
                f"y_true has unknown class names {unknown[:5]}; expected one of {list(class_names)}."
            )
        return np.array([lookup[v] for v in arr], dtype=np.int64)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise ValueError("y_true must hold integer label ids; found non-integer values.")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"y_true must hold integer label ids or class names; got dtype {arr.dtype}.")
    ids = arr.astype(np.int64)
    bad = (ids < 0) | (ids >= len(class_names))
    if bad.any():
        raise ValueError(
            f"y_true has {int(bad.sum())} label(s) outside 0..{len(class_names) - 1} "
            f"(e.g. {int(ids[bad][0])} at index {int(np.flatnonzero(bad)[0])}); "
            f"labels must index {list(class_names)}."
        )
    return ids


def _validate(
    y_true: Sequence | np.ndarray,
    scores: np.ndarray | Sequence,
    class_names: Sequence[str] | None,
    name: str = "probs",
    probabilities: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(label ids, float64 scores)`` after checking shapes, label range and (optionally) rows."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be 2-D (N images, C >= 2 classes); got shape {arr.shape}.")
    if class_names is None:
        class_names = (
            CLASS_NAMES if arr.shape[1] == len(CLASS_NAMES) else [str(i) for i in range(arr.shape[1])]
        )
    if arr.shape[1] != len(class_names):
        raise ValueError(f"{name} has {arr.shape[1]} columns but there are {len(class_names)} classes.")
    y = label_ids(y_true, class_names)
    if arr.shape[0] != len(y):
        raise ValueError(f"{name} has {arr.shape[0]} rows but y_true has {len(y)} labels; they must match.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if probabilities and not _is_probability(arr):
        raise ValueError(
            f"{name} rows must be probabilities in [0, 1] summing to 1; apply softmax to logits."
        )
    if probabilities:
        arr = arr / arr.sum(axis=1, keepdims=True)  # remove float32 rounding so row sums are exactly 1
    return y, arr


def _is_probability(arr: np.ndarray) -> bool:
    in_range = np.all(arr >= 0) and np.all(arr <= 1)
    return bool(in_range and np.allclose(arr.sum(axis=1), 1.0, atol=_SUM_TOLERANCE))


def check_predictions(
    y_true: Sequence | np.ndarray, probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES
) -> tuple[np.ndarray, np.ndarray]:
    """Validate predictions and return ``(label ids, float64 probs renormalised to sum to 1)``.

    Raises ValueError for empty input, mismatched lengths, a wrong number of columns, labels out of range,
    non-finite values or rows that are not probability distributions.
    """
    return _validate(y_true, probs, class_names)


def require_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


# ----------------------------------------------------------------------------------------------- helpers
def _specificity(cm: np.ndarray) -> np.ndarray:
    """Per-class TN / (TN + FP) from a confusion matrix (rows: true class); NaN without negatives."""
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    negatives = total - cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(negatives > 0, (negatives - fp) / negatives, np.nan)


def per_class_auc(y_true: Sequence | np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (column of ``probs``); NaN for classes lacking positives or negatives."""
    y, probs = _validate(y_true, probs, None)
    aucs = np.full(probs.shape[1], np.nan)
    for k in range(probs.shape[1]):
        positive = y == k
        if 0 < positive.sum() < len(y):
            aucs[k] = roc_auc_score(positive, probs[:, k])
    return aucs


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    count = np.sum(~np.isnan(values), axis=axis)
    total = np.nansum(values, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ----------------------------------------------------------------------------------------------- bootstrap
def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count 1/2) per column of image multiplicities ``weights`` (N, B); NaN if undefined."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    w = weights[order]
    pos = w * positive[order][:, None]
    neg = w - pos
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    if len(starts) < len(scores):  # pool tied scores
        pos, neg = np.add.reduceat(pos, starts, axis=0), np.add.reduceat(neg, starts, axis=0)
    neg_below = np.cumsum(neg, axis=0) - neg
    pairs = pos.sum(axis=0) * neg.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (pos * (neg_below + 0.5 * neg)).sum(axis=0) / pairs, np.nan)


def _weighted_headline(y: np.ndarray, probs: np.ndarray, weights: np.ndarray, mel: int | None) -> dict:
    """Bootstrap figures for every column of image multiplicities ``weights`` (N, B) at once.

    Works from weighted confusion matrices and weighted AUCs; matches scikit-learn on the resampled data
    (tested) with the class conventions of :func:`compute_metrics`.
    """
    n_classes = probs.shape[1]
    onehot = np.zeros((n_classes * n_classes, len(y)))
    onehot[y * n_classes + probs.argmax(axis=1), np.arange(len(y))] = 1.0
    cm = (onehot @ weights).reshape(n_classes, n_classes, -1)  # (true, predicted, B)
    tp = np.diagonal(cm).T  # (C, B)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
    aucs = np.stack([_weighted_auc(probs[:, k], y == k, weights) for k in range(n_classes)])
    return {
        "accuracy": tp.sum(axis=0) / weights.sum(axis=0),
        "balanced_accuracy": _nanmean(recall, axis=0),
        "macro_f1": _nanmean(f1, axis=0),
        "macro_auc": _nanmean(aucs, axis=0),
        "mel_sensitivity": recall[mel] if mel is not None else np.full(weights.shape[1], np.nan),
    }


def _resample_weights(n_images: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(N, B) multiplicities of each image in ``n_resamples`` draws of ``n_images`` with replacement."""
    draws = rng.integers(0, n_images, size=(n_resamples, n_images))
    cells = (draws * n_resamples + np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(cells, minlength=n_images * n_resamples).reshape(n_images, n_resamples).astype(float)


def bootstrap_ci(
    y_true: Sequence | np.ndarray,
    probs: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    class_names: Sequence[str] = CLASS_NAMES,
    level: float = 0.95,
) -> dict[str, list[float | None]]:
    """Percentile bootstrap CIs (resampling images with replacement) for :data:`BOOTSTRAP_METRICS`.

    Resamples are vectorised as multiplicity weights, so 1000 resamples of a few thousand images take well
    under a second. Resamples where a figure is undefined (e.g. no melanoma drawn) are skipped for it.
    Returns ``{metric: [low, high]}`` (``None`` bounds when never defined).
    """
    y, p = check_predictions(y_true, probs, class_names)
    require_positive_int(n_bootstrap, "n_bootstrap")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1; got {level}.")
    mel = list(class_names).index(MELANOMA) if MELANOMA in class_names else None
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // len(y))
    samples: dict[str, list[np.ndarray]] = {name: [] for name in BOOTSTRAP_METRICS}
    for start in range(0, n_bootstrap, chunk):
        weights = _resample_weights(len(y), min(chunk, n_bootstrap - start), rng)
        for name, values in _weighted_headline(y, p, weights, mel).items():
            samples[name].append(values)
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        values = values[~np.isnan(values)]
        bounds = np.percentile(values, [tail, 100 - tail]) if values.size else [np.nan, np.nan]
        intervals[name] = json_ready(bounds)
    return intervals


# ----------------------------------------------------------------------------------------------- calibration
def reliability_bins(y_true: Sequence | np.ndarray, probs: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Top-1 confidence binned into ``n_bins`` equal-width bins ``(lo, hi]`` (the first also holds 0).

    Returns one row per bin: lower, upper, count, confidence (mean top-1 probability), accuracy
    (NaN for empty bins).
    """
    require_positive_int(n_bins, "n_bins")
    y, p = _validate(y_true, probs, None)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "confidence": mean_conf,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(y_true: Sequence | np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin share of images) x |accuracy - mean confidence| on top-1 confidence."""
    bins = reliability_bins(y_true, probs, n_bins)
    filled = bins[bins["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gaps).sum() / filled["count"].sum())


def _log_probs(logits_or_probs: np.ndarray) -> np.ndarray:
    """Log-probabilities if rows are probability distributions, otherwise the logits themselves."""
    if _is_probability(logits_or_probs):
        return np.log(np.clip(logits_or_probs, 1e-12, None))
    return logits_or_probs


def fit_temperature(
    logits_or_probs: np.ndarray, y_true: Sequence | np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on (validation) predictions.

    Accepts logits or probabilities (rows in [0, 1] summing to 1 are treated as probabilities and their logs
    used as logits). Optimises ``log T`` within ``bounds``; ``T > 1`` softens an over-confident model.
    """
    y, scores = _validate(y_true, logits_or_probs, None, name="logits_or_probs", probabilities=False)
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds must satisfy 0 < low < high; got {bounds}.")
    log_p = _log_probs(scores)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(log_p / np.exp(log_t), axis=1)[rows, y].mean())

    result = minimize_scalar(nll, bounds=np.log(bounds), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def apply_temperature(logits_or_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Return ``softmax(logits / temperature)`` (probabilities are first turned into log-probabilities)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")
    scores = np.asarray(logits_or_probs, dtype=np.float64)
    if scores.ndim != 2 or not np.all(np.isfinite(scores)):
        raise ValueError(f"logits_or_probs must be a finite 2-D (N, C) array; got shape {scores.shape}.")
    return softmax(_log_probs(scores) / temperature, axis=1)


# ----------------------------------------------------------------------------------------------- metrics
def _label_metrics(y: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """Figures that need only hard predictions (shared by the model and the majority baseline)."""
    labels = list(range(len(class_names)))
    specificity = _specificity(confusion_matrix(y, pred, labels=labels))
    recall = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)[1]
    mel = list(class_names).index(MELANOMA) if MELANOMA in class_names else None
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": documented convention
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, pred)
    return {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced,
        "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
        "weighted_f1": f1_score(y, pred, average="weighted", zero_division=0),
        "mel_sensitivity": recall[mel] if mel is not None else np.nan,
        "mel_specificity": specificity[mel] if mel is not None else np.nan,
    }


def majority_baseline(
    y_true: Sequence | np.ndarray,
    majority_class: int | str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict:
    """Scores of always predicting one class: the most frequent in ``y_true`` unless ``majority_class``.

    Pass the training set's majority (``"nv"`` for HAM10000) to score the baseline honestly on a test set.
    Returns majority_class, accuracy, balanced_accuracy, macro_f1, weighted_f1, mel_sensitivity and
    mel_specificity.
    """
    y = label_ids(y_true, class_names)
    if majority_class is None:
        index = int(np.bincount(y, minlength=len(class_names)).argmax())
    else:
        index = int(label_ids([majority_class], class_names)[0])
    scores = _label_metrics(y, np.full_like(y, index), class_names)
    return json_ready({"majority_class": class_names[index], **scores})


def compute_metrics(
    y_true: Sequence | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Every evaluation figure for one predictor, as a JSON-serialisable dict.

    Headline: accuracy, balanced_accuracy, macro_f1, weighted_f1, macro_auc (one-vs-rest, over
    ``auc_classes``), mel_sensitivity, mel_specificity, ece (15 bins, top-1) and log_loss. Also ``per_class``
    ({class: precision, sensitivity, specificity, f1, auc, support}), ``confusion_matrix`` (rows true),
    ``ci95`` (percentile bootstrap intervals for :data:`BOOTSTRAP_METRICS`; empty if ``n_bootstrap == 0``)
    and ``baseline`` (:func:`majority_baseline` on the same ``y_true``). Undefined values are ``None``.
    """
    y, p = check_predictions(y_true, probs, class_names)
    if n_bootstrap != 0:
        require_positive_int(n_bootstrap, "n_bootstrap")
    pred = p.argmax(axis=1)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y, pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=np.nan
    )
    aucs = per_class_auc(y, p)
    specificity = _specificity(cm)
    per_class = {
        name: {
            "precision": precision[k],
            "sensitivity": recall[k],
            "specificity": specificity[k],
            "f1": f1[k],
            "auc": aucs[k],
            "support": support[k],
        }
        for k, name in enumerate(class_names)
    }
    metrics = {
        "n_images": len(y),
        "class_names": list(class_names),
        **_label_metrics(y, pred, class_names),
        "macro_auc": _nanmean(aucs),
        "auc_classes": [name for name, auc in zip(class_names, aucs, strict=True) if not np.isnan(auc)],
        "ece": expected_calibration_error(y, p),
        "log_loss": log_loss(y, p, labels=labels),
        "per_class": per_class,
        "confusion_matrix": cm,
        "ci95": bootstrap_ci(y, p, n_bootstrap, seed, class_names) if n_bootstrap else {},
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "method": "percentile; images resampled"},
        "baseline": majority_baseline(y, class_names=class_names),
    }
    return json_ready(metrics)


# ----------------------------------------------------------------------------------------------- tables
def predictions_frame(
    image_ids: Sequence[str],
    y_true: Sequence | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
) -> pd.DataFrame:
    """One row per image: image_id, true, predicted (class codes) and ``p_<class>`` probability columns."""
    y, p = check_predictions(y_true, probs, class_names)
    ids = [str(i) for i in image_ids]
    if len(ids) != len(y):
        raise ValueError(f"image_ids has {len(ids)} entries but y_true has {len(y)} labels; they must match.")
    names = np.asarray(class_names, dtype=object)
    frame = pd.DataFrame({"image_id": ids, "true": names[y], "predicted": names[p.argmax(axis=1)]})
    for k, name in enumerate(class_names):
        frame[f"p_{name}"] = p[:, k]
    return frame


def metrics_table(metrics: Mapping) -> pd.DataFrame:
    """Per-class table (index: class code) of support, precision, sensitivity, specificity, F1 and AUC."""
    columns = ["support", "precision", "sensitivity", "specificity", "f1", "auc"]
    table = pd.DataFrame.from_dict(metrics["per_class"], orient="index")[columns]
    table.index.name = "class"
    return table.astype({"support": int}).astype({c: float for c in columns[1:]})


def summary_table(
    metrics_by_name: Mapping[str, Mapping], with_ci: bool = False, digits: int = 3
) -> pd.DataFrame:
    """Headline figures side by side, one row per predictor (e.g. model, majority baseline, another model).

    Columns are :data:`HEADLINE_METRICS` that at least one predictor reports. With ``with_ci`` the cells are
    strings like ``"0.812 [0.790, 0.833]"`` wherever a bootstrap interval exists.
    """
    if not metrics_by_name:
        raise ValueError("metrics_by_name is empty: pass {name: metrics dict}.")
    rows = {name: {m: metrics.get(m) for m in HEADLINE_METRICS} for name, metrics in metrics_by_name.items()}
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float).dropna(axis=1, how="all")
    if not with_ci:
        return table
    formatted = table.map(lambda v: "" if np.isnan(v) else f"{v:.{digits}f}")
    for name, metrics in metrics_by_name.items():
        for metric, bounds in (metrics.get("ci95") or {}).items():
            if metric in formatted.columns and None not in bounds:
                formatted.loc[name, metric] += f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
    return formatted


PRIOR_SHIFT_TAUS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def prior_shift_weights(train_labels: Sequence | np.ndarray, tau: float) -> np.ndarray:
    """Per-class factors ``prior ** -tau`` from the training labels' class frequencies (for
    :class:`helpers.models.PriorShift`): tau = 0 changes nothing, tau = 1 divides out the class prior."""
    counts = np.bincount(label_ids(train_labels), minlength=len(CLASS_NAMES)).astype(float)
    if (counts == 0).any():
        missing = [CLASS_NAMES[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"No training images of class(es) {missing}: a prior shift needs every class.")
    return (counts / counts.sum()) ** -float(tau)


def fit_prior_shift(
    val_labels: Sequence | np.ndarray,
    val_probs: np.ndarray,
    train_labels: Sequence | np.ndarray,
    taus: Sequence[float] = PRIOR_SHIFT_TAUS,
) -> float:
    """The ``tau`` of :func:`prior_shift_weights` with the best mean of accuracy, balanced accuracy and
    macro-F1 on the validation predictions (ties: the smaller tau). Fit on val, never on the test split."""
    y = label_ids(val_labels)
    scores = [selection_score(y, np.asarray(val_probs) * prior_shift_weights(train_labels, t)) for t in taus]
    return float(taus[int(np.argmax(scores))])


def balanced_accuracy(y_true: Sequence | np.ndarray, probs: np.ndarray) -> float:
    """Balanced accuracy of the arg-max predictions (classes absent from ``y_true`` do not count)."""
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(label_ids(y_true), np.asarray(probs).argmax(axis=1)))


def selection_score(y_true: Sequence | np.ndarray, probs: np.ndarray) -> float:
    """The mean of accuracy, balanced accuracy and macro-F1 of the arg-max predictions: what the benchmark's
    validation choices (prior-shift ``tau``, classifier re-training) maximise, so no figure is traded away."""
    y = label_ids(y_true)
    pred = np.asarray(probs).argmax(axis=1)
    macro_f1 = f1_score(y, pred, labels=list(range(len(CLASS_NAMES))), average="macro", zero_division=0)
    return float((pred == y).mean() + balanced_accuracy(y, probs) + macro_f1) / 3


def majority_probs(n: int, majority_class: str = "nv") -> np.ndarray:
    """Probabilities of always answering ``majority_class`` (probability 1) for ``n`` images."""
    probs = np.zeros((n, len(CLASS_NAMES)))
    probs[:, CLASS_TO_INDEX[majority_class]] = 1.0
    return probs


def majority_metrics(y_true: Sequence | np.ndarray, majority_class: str = "nv") -> dict:
    """:func:`compute_metrics` of always answering ``majority_class`` (probability 1), per class included."""
    y = label_ids(y_true)
    return compute_metrics(y, majority_probs(len(y), majority_class), n_bootstrap=0)


def per_class_comparison(
    metrics_by_name: Mapping[str, Mapping], measures: Sequence[str] = ("sensitivity", "f1")
) -> pd.DataFrame:
    """Predictors side by side (columns) on the headline figures and, per class, on each of ``measures``
    (rows ``"sensitivity: mel"``, ...): the one table that shows where a model beats another or a baseline."""
    headline = summary_table(metrics_by_name).T
    per_class = {
        name: {
            f"{measure}: {cls}": values.get(measure)
            for measure in measures
            for cls, values in metrics["per_class"].items()
        }
        for name, metrics in metrics_by_name.items()
    }
    return pd.concat([headline, pd.DataFrame(per_class).astype(float)])


def calibration_report(
    y_true: Sequence | np.ndarray, probs: np.ndarray, val_true: Sequence | np.ndarray, val_probs: np.ndarray
) -> tuple[dict, np.ndarray]:
    """Temperature scaling fitted on validation predictions and applied to ``probs``.

    Returns ``({temperature, fitted_on, n_fit_images, ece_before, ece_after, log_loss_before,
    log_loss_after}, calibrated probs)``; ECE and log loss are measured on ``(y_true, probs)``.
    """
    y, p = check_predictions(y_true, probs)
    temperature = fit_temperature(val_probs, val_true)
    calibrated = apply_temperature(p, temperature)
    labels = list(range(p.shape[1]))
    report = {
        "temperature": temperature,
        "fitted_on": "val",
        "n_fit_images": len(val_probs),
        "ece_before": expected_calibration_error(y, p),
        "ece_after": expected_calibration_error(y, calibrated),
        "log_loss_before": log_loss(y, p, labels=labels),
        "log_loss_after": log_loss(y, calibrated, labels=labels),
    }
    return json_ready(report), calibrated
