"""TFLite export: each quantization converts and runs, Keras parity, int8 agreement, report, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from model_utils import set_batchnorm_statistics

from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX
from helpers.data import load_metadata
from helpers.export import (
    QUANTIZATIONS,
    REPORT_COLUMNS,
    export_report,
    export_tflite,
    keras_predict,
    load_interpreter,
    representative_sample,
    tflite_latency,
    tflite_predict,
)
from helpers.models import build_model, predictor
from helpers.pipeline import load_images
from helpers.splits import split_by_lesion

SIZE = 28


def _dihedral(images: np.ndarray) -> np.ndarray:
    """The 8 flips/rotations of every image (more validation images at no cost)."""
    rotations = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return np.concatenate(rotations + [r[:, :, ::-1] for r in rotations])


@pytest.fixture(scope="module")
def data(synthetic_dir: Path) -> dict:
    df = split_by_lesion(load_metadata(synthetic_dir, verbose=False), seed=0)
    images = load_images(df["path"].tolist(), SIZE, cache=False, progress=False)
    train = (df["split"] == "train").to_numpy()
    labels = df["dx"].map(CLASS_TO_INDEX).to_numpy()
    return {
        "df": df,
        "train_images": images[train],
        "train_labels": labels[train],
        "val_images": _dihedral(images[~train]),
        "val_labels": np.tile(labels[~train], 8),
    }


@pytest.fixture(scope="module")
def trained_model(data: dict) -> keras.Model:
    """The default model briefly trained on the synthetic training split (with its 8 flips/rotations).

    Op determinism on, as train() turns it on: the model must not depend on which test files ran before."""
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    model = build_model("fast", SIZE)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", jit_compile=False)
    images, labels = _dihedral(data["train_images"]).astype(np.float32), np.tile(data["train_labels"], 8)
    model.fit(images, labels, epochs=3, batch_size=16, verbose=0)
    set_batchnorm_statistics(model, data["train_images"])
    return model


@pytest.fixture(scope="module")
def report(trained_model: keras.Model, data: dict, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out_dir = tmp_path_factory.mktemp("export")
    return export_report(
        trained_model, data["val_images"], data["val_labels"], out_dir, data["train_images"], runs=5
    )


def _path(report: pd.DataFrame, fmt: str) -> Path:
    return Path(report.set_index("format").loc[fmt, "path"])


def test_report_table(report: pd.DataFrame) -> None:
    assert list(report.columns) == list(REPORT_COLUMNS)
    assert report["format"].tolist() == ["keras"] + [f"tflite_{q}" for q in QUANTIZATIONS]
    assert all(Path(p).is_file() for p in report["path"])
    sizes = report.set_index("format")["size_kb"]
    assert sizes["tflite_int8"] < sizes["tflite_float16"] < sizes["tflite_float32"]
    assert (report["latency_ms"] > 0).all()
    assert report["accuracy"].between(0, 1).all() and report["top1_agreement"].between(0, 1).all()
    saved = pd.read_csv(_path(report, "tflite_int8").parent / "export_report.csv")
    assert saved["format"].tolist() == report["format"].tolist()


def test_report_without_calibration_images_leaves_int8_out(trained_model, data: dict, tmp_path: Path) -> None:
    images = data["val_images"][:16]
    table = export_report(trained_model, images, None, tmp_path, representative_images=None, runs=2)
    assert table["format"].tolist() == ["keras", "tflite_float32", "tflite_float16"]
    assert not (tmp_path / "model_int8.tflite").exists()


def test_model_learned_something(report: pd.DataFrame) -> None:
    """Agreement is only meaningful when the model's predictions are not constant."""
    assert report.set_index("format").loc["keras", "accuracy"] > 1.5 / len(CLASS_NAMES)


def test_float32_parity(report: pd.DataFrame, trained_model: keras.Model, data: dict) -> None:
    images = data["val_images"][:64]
    probs = tflite_predict(_path(report, "tflite_float32"), images)
    reference = keras_predict(trained_model, images.astype(np.float32))
    assert probs.shape == (len(images), len(CLASS_NAMES))
    assert np.abs(probs - reference).max() < 1e-4
    assert report.set_index("format").loc["tflite_float32", "top1_agreement"] == 1.0


def test_float16_close(report: pd.DataFrame) -> None:
    row = report.set_index("format").loc["tflite_float16"]
    assert row["max_abs_diff"] < 0.05 and row["top1_agreement"] >= 0.99


def test_int8_agreement(report: pd.DataFrame, trained_model: keras.Model, data: dict) -> None:
    """int8 keeps every confident prediction; it may only flip near-ties of this briefly trained model."""
    row = report.set_index("format").loc["tflite_int8"]
    assert row["top1_agreement"] >= 0.95
    interpreter = load_interpreter(_path(report, "tflite_int8"))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8  # raw 0..255 pixels
    images = data["val_images"]
    probs = tflite_predict(interpreter, images)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=0.02)
    reference = keras_predict(trained_model, images.astype(np.float32))
    assert np.abs(probs - reference).mean() < 0.02
    top_two = np.sort(reference, axis=1)[:, -2:]
    confident = top_two[:, 1] - top_two[:, 0] > 0.25
    assert confident.mean() > 0.5  # the check below covers most images
    assert (probs.argmax(axis=1) == reference.argmax(axis=1))[confident].all()


@pytest.fixture(scope="module")
def cpu_light_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model]:
    """The original CPU_Light_Efficient_CNN, untrained, saved as a .keras file."""
    keras.utils.set_random_seed(1)
    model = build_model("cpu_light_efficient_cnn", SIZE)
    path = tmp_path_factory.mktemp("cpu_light") / "model.keras"
    model.save(path)
    return path, model


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_cpu_light_model_exports_from_keras_file(
    quantization: str, cpu_light_file: tuple[Path, keras.Model], tmp_path: Path
) -> None:
    keras_file, model = cpu_light_file
    images = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    path = export_tflite(keras_file, tmp_path / "m.tflite", quantization, images)
    probs = tflite_predict(path, images)
    assert probs.shape == (8, len(CLASS_NAMES)) and np.allclose(probs.sum(axis=1), 1.0, atol=0.02)
    if quantization == "float32":
        assert np.abs(probs - keras_predict(model, images)).max() < 1e-4


def test_tta_predictor_exports_its_weights_once(
    trained_model: keras.Model, data: dict, tmp_path: Path
) -> None:
    """An 8-view predictor runs its network once on a stacked batch: its int8 file is about the network's
    size (not 8 copies), and it agrees with the Keras predictor on single images and batches."""
    wrapped = predictor(trained_model, views=8, class_weights=np.linspace(0.5, 2, len(CLASS_NAMES)))
    calibration = data["train_images"][:20]
    single = export_tflite(trained_model, tmp_path / "single.tflite", "int8", calibration)
    tta = export_tflite(wrapped, tmp_path / "tta.tflite", "int8", calibration)
    assert os.path.getsize(tta) < 1.2 * os.path.getsize(single)
    images = data["val_images"][:6]
    reference = keras_predict(wrapped, images)
    float32 = export_tflite(wrapped, tmp_path / "tta32.tflite", "float32")
    np.testing.assert_allclose(tflite_predict(float32, images), reference, atol=1e-5)
    np.testing.assert_allclose(tflite_predict(float32, images[2]), reference[2:3], atol=1e-5)
    assert (tflite_predict(tta, images).argmax(1) == reference.argmax(1)).mean() >= 5 / 6


def test_tflite_predict_single_image_and_batches(report: pd.DataFrame, data: dict) -> None:
    path = _path(report, "tflite_float32")
    batched = tflite_predict(path, data["val_images"][:5], batch_size=2)
    single = tflite_predict(path, data["val_images"][3])
    np.testing.assert_allclose(single[0], batched[3], atol=1e-6)


def test_representative_sample(data: dict) -> None:
    df = data["df"]
    sample = representative_sample(df, SIZE, n=14, seed=0)
    assert sample.shape == (14, SIZE, SIZE, 3) and sample.dtype == np.uint8
    train_rows = df[df["split"] == "train"]
    assert len(representative_sample(df, SIZE, n=10_000)) == len(train_rows)


# ----------------------------------------------------------------------------------------------- atomic write
def _tiny_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x))


def test_failed_write_leaves_previous_file_and_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.tflite"
    target.write_bytes(b"previous export")

    real_replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        if Path(dst) == target:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export_tflite(_tiny_model(), target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_failed_conversion_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.tflite"
    with pytest.raises(ValueError, match="representative_images"):
        export_tflite(_tiny_model(), target, "int8")
    assert not target.exists()


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_quantization(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quantization must be one of"):
        export_tflite(_tiny_model(), tmp_path / "m.tflite", "int4")


def test_representative_images_of_wrong_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"representative_images must be \(N, 28, 28, 3\).*img_size=28"):
        export_tflite(_tiny_model(), tmp_path / "m.tflite", "int8", np.zeros((4, 32, 32, 3), np.uint8))


def test_model_with_non_square_input(tmp_path: Path) -> None:
    inputs = keras.Input((SIZE, SIZE + 4, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x))
    with pytest.raises(ValueError, match="square RGB input"):
        export_tflite(model, tmp_path / "m.tflite")


def test_not_a_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"weights\.h5.*\.keras"):
        export_tflite(path, tmp_path / "m.tflite")


def test_missing_keras_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.keras"):
        export_tflite(tmp_path / "absent.keras", tmp_path / "m.tflite")


def test_corrupt_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras"):
        export_tflite(path, tmp_path / "m.tflite")


def test_missing_tflite_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.tflite"):
        tflite_predict(tmp_path / "absent.tflite", np.zeros((1, SIZE, SIZE, 3)))


def test_corrupt_tflite_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.tflite"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="broken.tflite"):
        tflite_predict(path, np.zeros((1, SIZE, SIZE, 3)))


def test_images_of_wrong_size(report: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"images must be \(N, 28, 28, 3\)"):
        tflite_predict(_path(report, "tflite_float32"), np.zeros((2, 32, 32, 3)))


def test_latency_needs_runs(report: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="runs must be >= 1"):
        tflite_latency(_path(report, "tflite_float32"), runs=0)


def test_representative_sample_without_train_rows(data: dict) -> None:
    with pytest.raises(ValueError, match="No rows with split == 'train'"):
        representative_sample(data["df"].assign(split="val"), SIZE)


def test_report_labels_length_mismatch(tmp_path: Path) -> None:
    images = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="labels has 3 entries but images has 4"):
        export_report(_tiny_model(), images, [0, 1, 2], tmp_path, images)
