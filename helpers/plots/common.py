"""Shared figure helpers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure

from helpers.files import atomic_write


def subplots(
    *args, figsize: tuple[float, float] | None = None, **kwargs
) -> tuple[matplotlib.figure.Figure, object]:
    """Like ``plt.subplots`` but the figure is not registered with pyplot, so scripts and tests that draw
    many never accumulate open figures; a notebook shows the returned figure when it is a cell's result."""
    fig = matplotlib.figure.Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig: matplotlib.figure.Figure, path: str | Path | None, dpi: int = 120) -> None:
    """Save ``fig`` as PNG to ``path`` (creating folders) atomically: a failed or interrupted save leaves the
    previous file, never half of one. Does nothing when ``path`` is None."""
    if path is None:
        return
    with atomic_write(Path(path)) as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
