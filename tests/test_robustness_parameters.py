"""Catalogue of bad parameters and model files, through train, make_dataset, evaluate_model and predict_image,
and a representative few through the notebooks (the error the user sees in the executed notebook).

Each is refused before any work with a message naming the parameter or file, the value and what is expected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import pandas as pd
import papermill
import pytest
from PIL import Image
from train_utils import SETTINGS

from helpers.data import load_metadata
from helpers.evaluate import evaluate_model
from helpers.pipeline import make_dataset
from helpers.predict import predict_image
from helpers.train import train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DATA_DIR_MISSING = r"data_dir '{}' does not exist or is not a folder\. Point it at the folder holding"

# case -> (train keyword arguments, message)
TRAIN_PARAMETERS = {
    "img_size_zero": ({"img_size": 0}, r"img_size must be a positive int >= 16 \(pixels per side\), got 0"),
    "img_size_text": ({"img_size": "64"}, r"img_size must be a positive int >= 16 .*got '64'"),
    "img_size_float": ({"img_size": 32.0}, r"img_size must be a positive int >= 16 .*got 32\.0"),
    "img_size_too_small_for_the_model": ({"img_size": 8}, r"img_size must be a positive int >= 16 .*got 8"),
    "batch_size_zero": ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    "batch_size_negative": ({"batch_size": -8}, "batch_size must be a positive int, got -8"),
    "epochs_zero": (
        {"epochs": 0},
        r"epochs must be an int >= 1 \(the total number of epochs of the run\), got 0",
    ),
    "epochs_float": ({"epochs": 2.5}, r"epochs must be an int >= 1 .*got 2\.5"),
    "model_name_unknown": (
        {"model_name": "resnet50"},
        "Unknown model_name 'resnet50'; choose one of default",
    ),
    "learning_rate_zero": ({"learning_rate": 0}, "learning_rate must be a positive number, got 0"),
    "max_images_zero": (
        {"max_images": 0},
        r"max_images must be None \(all images\) or a positive int, got 0",
    ),
    "patience_negative": ({"patience": -1}, "patience must be an int >= 0, got -1"),
    "lr_factor_one": (
        {"lr_factor": 1.0},
        r"lr_factor must be a number between 0 and 1 \(exclusive\), got 1.0",
    ),
    "min_lr_text": ({"min_lr": "1e-6"}, "min_lr must be a number >= 0, got '1e-6'"),
    "seed_none": ({"seed": None}, "seed must be an int >= 0, got None"),
    "seed_negative": ({"seed": -1}, "seed must be an int >= 0, got -1"),
    "split_seed_text": ({"split_seed": "42"}, "split_seed must be an int >= 0, got '42'"),
}


@pytest.mark.parametrize("case", list(TRAIN_PARAMETERS))
def test_bad_training_parameter_is_refused_before_any_work(case, tmp_path):
    kwargs, message = TRAIN_PARAMETERS[case]
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "no-such-data", run_dir=run_dir, **{"epochs": 2, **SETTINGS, **kwargs})
    assert not run_dir.exists(), "refused before the run folder (or the data) is touched"


# case -> (make_dataset keyword arguments, message)
DATASET_PARAMETERS = {
    "img_size_zero": ({"img_size": 0}, "img_size must be a positive integer, got 0"),
    "img_size_negative": ({"img_size": -4}, "img_size must be a positive integer, got -4"),
    "img_size_float": ({"img_size": 16.5}, r"img_size must be a positive integer, got 16\.5"),
    "img_size_text": ({"img_size": "16"}, "img_size must be a positive integer, got '16'"),
    "img_size_bool": ({"img_size": True}, "img_size must be a positive integer, got True"),
    "batch_size_zero": ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    "batch_size_float": ({"batch_size": 2.0}, r"batch_size must be a positive integer, got 2\.0"),
    "augment_text": ({"augment": "yes"}, "augment must be None, True, False or an AugmentConfig, got 'yes'"),
}


@pytest.mark.parametrize("case", list(DATASET_PARAMETERS))
def test_bad_dataset_parameter_is_refused(case, tmp_path):
    kwargs, message = DATASET_PARAMETERS[case]
    df = pd.DataFrame({"path": [str(tmp_path / "never-read.jpg")], "dx": ["mel"]})
    args = {"img_size": 16, "batch_size": 8, "training": True, "cache": tmp_path, "progress": False}
    with pytest.raises(ValueError, match=message):
        make_dataset(df, **(args | kwargs))


def test_bad_evaluation_batch_size_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        evaluate_model(tmp_path / "not-read.keras", tmp_path, batch_size=0, verbose=False)


# ------------------------------------------------------------------------------------------ paths
def test_nonexistent_data_dir_in_load_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=DATA_DIR_MISSING.format(tmp_path / "nope")):
        load_metadata(tmp_path / "nope")


def test_nonexistent_data_dir_in_training(tmp_path):
    with pytest.raises(FileNotFoundError, match=DATA_DIR_MISSING.format(tmp_path / "nope")):
        train(tmp_path / "nope", run_dir=tmp_path / "run", epochs=1, verbose=0, **SETTINGS)


def test_nonexistent_data_dir_in_evaluation(tmp_path, model_files):
    with pytest.raises(FileNotFoundError, match=DATA_DIR_MISSING.format(tmp_path / "nope")):
        evaluate_model(model_files["keras"], tmp_path / "nope", out_dir=tmp_path, verbose=False)


MODEL_PATH_MISSING = r"model_path '{}' is not a file\. Pass the best\.keras of a training run"


def test_nonexistent_model_path_in_evaluation(synthetic_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=MODEL_PATH_MISSING.format(tmp_path / "nope.keras")):
        evaluate_model(tmp_path / "nope.keras", synthetic_dir, out_dir=tmp_path, verbose=False)


def test_nonexistent_model_path_in_prediction(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Model file not found: {tmp_path / 'nope.keras'}"):
        predict_image(tmp_path / "nope.keras", tmp_path / "x.jpg")


# ------------------------------------------------------------------------------------------ model files
def _save_model(path: Path, size: int = 16, classes: int = 7, channels: int = 3) -> Path:
    inputs = keras.Input((size, size, channels))
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(path)
    return path


def _image(tmp_path: Path) -> Path:
    Image.new("RGB", (40, 30), (200, 80, 60)).save(tmp_path / "lesion.jpg")
    return tmp_path / "lesion.jpg"


def test_corrupted_keras_file_in_evaluation(synthetic_dir, tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match=f"Cannot load Keras model {path}: .*Re-save or re-train it"):
        evaluate_model(path, synthetic_dir, out_dir=tmp_path, verbose=False)


@pytest.mark.parametrize("name", ["bad.keras", "bad.tflite"])
def test_corrupted_model_file_in_prediction(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ValueError, match=f"(?s)Cannot load .*{re.escape(str(path))}: .*(Re-save|Re-export)"):
        predict_image(path, _image(tmp_path))


def test_unsupported_model_suffix_in_prediction(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(
        ValueError, match=r"Unsupported model file .*model\.h5: expected a \.keras or \.tflite"
    ):
        predict_image(path, _image(tmp_path))


def test_model_for_another_number_of_classes_in_evaluation(synthetic_dir, tmp_path):
    path = _save_model(tmp_path / "five.keras", classes=5)
    with pytest.raises(ValueError, match=f"{path} has 5 outputs but there are 7 classes .*seven HAM10000"):
        evaluate_model(path, synthetic_dir, out_dir=tmp_path, verbose=False)


def test_model_for_another_number_of_classes_in_prediction(tmp_path):
    path = _save_model(tmp_path / "five.keras", classes=5)
    with pytest.raises(ValueError, match=f"{path} outputs 5 classes; expected 7 .*seven HAM10000 classes"):
        predict_image(path, _image(tmp_path))


def test_model_for_another_input_size_gets_images_at_its_size(tmp_path):
    result = predict_image(_save_model(tmp_path / "size24.keras", size=24), _image(tmp_path))
    assert result.image.shape == (24, 24, 3) and len(result.probabilities) == 7


@pytest.mark.parametrize("entry", ["evaluation", "prediction"])
def test_model_for_grayscale_input_is_refused(entry, synthetic_dir, tmp_path):
    path = _save_model(tmp_path / "gray.keras", channels=1)
    expected = rf"Model {path} cannot classify RGB images: .*square RGB input \(None, S, S, 3\), got"
    with pytest.raises(ValueError, match=expected):
        if entry == "evaluation":
            evaluate_model(path, synthetic_dir, out_dir=tmp_path, verbose=False)
        else:
            predict_image(path, _image(tmp_path))


# ------------------------------------------------------------------------------------------ notebooks
def _notebook_error(name: str, parameters: dict, out: Path) -> tuple[str, str]:
    """Execute a notebook that must fail; return the (exception name, message) its failing cell shows."""
    output = out / f"{name}.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters, cwd=str(NOTEBOOKS),
            progress_bar=False,
        )  # fmt: skip
    cells = json.loads(output.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1, "exactly one cell fails"
    return errors[0]["ename"], errors[0]["evalue"]


@pytest.mark.slow
def test_notebook_01_with_nonexistent_data_dir_shows_the_fix(tmp_path):
    name, message = _notebook_error("01_explore_metadata", {"data_dir": str(tmp_path / "nope")}, tmp_path)
    assert name == "FileNotFoundError"
    assert re.search(DATA_DIR_MISSING.format(tmp_path / "nope") + ".*data_dir='auto'", message)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"img_size": 8}, r"img_size must be an int >= 32 for efficientnet_lite0 .*got 8"),
        (
            {"recipe": "tuned2"},
            r"recipe must be None, a helpers.train.Recipe, a recipe .json file or one of "
            r"\['plain', 'transfer', 'tuned'\], got 'tuned2'",
        ),
    ],
)
def test_notebook_04_with_a_bad_parameter_shows_the_fix(synthetic_dir, tmp_path, bad, expected):
    parameters = {"data_dir": str(synthetic_dir), "run_dir": str(tmp_path / "run"), **bad}
    name, message = _notebook_error("04_train_and_resume", parameters, tmp_path)
    assert name == "ValueError" and re.search(expected, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_notebook_05_with_corrupted_model_shows_the_fix(synthetic_dir, tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"half a model")
    parameters = {"model_path": str(path), "data_dir": str(synthetic_dir), "out_dir": str(tmp_path / "out")}
    name, message = _notebook_error("05_evaluate", parameters, tmp_path)
    assert name == "ValueError" and f"Cannot load Keras model {path}" in message
    assert message.endswith("Re-save or re-train it.")
