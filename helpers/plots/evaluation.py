"""Evaluation figures: confusion matrices, ROC curves, reliability diagrams, training history, Grad-CAM grids.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so nothing stays open between calls and a
notebook shows each returned figure exactly once. Numbers come from :mod:`helpers.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_curve

from helpers.classes import CLASS_NAMES
from helpers.metrics import (
    check_predictions,
    expected_calibration_error,
    label_ids,
    per_class_auc,
    reliability_bins,
)
from helpers.plots.common import save_figure, subplots
from helpers.shifts import SHIFTS, apply_shift

_NORMALIZE_OPTIONS = ("both", "true", None)


def plot_confusion_matrix(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    normalize: str | None = "both",
    class_names: Sequence[str] = CLASS_NAMES,
    save_path: str | Path | None = None,
) -> Figure:
    """Confusion matrix heatmap(s), rows true and columns predicted.

    ``normalize``: ``"both"`` draws counts and row-normalised rates side by side, ``"true"`` only the rates
    (each row sums to 1; a class absent from ``y_true`` stays blank), ``None`` only the counts.
    """
    if normalize not in _NORMALIZE_OPTIONS:
        raise ValueError(f"normalize must be one of {_NORMALIZE_OPTIONS}; got {normalize!r}.")
    y, pred = label_ids(y_true, class_names), label_ids(y_pred, class_names)
    if len(y) != len(pred):
        raise ValueError(f"y_true has {len(y)} labels but y_pred has {len(pred)}; they must match.")
    counts = confusion_matrix(y, pred, labels=list(range(len(class_names))))
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    panels = {"both": ["counts", "rates"], "true": ["rates"], None: ["counts"]}[normalize]
    fig = Figure(figsize=(6.2 * len(panels), 5.2), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        data, fmt = (counts, "d") if panel == "counts" else (rates, ".2f")
        sns.heatmap(
            data,
            annot=True,
            fmt=fmt,
            cmap="Blues",
            square=True,
            cbar=False,
            xticklabels=class_names,
            yticklabels=class_names,
            vmin=0,
            vmax=1 if panel == "rates" else None,
            ax=ax,
        )
        ax.set(xlabel="Predicted", ylabel="True")
        ax.set_title("Counts" if panel == "counts" else "Row-normalised (sensitivity on diagonal)")
    save_figure(fig, save_path)
    return fig


def plot_roc_curves(
    y_true: Sequence | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    save_path: str | Path | None = None,
) -> Figure:
    """One-vs-rest ROC curve per class and their macro-average (vertical mean of TPR over a common FPR grid).

    The macro label shows the macro AUC of :func:`helpers.metrics.compute_metrics` (mean of per-class
    AUCs); classes without positives or negatives in ``y_true`` are left out.
    """
    y, p = check_predictions(y_true, probs, class_names)
    aucs = per_class_auc(y, p)
    present = np.flatnonzero(~np.isnan(aucs))
    if present.size == 0:
        raise ValueError("ROC curves need a class with both positive and negative images in y_true.")
    grid = np.linspace(0.0, 1.0, 201)
    mean_tpr = np.zeros_like(grid)
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.subplots()
    for k in present:
        fpr, tpr, _ = roc_curve(y == k, p[:, k])
        mean_tpr += np.interp(grid, fpr, tpr) / present.size
        ax.plot(fpr, tpr, lw=1.3, label=f"{class_names[k]} (AUC {aucs[k]:.3f})")
    ax.plot(grid, mean_tpr, color="black", lw=2.5, label=f"macro (AUC {aucs[present].mean():.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC curves (one vs rest)")
    ax.legend(loc="lower right", fontsize=9)
    save_figure(fig, save_path)
    return fig


def _reliability_panel(ax, y_true: Sequence | np.ndarray, probs: np.ndarray, n_bins: int, label: str) -> None:
    bins = reliability_bins(y_true, probs, n_bins)
    centres, width = (bins["lower"] + bins["upper"]) / 2, 1.0 / n_bins
    filled = bins["count"] > 0
    ax.bar(centres[filled], bins["accuracy"][filled], width=width, edgecolor="black", label="accuracy")
    ax.bar(
        centres[filled],
        (bins["confidence"] - bins["accuracy"])[filled],
        bottom=bins["accuracy"][filled],
        width=width,
        fill=False,
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    ece = expected_calibration_error(y_true, probs, n_bins)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Top-1 confidence", ylabel="Accuracy")
    ax.set_title(f"{label}: ECE {ece:.3f} ({n_bins} bins)")
    ax.legend(loc="upper left", fontsize=9)


def plot_reliability_diagram(
    y_true: Sequence | np.ndarray,
    probs: np.ndarray,
    n_bins: int = 15,
    calibrated_probs: np.ndarray | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Reliability diagram (accuracy per top-1 confidence bin) with the ECE in the title.

    Pass ``calibrated_probs`` (e.g. after :func:`helpers.metrics.apply_temperature`) to draw a second panel
    after temperature scaling beside the first.
    """
    panels = [("Model" if calibrated_probs is None else "Before temperature scaling", probs)]
    if calibrated_probs is not None:
        panels.append(("After temperature scaling", calibrated_probs))
    fig = Figure(figsize=(5.5 * len(panels), 5), layout="constrained")
    for ax, (label, panel_probs) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        _reliability_panel(ax, y_true, panel_probs, n_bins, label)
    save_figure(fig, save_path)
    return fig


def plot_training_history(
    history_df: pd.DataFrame,
    metric_names: Sequence[str] = ("accuracy", "balanced_accuracy"),
    selection_metric: str | None = "val_balanced_accuracy",
    save_path: str | Path | None = None,
) -> Figure:
    """Loss, each of ``metric_names`` (train and ``val_`` curves) and the learning rate, where present.

    Columns missing from ``history_df`` are skipped. When ``selection_metric`` is a column, its best
    (maximum, or minimum for a loss) epoch is marked on every panel.
    """
    if len(history_df) == 0:
        raise ValueError("history_df is empty: there are no epochs to plot.")
    names = ["loss", *(m.removeprefix("val_") for m in metric_names)]
    panels = [(n, [c for c in (n, f"val_{n}") if c in history_df]) for n in dict.fromkeys(names)]
    panels += [(c, [c]) for c in ("lr", "learning_rate") if c in history_df]
    panels = [(name, columns) for name, columns in panels if columns]
    if not panels:
        raise ValueError(f"history_df has none of the columns to plot {names}; it has {list(history_df)}.")
    epochs = history_df.get("epoch", pd.Series(range(1, len(history_df) + 1), index=history_df.index))
    best = None
    if selection_metric in history_df and history_df[selection_metric].notna().any():
        values = history_df[selection_metric]
        best = epochs.loc[values.idxmin() if "loss" in selection_metric else values.idxmax()]
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    for ax, (name, columns) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for column in columns:
            ax.plot(epochs, history_df[column], marker="o", ms=3, label=column)
        if best is not None:
            ax.axvline(best, color="grey", ls=":", label=f"best {selection_metric}")
        if name in ("lr", "learning_rate"):
            ax.set_yscale("log")
        ax.set(xlabel="epoch", title=name.replace("_", " "))
        ax.legend(fontsize=8)
    save_figure(fig, save_path)
    return fig


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Image as float RGB in [0, 1] (uint8, [0, 1] floats and [0, 255] floats accepted; grey expanded)."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"each image must be (H, W), (H, W, 1) or (H, W, 3); got shape {arr.shape}.")
    return np.clip(arr / 255.0 if arr.max() > 1.0 else arr, 0.0, 1.0)


def _fit_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Heatmap scaled to [0, 1] and resized (bilinear) to the image size."""
    arr = np.asarray(heatmap, dtype=np.float32).squeeze()
    if arr.ndim != 2:
        raise ValueError(f"each heatmap must be 2-D (h, w); got shape {np.shape(heatmap)}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("heatmaps contain NaN or infinite values.")
    span = arr.max() - arr.min()
    arr = (arr - arr.min()) / span if span > 0 else np.zeros_like(arr)
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BILINEAR))


def plot_gradcam_grid(
    images: Sequence[np.ndarray],
    heatmaps: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    alpha: float = 0.45,
    ncols: int = 4,
    save_path: str | Path | None = None,
    masks: Sequence[np.ndarray] | None = None,
) -> Figure:
    """Each image with its heatmap (min-max scaled, resized to the image) overlaid in a colour map; with
    ``masks`` (bool, the image's size) the lesion's outline is drawn on it in white."""
    if len(images) == 0:
        raise ValueError("images is empty: pass at least one image.")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"got {len(images)} images and {len(masks)} masks; counts must match.")
    if len(heatmaps) != len(images) or (titles is not None and len(titles) != len(images)):
        n_titles = "no" if titles is None else len(titles)
        raise ValueError(
            f"got {len(images)} images, {len(heatmaps)} heatmaps and {n_titles} titles; counts must match."
        )
    ncols = max(1, min(ncols, len(images)))
    nrows = math.ceil(len(images) / ncols)
    aspect = np.shape(images[0])[0] / max(np.shape(images[0])[1], 1)  # rows sized to the first image
    fig = Figure(figsize=(3.2 * ncols, (3.2 * aspect + 0.4) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= len(images):
            continue
        rgb = _as_rgb(images[i])
        ax.imshow(rgb)
        ax.imshow(_fit_heatmap(heatmaps[i], *rgb.shape[:2]), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        if masks is not None and np.any(masks[i]) and not np.all(masks[i]):
            ax.contour(np.asarray(masks[i], dtype=float), levels=[0.5], colors="white", linewidths=1.5)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    save_figure(fig, save_path)
    return fig


def plot_shift_report(table: pd.DataFrame, save_path: str | Path | None = None) -> Figure:
    """Balanced accuracy under each shift of :func:`helpers.evaluate.shift_report` (bars: mild and strong),
    against the clean figure (solid line) and 95% of it (dotted)."""
    shifted = table[~table["shift"].isin(("clean", "mean of shifts"))]
    clean = float(table.loc[table["shift"] == "clean", "balanced_accuracy"].iloc[0])
    names = list(dict.fromkeys(shifted["shift"]))
    strengths = list(dict.fromkeys(shifted["strength"]))
    fig, ax = subplots(1, 1, figsize=(8, 0.45 * len(names) + 1.2))
    height = 0.8 / len(strengths)
    for i, strength in enumerate(strengths):
        rows = shifted[shifted["strength"] == strength].set_index("shift")
        values = rows.reindex(names)["balanced_accuracy"]
        y = np.arange(len(names)) + (i - (len(strengths) - 1) / 2) * height
        ax.barh(y, values, height, label=strength)
    ax.axvline(clean, color="black", label=f"clean ({clean:.3f})")
    ax.axvline(0.95 * clean, color="black", linestyle=":", label="95% of clean")
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("balanced accuracy")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("What a change of device may cost")
    save_figure(fig, save_path)
    return fig


def plot_shift_examples(
    image: np.ndarray, strength: str = "strong", save_path: str | Path | None = None
) -> Figure:
    """One uint8 image as it is and under every shift of :data:`helpers.shifts.SHIFTS` at ``strength``."""
    views = [("clean", np.asarray(image))] + [
        (name, apply_shift(np.asarray(image)[np.newaxis], name, strength)[0]) for name in SHIFTS
    ]
    cols = 5
    fig, axes = subplots(
        math.ceil(len(views) / cols), cols, figsize=(2.2 * cols, 2.4 * math.ceil(len(views) / cols))
    )
    for ax, (name, view) in zip(axes.flat, views, strict=False):
        ax.imshow(view)
        ax.set_title(name if name == "clean" else f"{name} ({strength})", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    save_figure(fig, save_path)
    return fig
