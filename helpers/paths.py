"""Where the project reads its data and writes models, figures and caches.

Inputs are read from the project (``data/``). Everything the toolkit writes (``models/``, ``visualizations/``,
``data/cache/``, the generated ``data/synthetic/``) goes under :data:`WORK_DIR` (:func:`work_dir`): the
project folder itself on a normal checkout, ``/kaggle/working`` in a Kaggle session, where the project and the
data are read-only inputs. Nothing is ever written into a dataset folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT: Path = Path(__file__).resolve().parents[1]
DATA_DIR: Path = PROJECT_ROOT / "data"


def kaggle_root() -> Path:
    """Kaggle's folder: ``/kaggle`` (``input/`` read-only datasets, ``working/`` writable); override with
    ``DERM_KAGGLE_ROOT`` (the tests simulate a session in a temporary folder)."""
    return Path(os.environ.get("DERM_KAGGLE_ROOT", "/kaggle"))


def work_dir() -> Path:
    """Where the toolkit writes: ``DERM_WORK_DIR`` when set, else ``/kaggle/working`` when it exists (a Kaggle
    session), else the project folder."""
    if os.environ.get("DERM_WORK_DIR"):
        return Path(os.environ["DERM_WORK_DIR"]).expanduser().resolve()
    working = kaggle_root() / "working"
    return working if working.is_dir() else PROJECT_ROOT


WORK_DIR: Path = work_dir()
"""The writable folder, fixed when the package is imported (set ``DERM_WORK_DIR`` before that)."""
MODELS_DIR: Path = WORK_DIR / "models"
VISUALIZATIONS_DIR: Path = WORK_DIR / "visualizations"


def cache_dir() -> Path:
    """Directory for decoded-image caches: ``<work dir>/data/cache`` (override with ``DERM_CACHE_DIR``)."""
    return Path(os.environ.get("DERM_CACHE_DIR", WORK_DIR / "data" / "cache"))


def resolve_input(path: str | Path) -> Path:
    """An input path as given when it exists (or is absolute), else relative to the project root when it
    exists there: a notebook (run in ``notebooks/``) and a shell in the project both find ``data/...``."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists() or not (PROJECT_ROOT / path).exists():
        return path
    return PROJECT_ROOT / path


def resolve_output(path: str | Path | None) -> Path | None:
    """The notebooks' output folders (``run_dir``, ``out_dir``): a relative path is under :data:`WORK_DIR`
    (the project root on a checkout; not under ``notebooks/``, where they run), an absolute one is kept; None
    stays None (the default)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else WORK_DIR / path
