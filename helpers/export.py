"""TFLite export (float32, float16, full-integer int8), TFLite inference and a Keras-vs-TFLite parity report.

Quantization choices:

- ``"float32"``: the Keras graph as is (BatchNorm folded); parity with Keras to ~1e-6.
- ``"float16"``: weights stored as float16 (half the file), computed in float32.
- ``"int8"``: full-integer model (weights and activations int8, calibrated on ``representative_images``).
  Its **input is uint8 raw pixels** (0..255, what our models take: they rescale inside), so a device feeds
  the decoded image bytes unchanged; its **output stays float32 probabilities** (the int8 softmax dequantized
  in the model, in steps of 1/256). :func:`tflite_predict` handles any input/output quantization anyway.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from helpers.clinical import encode_metadata
from helpers.files import atomic_write
from helpers.metrics import label_ids
from helpers.modelio import keras_predict, load_keras_model, model_input_size, model_inputs, save_keras_model
from helpers.models import IMAGE_INPUT, METADATA_INPUT, measure_latency
from helpers.pipeline import load_images

QUANTIZATIONS: tuple[str, ...] = ("float32", "float16", "int8")
REPRESENTATIVE_IMAGES = 500
"""Default number of training images used to calibrate int8 activation ranges (``benchmarks/dermamnist.py``
measures 0.975 top-1 agreement with Keras for its saved predictor, 0.955 for the network alone)."""


# --------------------------------------------------------------------------------------------- loading
def load_interpreter(
    path_or_interpreter: str | Path | tf.lite.Interpreter, num_threads: int | None = None
) -> tf.lite.Interpreter:
    """A ready TFLite interpreter for a ``.tflite`` file; an interpreter is passed through."""
    if not isinstance(path_or_interpreter, (str, os.PathLike)):
        return path_or_interpreter
    path = Path(path_or_interpreter)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model file not found: {path}")
    try:
        interpreter = _new_interpreter(str(path), num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"Cannot load TFLite model {path}: {err}. Re-export it with export_tflite.") from err
    return interpreter


def _new_interpreter(model_path: str, num_threads: int | None):
    """LiteRT's interpreter when installed, else ``tf.lite.Interpreter`` (deprecated but still shipped)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            return tf.lite.Interpreter(model_path=model_path, num_threads=num_threads)
    return Interpreter(model_path=model_path, num_threads=num_threads)


# --------------------------------------------------------------------------------------------- export
def export_tflite(
    model_or_path: keras.Model | str | Path,
    out_path: str | Path,
    quantization: str = "float32",
    representative_images: np.ndarray | None = None,
) -> Path:
    """Convert a Keras model (or ``.keras`` file) to a ``.tflite`` file at ``out_path``; returns the path.

    ``quantization`` is ``"float32"``, ``"float16"`` or ``"int8"``; int8 needs ``representative_images``
    (N, S, S, 3) of 0..255 pixels from the training split (:data:`REPRESENTATIVE_IMAGES` of them, see
    :func:`representative_sample`).
    The file is written atomically: a failed export leaves any previous file untouched and no partial file.
    """
    return _export(model_or_path, {quantization: Path(out_path)}, representative_images)[quantization]


def _export(
    model_or_path: keras.Model | str | Path,
    targets: dict[str, Path],
    representative_images: np.ndarray | None,
) -> dict[str, Path]:
    """Write one ``.tflite`` file per ``{quantization: path}``, all from one frozen graph of the model."""
    unknown = [q for q in targets if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {unknown[0]!r}.")
    model = load_keras_model(model_or_path)
    model_input_size(model)  # a square RGB image input, or a clear error
    calibration = None
    if "int8" in targets:
        if representative_images is None:
            raise ValueError(
                f"int8 export needs representative_images: ~{REPRESENTATIVE_IMAGES} training images "
                "(N, S, S, 3), e.g. helpers.export.representative_sample(df, img_size)."
            )
        calibration = _input_list(model, representative_images, "representative_images")
    function = _frozen_function(model)
    for quantization, path in targets.items():
        _atomic_write(path, _convert(function, quantization, calibration))
    return targets


def _frozen_function(model: keras.Model):
    """Inference-mode graph of ``model`` with its weights folded in as constants (batch size left open); one
    argument per model input (the image, and the metadata of a metadata model), in the model's order.

    Much quicker than the SavedModel round trip ``from_keras_model`` makes for Keras 3 models.
    """
    specs = [tf.TensorSpec((None, *t.shape[1:]), tf.float32, name=t.name) for t in model.inputs]
    function = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False))
    return convert_variables_to_constants_v2(function.get_concrete_function(*specs))


def _input_list(model: keras.Model, images, name: str) -> list[np.ndarray]:
    """``images`` (an image array, or a metadata model's ``{"image", "metadata"}`` dict) as float32 arrays in
    the order of ``model``'s inputs, images checked against the model's input size."""
    inputs = model_inputs(model, images)
    images = inputs[IMAGE_INPUT] if isinstance(inputs, dict) else inputs
    images = _check_images(images, model_input_size(model), name)
    if not isinstance(inputs, dict):
        return [images]
    return [images if t.name == IMAGE_INPUT else inputs[METADATA_INPUT] for t in model.inputs]


def _convert(function, quantization: str, calibration: list[np.ndarray] | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        n = len(calibration[0])
        converter.representative_dataset = lambda: ([x[i : i + 1] for x in calibration] for i in range(n))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": not needed, the calibration provides them.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_write(path) as f:
        f.write(data)
    return path


def representative_sample(
    df: pd.DataFrame,
    img_size: int,
    n: int = REPRESENTATIVE_IMAGES,
    seed: int = 42,
    split: str = "train",
    metadata: bool = False,
) -> np.ndarray | dict:
    """Up to ``n`` decoded uint8 images for int8 calibration, drawn evenly over classes from ``split``; with
    ``metadata``, ``{"image": images, "metadata": their encoded age, sex and site}`` for a metadata model.

    Uses the rows of ``df`` whose ``split`` equals ``split`` (all rows when there is no split column).
    """
    rows = df[df["split"] == split] if "split" in df.columns else df
    if rows.empty:
        raise ValueError(f"No rows with split == {split!r} to draw representative images from.")
    shuffled = rows.sample(frac=1.0, random_state=seed)
    order = shuffled.groupby("dx", sort=False).cumcount().sort_values(kind="stable").index[:n]
    images = load_images(rows.loc[order, "path"].tolist(), img_size, progress=False)
    if not metadata:
        return images
    return {IMAGE_INPUT: images, METADATA_INPUT: encode_metadata(rows.loc[order], missing_columns=True)}


# --------------------------------------------------------------------------------------------- inference
def tflite_predict(
    path_or_interpreter: str | Path | tf.lite.Interpreter,
    images,
    batch_size: int = 64,
    metadata: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, C)`` from a ``.tflite`` model for images ``(N, S, S, 3)`` of 0..255 pixels
    (and, for a metadata model, their encoded ``metadata``; ``images`` may be the ``{"image", "metadata"}``
    dict). Quantized inputs are quantized with the model's scale/zero point, quantized outputs dequantized.
    """
    interpreter = load_interpreter(path_or_interpreter)
    if isinstance(images, dict):
        images, metadata = images[IMAGE_INPUT], images.get(METADATA_INPUT)
    details = {len(d["shape_signature"]): d for d in interpreter.get_input_details()}  # 4: image, 2: metadata
    image_detail, out = details[4], interpreter.get_output_details()[0]
    images = _check_images(images, int(image_detail["shape_signature"][1]), "images")
    feeds = [(image_detail, images)]
    if 2 in details:
        if metadata is None:
            raise ValueError("This TFLite model also takes the encoded metadata: pass metadata=.")
        feeds.append((details[2], np.asarray(metadata, dtype=np.float32)))
    probs = []
    for start in range(0, len(images), batch_size):
        for detail, values in feeds:
            batch = values[start : start + batch_size]
            if list(interpreter.get_tensor(detail["index"]).shape[:1]) != [len(batch)]:
                interpreter.resize_tensor_input(detail["index"], [len(batch), *detail["shape"][1:]])
                interpreter.allocate_tensors()
        for detail, values in feeds:
            interpreter.set_tensor(detail["index"], _quantize(values[start : start + batch_size], detail))
        interpreter.invoke()
        probs.append(_dequantize(interpreter.get_tensor(out["index"]), out))
    return np.concatenate(probs)


def _quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return images.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _check_images(images: np.ndarray, size: int, name: str) -> np.ndarray:
    """Return ``images`` as float32 (N, size, size, 3), accepting one image (size, size, 3)."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3) or len(arr) == 0:
        raise ValueError(
            f"{name} must be (N, {size}, {size}, 3) pixels for this model, got shape {np.shape(images)}; "
            f"decode them with img_size={size}."
        )
    return arr


def tflite_latency(
    path_or_interpreter: str | Path | tf.lite.Interpreter, runs: int = 50, warmup: int = 5
) -> float:
    """Median single-image ``invoke()`` time in milliseconds over ``runs`` calls after ``warmup`` calls."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    interpreter = load_interpreter(path_or_interpreter)
    details = {len(d["shape_signature"]): d for d in interpreter.get_input_details()}
    size = int(details[4]["shape_signature"][1])
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3)).astype(np.float32)
    metadata = np.zeros((1, int(details[2]["shape_signature"][1])), np.float32) if 2 in details else None
    tflite_predict(interpreter, image, metadata=metadata)  # resizes to batch 1 and sets the inputs
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


# --------------------------------------------------------------------------------------------- report
REPORT_COLUMNS = ("format", "path", "size_kb", "latency_ms", "top1_agreement", "max_abs_diff", "accuracy")


def export_report(
    model: keras.Model | str | Path,
    images: np.ndarray,
    labels: Sequence | np.ndarray | None,
    out_dir: str | Path,
    representative_images: np.ndarray | None,
    runs: int = 50,
) -> pd.DataFrame:
    """Export float32/float16/int8 ``.tflite`` files into ``out_dir`` and compare them with the Keras model.

    One row per format (``keras`` first): file size, median single-image latency over ``runs`` calls, top-1
    agreement and max absolute probability difference with Keras on ``images`` (validation images, 0..255),
    and accuracy against ``labels`` (class ids or codes; NaN when None). Also written to
    ``out_dir/export_report.csv``. A model object is saved as ``out_dir/model.keras`` to measure its size
    (a compiled model's file includes its optimizer state). Latencies use each runtime's default threading.
    Without ``representative_images`` (no training images to calibrate on) the int8 row is left out.
    """
    keras_model = load_keras_model(model)
    inputs = model_inputs(keras_model, images)
    n_images = len(_input_list(keras_model, inputs, "images")[0])
    y = None if labels is None else label_ids(labels)
    if y is not None and len(y) != n_images:
        raise ValueError(f"labels has {len(y)} entries but images has {n_images}; they must match.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras_path = out_dir / "model.keras" if isinstance(model, keras.Model) else Path(model)
    if isinstance(model, keras.Model):
        save_keras_model(keras_model, keras_path)
    reference = keras_predict(keras_model, inputs)
    rows = [
        _row("keras", keras_path, reference, reference, y, measure_latency(keras_model, runs)["median_ms"])
    ]
    formats = [q for q in QUANTIZATIONS if q != "int8" or representative_images is not None]
    targets = {q: out_dir / f"model_{q}.tflite" for q in formats}
    for quantization, path in _export(keras_model, targets, representative_images).items():
        interpreter = load_interpreter(path)
        probs = tflite_predict(interpreter, inputs)
        rows.append(
            _row(f"tflite_{quantization}", path, probs, reference, y, tflite_latency(interpreter, runs))
        )
    table = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    with atomic_write(out_dir / "export_report.csv", "w", newline="") as handle:
        table.to_csv(handle, index=False)
    return table


def _row(
    fmt: str, path: Path, probs: np.ndarray, reference: np.ndarray, y: np.ndarray | None, ms: float
) -> dict:
    pred = probs.argmax(axis=1)
    return {
        "format": fmt,
        "path": str(path),
        "size_kb": path.stat().st_size / 1024.0,
        "latency_ms": ms,
        "top1_agreement": float(np.mean(pred == reference.argmax(axis=1))),
        "max_abs_diff": float(np.max(np.abs(probs - reference))),
        "accuracy": float(np.mean(pred == y)) if y is not None else float("nan"),
    }
