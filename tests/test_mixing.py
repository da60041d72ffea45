"""Mixup and CutMix (helpers.mixing) and the soft targets they give (pipeline, loss): labels mixed to match
the pixels, deterministic under the seed and the same for every copy of the stream, class weights and a
teacher's probabilities carried through."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from helpers.data import load_metadata
from helpers.mixing import MixConfig, mix_batch
from helpers.models import build_model
from helpers.pipeline import make_dataset
from helpers.train.recipes import Recipe, SoftTargetLoss

SEED = np.array([3, 11], dtype=np.int64)


def _batch(n: int = 8, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    return images, np.eye(7, dtype=np.float32)[rng.integers(0, 7, n)]


def test_mixup_blends_pixels_and_labels_in_the_same_proportion():
    images, targets = _batch(7, seed=1)
    targets = np.eye(7, dtype=np.float32)  # one image per class: a mixed label names both images
    mixed, soft = (np.asarray(a) for a in mix_batch(images, targets, SEED, MixConfig(mixup_alpha=0.4)))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    moved = [i for i in range(7) if soft[i, i] < 1]
    assert moved, "the permutation pairs some images with others"
    lam = soft[moved[0], moved[0]]
    partner = [int(np.flatnonzero(soft[i] == 1 - lam)[0]) if i in moved else i for i in range(7)]
    np.testing.assert_allclose(np.diag(soft)[moved], lam, atol=1e-6)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[partner], atol=1e-3)


def test_cutmix_pastes_one_box_and_weights_labels_by_its_area():
    images, targets = _batch(seed=2)
    mixed, soft = (np.asarray(a) for a in mix_batch(images, targets, SEED, MixConfig(cutmix_alpha=1.0)))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    kept = np.isclose(mixed, images).all(axis=-1)  # (B, S, S): pixels of the image itself
    assert 0 < kept.mean() < 1
    assert (kept == kept[0]).all()  # the same box in every image
    share = kept[0].mean()
    for row in range(len(images)):
        own = soft[row, targets[row].argmax()]
        partner_class = np.argsort(soft[row])[-2] if own < 1 else None
        if partner_class is None or targets[row].argmax() == partner_class:
            continue
        assert own == pytest.approx(share, abs=1e-5)


def test_mixing_repeats_under_the_seed_and_changes_with_it():
    images, targets = _batch(seed=3)
    config = MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0)
    first = mix_batch(images, targets, SEED, config)
    again = mix_batch(images, targets, SEED, config)
    other = mix_batch(images, targets, SEED + 1, config)
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[1]), np.asarray(other[1]))


def test_prob_zero_leaves_the_batch_alone():
    images, targets = _batch(seed=4)
    mixed, soft = mix_batch(images, targets, SEED, MixConfig(mixup_alpha=1.0, prob=0.0))
    np.testing.assert_array_equal(np.asarray(mixed), images)
    np.testing.assert_array_equal(np.asarray(soft), targets)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mixup_alpha": -0.2}, "mixup_alpha must be a number in"),
        ({"cutmix_alpha": True}, "cutmix_alpha must be a number in"),
        ({"prob": 1.5}, "prob must be a number in"),
    ],
)
def test_bad_mix_settings_are_refused(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        MixConfig(**kwargs)


@pytest.mark.parametrize("field, value", [("mixup_alpha", -1.0), ("mix_prob", 2.0), ("cutmix_alpha", "1")])
def test_bad_recipe_mix_settings_name_the_field(field: str, value: object):
    with pytest.raises(ValueError, match=f"Recipe.{field} got"):
        Recipe(**{field: value})


@pytest.fixture(scope="module")
def frame(synthetic_dir: Path):
    return load_metadata(synthetic_dir, verbose=False).head(64)


def _first(ds, n: int = 1) -> list:
    it = iter(ds)
    return [tuple(np.asarray(part) for part in next(it)) for _ in range(n)]


def test_every_copy_of_a_keyed_stream_and_a_resumed_one_read_the_same_mixed_batches(frame, tmp_path: Path):
    args = {"img_size": 16, "batch_size": 8, "training": True, "cache": tmp_path, "progress": False}
    mix = MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0)
    copy_a = _first(make_dataset(frame, first_epoch=0, mix=mix, **args), 9)
    copy_b = _first(make_dataset(frame, first_epoch=0, mix=mix, **args), 9)
    resumed = _first(make_dataset(frame, first_epoch=1, mix=mix, **args), 1)
    for a, b in zip(copy_a, copy_b, strict=True):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(resumed[0][1], copy_a[8][1])  # 8 batches per epoch of 64 images
    soft = np.concatenate([batch[1] for batch in copy_a])
    assert soft.shape[1] == 7 and np.allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert ((soft > 0) & (soft < 1)).any(), "some labels are mixed"


def test_the_teacher_sees_the_mixed_image_the_student_sees(frame, tmp_path: Path):
    keras.utils.set_random_seed(0)
    teacher = build_model("dermsep_net", 24)  # another input size: the batch is resized for it
    ds = make_dataset(
        frame,
        16,
        8,
        training=True,
        cache=tmp_path,
        progress=False,
        mix=MixConfig(mixup_alpha=0.4),
        teacher=teacher,
    )
    images, targets = _first(ds)[0]
    assert targets.shape == (8, 14)
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (24, 24)))
    np.testing.assert_allclose(targets[:, 7:], teacher.predict(resized, verbose=0), atol=1e-5)


def test_soft_targets_only_for_image_only_training(frame, tmp_path: Path):
    args = {"img_size": 16, "batch_size": 8, "cache": tmp_path, "progress": False}
    with pytest.raises(ValueError, match="image-only training datasets"):
        make_dataset(frame, training=False, mix=MixConfig(mixup_alpha=0.4), **args)
    with pytest.raises(ValueError, match="mix must be None or a helpers.mixing.MixConfig"):
        make_dataset(frame, training=True, mix={"mixup_alpha": 0.4}, **args)


def _loss(loss: SoftTargetLoss, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(loss.call(keras.ops.convert_to_tensor(y_true), y_pred))


def test_a_soft_label_is_weighted_by_its_mix_of_class_weights():
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 7.0]
    pred = np.full((2, 7), 0.05, np.float32)
    pred[:, 5] = 0.7
    one_hot = np.eye(7, dtype=np.float32)[[0, 6]]
    per_image = _loss(SoftTargetLoss(weights), one_hot, pred)
    np.testing.assert_allclose(per_image, [1.0 * -np.log(0.05), 7.0 * -np.log(0.05)], rtol=1e-5)
    half = np.zeros((1, 7), np.float32)
    half[0, [0, 5]] = 0.5
    expected = (1.0 + 0.5) / 2 * -(0.5 * np.log(0.05) + 0.5 * np.log(0.7))
    np.testing.assert_allclose(_loss(SoftTargetLoss(weights), half, pred[:1]), [expected], rtol=1e-5)


def test_distillation_loss_is_alpha_ce_plus_t_squared_kl():
    rng = np.random.default_rng(0)
    student = rng.dirichlet(np.ones(7), 3).astype(np.float32)
    teacher = rng.dirichlet(np.ones(7), 3).astype(np.float32)
    label = np.eye(7, dtype=np.float32)[[1, 4, 6]]
    alpha, t = 0.3, 4.0

    def soften(p):
        z = np.log(p) / t
        return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)

    ce = -np.log(student[np.arange(3), [1, 4, 6]])
    kl = (soften(teacher) * (np.log(soften(teacher)) - np.log(soften(student)))).sum(axis=1)
    got = _loss(SoftTargetLoss([1.0] * 7, 0.0, alpha, t), np.concatenate([label, teacher], 1), student)
    np.testing.assert_allclose(got, alpha * ce + (1 - alpha) * t * t * kl, rtol=1e-4)
    same = _loss(SoftTargetLoss([1.0] * 7, 0.0, 0.0, t), np.concatenate([label, student], 1), student)
    np.testing.assert_allclose(same, 0.0, atol=1e-5)  # a student that agrees with its teacher
