"""helpers.augment's device changes and crops (each does what it says, a mask follows its image's geometry)
and class-balanced sampling in helpers.pipeline.make_dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.augment import AugmentConfig, augment_images
from helpers.classes import CLASS_NAMES
from helpers.data import load_metadata
from helpers.pipeline import make_dataset

SIZE = 32
OFF = {"dihedral": False, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}


def _run(images: np.ndarray, **options) -> np.ndarray:
    return augment_images(images, [3, 4], AugmentConfig(**{**OFF, **options})).numpy()


def _square(n: int = 8, side: int = 8) -> np.ndarray:
    """Grey images with a white centred square, its mask as a fourth channel."""
    x = np.full((n, SIZE, SIZE, 4), 100, np.uint8)
    x[..., 3] = 0
    lo = (SIZE - side) // 2
    x[:, lo : lo + side, lo : lo + side] = 255
    return x


def test_nothing_on_changes_nothing():
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(_run(images), images, atol=1e-3)


def test_zoom_in_crop_enlarges_and_zoom_out_shrinks_the_centre():
    x = _square()
    bright = (_run(x, scale=(0.25, 0.25), max_shift=0.0)[..., 0] > 200).sum(axis=(1, 2))
    assert bright == pytest.approx(64 * 4, rel=0.15)  # half the side shown: the square's area x4
    centre = _run(x, scale=(4.0, 4.0), max_shift=0.0)[:, 8:24, 8:24, 0] > 200  # borders: mirrored copies
    assert centre.sum(axis=(1, 2)) == pytest.approx(16, rel=0.3)  # twice the side shown: area / 4


def test_the_mask_channel_follows_crops_and_rotations_and_keeps_its_colour():
    out = _run(_square(), scale=(0.4, 1.0), aspect=0.3, rotation_degrees=180, dihedral=True, gains=0.3)
    image_square, mask = out[..., 0] > 200, out[..., 3] > 127.5
    assert (image_square == mask).mean() > 0.97
    assert set(np.unique(out[..., 3].round())) <= set(np.arange(256))  # no colour change: 0/255 resampled


def test_white_balance_and_gamma_change_the_colours_per_image():
    grey = np.full((16, SIZE, SIZE, 3), 128, np.uint8)
    balanced = _run(grey, gains=0.3)[:, 0, 0]
    ratios = balanced / 128.0
    assert ratios.min() >= np.exp(-0.3) - 0.01 and ratios.max() <= np.exp(0.3) + 0.01
    assert np.std(ratios[:, 0] - ratios[:, 2]) > 0.05  # channels differ: a colour cast
    toned = _run(grey, gamma=0.5)[:, 0, 0, 0]
    assert toned.min() < 120 < 136 < toned.max()


def test_hue_keeps_the_luma_and_vignette_darkens_the_corners():
    rng = np.random.default_rng(1)
    colourful = rng.integers(60, 200, (8, SIZE, SIZE, 3)).astype(np.uint8)
    luma = np.array([0.299, 0.587, 0.114])
    rotated = _run(colourful, hue=1.0)
    assert np.abs(rotated @ luma - colourful @ luma).mean() < 0.1  # (but where a channel is clipped)
    assert np.abs(rotated - colourful).max() > 10
    framed = _run(np.full((8, SIZE, SIZE, 3), 200, np.uint8), vignette=1.0)
    assert (framed[:, 0, 0] < 120).all() and (framed[:, SIZE // 2, SIZE // 2] > 190).all()


def test_blur_smooths_noise():
    noise = np.random.default_rng(2).integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.uint8)
    blurred = _run(noise, blur=1.0)
    assert blurred.std(axis=(1, 2, 3)).mean() < noise.std(axis=(1, 2, 3)).mean()


def test_class_sampling_balances_the_batches(synthetic_dir: Path):
    df = load_metadata(synthetic_dir, verbose=False)
    natural = df["dx"].value_counts(normalize=True)["nv"]
    ds = make_dataset(df, SIZE, 60, True, cache=False, progress=False, augment=False, class_sampling=0.0)
    labels = np.concatenate([y.numpy() for _, y in ds.repeat().take(10)])  # 600 draws: +-0.015 a class
    shares = pd.Series(labels).value_counts(normalize=True).reindex(range(len(CLASS_NAMES)), fill_value=0)
    assert natural > 0.4 and shares.max() < 0.25 and shares.min() > 0.07  # 1/7 each, about
    assert len(list(ds)) == len(df) // 60
