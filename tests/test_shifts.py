"""helpers.shifts (each device shift does what it says) and helpers.evaluate.shift_report."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from model_utils import tiny_model

from helpers import evaluate as ev
from helpers import shifts
from helpers.data import load_metadata
from helpers.metrics import compute_metrics
from helpers.modelio import keras_predict
from helpers.pipeline import load_images
from helpers.plots.evaluation import plot_shift_examples, plot_shift_report
from helpers.splits import split_by_lesion

SIZE = 32


def _grey(value: int = 128, n: int = 2) -> np.ndarray:
    return np.full((n, SIZE, SIZE, 3), value, dtype=np.uint8)


def test_colour_cast_warms_red_up_and_blue_down():
    out = shifts.apply_shift(_grey(100), "colour cast", "strong")
    assert out[0, 0, 0].tolist() == [120, 100, 80]


def test_brightness_and_gamma():
    assert shifts.apply_shift(_grey(100), "darker", "mild")[0, 0, 0, 0] == 80
    assert shifts.apply_shift(_grey(250), "brighter", "strong")[0, 0, 0, 0] == 255  # clipped, not wrapped
    assert shifts.apply_shift(_grey(128), "gamma", "strong")[0, 0, 0, 0] == round(255 * (128 / 255) ** 1.7)


def test_dermoscope_frame_blackens_outside_the_circle():
    out = shifts.apply_shift(_grey(200), "dermoscope frame", "mild")
    assert out[0, 0, 0].tolist() == [0, 0, 0]  # corner
    assert out[0, SIZE // 2, SIZE // 2].tolist() == [200, 200, 200]  # centre
    assert out[0, SIZE // 2, 0].tolist() == [200, 200, 200]  # the edge's middle: radius 0.5 keeps it
    strong = shifts.apply_shift(_grey(200), "dermoscope frame", "strong")
    assert strong[0, SIZE // 2, 0].tolist() == [0, 0, 0]


def test_zoom_in_enlarges_the_centre_and_zoom_out_shrinks_it():
    image = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    image[:, 12:20, 12:20] = 255  # an 8-px bright square in the centre
    bright = (shifts.apply_shift(image, "zoom in", "strong")[0, :, :, 0] > 127).sum()
    assert bright == pytest.approx(64 * 1.5**2, rel=0.2)
    out = shifts.apply_shift(image, "zoom out", "strong")[0, :, :, 0]
    assert (out[8:24, 8:24] > 127).sum() == pytest.approx(64 * 0.7**2, rel=0.3)


def test_jpeg_and_defocus_lose_detail():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    for name in ("jpeg", "defocus"):
        mild = shifts.apply_shift(noise, name, "mild").astype(float)
        strong = shifts.apply_shift(noise, name, "strong").astype(float)
        assert 0 < np.abs(mild - noise).mean() < np.abs(strong - noise).mean(), name
        assert strong.std() < noise.std(), name


@pytest.mark.parametrize(
    ("name", "strength", "images", "message"),
    [
        ("sepia", "mild", _grey(), "Unknown shift 'sepia'"),
        ("jpeg", "extreme", _grey(), "Unknown strength 'extreme'"),
        ("jpeg", "mild", _grey().astype(np.float32), "must be a uint8 batch"),
        ("jpeg", "mild", _grey()[0], "must be a uint8 batch"),
    ],
)
def test_bad_shift_arguments_are_refused(name, strength, images, message):
    with pytest.raises(ValueError, match=message):
        shifts.apply_shift(images, name, strength)


@pytest.fixture(scope="module")
def data(synthetic_dir: Path) -> pd.DataFrame:
    return split_by_lesion(load_metadata(synthetic_dir, verbose=False), seed=0)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_model(SIZE, seed=1)


def test_shift_report_scores_each_shift_against_clean(model, data):
    table = ev.shift_report(model, data, split="test", cache=False, verbose=False)
    assert table["shift"].tolist() == ["clean", *[n for n in shifts.SHIFTS for _ in (0, 1)], "mean of shifts"]
    test = data[data["split"] == "test"]
    images = load_images(test["path"].tolist(), SIZE, cache=False, progress=False)
    clean = compute_metrics(test["dx"], keras_predict(model, images), n_bootstrap=0)
    assert table.loc[0, "balanced_accuracy"] == pytest.approx(clean["balanced_accuracy"])
    jpeg = shifts.apply_shift(images, "jpeg", "strong")
    expected = compute_metrics(test["dx"], keras_predict(model, jpeg), n_bootstrap=0)["macro_auc"]
    row = table[(table["shift"] == "jpeg") & (table["strength"] == "strong")].iloc[0]
    assert row["macro_auc"] == pytest.approx(expected)
    assert table.iloc[-1]["balanced_accuracy"] == pytest.approx(table.iloc[1:-1]["balanced_accuracy"].mean())
    assert (table["relative_balanced_accuracy"] * clean["balanced_accuracy"]).to_numpy() == pytest.approx(
        table["balanced_accuracy"].to_numpy()
    )
    assert len(plot_shift_report(table).axes[0].patches) == 18
    assert len(plot_shift_examples(images[0]).axes) == 10
