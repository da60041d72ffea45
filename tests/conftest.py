"""Shared fixtures: the real data in ../shared (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import json
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
HAM200_DIR = SHARED_DATA / "ham10000_200x150"
DERMAMNIST_DIR = SHARED_DATA / "dermamnist"


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The real HAM10000 metadata + 175-image sample (skips when ../shared is absent)."""
    if not (HAM_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real data not available at {HAM_DIR}")
    return HAM_DIR


@pytest.fixture(scope="session")
def ham200_dir() -> Path:
    """All 10,015 HAM10000 images at 200x150, Dataverse metadata and lesion masks (skips when absent)."""
    if not (HAM200_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real data not available at {HAM200_DIR}")
    return HAM200_DIR


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
    model = build_model("fast", 32)
    blocks = np.random.default_rng(0).integers(0, 256, (32, 4, 4, 3))
    set_batchnorm_statistics(model, np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2))
    folder = Path(tempfile.mkdtemp(prefix="dermsep-models-"))
    folder.chmod(0o755)
    model.save(folder / "model.keras")
    yield {"keras": folder / "model.keras", "tflite": export_tflite(model, folder / "model.tflite")}
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------ training runs (shared)
@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training tests' folder: runs, figures and the image cache they share."""
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="session")
def two_epochs(synthetic_dir: Path, workdir: Path):
    """A fresh 2-epoch run (kept untouched; tests copy it before changing it)."""
    from train_utils import run_training

    return run_training(synthetic_dir, workdir, workdir / "two", epochs=2)


@pytest.fixture(scope="session")
def continued(synthetic_dir: Path, workdir: Path, two_epochs):
    """A copy of the 2-epoch run continued to 3 epochs, after planting what a kill could leave behind.

    Its weights equal an uninterrupted 3-epoch run's (test_train checks it): the reference of the kill tests.
    Its snapshot's identity lacks "optimiser", as runs saved by earlier versions do: they still resume.
    """
    from train_utils import run_training

    run_dir = workdir / "continued"
    shutil.copytree(two_epochs.run_dir, run_dir)
    with open(run_dir / "history.csv", "a") as f:  # a row written before a kill, without its backup
        f.write("3,0.5,0.5,1.0,0.5,0.5,0.5,0.001,1.0\n")
    (run_dir / "backup" / ".tmp-0003-999").mkdir()  # a half-written snapshot
    (run_dir / "backup" / ".tmp-0003-999" / "state.weights.h5").write_bytes(b"partial")
    (run_dir / "backup" / "epoch-0009").mkdir()  # a folder without its state: never trusted
    (run_dir / ".best.keras.999.tmp").write_bytes(b"partial")  # a half-published best model
    state_path = run_dir / "backup" / "epoch-0002" / "state.json"  # as saved before "optimiser" was recorded
    state = json.loads(state_path.read_text())
    del state["identity"]["optimiser"]
    state_path.write_text(json.dumps(state))
    return run_training(synthetic_dir, workdir, run_dir, epochs=3)
