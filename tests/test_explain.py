"""Does the model look at the lesion? Grad-CAM on the default architecture, lesion masks in the pipeline, and
helpers.evaluate.explanation_report against the masks (pointing game, energy inside, baseline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import evaluate as ev
from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX
from helpers.data import load_metadata
from helpers.explain import (
    background_ratio,
    centred_blob,
    energy_inside,
    gradcam,
    gradcam_layer,
    gradcam_maps,
    miss_place,
    pointing_hit,
)
from helpers.models import build_model, dihedral_view
from helpers.pipeline import AugmentConfig, load_images, load_masks, make_dataset
from helpers.plots.evaluation import plot_gradcam_grid
from helpers.splits import split_by_lesion

SIZE = 64


# ------------------------------------------------------------------------------ the scores, by hand
def test_pointing_game_with_its_tolerance_band():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    heat = np.zeros((20, 20))
    heat[7, 7] = 1.0
    assert pointing_hit(heat, mask, 0)
    heat[:] = 0
    heat[7, 12] = 1.0  # 3 px right of the lesion
    assert not pointing_hit(heat, mask, 2) and pointing_hit(heat, mask, 3)


def test_energy_inside_and_background_ratio():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    heat = np.zeros((10, 10))
    heat[:, :5], heat[:, 5:] = 0.8, 0.2
    assert energy_inside(heat, mask) == pytest.approx(0.8)
    assert background_ratio(heat, mask) == pytest.approx(0.25)
    assert np.isnan(energy_inside(np.zeros((10, 10)), mask))
    assert np.isnan(background_ratio(heat, np.ones((10, 10), bool)))


@pytest.mark.parametrize(
    ("peak", "place"),
    [
        ((20, 24), "next to the lesion"),  # 4 px right of the lesion, near_px 4
        ((30, 30), "dark frame"),  # a dark pixel (hair, ink, vignette) away from the lesion
        ((2, 20), "image border"),  # on skin in the outer eighth
        ((32, 10), "skin"),
    ],
)
def test_miss_place_says_where_a_missing_heatmap_peaks(peak: tuple[int, int], place: str):
    image = np.full((40, 40, 3), 180, np.uint8)
    image[28:32, 28:32] = 40
    mask = np.zeros((40, 40), bool)
    mask[15:25, 10:21] = True
    heat = np.zeros((40, 40))
    heat[peak] = 1.0
    assert miss_place(image, heat, mask, near_px=4) == place
    assert miss_place(image, np.zeros((40, 40)), mask, near_px=4) == "no heatmap"
    with pytest.raises(ValueError, match="same size"):
        miss_place(image, heat[:20], mask, near_px=4)


def test_centred_blob_covers_the_asked_area_and_peaks_in_the_middle():
    blob = centred_blob(101, 0.2)
    assert np.unravel_index(blob.argmax(), blob.shape) == (50, 50)
    assert (blob >= np.exp(-0.5)).mean() == pytest.approx(0.2, abs=0.01)  # the one-sigma disc


# ------------------------------------------------------------------------------ Grad-CAM on the default
def _evidence_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey noise with one square a third of the side somewhere: red for mel, blue for nv (the only class
    evidence)."""
    images = rng.integers(90, 140, (n, SIZE, SIZE, 3)).astype(np.uint8)
    labels = rng.integers(0, 2, n)
    masks = np.zeros((n, SIZE, SIZE), bool)
    side = SIZE // 3
    for i, label in enumerate(labels):
        y, x = rng.integers(0, SIZE - side, 2)
        images[i, y : y + side, x : x + side] = (230, 30, 30) if label else (30, 30, 230)
        masks[i, y : y + side, x : x + side] = True
    return images, np.where(labels, CLASS_TO_INDEX["mel"], CLASS_TO_INDEX["nv"]), masks


@pytest.fixture(scope="module")
def evidence_model() -> keras.Model:
    """The default architecture, trained briefly on :func:`_evidence_images`."""
    keras.utils.set_random_seed(0)
    images, labels, _ = _evidence_images(512, np.random.default_rng(0))
    model = build_model("fast", SIZE)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(images.astype("float32"), labels, epochs=6, batch_size=32, verbose=0)
    return model


def test_gradcam_of_the_default_peaks_on_the_class_evidence(evidence_model):
    """Grad-CAM reads stage 3's output (8x8 here and at 128 px): its heatmap must peak on the square that
    decides the class. The last stage (4x4) is the reason it does not read that one: it points less well."""
    assert gradcam_layer(evidence_model).name == "stage3_res_out"
    images, labels, masks = _evidence_images(40, np.random.default_rng(1))
    predicted = evidence_model.predict(images.astype("float32"), verbose=0).argmax(axis=1)
    assert (predicted == labels).mean() >= 0.9, "the model must have learned the squares"

    def pointing(layer: str | None) -> float:
        heatmaps = gradcam_maps(evidence_model, images, labels, layer)
        return np.mean([pointing_hit(h, m, tolerance_px=0) for h, m in zip(heatmaps, masks, strict=True)])

    assert pointing(None) >= 0.9
    assert pointing("stage4_res_out") < pointing(None) - 0.15
    heatmaps = gradcam_maps(evidence_model, images, labels)
    assert np.mean([energy_inside(h, m) for h, m in zip(heatmaps, masks, strict=True)]) > 2 * masks.mean()


def test_batched_gradcam_equals_one_image_at_a_time(evidence_model):
    images, labels, _ = _evidence_images(5, np.random.default_rng(2))
    batched = gradcam_maps(evidence_model, images, labels, batch_size=2)
    single = np.stack(
        [gradcam(evidence_model, image, int(k)) for image, k in zip(images, labels, strict=True)]
    )
    np.testing.assert_allclose(batched, single, atol=1e-5)
    with pytest.raises(ValueError, match="class_indices must hold one class in 0..6 per image"):
        gradcam_maps(evidence_model, images, [7] * 5)


# ------------------------------------------------------------------------------ masks in the pipeline
def test_masks_are_resized_as_their_image_whatever_their_size(tmp_path: Path):
    image = np.zeros((150, 200, 3), np.uint8)
    image[30:90, 40:120] = 255  # a white rectangle
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[..., 0]).resize((100, 75), Image.NEAREST).save(tmp_path / "a_segmentation.png")
    (mask,) = load_masks([tmp_path / "a_segmentation.png"], SIZE, cache=False, progress=False)
    (decoded,) = load_images([tmp_path / "a.png"], SIZE, cache=False, progress=False)
    assert mask.dtype == bool
    assert ((decoded[..., 0] > 127) == mask).mean() > 0.97


def test_dataset_with_masks_gives_each_mask_its_image_s_geometry(synthetic_dir: Path):
    """Flips and transposes (colour off): each augmented image is one dihedral view of its image, and its
    mask is the same view of its mask."""
    df = load_metadata(synthetic_dir, verbose=False).head(16)
    flips_only = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0)
    ds = make_dataset(df, SIZE, 16, False, cache=False, progress=False, augment=flips_only, with_masks=True)
    batch = next(iter(ds))
    assert set(batch) == {"image", "mask", "label"} and batch["mask"].dtype == "bool"
    images = load_images(df["path"].tolist(), SIZE, cache=False, progress=False)
    masks = load_masks(df["mask_path"].tolist(), SIZE, cache=False, progress=False)
    views = set()
    for i in range(len(df)):
        image = batch["image"][i].numpy().astype(np.uint8)
        view = next(v for v in range(8) if np.array_equal(dihedral_view(images[i : i + 1], v)[0], image))
        assert np.array_equal(dihedral_view(masks[i : i + 1, ..., None], view)[0, ..., 0], batch["mask"][i])
        views.add(view)
    assert len(views) > 2  # the draws differ between images


def test_dataset_with_masks_refuses_rows_without_one(synthetic_dir: Path):
    df = load_metadata(synthetic_dir, verbose=False).head(4)
    df.loc[2, "mask_path"] = None
    with pytest.raises(ValueError, match=r"needs a lesion mask for every row; rows without one: \[2\]"):
        make_dataset(df, SIZE, 4, False, cache=False, progress=False, with_masks=True)


# ------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def odd_masks(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The synthetic test split with odd masks: one missing, one empty, one all lesion, one smaller."""
    df = split_by_lesion(load_metadata(synthetic_dir, verbose=False), seed=0)
    folder = tmp_path_factory.mktemp("masks")
    test = df.index[df["split"] == "test"]
    df.loc[test[0], "mask_path"] = None
    for row, value in ((test[1], 0), (test[2], 255)):
        Image.new("L", (600, 450), value).save(folder / f"{row}.png")
        df.loc[row, "mask_path"] = str(folder / f"{row}.png")
    small = folder / "small.png"
    Image.open(df.loc[test[3], "mask_path"]).resize((120, 90), Image.NEAREST).save(small)
    df.loc[test[3], "mask_path"] = str(small)
    return df


def test_explanation_report_per_class_and_overall(evidence_model, odd_masks: pd.DataFrame):
    table = ev.explanation_report(evidence_model, odd_masks, split="test", cache=False, verbose=False)
    assert list(table.index) == [*CLASS_NAMES, "overall"]
    assert list(table.columns) == list(ev.EXPLANATION_COLUMNS)
    assert table.attrs["skipped"] == {"no mask": 1, "empty mask": 1, "mask covers everything": 1}
    n_test = int((odd_masks["split"] == "test").sum())
    assert table.loc["overall", "n_images"] == n_test - 3  # the resized mask is used
    assert table.loc["overall", "n_correct"] + table.loc["overall", "n_wrong"] == n_test - 3
    assert table["n_images"].iloc[:-1].sum() == table.loc["overall", "n_images"]
    assert table.attrs["tolerance_px"] == pytest.approx(ev.POINTING_TOLERANCE * SIZE)
    explained = ev.explain_split(evidence_model, odd_masks, "test", cache=False, verbose=False)
    recomputed = np.mean(
        [energy_inside(h, m) for h, m in zip(explained.heatmaps, explained.masks, strict=True)]
    )
    assert table.loc["overall", "energy_inside"] == pytest.approx(recomputed)
    blob = centred_blob(SIZE, explained.masks.mean())
    hits = [pointing_hit(blob, m, ev.POINTING_TOLERANCE * SIZE) for m in explained.masks]
    assert table.loc["overall", "baseline_pointing_game"] == pytest.approx(np.mean(hits))
    images, heatmaps, masks, titles = ev.worst_explanations(explained, n=3)
    energies = [energy_inside(h, m) for h, m in zip(heatmaps, masks, strict=True)]
    assert energies == sorted(energies) and energies[0] == pytest.approx(
        min(energy_inside(h, m) for h, m in zip(explained.heatmaps, explained.masks, strict=True))
    )
    assert len(plot_gradcam_grid(images, heatmaps, titles, masks=masks).axes) >= 3


def test_explanation_report_without_any_mask_says_what_to_do(evidence_model, odd_masks: pd.DataFrame):
    with pytest.raises(ValueError, match=r"No test image has a usable lesion mask \(\{'no mask': \d+"):
        ev.explanation_report(evidence_model, odd_masks.drop(columns="mask_path"), cache=False, verbose=False)


def test_masks_of_the_synthetic_default_are_its_lesions(synthetic_dir: Path, tmp_path: Path):
    df = load_metadata(synthetic_dir, verbose=False)
    assert df["mask_path"].notna().all()
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dir, copy)
    assert load_metadata(copy, verbose=False).attrs["validation"]["lesion_masks"] == len(df)
