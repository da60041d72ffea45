"""Tests for helpers.models: replica fidelity, default budget, builders, cost formulas, MACs, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from helpers import models
from helpers.models import (
    DEFAULT_MODEL,
    FAST_MODEL,
    MODEL_NAMES,
    PRETRAINED_MODELS,
    build_model,
    conv_macs,
    conv_params,
    count_macs,
    count_params,
    depthwise_macs,
    depthwise_params,
    layer_table,
    separable_params,
)

ORIGINAL_PARAMS = 117_127


def _raw_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_replica_has_the_original_parameter_count():
    model = models.cpu_light_efficient_cnn(128)
    assert count_params(model) == ORIGINAL_PARAMS
    assert isinstance(model.layers[1], keras.layers.Rescaling)
    assert count_params(model, exclude_preprocessing=False) == model.count_params()


@pytest.mark.parametrize("img_size", [28, 64, 128])
def test_fast_model_stays_within_twice_the_original_parameters(img_size):
    assert count_params(build_model(FAST_MODEL, img_size)) <= 2 * ORIGINAL_PARAMS


def test_fast_model_needs_far_fewer_macs_than_the_original_at_128():
    fast_macs = count_macs(build_model(FAST_MODEL, 128))
    assert fast_macs * 5 < count_macs(models.cpu_light_efficient_cnn(128))


def test_pretrained_default_costs_about_the_originals_compute_at_128():
    default_macs = count_macs(build_model(DEFAULT_MODEL, 128, pretrained=False))
    assert 0.9 < default_macs / count_macs(models.cpu_light_efficient_cnn(128)) < 1.1


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in PRETRAINED_MODELS])
@pytest.mark.parametrize("img_size", [28, 64, 128])
def test_models_build_and_output_probabilities_from_raw_uint8(name, img_size):
    model = build_model(name, img_size)
    assert model.output_shape == (None, 7)
    probs = keras.ops.convert_to_numpy(model(_raw_images(2, img_size), training=False))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_uint8_and_float_inputs_give_the_same_prediction():
    model = build_model(FAST_MODEL, 28)
    images = _raw_images(3, 28)
    from_uint8 = keras.ops.convert_to_numpy(model(images, training=False))
    from_float = keras.ops.convert_to_numpy(model(images.astype("float32"), training=False))
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)


def test_stem_downsampling_adapts_to_input_size():
    assert [models.stem_downsamples(s) for s in (16, 28, 64, 128, 256)] == [0, 0, 1, 2, 3]
    # The body starts at the same resolution for 64 and 128 px inputs, so MACs grow only through the stem.
    assert count_macs(build_model(FAST_MODEL, 128)) < 2 * count_macs(build_model(FAST_MODEL, 64))


def test_aliases_build_the_default_and_the_fast_model():
    assert build_model("default", 64, pretrained=False).name == DEFAULT_MODEL == "efficientnet_lite0"
    assert build_model("fast", 64).name == FAST_MODEL == "dermsep_net"
    assert {DEFAULT_MODEL, FAST_MODEL} <= set(MODEL_NAMES)


def test_num_classes_sets_the_output_width():
    assert build_model("cpu_light_efficient_cnn", 28, num_classes=3).output_shape == (None, 3)


@pytest.mark.parametrize("name", ["resnet9000", "", None, ["default"]])
def test_unknown_model_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="valid names: default, fast, .*cpu_light_efficient_cnn"):
        build_model(name, 64)


@pytest.mark.parametrize("img_size", [0, -28, 8, 15, 28.0, "128", True, None])
def test_bad_img_size_is_rejected_clearly(img_size):
    with pytest.raises(ValueError, match="img_size must be an int >= 16"):
        build_model(FAST_MODEL, img_size)


def test_bad_num_classes_is_rejected_clearly():
    with pytest.raises(ValueError, match="num_classes"):
        build_model(FAST_MODEL, 28, num_classes=1)


def _param_count(layer: keras.layers.Layer, channels: int) -> int:
    keras.Sequential([keras.Input((8, 8, channels)), layer])
    return layer.count_params()


@pytest.mark.parametrize("use_bias", [True, False])
def test_param_formulas_match_keras(use_bias):
    assert conv_params(3, 16, 32, use_bias) == _param_count(keras.layers.Conv2D(32, 3, use_bias=use_bias), 16)
    assert conv_params(1, 16, 32, use_bias) == _param_count(keras.layers.Conv2D(32, 1, use_bias=use_bias), 16)
    assert depthwise_params(3, 16, use_bias) == _param_count(
        keras.layers.DepthwiseConv2D(3, use_bias=use_bias), 16
    )
    separate = _param_count(keras.layers.DepthwiseConv2D(3, use_bias=use_bias), 16) + _param_count(
        keras.layers.Conv2D(32, 1, use_bias=use_bias), 16
    )
    assert separable_params(3, 16, 32, use_bias) == separate
    assert conv_params(3, 16, 32, use_bias=False) == 4608  # 3*3*16*32, checkable by hand


def test_macs_of_single_layers_match_the_hand_formulas():
    inputs = keras.Input((10, 10, 4))
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    dw = keras.layers.DepthwiseConv2D(3, padding="valid")
    sep = keras.layers.SeparableConv2D(6, 3, padding="same")
    dense = keras.layers.Dense(5)
    x = conv(inputs)  # 5x5x8
    x = dw(x)  # 3x3x8
    x = sep(x)  # 3x3x6
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, dense(x))
    assert models.layer_macs(conv) == conv_macs(5, 5, 3, 4, 8) == 5 * 5 * 3 * 3 * 4 * 8
    assert models.layer_macs(dw) == depthwise_macs(3, 3, 3, 8) == 3 * 3 * 3 * 3 * 8
    assert models.layer_macs(sep) == models.separable_macs(3, 3, 3, 8, 6) == 3 * 3 * (9 * 8 + 8 * 6)
    assert models.layer_macs(dense) == 6 * 5
    assert count_macs(model) == 7200 + 648 + 1080 + 30


def test_layer_table_adds_up_to_the_model_totals():
    model = models.cpu_light_efficient_cnn(64)
    table = layer_table(model)
    assert list(table.columns) == ["layer", "type", "output_shape", "params", "macs", "activations"]
    assert table["params"].sum() == model.count_params()
    assert table["macs"].sum() == count_macs(model)
    row = table.set_index("layer").loc["block1_pw"]
    assert (row["output_shape"], row["activations"]) == ("64x64x64", 64**3)


def test_conv_cost_table_shows_the_separable_saving():
    table = models.conv_cost_table(32, 3, 64, (64, 128))
    expected = 1 / table["c_out"] + 1 / 9
    np.testing.assert_allclose(table["macs_ratio"], expected)


def test_keras_round_trip_gives_identical_predictions(tmp_path):
    model = build_model(FAST_MODEL, 28)
    images = _raw_images(4, 28)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(images, training=False)),
        keras.ops.convert_to_numpy(restored(images, training=False)),
    )


def test_measure_latency_times_a_compiled_single_image_call():
    result = models.measure_latency(models.conv_block_model("separable", 16, 8, 16), runs=3, warmup=1)
    assert set(result) == {"median_ms", "p90_ms", "mean_ms"}
    assert 0 < result["median_ms"] <= result["p90_ms"] * 1.0001


def test_measure_latency_rejects_bad_runs():
    with pytest.raises(ValueError, match="runs must be >= 1"):
        models.measure_latency(models.conv_block_model("standard", 16, 8, 16), runs=0)


def test_conv_block_model_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'standard' or 'separable'"):
        models.conv_block_model("dilated", 16, 8, 16)
