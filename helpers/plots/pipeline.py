"""Figures about the input pipeline: a batch, augmentations of one image, cache timing, throughput."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from helpers.classes import CLASS_NAMES
from helpers.plots.common import save_figure, subplots


def _as_uint8(images: np.ndarray) -> np.ndarray:
    """0..255 pixels (any dtype, tensors included) as displayable uint8."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32)), 0, 255).astype(np.uint8)


def plot_batch(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    max_images: int = 16,
    ncols: int = 8,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Grid of the first ``max_images`` images of a batch (0..255 pixels), each titled with its class code."""
    images, labels = _as_uint8(images)[:max_images], np.asarray(labels)[:max_images]
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image)
        ax.set_title(CLASS_NAMES[int(label)], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_augmentation_grid(
    image: np.ndarray,
    augment_fn: Callable[..., np.ndarray],
    n: int = 11,
    seed: int = 0,
    ncols: int = 6,
    save_path: str | Path | None = None,
) -> Figure:
    """The original ``image`` (S, S, 3) followed by ``n`` random augmentations of it.

    ``augment_fn(batch, seed)`` is called once on ``n`` copies of the image with ``seed=(seed, 0)``; it must
    augment each copy independently (as :func:`helpers.pipeline.augment_images` does).
    """
    copies = np.repeat(np.asarray(image)[None], n, axis=0)
    augmented = _as_uint8(augment_fn(copies, (seed, 0)))
    panels = [_as_uint8(image), *augmented]
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(1.8 * ncols, 1.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, panel) in enumerate(zip(axes.flat, panels, strict=False)):
        ax.imshow(panel)
        ax.set_title("original" if i == 0 else f"augmented {i}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_cache_timing(
    first_s: float, second_s: float, n_images: int, save_path: str | Path | None = None
) -> Figure:
    """Bar chart: seconds to get ``n_images`` ready by decoding (first pass) vs. from the cache (second)."""
    fig, ax = subplots(figsize=(6, 2.6))
    seconds = [first_s, second_s]
    bars = ax.barh(
        ["first pass\n(decode + resize)", "second pass\n(.npy cache)"], seconds, color=["C1", "C2"]
    )
    for bar, s in zip(bars, seconds, strict=True):
        ax.annotate(
            f" {s:.2f} s  ({n_images / max(s, 1e-9):,.0f} img/s)",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=9,
        )
    ax.set(xlabel="seconds", title=f"Preparing {n_images} images", xlim=(0, max(seconds) * 1.6))
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_throughput(images_per_s: Mapping[str, float], save_path: str | Path | None = None) -> Figure:
    """Horizontal bars of images per second for each named pipeline (or model) configuration."""
    names, values = list(images_per_s), list(images_per_s.values())
    fig, ax = subplots(figsize=(6.5, 0.6 * len(names) + 1.2))
    bars = ax.barh(names, values, color=[f"C{i}" for i in range(len(names))])
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(
            f" {v:,.0f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=9
        )
    ax.set(xlabel="images / second", title="Throughput", xlim=(0, max(values) * 1.25))
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_mixed_batch(
    images: np.ndarray,
    soft_labels: np.ndarray,
    max_images: int = 8,
    ncols: int = 4,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Mixed training images (Mixup or CutMix, :mod:`helpers.mixing`), each titled with the classes of its
    soft label and their shares (e.g. ``mel 0.63 + nv 0.37``)."""
    images, soft = _as_uint8(images)[:max_images], np.asarray(soft_labels, dtype=np.float64)[:max_images]
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, soft, strict=False):
        ax.imshow(image)
        order = [int(c) for c in np.argsort(label)[::-1] if label[c] > 0.005][:2]
        ax.set_title(" + ".join(f"{CLASS_NAMES[c]} {label[c]:.2f}" for c in order), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig
