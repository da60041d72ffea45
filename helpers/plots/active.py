"""Active-learning figures: balanced accuracy against the number of labels, per query strategy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.plots.common import save_figure

STRATEGY_STYLES: dict[str, dict] = {
    "entropy": {"color": "tab:blue"},
    "margin": {"color": "tab:orange"},
    "balanced_entropy": {"color": "tab:green"},
    "random": {"color": "black", "ls": "--"},
    "stratified": {"color": "tab:grey", "ls": "-."},
}
"""Line style per strategy (the baselines dashed); other strategies get matplotlib's next colour."""
_BANDS = ("range", "sd")


def plot_learning_curves(
    curve: pd.DataFrame,
    full_data: float | None = None,
    target_share: float = 0.95,
    reached: Mapping[str, float | None] | None = None,
    band: str = "range",
    max_labels: int | None = None,
    budget: int | None = None,
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Mean balanced accuracy over seeds against the number of labels, one line per strategy, with a band
    over the seeds (``band="range"``: min to max; ``"sd"``: mean ± one standard deviation).

    ``curve``: one row per strategy, seed and round (columns ``strategy, seed, labels,
    balanced_accuracy``). ``full_data``: the score with every label, drawn dotted, and ``target_share`` of
    it dashed. ``reached``: labels each strategy needs to reach that target, added to the legend.
    ``max_labels``: the right end of the x axis (curves run on beyond it are cut there); ``budget``: a
    vertical line where the labelling budget ends (a baseline may run on past it). Strategies are drawn in
    :data:`STRATEGY_STYLES` order.
    """
    missing = [c for c in ("strategy", "seed", "labels", "balanced_accuracy") if c not in curve]
    if missing or curve.empty:
        raise ValueError(
            f"curve needs rows with columns strategy, seed, labels, balanced_accuracy; lacks {missing}."
        )
    if band not in _BANDS:
        raise ValueError(f"band must be one of {_BANDS}, got {band!r}.")
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    order = sorted(
        curve["strategy"].unique(),
        key=lambda s: list(STRATEGY_STYLES).index(s) if s in STRATEGY_STYLES else len(STRATEGY_STYLES),
    )
    for strategy in order:
        rows = curve[curve["strategy"] == strategy]
        stats = rows.groupby("labels")["balanced_accuracy"].agg(["mean", "std", "min", "max", "count"])
        low, high = _band(stats, band)
        line = ax.plot(
            stats.index,
            stats["mean"],
            lw=1.8,
            label=_label(strategy, stats, reached),
            **STRATEGY_STYLES.get(strategy, {}),
        )[0]
        ax.fill_between(stats.index, low, high, color=line.get_color(), alpha=0.15, lw=0)
    if full_data is not None:
        ax.axhline(full_data, color="tab:red", ls=":", lw=1, label=f"every label: {full_data:.3f}")
        target = target_share * full_data
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"{target_share:.0%} of it: {target:.3f}")
    if budget is not None:
        ax.axvline(budget, color="grey", ls=":", lw=1, label=f"budget: {budget:,} labels")
    ax.set_xlim(left=0, right=max_labels)
    ax.set(xlabel="labelled images", ylabel="balanced accuracy (val)", title=title or "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, save_path)
    return fig


def _band(stats: pd.DataFrame, band: str) -> tuple[np.ndarray, np.ndarray]:
    if band == "range":
        return stats["min"].to_numpy(), stats["max"].to_numpy()
    spread = stats["std"].fillna(0).to_numpy()
    return stats["mean"].to_numpy() - spread, stats["mean"].to_numpy() + spread


def _label(strategy: str, stats: pd.DataFrame, reached: Mapping[str, float | None] | None) -> str:
    seeds = int(stats["count"].max())
    label = f"{strategy} ({seeds} seed{'s' if seeds > 1 else ''})"
    if reached is None or strategy not in reached:
        return label
    labels = reached[strategy]
    if labels is None or not np.isfinite(labels):
        return f"{label}: target not reached"
    return f"{label}: target at {int(labels):,} labels"
