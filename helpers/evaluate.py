"""Evaluating a saved model: load it and one split of a dataset, predict, score, write the results.

:func:`evaluate_model` reads the input size from the model, rebuilds the training run's lesion-aware split
from its manifest, predicts (optionally with flip TTA and temperature scaling fitted on val) and writes
``metrics.json`` and ``predictions.csv``. The scores themselves are :mod:`helpers.metrics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from helpers.classes import CLASS_NAMES
from helpers.clinical import encode_metadata
from helpers.data import load_metadata
from helpers.explain import (
    background_ratio,
    centred_blob,
    energy_inside,
    gradcam_maps,
    pointing_hit,
)
from helpers.export import representative_sample
from helpers.files import atomic_write, json_ready, write_json
from helpers.metrics import (
    calibration_report,
    compute_metrics,
    label_ids,
    predictions_frame,
    require_positive_int,
    summary_table,
)
from helpers.modelio import (
    keras_predict,
    load_classifier,
    model_input_size,
    read_manifest,
    resolve_model_path,
)
from helpers.models import IMAGE_INPUT, METADATA_INPUT, uses_metadata
from helpers.paths import VISUALIZATIONS_DIR
from helpers.pipeline import load_images, load_masks
from helpers.shifts import SHIFTS, STRENGTHS, apply_shift
from helpers.splits import data_fingerprint, make_split, subsample

SPLIT_CHOICES: tuple[str, ...] = ("test", "val", "train", "all")
"""``split`` values of :func:`evaluate_model`; ``"all"`` is every image (e.g. an external test set)."""

SHIFT_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_auc", "mel_sensitivity")
"""Columns of :func:`shift_report`."""

DEFAULT_SPLIT_SEED = 42
"""Seed of :func:`helpers.splits.split_by_lesion` when the run has no manifest (the training default)."""


@dataclass
class EvaluationResult:
    """What :func:`evaluate_model` computed and wrote (``metrics`` is the content of ``metrics.json``).

    ``data`` is every usable image (with its split unless ``split="all"``), ``frame``/``images``/``probs`` the
    evaluated rows, their uint8 images and the model's probabilities (``predictions`` row ``i`` is image
    ``i``), ``val_frame``/``val_images`` the validation images the temperature was fitted on (else None).
    """

    metrics: dict
    predictions: pd.DataFrame
    probs: np.ndarray = field(repr=False)
    calibrated_probs: np.ndarray | None = field(repr=False)
    data: pd.DataFrame = field(repr=False)
    frame: pd.DataFrame = field(repr=False)
    images: np.ndarray = field(repr=False)
    metadata: np.ndarray | None = field(repr=False)
    val_frame: pd.DataFrame | None = field(repr=False)
    val_images: np.ndarray | None = field(repr=False)
    val_metadata: np.ndarray | None = field(repr=False)
    model: keras.Model = field(repr=False)
    img_size: int
    out_dir: Path

    @property
    def y_true(self) -> np.ndarray:
        """Label ids of the evaluated images."""
        return label_ids(self.frame["dx"])

    def validation_set(self) -> tuple[np.ndarray | dict, pd.Series]:
        """Validation inputs (images, or ``{"image", "metadata"}`` for a metadata model) and labels; the
        evaluated ones when no validation split was predicted."""
        if self.val_images is None:
            return self.inputs(self.images, self.metadata), self.frame["dx"]
        return self.inputs(self.val_images, self.val_metadata), self.val_frame["dx"]

    @staticmethod
    def inputs(images: np.ndarray, metadata: np.ndarray | None) -> np.ndarray | dict:
        """``images`` alone, or with ``metadata`` the dict a metadata model takes."""
        return images if metadata is None else {IMAGE_INPUT: images, METADATA_INPUT: metadata}

    def headline(self) -> pd.DataFrame:
        """The model beside the majority baseline, with bootstrap 95% CIs where available."""
        return summary_table({"model": self.metrics, "majority baseline": self.metrics["baseline"]}, True)


def training_split(df: pd.DataFrame, manifest: Mapping) -> tuple[pd.DataFrame, bool | None]:
    """``df`` with the train/val/test split training used, and whether it matches the run's data fingerprint.

    A ``split`` column in the data is kept; otherwise the split recorded in the run's manifest is rebuilt
    (:func:`helpers.splits.make_split`: lesion-aware with the run's seed, or the held-out source), on all
    images before any ``max_images`` subset, as :func:`helpers.train.prepare_data` does. The match
    is ``None`` without a manifest or for an external test set (no train or val rows: nothing to compare)
    and ``False`` (with a warning) when the train and val rows differ from training's; test rows added since
    (a withheld test split) leave it ``True``.
    """
    seed = manifest.get("seed", DEFAULT_SPLIT_SEED)
    split_df = make_split(df, manifest.get("data", {}).get("split"), seed)
    expected = manifest.get("data", {}).get("fingerprint")
    if not expected or not split_df["split"].isin(("train", "val")).any():
        return split_df, None
    trained_on = subsample(split_df, manifest.get("parameters", {}).get("max_images"), seed)
    matches = data_fingerprint(trained_on) == expected
    if not matches:
        warnings.warn(
            "The data evaluated is not the data the model was trained on (the image ids, labels or split of "
            "its train and val rows differ from the run's manifest fingerprint): test images may have been "
            "seen in training. "
            f"Evaluate on the training data ({manifest['data'].get('source') or 'see manifest.json'}) "
            "for an unbiased test.",
            stacklevel=2,
        )
    return split_df, matches


def _warn_if_training_data(df: pd.DataFrame, manifest: Mapping) -> None:
    """For ``split="all"``: warn when ``df`` is the very data the run was trained (and selected) on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, same = training_split(df, manifest)
    if same:
        warnings.warn(
            "split='all' evaluates every image of the data this model was trained on, its train and val "
            "images included, so the scores are not an unbiased test. Use split='test' for its held-out "
            "images, or point data_dir at an external set (e.g. the ISIC 2018 test set from "
            "python -m helpers.download --include-test).",
            stacklevel=3,
        )


def select_split(df: pd.DataFrame, split: str, max_images: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The rows of ``split`` (every row for ``"all"``), at most ``max_images`` (stratified by class)."""
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {list(SPLIT_CHOICES)}; got {split!r}.")
    if max_images is not None:
        require_positive_int(max_images, "max_images")
    rows = df
    if split != "all":
        present = sorted(df["split"].unique()) if "split" in df.columns else []
        if split not in present:
            raise ValueError(
                f"split {split!r} is not present in the data (its splits: {present}). Choose one of those, "
                "or split='all' to evaluate every image (e.g. an external test set)."
            )
        rows = df[df["split"] == split]
    return subsample(rows, max_images, seed).reset_index(drop=True)


def predict_probs(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 64,
    tta: bool = False,
    metadata: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax outputs ``(N, C)`` for uint8 images ``(N, S, S, 3)`` (and their encoded metadata, for a
    metadata model); with ``tta`` the mean over the image and its horizontal and vertical flips."""
    views = [images, images[:, :, ::-1], images[:, ::-1]] if tta else [images]
    return np.mean([keras_predict(model, view, batch_size, metadata) for view in views], axis=0)


def frame_metadata(model: keras.Model, frame: pd.DataFrame, missing: bool = False) -> np.ndarray | None:
    """The encoded metadata of ``frame``'s rows for a metadata model (None for an image model); ``missing``:
    data without the age/sex/site columns is encoded as every field missing instead of refused."""
    return encode_metadata(frame, missing_columns=missing) if uses_metadata(model) else None


def _predict_split(
    model: keras.Model, df: pd.DataFrame, split: str, options: Mapping
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, np.ndarray]:
    """Rows, uint8 images, encoded metadata (None for an image model) and probabilities of one split."""
    frame = select_split(df, split, options["max_images"], options["seed"])
    metadata = frame_metadata(model, frame, options["missing_metadata"])
    images = load_images(
        frame["path"].tolist(), model_input_size(model), options["cache"], progress=options["verbose"]
    )
    probs = predict_probs(model, images, options["batch_size"], options["tta"], metadata)
    return frame, images, metadata, probs


def evaluate_model(
    model_path: str | Path | None = None,
    data_dir: str | Path = "auto",
    split: str = "test",
    tta: bool = False,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    max_images: int | None = None,
    temperature_scaling: bool = True,
    metadata_csv: str | Path | None = None,
    n_bootstrap: int = 1000,
    cache: bool | str | Path = True,
    verbose: bool = True,
    missing_metadata: bool = False,
) -> EvaluationResult:
    """Evaluate a trained ``.keras`` model on one split of a dataset and write ``metrics.json`` and
    ``predictions.csv`` to ``out_dir`` (default ``visualizations/<run_name>/``, the model's folder name).

    Images are decoded at the model's own input size, so any model evaluates any supported dataset.
    ``split`` is ``"test"``, ``"val"``, ``"train"`` (the data's split column, or the lesion-aware split
    rebuilt with the run's seed from ``manifest.json`` beside the model) or ``"all"``. ``tta`` averages the
    image and its flips. With ``temperature_scaling`` a temperature is fitted on the validation split (for
    test/train) and ECE and log loss are reported before and after. ``max_images`` caps the evaluated (and
    validation) images, stratified by class. A metadata model is fed each image's age, sex and body site from
    the data; data without those columns is refused with a message, or with ``missing_metadata`` evaluated
    with every field missing.
    """
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {list(SPLIT_CHOICES)}; got {split!r}.")
    require_positive_int(batch_size, "batch_size")
    path = resolve_model_path(model_path)
    model = load_classifier(path)
    manifest = read_manifest(path)
    df = load_metadata(data_dir, metadata_csv, verbose=verbose)
    source = df.attrs.get("validation", {}).get("image_root")
    if split == "all":
        _warn_if_training_data(df, manifest)
        matches = None
    else:
        df, matches = training_split(df, manifest)
    options = {
        "max_images": max_images,
        "seed": manifest.get("seed", DEFAULT_SPLIT_SEED),
        "cache": cache,
        "verbose": verbose,
        "batch_size": batch_size,
        "tta": tta,
        "missing_metadata": missing_metadata,
    }
    frame, images, metadata, probs = _predict_split(model, df, split, options)
    use_val = temperature_scaling and split in ("test", "train") and "val" in set(df["split"])
    val_frame, val_images, val_metadata, val_probs = (
        _predict_split(model, df, "val", options) if use_val else [None] * 4
    )
    calibration, calibrated = ({"temperature": None}, None)
    if use_val:
        calibration, calibrated = calibration_report(frame["dx"], probs, val_frame["dx"], val_probs)
    metrics = compute_metrics(frame["dx"], probs, n_bootstrap=n_bootstrap)
    metrics.update(model_path=str(path), data_dir=source, split=split, split_matches_training=matches)
    metrics.update(img_size=images.shape[1], tta=tta, temperature=calibration["temperature"])
    metrics.update(metadata_input=uses_metadata(model), metadata_missing=bool(missing_metadata))
    metrics = json_ready({**metrics, "calibration": calibration})
    out = Path(out_dir) if out_dir is not None else VISUALIZATIONS_DIR / path.parent.name
    predictions = predictions_frame(frame["image_id"], frame["dx"], probs)
    _write_outputs(metrics, predictions, out, verbose)
    return EvaluationResult(
        metrics=metrics,
        predictions=predictions,
        probs=probs,
        calibrated_probs=calibrated,
        data=df,
        frame=frame,
        images=images,
        metadata=metadata,
        val_frame=val_frame,
        val_images=val_images,
        val_metadata=val_metadata,
        model=model,
        img_size=int(images.shape[1]),
        out_dir=out,
    )


def _write_outputs(metrics: dict, predictions: pd.DataFrame, out: Path, verbose: bool) -> None:
    write_json(metrics, out / "metrics.json")
    with atomic_write(out / "predictions.csv", "w", newline="") as handle:
        predictions.to_csv(handle, index=False)
    if verbose:
        n, split = metrics["n_images"], metrics["split"]
        print(f"Evaluated {n} {split} images; wrote metrics.json and predictions.csv to {out}")


def pick_examples(
    predictions: pd.DataFrame, correct: bool, per_class: int = 2, seed: int = 0
) -> pd.DataFrame:
    """Up to ``per_class`` correctly (or wrongly) classified rows of ``predictions`` per true class, most
    confident first (seeded tie-breaking); keeps the original index so rows map back to the images."""
    require_positive_int(per_class, "per_class")
    rows = predictions[(predictions["true"] == predictions["predicted"]) == correct]
    confidence = rows[[f"p_{name}" for name in CLASS_NAMES]].max(axis=1)
    order = confidence.sample(frac=1.0, random_state=seed).sort_values(ascending=False, kind="stable").index
    ranked = rows.loc[order]
    picked = ranked.groupby("true", sort=False).head(per_class)
    return picked.sort_values("true", key=lambda s: s.map(CLASS_NAMES.index), kind="stable")


def gradcam_examples(
    result: EvaluationResult, correct: bool, per_class: int = 2
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Images, Grad-CAM heatmaps for the predicted class and titles of :func:`pick_examples` of ``result``."""
    examples = pick_examples(result.predictions, correct, per_class)
    rows = examples.index.to_numpy()
    images = result.images[rows]
    predicted = [CLASS_NAMES.index(name) for name in examples["predicted"]]
    metadata = result.metadata[rows] if result.metadata is not None else None
    heatmaps = list(gradcam_maps(result.model, images, predicted, metadata=metadata)) if len(rows) else []
    confidence = examples[[f"p_{name}" for name in CLASS_NAMES]].max(axis=1)
    titles = [
        f"{row.image_id}\ntrue {row.true}, predicted {row.predicted} ({p:.2f})"
        for row, p in zip(examples.itertuples(), confidence, strict=True)
    ]
    return images, heatmaps, titles


def calibration_images(result: EvaluationResult, n: int) -> tuple[np.ndarray | None, str]:
    """Up to ``n`` training images to calibrate an int8 export of ``result.model`` on, and where they came
    from: the evaluated data's train split when it has one, else the training data named in the model's run
    manifest (its folder and split), else ``None`` with the reason (an int8 export is then skipped).

    An external test set (every row ``test``, or no split) is therefore never used to calibrate the model
    it tests."""
    metadata = uses_metadata(result.model)
    if "split" in result.data.columns and (result.data["split"] == "train").any():
        sample = representative_sample(result.data, result.img_size, n, metadata=metadata)
        return sample, "the evaluated data's train split"
    manifest = read_manifest(result.metrics["model_path"])
    source = manifest.get("data", {}).get("source")
    if not source or not Path(source).is_dir():
        reason = (
            f"its training data ({source}) is not on this machine" if source else "it has no run manifest"
        )
        return None, f"int8 export skipped: no training images to calibrate on ({reason})."
    csv = manifest.get("parameters", {}).get("metadata_csv")
    trained = training_split(load_metadata(source, csv, verbose=False), manifest)[0]
    return representative_sample(
        trained, result.img_size, n, metadata=metadata
    ), f"the train split of {source}"


def shift_report(
    model: keras.Model | str | Path,
    df: pd.DataFrame,
    split: str = "test",
    strengths: tuple[str, ...] = STRENGTHS,
    max_images: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    cache: bool | str | Path = True,
    verbose: bool = True,
    missing_metadata: bool = False,
) -> pd.DataFrame:
    """What a change of device may cost: ``model`` on the ``split`` images of ``df`` as they are and under
    every shift of :data:`helpers.shifts.SHIFTS` (colour cast, brightness, gamma, the dermoscope's dark frame,
    zoom in and out, JPEG re-compression, defocus) at each of ``strengths``.

    One row per condition (``clean`` first, then shift and strength, then ``mean of shifts``) with accuracy,
    balanced accuracy, macro AUC, melanoma sensitivity and ``relative_balanced_accuracy`` (balanced accuracy
    over the clean figure). ``df`` is :func:`helpers.data.load_metadata` data with a split (e.g.
    ``EvaluationResult.data``); ``max_images`` takes a class-stratified subset.
    """
    model = model if isinstance(model, keras.Model) else load_classifier(model)
    frame = select_split(df, split, max_images, seed)
    metadata = frame_metadata(model, frame, missing_metadata)
    images = load_images(frame["path"].tolist(), model_input_size(model), cache, progress=verbose)
    conditions = [("clean", "")] + [(name, s) for name in SHIFTS for s in strengths]
    rows = []
    for name, strength in tqdm(conditions, desc="Shifts", unit="condition", disable=not verbose):
        shifted = images if name == "clean" else apply_shift(images, name, strength)
        probs = keras_predict(model, shifted, batch_size, metadata)
        scores = compute_metrics(frame["dx"], probs, n_bootstrap=0)
        rows.append({"shift": name, "strength": strength, **{k: scores[k] for k in SHIFT_METRICS}})
    table = pd.DataFrame(rows)
    mean = table.iloc[1:][list(SHIFT_METRICS)].mean()
    table = pd.concat([table, pd.DataFrame([{"shift": "mean of shifts", "strength": "", **mean}])])
    clean = table.iloc[0]["balanced_accuracy"]
    table["relative_balanced_accuracy"] = table["balanced_accuracy"] / clean if clean else np.nan
    return table.reset_index(drop=True)


POINTING_TOLERANCE = 0.04
"""The pointing game's tolerance band: a heatmap peak within this fraction of the image side from the lesion
(5 px at 128 px) still counts as a hit, as the coarse Grad-CAM grid cannot place its peak more finely."""

EXPLANATION_COLUMNS: tuple[str, ...] = (
    "pointing_game",
    "energy_inside",
    "background_ratio",
    "n_images",
    "baseline_pointing_game",
    "baseline_energy_inside",
    "pointing_game_correct",
    "energy_inside_correct",
    "n_correct",
    "pointing_game_wrong",
    "energy_inside_wrong",
    "n_wrong",
)
"""Columns of :func:`explanation_report`."""


@dataclass
class Explanations:
    """Per image of :func:`explain_split`: rows, images, Grad-CAM heatmaps (predicted class), lesion masks and
    the predicted class ids; ``skipped`` counts the images left out, by reason."""

    frame: pd.DataFrame
    images: np.ndarray = field(repr=False)
    heatmaps: np.ndarray = field(repr=False)
    masks: np.ndarray = field(repr=False)
    predicted: np.ndarray
    skipped: dict[str, int]


def explain_split(
    model: keras.Model | str | Path,
    df: pd.DataFrame,
    split: str = "test",
    max_images: int | None = None,
    seed: int = 0,
    layer_name: str | None = None,
    cache: bool | str | Path = True,
    verbose: bool = True,
    missing_metadata: bool = False,
) -> Explanations:
    """Grad-CAM of the predicted class for every image of ``split`` that has a usable lesion mask.

    Images without a mask, and masks with no lesion pixel or no background pixel (nothing to point at or
    away from), are left out and counted in ``skipped``; ValueError when no image is left. The network inside
    a predictor is explained."""
    model = model if isinstance(model, keras.Model) else load_classifier(model)
    frame = select_split(df, split, max_images, seed)
    has_mask = frame["mask_path"].notna() if "mask_path" in frame.columns else pd.Series(False, frame.index)
    size = model_input_size(model)
    masks = (
        load_masks(frame.loc[has_mask, "mask_path"].tolist(), size, cache, verbose)
        if has_mask.any()
        else None
    )
    lesion = masks.mean(axis=(1, 2)) if masks is not None else np.zeros(0)
    skipped = {
        "no mask": int((~has_mask).sum()),
        "empty mask": int((lesion == 0).sum()),
        "mask covers everything": int((lesion == 1).sum()),
    }
    usable = (lesion > 0) & (lesion < 1)
    if not usable.any():
        raise ValueError(
            f"No {split} image has a usable lesion mask ({skipped}); put the masks "
            "(<image_id>_segmentation.png, e.g. in HAM10000_segmentations_lesion_tschandl/) below the data "
            "folder and load it again."
        )
    frame = frame[has_mask].reset_index(drop=True)[usable].reset_index(drop=True)
    images = load_images(frame["path"].tolist(), size, cache, progress=verbose)
    metadata = frame_metadata(model, frame, missing_metadata)
    predicted = keras_predict(model, images, metadata=metadata).argmax(axis=1)
    heatmaps = gradcam_maps(model, images, predicted, layer_name, metadata=metadata)
    return Explanations(frame, images, heatmaps, masks[usable], predicted, skipped)


def explanation_report(
    model: keras.Model | str | Path,
    df: pd.DataFrame,
    split: str = "test",
    max_images: int | None = None,
    tolerance: float = POINTING_TOLERANCE,
    layer_name: str | None = None,
    cache: bool | str | Path = True,
    verbose: bool = True,
) -> pd.DataFrame:
    """Does the model look at the lesion? Grad-CAM (predicted class) against the official lesion masks on the
    ``split`` images of ``df`` (needs a ``mask_path`` column: :func:`helpers.data.load_metadata` attaches it).

    Per true class and ``overall``: ``pointing_game`` (share of images whose heatmap maximum lies in the
    lesion, or within ``tolerance`` x the image side of it), ``energy_inside`` (mean share of the heatmap mass
    inside the lesion), ``background_ratio`` (median over images of the mean activation outside the lesion
    over the mean inside, as in Tschandl et al., Nat. Med. 2020), the same pointing and energy figures for
    correct and for wrong predictions, and the baseline of a centred Gaussian blob of the masks' mean size
    (``baseline_pointing_game``, ``baseline_energy_inside``), which scores well only because lesions tend to
    be centred. ``attrs``: ``skipped`` (images without a usable mask, by reason) and ``tolerance_px``.
    """
    explained = explain_split(
        model, df, split, max_images, layer_name=layer_name, cache=cache, verbose=verbose
    )
    table = explanation_table(explained, tolerance)
    table.attrs["skipped"] = explained.skipped
    return table


def explanation_table(explained: Explanations, tolerance: float = POINTING_TOLERANCE) -> pd.DataFrame:
    """The table of :func:`explanation_report` from :func:`explain_split`'s heatmaps and masks."""
    tolerance_px = tolerance * explained.masks.shape[1]
    blob = centred_blob(explained.masks.shape[1], float(explained.masks.mean()))
    per_image = pd.DataFrame(
        [
            _image_scores(heatmap, mask, blob, tolerance_px)
            for heatmap, mask in zip(explained.heatmaps, explained.masks, strict=True)
        ]
    )
    per_image["dx"] = explained.frame["dx"].to_numpy()
    per_image["correct"] = explained.predicted == label_ids(explained.frame["dx"])
    groups = {name: per_image[per_image["dx"] == name] for name in CLASS_NAMES} | {"overall": per_image}
    table = pd.DataFrame([_explanation_row(rows) for rows in groups.values()], index=list(groups))
    table.index.name = "class"
    table.attrs["tolerance_px"] = tolerance_px
    return table[list(EXPLANATION_COLUMNS)]


def _image_scores(heatmap: np.ndarray, mask: np.ndarray, blob: np.ndarray, tolerance_px: float) -> dict:
    return {
        "hit": float(pointing_hit(heatmap, mask, tolerance_px)),
        "energy": energy_inside(heatmap, mask),
        "ratio": background_ratio(heatmap, mask),
        "baseline_hit": float(pointing_hit(blob, mask, tolerance_px)),
        "baseline_energy": energy_inside(blob, mask),
    }


def _explanation_row(rows: pd.DataFrame) -> dict:
    correct, wrong = rows[rows["correct"]], rows[~rows["correct"]]
    return {
        "pointing_game": rows["hit"].mean(),
        "energy_inside": rows["energy"].mean(),
        "background_ratio": rows["ratio"].median(),
        "n_images": len(rows),
        "baseline_pointing_game": rows["baseline_hit"].mean(),
        "baseline_energy_inside": rows["baseline_energy"].mean(),
        "pointing_game_correct": correct["hit"].mean(),
        "energy_inside_correct": correct["energy"].mean(),
        "n_correct": len(correct),
        "pointing_game_wrong": wrong["hit"].mean(),
        "energy_inside_wrong": wrong["energy"].mean(),
        "n_wrong": len(wrong),
    }


def worst_explanations(
    explained: Explanations, n: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The ``n`` images whose Grad-CAM puts the least of its mass on the lesion: images, heatmaps, masks and
    titles (image id, true and predicted class, energy inside), for :func:`helpers.plots.evaluation.
    plot_gradcam_grid` with ``masks``."""
    require_positive_int(n, "n")
    energy = np.array([energy_inside(h, m) for h, m in zip(explained.heatmaps, explained.masks, strict=True)])
    order = np.argsort(np.nan_to_num(energy, nan=-1.0), kind="stable")[:n]
    titles = [
        f"{explained.frame.at[i, 'image_id']}\ntrue {explained.frame.at[i, 'dx']}, predicted "
        f"{CLASS_NAMES[explained.predicted[i]]}; "
        + (f"inside {energy[i]:.2f}" if np.isfinite(energy[i]) else "heatmap all zero")
        for i in order
    ]
    return explained.images[order], explained.heatmaps[order], explained.masks[order], titles
