"""Tests for helpers.evaluate.evaluate_model: a saved model evaluated on the synthetic dataset."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from model_utils import tiny_model

from helpers import evaluate as ev
from helpers import metrics, modelio
from helpers.classes import CLASS_NAMES
from helpers.data import load_metadata
from helpers.pipeline import load_images
from helpers.splits import data_fingerprint, split_by_lesion

IMG_SIZE = 32
SPLIT_SEED = 7
PROB_COLUMNS = [f"p_{name}" for name in CLASS_NAMES]


def _tiny_model() -> keras.Model:
    return tiny_model(IMG_SIZE)


def _assert_same(actual, expected, where: str = "metrics") -> None:
    """Nested dicts/lists equal, floats to 1e-9 (a CSV round trip may change the last bit)."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def metadata(synthetic_dir: Path) -> pd.DataFrame:
    return load_metadata(synthetic_dir, verbose=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, metadata: pd.DataFrame) -> Path:
    """A run folder as training leaves it: best.keras and a manifest (split seed 7, matching fingerprint)."""
    folder = tmp_path_factory.mktemp("models") / "tiny_run"
    folder.mkdir()
    _tiny_model().save(folder / "best.keras")
    fingerprint = data_fingerprint(split_by_lesion(metadata, seed=SPLIT_SEED))
    manifest = {"seed": SPLIT_SEED, "parameters": {"max_images": None}, "data": {"fingerprint": fingerprint}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def test_result(run_dir: Path, synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval_test")
    return ev.evaluate_model(run_dir / "best.keras", synthetic_dir, out_dir=out, cache=False, verbose=False)


def test_writes_metrics_and_predictions(test_result, run_dir: Path, metadata: pd.DataFrame):
    predictions = pd.read_csv(test_result.out_dir / "predictions.csv")
    expected_ids = split_by_lesion(metadata, seed=SPLIT_SEED).query("split == 'test'")["image_id"]
    assert list(predictions.columns) == ["image_id", "true", "predicted", *PROB_COLUMNS]
    assert sorted(predictions["image_id"]) == sorted(expected_ids)  # the run's split, rebuilt from its seed
    assert np.allclose(predictions[PROB_COLUMNS].sum(axis=1), 1.0)
    saved = json.loads((test_result.out_dir / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["n_images"] == len(expected_ids)
    assert saved["model_path"] == str((run_dir / "best.keras").resolve())
    assert saved["split_matches_training"] is True
    assert saved["img_size"] == IMG_SIZE and saved["tta"] is False
    headline = test_result.headline()
    assert list(headline.index) == ["model", "majority baseline"]
    assert headline.loc["model", "accuracy"].startswith(f"{saved['accuracy']:.3f} [")
    recomputed = metrics.compute_metrics(predictions["true"], predictions[PROB_COLUMNS].to_numpy())
    _assert_same({key: saved[key] for key in recomputed}, json.loads(json.dumps(recomputed)))


def test_input_size_comes_from_the_model(test_result):
    # the synthetic images are 600x450; they were decoded at the 32 px the model takes
    assert test_result.img_size == IMG_SIZE
    assert test_result.images.shape == (len(test_result.frame), IMG_SIZE, IMG_SIZE, 3)
    assert Path(test_result.metrics["model_path"]).name == "best.keras"


def test_temperature_fitted_on_validation(test_result):
    calibration = test_result.metrics["calibration"]
    assert calibration["fitted_on"] == "val" and calibration["n_fit_images"] == len(test_result.val_frame)
    assert set(test_result.val_frame["split"]) == {"val"}
    val_probs = ev.predict_probs(test_result.model, test_result.val_images)
    temperature = metrics.fit_temperature(val_probs, test_result.val_frame["dx"])
    assert test_result.metrics["temperature"] == pytest.approx(temperature, rel=1e-6)
    expected = metrics.apply_temperature(test_result.probs, temperature)
    np.testing.assert_allclose(test_result.calibrated_probs, expected, rtol=1e-6)
    y = test_result.y_true
    assert calibration["ece_after"] == pytest.approx(metrics.expected_calibration_error(y, expected))
    assert calibration["ece_before"] == pytest.approx(test_result.metrics["ece"])
    images, labels = test_result.validation_set()
    assert images is test_result.val_images and list(labels) == list(test_result.val_frame["dx"])


def test_tta_averages_flips(run_dir: Path, synthetic_dir: Path, tmp_path: Path):
    result = ev.evaluate_model(
        run_dir / "best.keras",
        synthetic_dir,
        split="val",
        tta=True,
        out_dir=tmp_path,
        cache=False,
        verbose=False,
    )
    images, model = result.images, result.model
    views = [images, images[:, :, ::-1], images[:, ::-1]]
    expected = np.mean([model.predict(np.ascontiguousarray(v), verbose=0) for v in views], axis=0)
    plain = ev.predict_probs(model, images)
    assert result.probs.shape == plain.shape == (len(result.frame), len(CLASS_NAMES))
    np.testing.assert_allclose(result.probs, expected, atol=1e-6)
    assert np.abs(result.probs - plain).max() > 1e-3
    assert result.metrics["tta"] is True
    assert result.metrics["temperature"] is None  # not fitted on the split being evaluated


def test_split_all_on_isic_onehot_ground_truth(
    run_dir: Path, metadata: pd.DataFrame, tmp_path: Path, recwarn
):
    """An external test set in the ISIC 2018 layout (one-hot CSV, no split): every image is evaluated."""
    picked = metadata.groupby("dx").head(2)
    folder = tmp_path / "isic2018_test"
    folder.mkdir()
    onehot = pd.DataFrame({"image": picked["image_id"]})
    for name in CLASS_NAMES:
        onehot[name.upper()] = (picked["dx"] == name).astype(float)
    onehot.to_csv(folder / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    for path in picked["path"]:
        shutil.copy(path, folder)
    result = ev.evaluate_model(
        run_dir / "best.keras", folder, split="all", out_dir=tmp_path / "out", cache=False, verbose=False
    )
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(picked["image_id"])
    assert dict(zip(predictions["image_id"], predictions["true"], strict=True)) == dict(
        zip(picked["image_id"], picked["dx"], strict=True)
    )
    assert result.metrics["split"] == "all" and result.metrics["split_matches_training"] is None
    assert not [w for w in recwarn if "trained on" in str(w.message)], "an external set is not warned about"


def test_split_all_on_the_training_data_warns(run_dir: Path, synthetic_dir: Path, tmp_path: Path):
    with pytest.warns(
        UserWarning, match=r"split='all' evaluates every image of the data this model was trained"
    ):
        result = ev.evaluate_model(
            run_dir / "best.keras", synthetic_dir, split="all", max_images=14, out_dir=tmp_path, cache=False,
            verbose=False,
        )  # fmt: skip
    assert result.metrics["n_images"] == 14


def test_max_images_caps_stratified(test_result, metadata: pd.DataFrame):
    split_df, matches = ev.training_split(metadata, {"seed": SPLIT_SEED})
    capped = ev.select_split(split_df, "test", max_images=7)
    assert matches is None
    assert len(capped) == 7 and set(capped["split"]) == {"test"}
    assert capped["dx"].nunique() == min(7, split_df.query("split == 'test'")["dx"].nunique())


def test_fingerprint_mismatch_warns(metadata: pd.DataFrame):
    manifest = {"seed": SPLIT_SEED, "data": {"fingerprint": "0" * 64, "source": "/elsewhere"}}
    with pytest.warns(UserWarning, match="not the data the model was trained on"):
        _, matches = ev.training_split(metadata, manifest)
    assert matches is False


def test_test_split_added_after_training_matches(metadata: pd.DataFrame):
    """DermaMNIST's case: trained on a folder of train and val images, evaluated once the withheld test split
    is added to it. The run's train and val rows are unchanged, so no warning and the split matches."""
    with_test = split_by_lesion(metadata, seed=SPLIT_SEED)
    trained_on = with_test[with_test["split"] != "test"]
    manifest = {"seed": SPLIT_SEED, "data": {"fingerprint": data_fingerprint(trained_on)}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_df, matches = ev.training_split(with_test, manifest)
    assert matches is True
    assert split_df["split"].tolist() == with_test["split"].tolist()


def test_pick_examples(test_result):
    predictions = test_result.predictions
    confidence = predictions[PROB_COLUMNS].max(axis=1)
    for correct in (True, False):
        pool = predictions[(predictions["true"] == predictions["predicted"]) == correct]
        picked = ev.pick_examples(predictions, correct=correct, per_class=1)
        assert sorted(picked["true"]) == sorted(pool["true"].unique())  # one per class present
        best = confidence[pool.index].groupby(pool["true"]).max()  # the most confident of each class
        assert confidence[picked.index].to_numpy() == pytest.approx(best[picked["true"]].to_numpy())


def test_gradcam_examples(test_result):
    images, heatmaps, titles = ev.gradcam_examples(test_result, correct=False, per_class=1)
    picked = ev.pick_examples(test_result.predictions, correct=False, per_class=1)
    np.testing.assert_array_equal(images, test_result.images[picked.index.to_numpy()])
    assert [h.shape for h in heatmaps] == [(IMG_SIZE, IMG_SIZE)] * len(picked)
    assert all(h.min() >= 0.0 and h.max() <= 1.0 for h in heatmaps)
    first = picked.iloc[0]
    confidence = first[PROB_COLUMNS].max()
    assert (
        titles[0]
        == f"{first['image_id']}\ntrue {first['true']}, predicted {first['predicted']} ({confidence:.2f})"
    )


def test_latest_model_path(run_dir: Path):
    assert modelio.latest_model_path(run_dir.parent) == run_dir / "best.keras"
    with pytest.raises(FileNotFoundError, match="No trained model"):
        modelio.latest_model_path(run_dir)


# ------------------------------------------------------------------------------------------ bad input
def test_split_not_in_data(run_dir: Path, synthetic_dir: Path, metadata: pd.DataFrame, tmp_path: Path):
    csv = tmp_path / "two_splits.csv"
    two = metadata[["image_id", "dx"]].assign(split=np.where(np.arange(len(metadata)) % 2, "train", "val"))
    two.to_csv(csv, index=False)
    not_present = r"split 'test' is not present in the data \(its splits: \['train', 'val'\]"
    # this split is not the run's, so evaluate_model also warns that the data differs from training's
    with pytest.raises(ValueError, match=not_present), pytest.warns(UserWarning, match="not the data"):
        ev.evaluate_model(
            run_dir / "best.keras", synthetic_dir, metadata_csv=csv, out_dir=tmp_path, verbose=False
        )


def test_unknown_split_name(run_dir: Path, synthetic_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="split must be one of"):
        ev.evaluate_model(run_dir / "best.keras", synthetic_dir, split="testing", out_dir=tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_unreadable_manifest_is_ignored_with_a_warning(tmp_path: Path):
    assert modelio.read_manifest(tmp_path / "best.keras") == {}
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.warns(UserWarning, match="Ignoring unreadable run manifest"):
        assert modelio.read_manifest(tmp_path / "best.keras") == {}


def test_held_out_clinic_run_is_evaluated_on_that_clinic(synthetic_dir: Path, tmp_path: Path):
    """A run trained without one source is evaluated on exactly that source's images: the manifest records
    the split and evaluation rebuilds it (not the lesion-aware default)."""
    from train_utils import run_training

    run = run_training(synthetic_dir, tmp_path, tmp_path / "run", epochs=1, held_out_source="rosendahl")
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["data"]["split"]["method"] == "source"
    assert manifest["data"]["split"]["held_out"] == "rosendahl"
    result = ev.evaluate_model(
        run.best_model_path, synthetic_dir, split="test", out_dir=tmp_path, verbose=False
    )
    held_out = load_metadata(synthetic_dir, verbose=False).query("dataset == 'rosendahl'")
    assert result.metrics["split_matches_training"] is True
    assert sorted(result.frame["image_id"]) == sorted(held_out["image_id"])


def _external_test_folder(synthetic_dir: Path, folder: Path) -> Path:
    """The synthetic images as an external test set: every row has split 'test' (no train rows)."""
    folder.mkdir()
    meta = pd.read_csv(synthetic_dir / "HAM10000_metadata.csv").assign(split="test")
    meta.to_csv(folder / "HAM10000_metadata.csv", index=False)
    for part in synthetic_dir.glob("HAM10000_images_part_*"):
        (folder / part.name).symlink_to(part, target_is_directory=True)
    return folder


def test_int8_calibration_of_an_external_test_set_uses_the_training_data(
    run_dir: Path, synthetic_dir: Path, tmp_path: Path
):
    """Evaluating a folder whose rows are all 'test': calibration images come from the training data named
    in the run manifest, never from the images under test; without it, int8 is skipped with the reason."""
    external = _external_test_folder(synthetic_dir, tmp_path / "external")
    model_dir = tmp_path / "model"
    shutil.copytree(run_dir, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["data"]["source"] = str(synthetic_dir)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    result = ev.evaluate_model(model_dir / "best.keras", external, out_dir=tmp_path / "out", verbose=False)
    images, where = ev.calibration_images(result, n=10)
    assert where == f"the train split of {synthetic_dir}"
    trained = ev.training_split(load_metadata(synthetic_dir, verbose=False), manifest)[0]
    train_ids = set(trained.loc[trained["split"] == "train", "image_id"])
    assert images.shape == (10, IMG_SIZE, IMG_SIZE, 3)
    expected = load_images(trained.loc[trained["split"] == "train", "path"].tolist(), IMG_SIZE, cache=False)
    assert all(any(np.array_equal(image, known) for known in expected) for image in images)
    assert len(train_ids) < len(result.frame)  # the external set is every image, the train split a part

    (model_dir / "manifest.json").unlink()
    result = ev.evaluate_model(model_dir / "best.keras", external, out_dir=tmp_path / "out2", verbose=False)
    assert ev.calibration_images(result, n=10) == (
        None,
        "int8 export skipped: no training images to calibrate on (it has no run manifest).",
    )
