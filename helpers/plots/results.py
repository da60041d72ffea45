"""Benchmark figures: predictors side by side on the headline scores (drawn from a benchmark's JSON rows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from helpers.plots.common import save_figure, subplots

METRIC_LABELS: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
    "macro_auc": "macro AUC",
    "mel_sensitivity": "melanoma sensitivity",
}
"""The headline scores a benchmark row holds, with their axis labels."""


def plot_predictor_comparison(
    rows: Sequence[Mapping],
    title: str,
    metrics: Sequence[str] = tuple(METRIC_LABELS),
    save_path: str | Path | None = None,
) -> Figure:
    """Grouped bars: one group per score in ``metrics``, one bar per row (``{"predictor": name, score:
    value}``), each bar labelled with its value."""
    if not rows:
        raise ValueError("rows is empty: pass the benchmark rows to compare.")
    missing = sorted({m for row in rows for m in metrics if row.get(m) is None})
    if missing:
        raise ValueError(f"Every row needs the scores {list(metrics)}; missing {missing}.")
    fig, ax = subplots(1, 1, figsize=(9, 3.6))
    width = 0.8 / len(rows)
    x = np.arange(len(metrics))
    for i, row in enumerate(rows):
        values = [float(row[m]) for m in metrics]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=row["predictor"])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, [METRIC_LABELS.get(m, m) for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=min(len(rows), 3), frameon=False
    )
    save_figure(fig, save_path)
    return fig
