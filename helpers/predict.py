"""Predict one image with a saved model (``.keras`` or ``.tflite``) and explain it with Grad-CAM.

Images of any size and mode are accepted (JPEG/PNG: grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated,
tiny or huge): they are decoded like the training pipeline (:func:`helpers.pipeline.decode_image`: JPEG DCT
downscaling, EXIF orientation, RGB, squashed to the model's input size), so a 12000 x 9000 JPEG never decodes
at full size.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from helpers.classes import CLASS_FULL_NAMES, CLASS_NAMES
from helpers.export import keras_predict, load_interpreter, load_keras_model, model_input_size, tflite_predict
from helpers.models import unwrap_predictor
from helpers.pipeline import decode_image

MAX_IMAGE_PIXELS = 150_000_000
"""Largest image accepted (width x height, e.g. 15000 x 10000): beyond it decoding could exhaust memory."""

_CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


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

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8/float images ``(N, S, S, 3)`` of 0..255 pixels."""
        if self.keras_model is not None:
            return keras_predict(self.keras_model, images)
        return tflite_predict(self.interpreter, images)


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
            return LoadedModel(Path(path), model_input_size(model), model, None)
        except ValueError as err:
            raise ValueError(f"Model {path} cannot classify RGB images: {err}") from err
    if suffix == ".tflite":
        interpreter = load_interpreter(path)
        shape = interpreter.get_input_details()[0]["shape_signature"]
        return LoadedModel(Path(path), int(shape[1]), None, interpreter)
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
    model_path: str | Path, image_path: str | Path, top_k: int = 3, gradcam: bool = False
) -> Prediction:
    """Classify one image file with a ``.keras`` or ``.tflite`` model (input size read from the model).

    Returns the ``top_k`` classes with probabilities and, with ``gradcam=True`` (``.keras`` models only), the
    Grad-CAM heatmap of the top class and its overlay on the model input.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(CLASS_NAMES):
        raise ValueError(f"top_k must be an int in 1..{len(CLASS_NAMES)}, got {top_k!r}.")
    model = load_model(model_path)
    if gradcam and model.keras_model is None:
        raise ValueError(f"Grad-CAM needs gradients, so a .keras model; {model.path} is a TFLite file.")
    image = load_image(image_path, model.img_size)
    probs = model.predict(image[np.newaxis])[0]
    if len(probs) != len(CLASS_NAMES):
        raise ValueError(
            f"Model {model.path} outputs {len(probs)} classes; expected {len(CLASS_NAMES)} "
            f"({', '.join(CLASS_NAMES)}). Use a model trained on the seven HAM10000 classes (helpers.train)."
        )
    order = np.argsort(-probs, kind="stable")
    top = [(CLASS_NAMES[i], CLASS_FULL_NAMES[CLASS_NAMES[i]], float(probs[i])) for i in order[:top_k]]
    heatmap = overlay = None
    if gradcam:
        heatmap = _gradcam(model.keras_model, image, int(order[0]))
        overlay = overlay_heatmap(image, heatmap)
    return Prediction(top, dict(zip(CLASS_NAMES, map(float, probs), strict=True)), image, heatmap, overlay)


# --------------------------------------------------------------------------------------------- Grad-CAM
def gradcam_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer Grad-CAM reads: the output of the last convolution block.

    That is the last convolution layer with a spatial output (H, W > 1), followed as far as the feature map
    keeps its size, so the BatchNorm, activation and residual Add after the convolution are included.
    """
    convs = [
        i for i, layer in enumerate(model.layers) if isinstance(layer, _CONV_LAYERS) and _spatial(layer) > 1
    ]
    if not convs:
        raise ValueError(f"Model {model.name!r} has no convolution layer with a spatial output for Grad-CAM.")
    last = model.layers[convs[-1]]
    same_size = [
        layer
        for layer in model.layers[convs[-1] :]
        if len(layer.output.shape) == 4 and layer.output.shape[1:3] == last.output.shape[1:3]
    ]
    return same_size[-1]


def _spatial(layer: keras.layers.Layer) -> int:
    shape = layer.output.shape
    return int(np.prod(shape[1:3])) if len(shape) == 4 else 0


def gradcam(
    model: keras.Model, image_uint8: np.ndarray, class_index: int | None = None, layer_name: str | None = None
) -> np.ndarray:
    """Grad-CAM heatmap ``(H, W)`` in [0, 1] of ``class_index`` (default: the predicted class) for one image.

    Reads the feature map of :func:`gradcam_layer` (or of ``layer_name``): channel weights are the mean
    gradients of the class score (the logit, before softmax, when the model ends in a softmax Dense layer);
    the weighted sum of channels goes through ReLU, is normalised to a maximum of 1 and resized to the image.
    For a :func:`helpers.models.predictor` (test-time augmentation) it explains the network inside, on the
    image as given (for an ensemble, its first member).
    """
    model = unwrap_predictor(model)
    image = np.asarray(image_uint8)
    size = model_input_size(model)
    if image.shape != (size, size, 3):
        raise ValueError(f"image must be ({size}, {size}, 3) for this model, got {image.shape}.")
    n_classes = model.output_shape[-1]
    if class_index is not None and not 0 <= class_index < n_classes:
        raise ValueError(f"class_index must be in 0..{n_classes - 1}, got {class_index}.")
    layer = model.get_layer(layer_name) if layer_name else gradcam_layer(model)
    head = model.layers[-1]
    use_logits = isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax
    grad_model = keras.Model(model.inputs, [layer.output, head.input if use_logits else model.output])
    x = tf.convert_to_tensor(image[np.newaxis], tf.float32)
    with tf.GradientTape() as tape:
        features, scores = grad_model(x, training=False)
        if use_logits:
            scores = tf.matmul(scores, head.kernel) + head.bias
        if class_index is None:
            class_index = int(tf.argmax(scores[0]))
        score = scores[0, class_index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(features[0] * weights[0], axis=-1))
    cam = tf.image.resize(cam[..., tf.newaxis], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = cam.max()
    return (np.clip(cam / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(cam)).astype(np.float32)


_gradcam = gradcam  # predict_image's ``gradcam`` flag shadows the function's name


def overlay_heatmap(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet"
) -> np.ndarray:
    """Blend a [0, 1] heatmap (coloured with ``cmap``, resized to the image) over a uint8 RGB image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {image.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.shape != image.shape[:2]:
        heat = tf.image.resize(heat[..., np.newaxis], image.shape[:2])[..., 0].numpy()
    colours = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
