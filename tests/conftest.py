"""Shared fixtures: the real data in ../shared (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAM_DIR = SHARED_DATA / "ham10000"
DERMAMNIST_DIR = SHARED_DATA / "dermamnist"


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The real HAM10000 metadata + 175-image sample (skips when ../shared is absent)."""
    if not (HAM_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real data not available at {HAM_DIR}")
    return HAM_DIR


@pytest.fixture(scope="session")
def dermamnist_dir() -> Path:
    """DermaMNIST train/val at 28×28 (skips when ../shared is absent)."""
    if not (DERMAMNIST_DIR / "metadata.csv").is_file():
        pytest.skip(f"DermaMNIST not available at {DERMAMNIST_DIR}")
    return DERMAMNIST_DIR


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the HAM10000 layout, made once per test session."""
    from helpers.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "ham", n_images=120, seed=1)
