"""Where the project keeps data, models, figures and caches."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT: Path = Path(__file__).resolve().parents[1]
DATA_DIR: Path = PROJECT_ROOT / "data"
MODELS_DIR: Path = PROJECT_ROOT / "models"
VISUALIZATIONS_DIR: Path = PROJECT_ROOT / "visualizations"


def cache_dir() -> Path:
    """Directory for decoded-image caches (override with ``DERM_CACHE_DIR``)."""
    return Path(os.environ.get("DERM_CACHE_DIR", DATA_DIR / "cache"))


def resolve_input(path: str | Path) -> Path:
    """An input path as given when it exists (or is absolute), else relative to the project root when it
    exists there: a notebook (run in ``notebooks/``) and a shell in the project both find ``data/...``."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists() or not (PROJECT_ROOT / path).exists():
        return path
    return PROJECT_ROOT / path


def resolve_output(path: str | Path | None) -> Path | None:
    """The notebooks' output folders (``run_dir``, ``out_dir``): a relative path is under the project root
    (not under ``notebooks/``, where they run), an absolute one is kept; None stays None (the default)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
