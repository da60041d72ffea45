"""Single-image prediction from .keras/.tflite files, Grad-CAM, model and size errors (odd and bad image
files: test_robustness_images)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from helpers.classes import CLASS_NAMES
from helpers.explain import gradcam, gradcam_layer, overlay_heatmap
from helpers.models import build_model
from helpers.predict import MAX_IMAGE_PIXELS, load_image, load_model, predict_image

SIZE = 32


def _halves(width: int, height: int, left: tuple, right: tuple) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2], arr[:, width // 2 :] = left, right
    return Image.fromarray(arr)


def test_keras_and_tflite_agree_on_all_classes(model_files: dict[str, Path], tmp_path: Path) -> None:
    rows = []
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250), (240, 200, 180), (60, 40, 30)]):
        path = tmp_path / f"img{i}.png"
        _halves(48, 40, colour, (128, 128, 128)).save(path)
        k = predict_image(model_files["keras"], path, top_k=7)
        t = predict_image(model_files["tflite"], path, top_k=7)
        assert [c for c, _, _ in k.top_k] == [c for c, _, _ in t.top_k]
        assert sum(k.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert list(k.probabilities) == list(CLASS_NAMES)
        np.testing.assert_allclose(list(k.probabilities.values()), list(t.probabilities.values()), atol=1e-4)
        rows.append(list(k.probabilities.values()))
    assert np.ptp(np.array(rows), axis=0).max() > 0.05  # the outputs really depend on the image


def test_models_are_loaded_once_per_file_version(model_files: dict[str, Path], tmp_path: Path) -> None:
    assert load_model(model_files["tflite"]) is load_model(model_files["tflite"])
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(model_files["tflite"].read_bytes())
    first = load_model(copy)
    copy.write_bytes(model_files["tflite"].read_bytes() + b"\0")  # changed file -> reloaded
    assert load_model(copy) is not first
    assert load_model(copy).img_size == SIZE


def test_predict_with_gradcam(model_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(path)
    result = predict_image(model_files["keras"], path, gradcam=True)
    assert result.heatmap.shape == (SIZE, SIZE) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.overlay.shape == (SIZE, SIZE, 3) and result.overlay.dtype == np.uint8
    with pytest.raises(ValueError, match=r"Grad-CAM needs .*\.keras"):
        predict_image(model_files["tflite"], path, gradcam=True)


@pytest.mark.parametrize("name", ["fast", "default", "cpu_light_efficient_cnn"])
def test_gradcam_on_built_models(name: str) -> None:
    keras.utils.set_random_seed(0)
    model = build_model(name, SIZE)
    layer = gradcam_layer(model)
    assert len(layer.output.shape) == 4 and np.prod(layer.output.shape[1:3]) > 1
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    heatmap = gradcam(model, image)
    assert heatmap.shape == (SIZE, SIZE) and heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)


def _colour_detector_model() -> keras.Model:
    """Toy model: class 0 fires on red pixels, class 1 on green ones (hand-set weights, no training)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", activation="relu", name="detect")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[1, 1, 0, 0], kernel[1, 1, 1, 0] = 1.0, -1.0  # red minus green
    kernel[1, 1, 1, 1], kernel[1, 1, 0, 1] = 1.0, -1.0  # green minus red
    model.get_layer("detect").set_weights([kernel, np.zeros(2, np.float32)])
    dense = np.zeros((2, len(CLASS_NAMES)), np.float32)
    dense[0, 0] = dense[1, 1] = 5.0
    model.layers[-1].set_weights([dense, np.zeros(len(CLASS_NAMES), np.float32)])
    return model


def test_gradcam_highlights_the_planted_region() -> None:
    model = _colour_detector_model()
    image = np.full((SIZE, SIZE, 3), 40, np.uint8)
    image[2:10, 16:30] = (250, 10, 10)  # red bar, top right
    image[18:30, 2:10] = (10, 250, 10)  # green bar, bottom left (where a transposed red bar would land)
    red_heat = gradcam(model, image, class_index=0)
    green_heat = gradcam(model, image, class_index=1)
    assert red_heat[3:9, 18:28].mean() > 0.7 and red_heat[20:28, 3:9].max() < 0.1
    assert green_heat[20:28, 3:9].mean() > 0.7 and green_heat[3:9, 18:28].max() < 0.1
    assert red_heat[14:, :].max() < 0.1 and red_heat[:, :12].max() < 0.1  # nothing away from the red bar


def test_gradcam_bad_arguments() -> None:
    model = _colour_detector_model()
    with pytest.raises(ValueError, match=r"image must be \(32, 32, 3\)"):
        gradcam(model, np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="class_index must be in 0..6"):
        gradcam(model, np.zeros((SIZE, SIZE, 3), np.uint8), class_index=7)


def test_overlay_heatmap() -> None:
    image = np.full((20, 30, 3), 100, np.uint8)
    heatmap = np.zeros((5, 5), np.float32)
    heatmap[0, 0] = 1.0
    overlay = overlay_heatmap(image, heatmap, alpha=0.5)
    assert overlay.shape == (20, 30, 3) and overlay.dtype == np.uint8
    assert not np.array_equal(overlay[0, 0], overlay[-1, -1])  # hot corner differs from the cold one
    np.testing.assert_array_equal(overlay_heatmap(image, heatmap, alpha=0.0), image)
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(image, heatmap, alpha=2.0)
    with pytest.raises(ValueError, match="RGB"):
        overlay_heatmap(image[..., 0], heatmap)


# ------------------------------------------------------------------------------------------------ bad input
def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb stand-in)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_missing_image(model_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predict_image(model_files["tflite"], tmp_path / "missing.jpg")


def test_image_above_pixel_limit(tmp_path: Path) -> None:
    side = int(np.sqrt(MAX_IMAGE_PIXELS)) + 10
    path = _png_claiming_size(tmp_path / "big.png", side, side)
    with pytest.raises(ValueError, match=r"big\.png.*megapixels"):
        load_image(path, SIZE)


def test_decompression_bomb(tmp_path: Path) -> None:
    path = _png_claiming_size(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(ValueError, match=r"bomb\.png.*too large"):
        load_image(path, SIZE)


@pytest.mark.parametrize("top_k", [0, 8, 2.5, True])
def test_bad_top_k(top_k: object, model_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="top_k"):
        predict_image(model_files["tflite"], tmp_path / "x.jpg", top_k=top_k)
