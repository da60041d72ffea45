"""Figures about the dataset: class balance, lesions, demographics, sample images, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from helpers.classes import CLASS_NAMES
from helpers.plots.common import save_figure, subplots


def plot_class_distribution(df: pd.DataFrame, save_path: str | Path | None = None) -> Figure:
    """Bar chart of images per class, annotated with counts and shares."""
    counts = df["dx"].value_counts().reindex(list(CLASS_NAMES), fill_value=0)
    fig, ax = subplots(figsize=(8, 3.8))
    bars = ax.bar(counts.index, counts.to_numpy(), color=sns.color_palette("deep", len(counts)))
    for bar, n in zip(bars, counts.to_numpy(), strict=True):
        ax.annotate(
            f"{n}\n{100 * n / counts.sum():.1f}%",
            (bar.get_x() + bar.get_width() / 2, n),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set(ylabel="images", title=f"Images per class (n = {counts.sum()})", ylim=(0, counts.max() * 1.25))
    save_figure(fig, save_path)
    return fig


def plot_images_per_lesion(df: pd.DataFrame, save_path: str | Path | None = None) -> Figure:
    """How many images each lesion has, overall and by class."""
    per_lesion = df.groupby("lesion_id").agg(dx=("dx", "first"), n=("image_id", "size"))
    fig, axes = subplots(1, 2, figsize=(10, 3.5))
    per_lesion["n"].value_counts().sort_index().plot.bar(ax=axes[0], color="tab:blue")
    axes[0].set(xlabel="images of the lesion", ylabel="lesions", title="Images per lesion")
    means = per_lesion.groupby("dx")["n"].mean().reindex(list(CLASS_NAMES))
    means.plot.bar(ax=axes[1], color="tab:orange")
    axes[1].set(xlabel="", ylabel="mean images per lesion", title="…by class")
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_demographics(df: pd.DataFrame, save_path: str | Path | None = None) -> Figure:
    """Age, sex, localization and diagnosis type (dx_type) by class, for the columns present."""
    panels = [c for c in ("age", "sex", "localization", "dx_type") if c in df.columns]
    fig, axes = subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 4), squeeze=False)
    order = [c for c in CLASS_NAMES if c in set(df["dx"])]
    for ax, column in zip(axes[0], panels, strict=False):
        if column == "age":
            sns.boxplot(data=df, x="dx", y="age", order=order, ax=ax, color="tab:blue")
            ax.set(title="Age by class", xlabel="")
        else:
            shares = pd.crosstab(df["dx"], df[column], normalize="index").reindex(order)
            if column == "localization":
                top = df[column].value_counts().index[:6]
                shares = shares[top].assign(other=1 - shares[top].sum(axis=1))
            shares.plot.bar(stacked=True, ax=ax, width=0.8, legend=False, colormap="tab20")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
            ax.set(title=f"{column} by class (share)", xlabel="", ylim=(0, 1))
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_sample_grid(
    df: pd.DataFrame, per_class: int = 4, seed: int = 0, save_path: str | Path | None = None
) -> Figure:
    """A few images of every class, one row per class."""
    rng = np.random.default_rng(seed)
    fig, axes = subplots(len(CLASS_NAMES), per_class, figsize=(2.2 * per_class, 1.7 * len(CLASS_NAMES)))
    for row, dx in enumerate(CLASS_NAMES):
        paths = df.loc[df["dx"] == dx, "path"].to_numpy()
        chosen = rng.choice(paths, size=min(per_class, len(paths)), replace=False) if len(paths) else []
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([])
            if col < len(chosen):
                with Image.open(chosen[col]) as img:
                    img.draft("RGB", (200, 150))
                    ax.imshow(ImageOps.exif_transpose(img).convert("RGB"))
            if col == 0:
                ax.set_ylabel(dx, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle("Sample images, one row per class", fontsize=11)
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_split_shares(df: pd.DataFrame, save_path: str | Path | None = None) -> Figure:
    """Each class's share of every split, side by side: a lesion-aware split keeps them level."""
    shares = pd.crosstab(df["dx"], df["split"], normalize="columns").reindex(list(CLASS_NAMES), fill_value=0)
    shares = shares[[s for s in ("train", "val", "test") if s in shares.columns]]
    fig, ax = subplots(figsize=(8, 3.5))
    (100 * shares).plot.bar(ax=ax, width=0.8)
    ax.set(ylabel="% of split", xlabel="", title="Class shares per split")
    save_figure(fig, save_path)
    return fig
