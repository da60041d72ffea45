"""Active learning: which images should a clinic label next, so that it labels as few as possible?

Query strategies rank unlabelled images by a model's predicted probabilities (rows of ``probs``, one column
per class in :data:`helpers.classes.CLASS_NAMES` order):

- ``"entropy"``: the highest predictive entropy first (scikit-activeml's ``UncertaintySampling``, method
  ``"entropy"``);
- ``"margin"``: the smallest gap between the two most probable classes first (``UncertaintySampling``, method
  ``"margin_sampling"``);
- ``"balanced_entropy"``: class-balanced uncertainty, written here (scikit-activeml has no such strategy): the
  batch is shared equally among the predicted classes, taken in turns, each turn the most uncertain (highest
  entropy) image still unpicked among those predicted that class; a class with too few images leaves its
  share to the others. Two thirds of HAM10000 is ``nv``, and plain entropy still labels mostly ``nv`` (58% of
  3,000 labels in ``benchmarks/active.py``); equal shares send labels to the classes predicted rare (49%
  ``nv``), though there that did not raise balanced accuracy (see benchmarks/README.md).
- baselines: ``"random"`` (scikit-activeml's ``RandomSampling``) and ``"stratified"``: random picks spread
  equally over the predicted classes (the same turns as ``balanced_entropy``, a random image each turn).
  The pool's true labels are unknown, so the strata are the classes the current model predicts; equal
  shares make it ``balanced_entropy`` without the uncertainty, so the two together separate what
  balancing buys from what uncertainty buys.

The simulation (:func:`simulate`) learns cheaply each round: a logistic regression (balanced class weights,
L2, ``C`` = :data:`LEARNER_C`) on standardised, frozen ImageNet features of EfficientNet-Lite0
(:func:`image_features`: 1280 pooled values per image at :data:`FEATURE_IMG_SIZE` px, computed once and
cached). :func:`next_batch_to_label` ranks a folder of unlabelled images with a trained ``.keras`` model and
says why each was picked.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from skactiveml.base import SkactivemlClassifier
from skactiveml.pool import RandomSampling, UncertaintySampling, uncertainty_scores
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from helpers.backbones import efficientnet_lite0
from helpers.classes import CLASS_NAMES, NUM_CLASSES
from helpers.clinical import missing_vector
from helpers.data import IMAGE_EXTENSIONS, check_image, mask_image_id, walk
from helpers.files import atomic_write
from helpers.metrics import label_ids
from helpers.modelio import load_keras_model, model_input_size, predict_images
from helpers.models import uses_metadata
from helpers.paths import resolve_input
from helpers.pipeline import cache_file, load_images

STRATEGIES = ("entropy", "margin", "balanced_entropy", "random", "stratified")
"""Every query strategy; the last two are baselines."""
UNCERTAINTY_STRATEGIES = ("entropy", "margin", "balanced_entropy")
BASELINES = ("random", "stratified")
_SKACTIVEML_METHOD = {"entropy": "entropy", "margin": "margin_sampling"}

FEATURE_IMG_SIZE = 128
"""Side of the images EfficientNet-Lite0 turns into features. At 224 px (its ImageNet size) the full-data
learner scored the same on HAM10000's val split (balanced accuracy 0.570 against 0.571, 2026-12-07) at 4x
the extraction time (370 s against 87 s for the 8,510 train and val images on 2 shared cores)."""
FEATURE_LAYER = "gap"
FEATURES_VERSION = 1
"""Bump when the features change, so cached feature files are no longer used."""

LEARNER_C = 1e-3
"""Inverse L2 strength of the per-round logistic regression, one setting for every strategy and round,
chosen on HAM10000's val split among 1e-4, 3e-4, 1e-3, 1e-2: best with all 7,001 training images (0.571;
0.569 at 3e-4, 0.539 at 1e-4, 0.523 at 1e-2) and within 0.015 of the best at 250, 1,000 and 3,000 random
labels."""
LEARNER_THREADS = 1
"""BLAS threads while fitting: on a shared 2-core machine two OpenBLAS threads made a 3,000-image fit 10-20x
slower (11.6 s against 0.6 s), spinning while the other core was busy."""

START_LABELS, BATCH_SIZE, BUDGET = 250, 250, 3000
"""The simulation's defaults: 250 seeded random labels to start, batches of 250 up to 3,000."""
MISSING = -1
"""The label of an unlabelled image, for scikit-activeml."""


# ------------------------------------------------------------------------------------ query strategies
class GivenProbabilities(SkactivemlClassifier):
    """A scikit-activeml classifier whose samples are their own predicted probabilities: ``predict_proba(X)``
    returns ``X``. Lets scikit-activeml's strategies rank probabilities that any model computed (a Keras
    network, the simulation's learner) without refitting it."""

    def __init__(self, classes=tuple(range(NUM_CLASSES)), missing_label=MISSING):
        super().__init__(classes=classes, missing_label=missing_label)

    def fit(self, X, y, sample_weight=None):
        """Nothing to fit: the probabilities are given."""
        return self

    def predict_proba(self, X, **kwargs):
        """``X`` itself: each row is a sample's class probabilities."""
        return np.asarray(X, dtype=float)


def check_strategy(strategy: object) -> str:
    """``strategy`` when it is one of :data:`STRATEGIES`, else ValueError listing them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}.")
    return str(strategy)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or not len(probs):
        raise ValueError(f"probs must have shape (n_images, {NUM_CLASSES}), got {probs.shape}.")
    if (probs < -1e-6).any() or not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
        raise ValueError(
            "probs are not probabilities: each row must be >= 0 and sum to 1 (a softmax output)."
        )
    return np.clip(probs, 0, 1)


def uncertainty(probs: np.ndarray, strategy: str = "entropy") -> np.ndarray:
    """What a strategy ranks by (higher: picked earlier), per row: the entropy in nats for ``entropy`` and
    ``balanced_entropy``, one minus the top-two margin for ``margin`` (scikit-activeml's definitions), NaN
    for the random baselines."""
    probs = _check_probs(probs)
    strategy = check_strategy(strategy)
    if strategy in BASELINES:
        return np.full(len(probs), np.nan)
    method = "entropy" if strategy == "balanced_entropy" else _SKACTIVEML_METHOD[strategy]
    return uncertainty_scores(probs, method=method)


def query(
    probs: np.ndarray, n: int, strategy: str = "entropy", labelled: Sequence[int] | None = None, seed: int = 0
) -> np.ndarray:
    """Row indices of the ``n`` images to label next, in the order picked, among the rows not in
    ``labelled``. ``seed`` breaks ties and drives the random baselines. ValueError for an unknown strategy,
    ``n`` < 1 or more than the unlabelled rows."""
    probs = _check_probs(probs)
    strategy = check_strategy(strategy)
    y = np.full(len(probs), MISSING)
    y[np.asarray(labelled if labelled is not None else [], dtype=int)] = 0
    available = int((y == MISSING).sum())
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not 1 <= n <= available:
        raise ValueError(f"n must be an int from 1 to the {available} unlabelled images, got {n!r}.")
    n = int(n)
    if strategy in _SKACTIVEML_METHOD:
        sampler = UncertaintySampling(_SKACTIVEML_METHOD[strategy], missing_label=MISSING, random_state=seed)
        return sampler.query(probs, y, GivenProbabilities(), fit_clf=False, batch_size=n)
    if strategy == "random":
        return RandomSampling(missing_label=MISSING, random_state=seed).query(probs, y, batch_size=n)
    rng = np.random.default_rng(seed)
    priority = uncertainty(probs, "entropy") if strategy == "balanced_entropy" else rng.random(len(probs))
    return in_turns(probs.argmax(axis=1), priority, np.flatnonzero(y == MISSING), n, rng)


def in_turns(
    groups: np.ndarray, priority: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` of ``candidates`` shared equally among their ``groups``: in turns, each turn the candidate of
    highest ``priority`` still unpicked in each group (groups within a turn: highest priority first; ties
    broken at random). A group that runs out leaves its turns to the others."""
    candidates = np.asarray(candidates, dtype=int)
    noise = rng.random(len(candidates))
    order = np.lexsort((noise, -priority[candidates]))  # best first, ties at random
    ranked = candidates[order]
    turn = np.empty(len(ranked), dtype=int)
    for g in np.unique(groups[ranked]):
        members = groups[ranked] == g
        turn[members] = np.arange(members.sum())
    return ranked[np.lexsort((np.arange(len(ranked)), turn))][:n]


# ------------------------------------------------------------------------------------ frozen features
def feature_extractor(img_size: int = FEATURE_IMG_SIZE) -> keras.Model:
    """EfficientNet-Lite0 with ImageNet weights, up to its global average pooling: raw 0-255 images in,
    1280 features out."""
    model = efficientnet_lite0(img_size, pretrained=True)
    return keras.Model(model.input, model.get_layer(FEATURE_LAYER).output, name="lite0_features")


def features_file(
    paths: Sequence[str | Path], img_size: int = FEATURE_IMG_SIZE, cache: bool | str | Path = True
) -> Path | None:
    """Where :func:`image_features` keeps the features of these files: ``features/`` in the image cache's
    folder, named after the image cache file of the same files (so it changes whenever they do)."""
    images = cache_file(paths, img_size, cache)
    if images is None:
        return None
    return images.parent / "features" / f"lite0_{FEATURE_LAYER}_v{FEATURES_VERSION}_{images.stem}.npy"


def image_features(
    paths: Sequence[str | Path],
    img_size: int = FEATURE_IMG_SIZE,
    cache: bool | str | Path = True,
    progress: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """Frozen EfficientNet-Lite0 features ``(len(paths), 1280)`` (float32) of the images, in order: decoded
    through the uint8 image cache (:func:`helpers.pipeline.load_images`), computed once with a progress bar
    and cached on disk (:func:`features_file`; ``cache=False``: neither cached nor read)."""
    unique, rows = np.unique(np.asarray([str(p) for p in paths]), return_inverse=True)
    target = features_file(unique, img_size, cache)
    features = _read_features(target, len(unique))
    if features is None:
        images = load_images(unique, img_size, cache=cache, progress=progress)
        extractor = feature_extractor(img_size)
        bar = tqdm(
            total=len(images), desc=f"Lite0 features at {img_size}px", unit="img", disable=not progress
        )
        chunks = []
        with bar:
            for i in range(0, len(images), batch_size):
                chunks.append(predict_images(extractor, images[i : i + batch_size], batch_size=64))
                bar.update(len(chunks[-1]))
        features = np.concatenate(chunks).astype(np.float32)
        if target is not None:
            _write_features(target, features)
    return features[rows]


def _read_features(path: Path | None, n: int) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return features if features.shape == (n, 1280) and features.dtype == np.float32 else None


def _write_features(path: Path, features: np.ndarray) -> None:
    try:
        with atomic_write(path) as f:
            np.save(f, features, allow_pickle=False)
    except OSError as err:
        warnings.warn(f"{err} Going on without caching the features.", stacklevel=3)


# ------------------------------------------------------------------------------------ the cheap learner
def fit_learner(features: np.ndarray, labels: np.ndarray, c: float = LEARNER_C) -> Pipeline:
    """Logistic regression (balanced class weights, L2 ``c``) on standardised features; ``labels`` are class
    codes or ids. One BLAS thread (:data:`LEARNER_THREADS`)."""
    learner = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=1000))
    with threadpool_limits(LEARNER_THREADS, user_api="blas"):
        return learner.fit(features, label_ids(labels))


def learner_probs(learner: Pipeline, features: np.ndarray) -> np.ndarray:
    """``(n, 7)`` probabilities of a :func:`fit_learner` learner (0 for classes it never saw a label of)."""
    with threadpool_limits(LEARNER_THREADS, user_api="blas"):
        seen = learner.predict_proba(features)
    probs = np.zeros((len(features), NUM_CLASSES))
    probs[:, learner.classes_] = seen
    return probs


def full_data_score(
    features: np.ndarray, labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray
) -> float:
    """Balanced accuracy on val of the learner trained on every pool image: the reference of the curves."""
    probs = learner_probs(fit_learner(features, labels), val_features)
    return float(balanced_accuracy_score(label_ids(val_labels), probs.argmax(axis=1)))


# ------------------------------------------------------------------------------------ the simulation
def simulate(
    features: np.ndarray,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = (0, 1, 2),
    start: int = START_LABELS,
    batch_size: int = BATCH_SIZE,
    budget: int = BUDGET,
    progress: bool = True,
) -> pd.DataFrame:
    """Active learning on a labelled pool whose labels are revealed only when queried.

    For each seed, ``start`` pool images are drawn at random (the same ones for every strategy); then each
    round fits the learner on the labelled images, scores it on val, and queries ``batch_size`` more by the
    strategy, until ``budget`` labels. Returns one row per round: ``strategy, seed, round, labels,
    balanced_accuracy, accuracy, nv_share`` (share of the labelled images that are ``nv``), ``seconds``.
    """
    y, y_val = label_ids(labels), label_ids(val_labels)
    for name in strategies:
        check_strategy(name)
    if not 1 <= start <= budget <= len(y) or batch_size < 1:
        raise ValueError(
            f"Need 1 <= start ({start}) <= budget ({budget}) <= pool size ({len(y)}) and batch_size >= 1."
        )
    runs = [(s, name) for s in seeds for name in strategies]
    rows = []
    for seed, name in tqdm(runs, desc="Active learning", unit="run", disable=not progress):
        first = np.random.default_rng(seed).choice(len(y), start, replace=False)
        rows += _run(features, y, val_features, y_val, name, seed, first, batch_size, budget)
    return pd.DataFrame(rows)


def _run(features, y, val_features, y_val, strategy, seed, labelled, batch_size, budget) -> list[dict]:
    rows, labelled = [], np.asarray(labelled)
    for round_ in range(math.ceil((budget - len(labelled)) / batch_size) + 1):
        began = time.perf_counter()
        learner = fit_learner(features[labelled], y[labelled])
        pred = learner_probs(learner, val_features).argmax(axis=1)
        row = {"strategy": strategy, "seed": seed, "round": round_, "labels": len(labelled)}
        row["balanced_accuracy"] = float(balanced_accuracy_score(y_val, pred))
        row["accuracy"] = float((pred == y_val).mean())
        row["nv_share"] = float((y[labelled] == CLASS_NAMES.index("nv")).mean())
        if len(labelled) < budget:
            n = min(batch_size, budget - len(labelled))
            probs = learner_probs(learner, features)
            picks = query(probs, n, strategy, labelled=labelled, seed=seed * 1000 + round_)
            labelled = np.concatenate([labelled, picks])
        rows.append(row | {"seconds": time.perf_counter() - began})
    return rows


def mean_curves(curve: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and number of labels: the mean, spread and count of balanced accuracy over seeds."""
    grouped = curve.groupby(["strategy", "labels"], sort=False)["balanced_accuracy"]
    table = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    return table.rename(columns={"count": "seeds"})


def labels_to_reach(curve: pd.DataFrame, target: float) -> pd.Series:
    """Per strategy: the fewest labels at which the mean balanced accuracy over seeds reaches ``target``
    (a round's count: the curve is not interpolated); NaN when it never does within the curve."""
    means = mean_curves(curve)
    reached = means[means["mean"] >= target].groupby("strategy", sort=False)["labels"].min()
    return reached.reindex(means["strategy"].unique()).rename("labels_to_reach")


# ------------------------------------------------------------------------------------ the next batch
def next_batch_to_label(
    model_path_or_model: keras.Model | str | Path,
    image_folder: str | Path,
    n: int,
    strategy: str = "entropy",
    out_csv: str | Path | None = None,
    seed: int = 0,
    cache: bool | str | Path = False,
    progress: bool = False,
) -> pd.DataFrame:
    """The ``n`` images of ``image_folder`` (``.jpg``/``.jpeg``/``.png``, searched recursively; lesion masks
    left out) to label next according to a trained 7-class ``.keras`` model (raw 0-255 images in, softmax
    out) and ``strategy``, best first, and why; written to ``out_csv`` when given.

    Columns: ``rank, image_id, path, strategy, score`` (what the strategy ranks by: :func:`uncertainty`),
    ``predicted, p_predicted, second, p_second, entropy, margin, reason``. Unreadable images are skipped
    with a warning naming each; fewer than ``n`` images: all of them are ranked (with a warning).
    A metadata model is given every field as unknown. ``cache``: as :func:`helpers.pipeline.load_images`.
    """
    strategy = check_strategy(strategy)
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a whole number of images >= 1, got {n!r}.")
    model = _seven_class_model(model_path_or_model)
    paths = _readable_images(_find_images(image_folder))
    images = load_images(paths, model_input_size(model), cache=cache, progress=progress)
    metadata = missing_vector(len(images)) if uses_metadata(model) else None
    probs = predict_images(model, images, metadata=metadata)
    try:
        probs = _check_probs(probs)
    except ValueError as err:
        raise ValueError(f"{_model_name(model_path_or_model)}: {err}") from None
    if n > len(paths):
        warnings.warn(f"Only {len(paths)} images in {image_folder}; ranking all of them.", stacklevel=2)
    picks = query(probs, min(int(n), len(paths)), strategy, seed=seed)
    frame = batch_frame(probs[picks], [paths[i] for i in picks], strategy)
    if out_csv is not None:
        with atomic_write(Path(out_csv), "w", encoding="utf-8", newline="") as handle:
            frame.to_csv(handle, index=False)
    return frame


def batch_frame(probs: np.ndarray, paths: Sequence[str | Path], strategy: str) -> pd.DataFrame:
    """The CSV rows of picked images (``probs``: their probabilities, in the order picked)."""
    probs = _check_probs(probs)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    p1, p2 = probs[np.arange(len(probs)), top[:, 0]], probs[np.arange(len(probs)), top[:, 1]]
    frame = pd.DataFrame(
        {
            "rank": np.arange(1, len(probs) + 1),
            "image_id": [Path(p).stem for p in paths],
            "path": [str(p) for p in paths],
            "strategy": strategy,
            "score": uncertainty(probs, strategy),
            "predicted": [CLASS_NAMES[i] for i in top[:, 0]],
            "p_predicted": p1,
            "second": [CLASS_NAMES[i] for i in top[:, 1]],
            "p_second": p2,
            "entropy": uncertainty(probs, "entropy"),
            "margin": p1 - p2,
        }
    )
    frame["reason"] = [_reason(row, strategy) for row in frame.itertuples()]
    return frame


def _reason(row, strategy: str) -> str:
    pair = f"{row.predicted} ({row.p_predicted:.2f}) and {row.second} ({row.p_second:.2f})"
    entropy = f"entropy {row.entropy:.2f} of max {math.log(NUM_CLASSES):.2f}: unsure between {pair}"
    if strategy == "entropy":
        return entropy
    if strategy == "margin":
        return f"margin {row.margin:.3f} between {pair}"
    if strategy == "balanced_entropy":
        return f"among the most uncertain predicted {row.predicted} (classes take turns); {entropy}"
    if strategy == "stratified":
        return f"random pick among those predicted {row.predicted} (baseline, classes take turns): {pair}"
    return f"random pick (baseline); the model says {pair}"


def _model_name(model_path_or_model) -> str:
    if isinstance(model_path_or_model, keras.Model):
        return f"Model {model_path_or_model.name!r}"
    return f"Model {model_path_or_model}"


def _seven_class_model(model_path_or_model: keras.Model | str | Path) -> keras.Model:
    if not isinstance(model_path_or_model, keras.Model):
        path = resolve_input(model_path_or_model)
        if not path.is_file():
            raise FileNotFoundError(
                f"Model file {path} not found. Pass the .keras file of a trained model (e.g. "
                "models/<run_name>/best.keras) or a keras.Model."
            )
        model_path_or_model = path
    model = load_keras_model(model_path_or_model)
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs != NUM_CLASSES:
        raise ValueError(
            f"{_model_name(model_path_or_model)} has output shape {model.output_shape}, not one probability "
            f"per class for the {NUM_CLASSES} classes {list(CLASS_NAMES)}; pass a model trained on them."
        )
    try:
        model_input_size(model)
    except ValueError as err:
        raise ValueError(f"{_model_name(model_path_or_model)} cannot classify RGB images: {err}") from None
    return model


def _find_images(folder: str | Path) -> list[str]:
    folder = resolve_input(folder).resolve()  # the CSV names each image by its absolute path
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"Image folder {folder} {what}. Pass the folder holding the unlabelled images (.jpg/.jpeg/.png, "
            "searched in subfolders too)."
        )
    found = [
        str(Path(root) / name)
        for root, _dirs, files in walk(folder)
        for name in files
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS and mask_image_id(Path(root) / name) is None
    ]
    if not found:
        raise ValueError(
            f"No images found in {folder} or its subfolders (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
            ", lesion masks left out). Put the unlabelled images there or pass another folder."
        )
    return found


def _readable_images(paths: list[str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        reasons = list(pool.map(check_image, paths))
    bad = [f"{p} ({r})" for p, r in zip(paths, reasons, strict=True) if r]
    if len(bad) == len(paths):
        raise ValueError(f"None of the {len(paths)} images can be read: {'; '.join(bad[:5])}. Replace them.")
    if bad:
        warnings.warn(
            f"Skipping {len(bad)} unreadable image(s), not ranked: {'; '.join(bad)}. Replace or remove them.",
            stacklevel=3,
        )
    return [p for p, r in zip(paths, reasons, strict=True) if not r]
