"""Shared fixtures: the real data in ../shared (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import matplotlib
import pytest
from robustness_utils import make_removable

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


@pytest.fixture()
def open_tmp_path() -> Path:
    """A temporary folder every user can enter (tests of unreadable files drop root's privileges)."""
    folder = Path(tempfile.mkdtemp(prefix="dermsep-open-"))
    folder.chmod(0o755)
    yield folder
    make_removable(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def model_files() -> dict[str, Path]:
    """An untrained 32 px default model as .keras and .tflite, its BatchNorm statistics set on colour blocks
    so that its outputs vary per image; in a folder every user can read."""
    import keras
    import numpy as np
    from model_utils import set_batchnorm_statistics

    from helpers.export import export_tflite
    from helpers.models import build_model

    keras.utils.set_random_seed(3)
    model = build_model("default", 32)
    blocks = np.random.default_rng(0).integers(0, 256, (32, 4, 4, 3))
    set_batchnorm_statistics(model, np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2))
    folder = Path(tempfile.mkdtemp(prefix="dermsep-models-"))
    folder.chmod(0o755)
    model.save(folder / "model.keras")
    yield {"keras": folder / "model.keras", "tflite": export_tflite(model, folder / "model.tflite")}
    shutil.rmtree(folder, ignore_errors=True)
