"""Structured pruning (helpers.prune): narrower models with the widths asked, exact weight copies, channels
that carry nothing removed without changing a prediction, predictor wrappers, the size goal, fine-tuning,
and clear errors."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from model_utils import set_batchnorm_statistics

from helpers.backbones import efficientnet_lite0
from helpers.classes import CLASS_TO_INDEX
from helpers.classifier import feature_model
from helpers.data import load_metadata
from helpers.modelio import keras_predict
from helpers.models import add_metadata_input, count_params, cpu_light_efficient_cnn, dermsep_net, predictor
from helpers.pipeline import load_images
from helpers.prune import (
    channel_sets,
    fine_tune,
    int8_size,
    prunable_units,
    prune,
    prune_to_size,
)
from helpers.train import prepare_data, validation_scores


def _images(size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """Random colour blocks (8x8 px) so that every channel of a model sees varied input."""
    blocks = np.random.default_rng(seed).integers(0, 256, (n, size // 8, size // 8, 3))
    return np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2).astype(np.float32)


def _trained_like(model: keras.Model, size: int) -> keras.Model:
    """``model`` with random BatchNorm scales/shifts and statistics set on images, so that every channel
    matters and predictions vary per image (as in a trained model)."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.3, 2.0, gamma.shape), rng.normal(0, 0.3, beta.shape), mean, var])
    set_batchnorm_statistics(model, _images(size, 32, seed=2))
    return model


@pytest.fixture(scope="module")
def dermsep64() -> keras.Model:
    keras.utils.set_random_seed(0)
    return _trained_like(dermsep_net(64), 64)


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    keras.utils.set_random_seed(0)
    return _trained_like(efficientnet_lite0(32, pretrained=False), 32)


def test_pruned_dermsep_net_has_the_widths_asked_fewer_params_and_a_smaller_int8_file():
    model = dermsep_net(32)
    pruned = prune(model, 0.5)
    assert prunable_units(model) == {"stage1": 32, "stage2": 64, "stage3": 128, "stage4": 192}
    assert prunable_units(pruned) == {"stage1": 16, "stage2": 32, "stage3": 64, "stage4": 96}
    assert pruned.get_layer("stage4_res_b_pw").kernel.shape == (1, 1, 96, 96)
    assert pruned.get_layer("predictions").kernel.shape == (96, 7)
    assert count_params(pruned) < 0.3 * count_params(model)
    assert int8_size(pruned) < 0.5 * int8_size(model)
    per_unit = prune(model, {"stage4": 0.25})
    assert prunable_units(per_unit) == {"stage1": 32, "stage2": 64, "stage3": 128, "stage4": 48}


def test_pruned_lite0_narrows_each_expansion_and_the_head_only(lite0: keras.Model):
    pruned = prune(lite0, {"block1": 0.5, "block15": 0.25, "top_conv": 0.5})
    units = prunable_units(pruned)
    assert (units["block1"], units["block2"], units["block15"], units["top_conv"]) == (48, 144, 288, 640)
    assert pruned.get_layer("block15_project").kernel.shape == (1, 1, 288, 320)  # the bottleneck stays
    assert pruned.get_layer("predictions").kernel.shape == (640, 7)
    assert count_params(pruned) < count_params(lite0)


@pytest.mark.parametrize("name", ["dermsep64", "lite0"])
def test_keep_one_copies_every_weight_exactly(name: str, request: pytest.FixtureRequest):
    model = request.getfixturevalue(name)
    copy = prune(model, 1.0)
    assert copy is not model
    for old, new in zip(model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(old), keras.ops.convert_to_numpy(new))
    size = model.input_shape[1]
    np.testing.assert_array_equal(keras_predict(copy, _images(size)), keras_predict(model, _images(size)))


def _zero_the_channels_pruning_drops(model: keras.Model, keep: float) -> keras.Model:
    """A copy of ``model`` whose BatchNorms set to 0 (gamma and beta) as many channels of each channel set
    as pruning at ``keep`` drops, chosen at random, so those channels carry nothing anywhere."""
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    new_sizes = {key: s.size for key, s in channel_sets(prune(model, keep)).items()}
    rng = np.random.default_rng(5)
    for key, channels in channel_sets(zeroed).items():
        drop = rng.choice(channels.size, channels.size - new_sizes[key], replace=False)
        for layer in (zeroed.get_layer(name) for name in channels.layers):
            if isinstance(layer, keras.layers.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                gamma[drop], beta[drop] = 0.0, 0.0
                layer.set_weights([gamma, beta, mean, var])
    return zeroed


@pytest.mark.parametrize("name", ["dermsep64", "lite0"])
def test_pruning_the_channels_that_carry_nothing_leaves_every_prediction(
    name: str, request: pytest.FixtureRequest
):
    model = request.getfixturevalue(name)
    images = _images(model.input_shape[1], 16)
    zeroed = _zero_the_channels_pruning_drops(model, 0.5)
    pruned = prune(zeroed, 0.5)
    assert count_params(pruned) < 0.6 * count_params(zeroed)
    np.testing.assert_allclose(keras_predict(pruned, images), keras_predict(zeroed, images), atol=2e-5)
    changed = keras_predict(prune(model, 0.5), images) - keras_predict(model, images)
    assert np.abs(changed).max() > 1e-3  # the check above would see a wrong channel choice


def test_equal_stem_and_first_stage_widths_keep_the_entry_conv(dermsep64: keras.Model):
    pruned = prune(dermsep64, {"stage1": 0.5})  # 16 stem and 16 stage-1 channels: the entry would vanish
    assert prunable_units(pruned)["stem"] == 15
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in dermsep64.layers]


def test_a_predictor_is_pruned_inside_and_wrapped_again(tmp_path: Path):
    keras.utils.set_random_seed(0)
    network = _trained_like(dermsep_net(32), 32)
    weights = [1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0]
    path = tmp_path / "predictor.keras"
    predictor(network, views=8, class_weights=weights).save(path)
    pruned = prune(path, 0.5)
    assert pruned.name == "dermsep_net_predictor"
    assert pruned.get_layer("tta_views").views == 8
    assert pruned.get_layer("prior_shift").class_weights == weights
    assert prunable_units(pruned)["stage4"] == 96
    expected = predictor(prune(network, 0.5), views=8, class_weights=weights)
    np.testing.assert_allclose(keras_predict(pruned, _images(32)), keras_predict(expected, _images(32)), 1e-5)


def test_prune_to_size_finds_the_largest_keep_within_the_goal():
    model = dermsep_net(32)
    pruned, keep = prune_to_size(model, 0.6, size_of=count_params, steps=4)
    assert count_params(pruned) <= 0.6 * count_params(model)
    assert count_params(prune(model, keep + 1 / 2**4)) > 0.6 * count_params(model)
    with pytest.raises(ValueError, match="Even keep="):
        prune_to_size(model, 0.001, size_of=count_params, steps=2)


def test_fine_tune_keeps_and_saves_the_best_epoch(synthetic_dir: Path, tmp_path: Path):
    df = prepare_data(df=load_metadata(synthetic_dir, verbose=False), seed=0, verbose=False)
    teacher = dermsep_net(32, widths=(16, 16))  # small: the test checks the loop, not the learning
    before = [keras.ops.convert_to_numpy(w) for w in teacher.weights]
    pruned = prune(teacher, 0.5)
    path = tmp_path / "p.keras"
    result = fine_tune(
        pruned, df, epochs=2, batch_size=16, save_path=path, cache=False, teacher=teacher, verbose=0
    )
    assert teacher.trainable and all(  # the teacher (distilled into it) is left as it was
        np.array_equal(keras.ops.convert_to_numpy(w), b) for w, b in zip(teacher.weights, before, strict=True)
    )
    history = result.history
    assert len(history) == 2
    ranked = history.sort_values(["val_balanced_accuracy", "val_loss"], ascending=[False, True])
    assert result.best_epoch == ranked["epoch"].iloc[0]  # the best balanced accuracy; ties: lower loss
    assert result.best_value == ranked["val_balanced_accuracy"].iloc[0]
    val = df[df["split"] == "val"]
    saved = keras.models.load_model(result.path, compile=False)
    probs = keras_predict(saved, load_images(val["path"].tolist(), 32, cache=False, progress=False))
    scores = validation_scores(val["dx"].map(CLASS_TO_INDEX).to_numpy(), probs)
    assert scores["val_balanced_accuracy"] == pytest.approx(result.best_value)
    assert scores["val_loss"] == pytest.approx(ranked["val_loss"].iloc[0], rel=1e-4)
    assert history["val_loss"].nunique() == 2  # so the loss tells which epoch's weights were saved


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (0.0, r"keep must be a number in \(0, 1\]"),
        (1.5, r"keep must be a number in \(0, 1\]"),
        (True, r"keep must be a number in \(0, 1\]"),
        ({"stage2": -1}, r"got -1 for 'stage2'"),
        ({"block3": 0.5}, r"unknown unit\(s\) \['block3'\]; this model's units are \['stage1'"),
    ],
)
def test_bad_keep_is_refused_with_the_valid_range(keep, message: str):
    with pytest.raises(ValueError, match=message):
        prune(dermsep_net(32), keep)


def test_models_it_cannot_prune_are_named_with_what_it_supports(tmp_path: Path):
    supports = "supports dermsep_net and efficientnet_lite0"
    with pytest.raises(ValueError, match=f"Cannot prune cpu_light_efficient_cnn: pruning {supports}"):
        prune(cpu_light_efficient_cnn(32))
    with pytest.raises(ValueError, match="takes metadata"):
        prune(add_metadata_input(dermsep_net(32)))
    network = dermsep_net(32)
    features = feature_model(network, ["stage3_res_out"])  # a multi-scale re-trained classifier's body
    multi_scale = keras.Model(features.input, keras.layers.Dense(7, name="predictions")(features.output))
    with pytest.raises(ValueError, match=r"builder makes in layers \['features', .* before the finishing"):
        prune(multi_scale)
    with pytest.raises(ValueError, match="ensemble of 2 networks"):
        prunable_units(predictor([dermsep_net(32), dermsep_net(32)]))


def test_a_path_that_is_not_a_model_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        prune(tmp_path / "missing.keras")
    (tmp_path / "notes.keras").write_text("not a model")
    with pytest.raises(ValueError, match="Cannot load Keras model .*notes.keras"):
        prune(tmp_path / "notes.keras")
    with pytest.raises(ValueError, match="Expected a keras.Model or a .keras path, got int"):
        prune(3)
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        prune_to_size(dermsep_net(32), 1.2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expansions": [32] * 15}, "expansions must be None or 16 positive ints"),
        ({"expansions": [16] + [96] * 15}, r"block 0's being 32"),
        ({"head_channels": 0}, "head_channels must be a positive int"),
        ({"head_channels": 640, "pretrained": True}, "ImageNet weights exist only for .* full widths"),
    ],
)
def test_narrower_lite0_widths_are_checked(options: dict, message: str):
    with pytest.raises(ValueError, match=message):
        efficientnet_lite0(32, **{"pretrained": False, **options})
