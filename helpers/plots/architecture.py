"""Figures for the model-architecture walkthrough: conv cost, compute per layer and by resolution, latency."""

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


def _type_legend(ax, tables: list[pd.DataFrame]) -> None:
    """A legend of the layer types (colours of :data:`TYPE_COLORS`) that occur in ``tables``."""
    present = {kind for t in tables for kind in t["type"]}
    kinds = [kind for kind in TYPE_COLORS if kind in present]
    ax.legend([Rectangle((0, 0), 1, 1, color=TYPE_COLORS[k]) for k in kinds], kinds, fontsize=8, loc="best")


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
    _type_legend(axes[0, 0], list(shown.values()))
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


def plot_macs_by_resolution(tables: dict[str, pd.DataFrame], save_path: str | Path | None = None) -> Figure:
    """MACs per image by the side of the map a layer writes, one panel per model (``layer_table`` outputs),
    stacked by layer type; dense layers (no map) in a last column. Shared axes, so the models compare."""

    def side(shape: str) -> str:
        dims = shape.split("x")
        return dims[0] if len(dims) == 3 else "dense"

    weighted = {name: t[t["macs"] > 0].assign(side=t["output_shape"].map(side)) for name, t in tables.items()}
    sides = sorted({s for t in weighted.values() for s in t["side"] if s != "dense"}, key=int, reverse=True)
    columns = [*sides, "dense"]
    fig, axes = subplots(1, len(weighted), figsize=(4 * len(weighted), 3.8), sharey=True, squeeze=False)
    pos = np.arange(len(columns))
    for ax, (name, t) in zip(axes[0], weighted.items(), strict=True):
        by = t.pivot_table(index="side", columns="type", values="macs", aggfunc="sum", fill_value=0)
        by = by.reindex(index=columns, fill_value=0) / 1e6
        bottom = np.zeros(len(columns))
        for kind in sorted(by.columns, key=lambda k: list(TYPE_COLORS).index(k) if k in TYPE_COLORS else 99):
            ax.bar(pos, by[kind], bottom=bottom, color=TYPE_COLORS.get(kind, "#7f7f7f"))
            bottom += by[kind].to_numpy()
        ax.set_xticks(pos, columns)
        ax.set_xlabel("output map side (px)")
        ax.set_title(f"{name}\n{t['macs'].sum() / 1e6:.1f} M MACs", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("million multiply-accumulates per image")
    _type_legend(axes[0, -1], list(weighted.values()))
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig
