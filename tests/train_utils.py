"""Test-only training settings and helpers shared by the training and fault tests (tiny, fast, exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SETTINGS = {"img_size": 32, "batch_size": 16, "model_name": "cpu_light_efficient_cnn", "seed": 42}
CLI_SETTINGS = ["--img-size", "32", "--batch-size", "16", "--model-name", "cpu_light_efficient_cnn"]


def run_training(data_dir: Path, workdir: Path, run_dir: Path, epochs: int, **kwargs):
    """:func:`helpers.train.train` with :data:`SETTINGS`, quiet, figures and cache under ``workdir``."""
    from helpers.train import train

    return train(
        data_dir,
        epochs=epochs,
        run_dir=run_dir,
        figures_dir=workdir / "figures" / run_dir.name,
        verbose=0,
        **{"cache": workdir / "cache", **SETTINGS, **kwargs},
    )


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Whether two weight lists are bit-for-bit equal."""
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
