"""Figures for the model-architecture walkthrough: conv cost, compute per layer, latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from helpers.plots.common import save_figure, subplots

TYPE_COLORS = {
    "Conv2D": "#1f77b4",
    "DepthwiseConv2D": "#ff7f0e",
    "SeparableConv2D": "#2ca02c",
    "Dense": "#9467bd",
}


def plot_conv_cost(table: pd.DataFrame, save_path: str | Path | None = None) -> Figure:
    """Params and MACs of a standard vs a depthwise-separable conv, one group of bars per output width.

    ``table`` comes from ``helpers.models.conv_cost_table``.
    """
    fig, axes = subplots(1, 2, figsize=(11, 4))
    pos = np.arange(len(table))
    for ax, what in zip(axes, ("params", "macs"), strict=True):
        ax.bar(pos - 0.2, table[f"standard_{what}"], 0.4, label="standard 3x3 conv", color="#1f77b4")
        ax.bar(
            pos + 0.2, table[f"separable_{what}"], 0.4, label="depthwise 3x3 + pointwise 1x1", color="#2ca02c"
        )
        ax.set_xticks(pos, [str(c) for c in table["c_out"]])
        ax.set_xlabel("output channels")
        ax.set_yscale("log")
        ax.set_title("parameters" if what == "params" else "multiply-accumulates (MACs)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"Cost of one conv layer ({table['c_in'].iloc[0]} input channels, {table['hw'].iloc[0]} px map)"
    )
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_macs_per_layer(tables: dict[str, pd.DataFrame], save_path: str | Path | None = None) -> Figure:
    """Horizontal bars of MACs per weighted layer for each model (``layer_table`` outputs), shared x-axis."""
    shown = {name: t[t["macs"] > 0] for name, t in tables.items()}
    heights = [max(len(t), 1) for t in shown.values()]
    fig, axes = subplots(
        len(shown),
        1,
        figsize=(10, 0.22 * sum(heights) + 1.5 * len(shown)),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (name, t) in zip(axes[:, 0], shown.items(), strict=True):
        labels = [f"{r.layer}  [{r.output_shape}]" for r in t.itertuples()]
        colors = [TYPE_COLORS.get(kind, "#7f7f7f") for kind in t["type"]]
        ax.barh(np.arange(len(t)), t["macs"] / 1e6, color=colors)
        ax.set_yticks(np.arange(len(t)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{name}: {t['macs'].sum() / 1e6:.1f} M MACs in total")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("million multiply-accumulates per image")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in TYPE_COLORS.values()]
    axes[0, 0].legend(handles, list(TYPE_COLORS), fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig


def plot_latency(latencies_ms: dict[str, float], save_path: str | Path | None = None) -> Figure:
    """Bar chart of single-image latency (ms) per model or block, annotated with the values."""
    fig, ax = subplots(figsize=(6, 3.5))
    names = list(latencies_ms)
    values = [latencies_ms[n] for n in names]
    bars = ax.bar(names, values, color=["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"][: len(names)])
    ax.bar_label(bars, fmt="%.2f ms")
    ax.margins(y=0.15)
    ax.set_ylabel("median latency per image (ms)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig
