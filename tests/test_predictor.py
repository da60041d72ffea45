"""helpers.models.predictor: test-time augmentation and the prior shift as one saveable Keras model."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers.explain import gradcam
from helpers.modelio import load_keras_model, predict_images
from helpers.models import (
    Dihedral,
    DihedralViews,
    PriorShift,
    ViewMean,
    build_model,
    count_params,
    predictor,
    predictor_members,
    unwrap_predictor,
)


@pytest.fixture(scope="module")
def base() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("fast", 16)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype("float32")


def numpy_view(x: np.ndarray, view: int) -> np.ndarray:
    if view & 4:
        x = x.transpose(0, 2, 1, 3)
    if view & 2:
        x = x[:, :, ::-1]
    if view & 1:
        x = x[:, ::-1]
    return x


def test_the_eight_dihedral_views_are_the_flips_and_rotations(images: np.ndarray):
    views = [np.asarray(Dihedral(v)(images)) for v in range(8)]
    for v, got in enumerate(views):
        np.testing.assert_array_equal(got, numpy_view(images, v))
    flat = {got[0].tobytes() for got in views}
    assert len(flat) == 8, "all 8 views differ on a random image"
    np.testing.assert_array_equal(views[3], np.rot90(images, 2, axes=(1, 2)))  # both flips = 180 degrees
    stacked = np.asarray(DihedralViews(8)(images))
    np.testing.assert_array_equal(stacked, np.concatenate([numpy_view(images, v) for v in range(8)]))
    per_image_mean = np.mean([numpy_view(images, v) for v in range(8)], axis=0).reshape(len(images), -1)
    np.testing.assert_allclose(ViewMean(8)(stacked.reshape(len(stacked), -1)), per_image_mean, rtol=1e-6)


def test_tta_predictor_averages_the_base_model_over_the_views(base: keras.Model, images: np.ndarray):
    wrapped = predictor(base, views=8)
    expected = np.mean([base.predict(numpy_view(images, v).copy(), verbose=0) for v in range(8)], axis=0)
    np.testing.assert_allclose(wrapped.predict(images, verbose=0), expected, atol=1e-6)
    assert count_params(wrapped) == count_params(base), "the views share one set of weights"


def test_prior_shift_reweights_and_renormalises():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype="float32")
    weights = [1.0, 3.0, 4.0]
    expected = probs * weights / (probs * weights).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(PriorShift(weights)(probs)), expected, rtol=1e-6)
    assert np.asarray(PriorShift(weights)(probs)).argmax(1).tolist() == [1, 2]


def test_predictor_round_trips_through_a_keras_file(base: keras.Model, images: np.ndarray, tmp_path: Path):
    wrapped = predictor(base, views=4, class_weights=[1, 2, 1, 3, 1, 0.5, 2])
    wrapped.save(tmp_path / "best.keras")
    loaded = load_keras_model(tmp_path / "best.keras")
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0), atol=1e-6
    )
    assert loaded.input_shape == (None, 16, 16, 3)


@pytest.mark.parametrize("views", [0, 9, 2.5, True])
def test_predictor_refuses_a_bad_number_of_views(base: keras.Model, views: int):
    with pytest.raises(ValueError, match="views must be 1..8"):
        predictor(base, views=views)


def test_gradcam_of_a_predictor_explains_the_network_inside(base: keras.Model, images: np.ndarray):
    image = images[0].astype("uint8")
    wrapped = predictor(base, views=8, class_weights=np.ones(7))
    assert unwrap_predictor(wrapped) is base and unwrap_predictor(base) is base
    np.testing.assert_allclose(gradcam(wrapped, image, 2), gradcam(base, image, 2), atol=1e-6)


@pytest.fixture(scope="module")
def second() -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_model("fast", 16)  # same name as ``base``: the ensemble must tell them apart


def test_ensemble_predictor_averages_its_members_over_the_views(
    base: keras.Model, second: keras.Model, images: np.ndarray, tmp_path: Path
):
    weights = np.linspace(0.5, 2.0, 7)
    wrapped = predictor([base, second], views=4, class_weights=weights)
    members = [predictor(m, views=4).predict(images, verbose=0) for m in (base, second)]
    expected = np.mean(members, axis=0) * weights
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(wrapped.predict(images, verbose=0), expected, atol=1e-6)
    assert count_params(wrapped) == count_params(base) + count_params(second)
    assert [m.name for m in predictor_members(wrapped)] == [f"{base.name}_1", f"{base.name}_2"]
    wrapped.save(tmp_path / "ensemble.keras")
    loaded = load_keras_model(tmp_path / "ensemble.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)
    assert len(predictor_members(loaded)) == 2


def test_ensemble_refuses_members_that_cannot_be_averaged(base: keras.Model):
    with pytest.raises(ValueError, match="must share image shape"):
        predictor([base, build_model("fast", 24)])
    with pytest.raises(ValueError, match="non-empty list of Keras models"):
        predictor([])


def test_predict_images_matches_the_model_without_the_determinism_log(images, capfd):
    tf.config.experimental.enable_op_determinism()  # as helpers.train.train does, process-wide
    keras.utils.set_random_seed(0)
    model = build_model("fast", 16)  # a new model: Keras's array adapter would log on its first predict
    got = predict_images(model, images, batch_size=4)
    assert "NodeDef mentions attribute" not in capfd.readouterr().err
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model(images, training=False)), atol=1e-6)
