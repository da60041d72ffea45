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
