"""Shared figure helpers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure


def save_figure(fig: matplotlib.figure.Figure, path: str | Path | None, dpi: int = 120) -> None:
    """Save ``fig`` as PNG to ``path`` (creating folders); do nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
