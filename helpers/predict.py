"""Predict one image with a saved model (``.keras`` or ``.tflite``) and explain it with Grad-CAM.

Images of any size and mode are accepted (JPEG/PNG: grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated,
tiny or huge): they are decoded like the training pipeline (:func:`helpers.pipeline.decode_image`: JPEG DCT
downscaling, EXIF orientation, RGB, squashed to the model's input size), so a 12000 x 9000 JPEG never decodes
at full size.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from helpers import explain
from helpers.classes import BODY_SITES, CLASS_FULL_NAMES, CLASS_NAMES
from helpers.clinical import encode_one, unknown_values
from helpers.export import load_interpreter, tflite_predict
from helpers.modelio import keras_predict, load_keras_model, model_input_size
from helpers.models import uses_metadata
from helpers.pipeline import decode_image

MAX_IMAGE_PIXELS = 150_000_000
"""Largest image accepted (width x height, e.g. 15000 x 10000): beyond it decoding could exhaust memory."""


@dataclass(frozen=True)
class Prediction:
    """Result of :func:`predict_image`.

    ``top_k``: ``(class code, full name, probability)`` sorted by probability; ``probabilities``: every class;
    ``image``: the uint8 RGB model input; ``heatmap``/``overlay``: Grad-CAM (None unless requested).
    """

    top_k: list[tuple[str, str, float]]
    probabilities: dict[str, float]
    image: np.ndarray
    heatmap: np.ndarray | None = None
    overlay: np.ndarray | None = None

    @property
    def label(self) -> str:
        """Code of the most probable class."""
        return self.top_k[0][0]


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class LoadedModel:
    """A model file ready for inference: its input side and either a Keras model or a TFLite interpreter."""

    path: Path
    img_size: int
    keras_model: keras.Model | None
    interpreter: object | None
    metadata: bool = False

    def predict(self, images: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8/float images ``(N, S, S, 3)`` of 0..255 pixels (and their
        encoded ``metadata`` for a model that takes it)."""
        if self.keras_model is not None:
            return keras_predict(self.keras_model, images, metadata=metadata)
        return tflite_predict(self.interpreter, images, metadata=metadata)


def load_model(model_path: str | Path) -> LoadedModel:
    """Load a ``.keras`` or ``.tflite`` file once; later calls reuse it until the file changes on disk."""
    path = Path(model_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}")
    stat = path.stat()
    return _load_model_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_model_cached(path: str, mtime_ns: int, size: int) -> LoadedModel:
    suffix = Path(path).suffix.lower()
    if suffix == ".keras":
        model = load_keras_model(path)
        try:
            return LoadedModel(Path(path), model_input_size(model), model, None, uses_metadata(model))
        except ValueError as err:
            raise ValueError(f"Model {path} cannot classify RGB images: {err}") from err
    if suffix == ".tflite":
        interpreter = load_interpreter(path)
        shapes = {len(d["shape_signature"]): d["shape_signature"] for d in interpreter.get_input_details()}
        return LoadedModel(Path(path), int(shapes[4][1]), None, interpreter, 2 in shapes)
    raise ValueError(f"Unsupported model file {path}: expected a .keras or .tflite file.")


# --------------------------------------------------------------------------------------------- images
def load_image(image_path: str | Path, img_size: int) -> np.ndarray:
    """Decode one JPEG/PNG to a uint8 RGB ``(img_size, img_size, 3)`` array, whatever its size and mode.

    Raises FileNotFoundError for a missing file and ValueError naming the file when it is not a decodable
    image or larger than :data:`MAX_IMAGE_PIXELS`.
    """
    path = Path(image_path)
    _check_size(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size already checked above
        try:
            return decode_image(path, img_size)
        except ValueError as err:
            raise ValueError(
                f"Cannot decode image {path}: {err.__cause__ or err}. Pass a JPEG or PNG file."
            ) from err


def _check_size(path: Path) -> None:
    """Read only the header: check the file exists, is an image and is not too large."""
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"Image {path} is empty (0 bytes): it was not completely copied. Copy it again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        raise ValueError(f"Image {path} is too large to decode safely ({err}).") from err
    except PermissionError as err:
        raise ValueError(
            f"Cannot read image {path}: permission denied; make it readable (chmod a+r)."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"Cannot read image {path}: {err}. Pass a JPEG or PNG file.") from err
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"Image {path} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), more than "
            f"the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels allowed (helpers.predict.MAX_IMAGE_PIXELS); "
            "downscale it."
        )


# --------------------------------------------------------------------------------------------- prediction
def predict_image(
    model_path: str | Path,
    image_path: str | Path,
    top_k: int = 3,
    gradcam: bool = False,
    age: float | None = None,
    sex: str | None = None,
    localization: str | None = None,
) -> Prediction:
    """Classify one image file with a ``.keras`` or ``.tflite`` model (input size read from the model).

    Returns the ``top_k`` classes with probabilities and, with ``gradcam=True`` (``.keras`` models only), the
    Grad-CAM heatmap of the top class and its overlay on the model input. A model trained with metadata
    also takes the patient's ``age``, ``sex`` (male/female) and the lesion's body site ``localization``
    (one of :data:`helpers.classes.BODY_SITES`); each left out, or not one of the known values (warned), is
    read as unknown. An image-only model ignores them (warned).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(CLASS_NAMES):
        raise ValueError(f"top_k must be an int in 1..{len(CLASS_NAMES)}, got {top_k!r}.")
    model = load_model(model_path)
    if gradcam and model.keras_model is None:
        raise ValueError(f"Grad-CAM needs gradients, so a .keras model; {model.path} is a TFLite file.")
    image = load_image(image_path, model.img_size)
    metadata = _patient(model, age, sex, localization)
    probs = model.predict(image[np.newaxis], metadata)[0]
    if len(probs) != len(CLASS_NAMES):
        raise ValueError(
            f"Model {model.path} outputs {len(probs)} classes; expected {len(CLASS_NAMES)} "
            f"({', '.join(CLASS_NAMES)}). Use a model trained on the seven HAM10000 classes (helpers.train)."
        )
    order = np.argsort(-probs, kind="stable")
    top = [(CLASS_NAMES[i], CLASS_FULL_NAMES[CLASS_NAMES[i]], float(probs[i])) for i in order[:top_k]]
    heatmap = overlay = None
    if gradcam:
        heatmap = explain.gradcam(model.keras_model, image, int(order[0]), metadata=metadata)
        overlay = explain.overlay_heatmap(image, heatmap)
    return Prediction(top, dict(zip(CLASS_NAMES, map(float, probs), strict=True)), image, heatmap, overlay)


def _patient(model: LoadedModel, age, sex, localization) -> np.ndarray | None:
    """The encoded metadata for a metadata model (None for an image model), warning about values it ignores
    or cannot read."""
    given = {k: v for k, v in (("age", age), ("sex", sex), ("localization", localization)) if v is not None}
    if not model.metadata:
        if given:
            warnings.warn(
                f"{model.path.name} takes images only: {', '.join(given)} ignored (train with metadata=True "
                "to use them).",
                stacklevel=3,
            )
        return None
    unknown = unknown_values(pd.DataFrame({k: [v] for k, v in given.items()}))
    numeric = isinstance(age, numbers.Real) and not isinstance(age, bool)
    if "age" in given and not numeric:
        unknown.setdefault("age", []).append(repr(age))
    if unknown:
        warnings.warn(
            f"Read as unknown (not a known value): {unknown}; sex is male/female, localization one of "
            f"{list(BODY_SITES)}, age a number of years 0-120.",
            stacklevel=3,
        )
    return encode_one(float(age) if numeric else None, sex, localization)
