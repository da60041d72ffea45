"""helpers.train.Recipe: the cosine schedule, weight decay, label smoothing and softer class weights."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from train_utils import run_training, same_weights

from helpers.classes import CLASS_TO_INDEX
from helpers.modelio import load_keras_model as load_model
from helpers.pipeline import load_images
from helpers.train import RECIPES, Recipe, averaged_weights, prepare_data, validation_scores
from helpers.train.loop import compiled_model
from helpers.train.recipes import SmoothedSparseCrossentropy, make_optimizer

TUNED = Recipe(
    schedule="cosine", warmup_epochs=1, weight_decay=1e-4, label_smoothing=0.1, class_weight_power=0.5
)


def test_plain_recipe_is_adam_at_a_constant_rate():
    opt = make_optimizer(1e-3, Recipe(), total_steps=100, steps_per_epoch=10)
    assert type(opt) is keras.optimizers.Adam
    assert float(opt.learning_rate) == pytest.approx(1e-3)


def test_cosine_schedule_warms_up_peaks_and_decays_to_one_percent():
    opt = make_optimizer(2e-3, TUNED, total_steps=100, steps_per_epoch=10)
    assert isinstance(opt, keras.optimizers.AdamW) and opt.weight_decay == pytest.approx(1e-4)
    rate = opt._learning_rate  # the schedule object
    values = [float(rate(step)) for step in (0, 5, 10, 55, 100)]
    assert values[0] == 0.0 and values[1] == pytest.approx(1e-3)  # linear warm-up over one epoch
    assert values[2] == pytest.approx(2e-3)  # peak
    assert values[3] == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 0.5))))
    assert values[4] == pytest.approx(2e-5)  # alpha = 1%


def test_label_smoothing_matches_the_one_hot_formula():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 1])
    loss = float(SmoothedSparseCrossentropy(0.3)(labels, probs))
    target = np.eye(3)[labels] * 0.7 + 0.3 / 3
    assert loss == pytest.approx(float(np.mean(-(target * np.log(probs)).sum(axis=1))), rel=1e-5)
    plain = float(SmoothedSparseCrossentropy(0.0)(labels, probs))
    assert plain == pytest.approx(
        float(keras.losses.SparseCategoricalCrossentropy()(labels, probs)), rel=1e-5
    )


def test_class_weight_power_interpolates_between_none_and_balanced():
    balanced = {0: 4.0, 1: 0.25, 2: 1.0}
    assert Recipe().weights(balanced) == balanced
    assert Recipe(class_weight_power=0).weights(balanced) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert Recipe(class_weight_power=0.5).weights(balanced) == {0: 2.0, 1: 0.5, 2: 1.0}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule", "linear"),
        ("label_smoothing", 1.0),
        ("class_weight_power", -1),
        ("weight_decay", "x"),
        ("warmup_epochs", 1.5),
    ],
)
def test_bad_recipe_values_are_refused_by_name(field: str, value: object):
    with pytest.raises(ValueError, match=f"Recipe.{field}"):
        Recipe(**{field: value})


def test_training_with_the_tuned_recipe_records_it_and_refuses_to_resume_with_another(
    synthetic_dir: Path, tmp_path: Path
):
    run_dir = tmp_path / "tuned"
    result = run_training(synthetic_dir, tmp_path, run_dir, epochs=2, recipe=TUNED, max_images=120)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["parameters"]["recipe"]["schedule"] == "cosine"
    assert manifest["identity"]["recipe"]["label_smoothing"] == 0.1
    counts = manifest["data"]["class_counts"]["train"]
    total, present = sum(counts.values()), sum(1 for c in counts.values() if c)
    expected = {k: (total / (present * c)) ** 0.5 for k, c in counts.items() if c}
    assert manifest["class_weights"] == pytest.approx(expected, rel=1e-5), "square-rooted balanced weights"
    assert len(result.history) == 2 and np.isfinite(result.history["loss"]).all()
    rates = result.history["learning_rate"].tolist()  # logged (and printed) for the cosine schedule too
    assert rates[0] == pytest.approx(1e-3) and rates[1] == pytest.approx(1e-5), "peak, then 1% at the end"
    with pytest.raises(ValueError, match="recipe"):
        run_training(synthetic_dir, tmp_path, run_dir, epochs=3, max_images=120)


def test_recipes_are_chosen_by_name_and_unknown_names_are_refused(synthetic_dir: Path, tmp_path: Path):
    assert RECIPES["tuned"].schedule == "cosine" and RECIPES["plain"] == Recipe()
    with pytest.raises(ValueError, match=r"one of \['plain', 'transfer', 'tuned'\], got 'fancy'"):
        run_training(synthetic_dir, tmp_path, tmp_path / "run", epochs=1, recipe="fancy")


EMA = Recipe(ema=0.9)  # plateau schedule: independent of the epoch count, so a resume is exact


def test_averaged_weights_are_the_exponential_moving_average_and_are_put_back():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(make_optimizer(0.1, EMA, total_steps=10, steps_per_epoch=5), "mse")
    rng = np.random.default_rng(0)
    expected = None
    for _ in range(4):
        model.train_on_batch(rng.normal(size=(8, 4)), rng.normal(size=(8, 3)))
        raw = [w.copy() for w in model.get_weights()]
        # Keras' rule: the first step copies the weights, later ones mix in 10% of the new weights
        expected = (
            raw if expected is None else [0.9 * e + 0.1 * r for e, r in zip(expected, raw, strict=True)]
        )
    with averaged_weights(model):
        inside = model.get_weights()
    assert all(np.allclose(i, e, atol=1e-6) for i, e in zip(inside, expected, strict=True))
    assert not np.allclose(inside[0], raw[0]), "the average lags the raw weights"
    assert all(np.array_equal(w, r) for w, r in zip(model.get_weights(), raw, strict=True)), (
        "raw weights back"
    )


def test_averaged_weights_is_a_no_op_without_ema():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(make_optimizer(0.1, Recipe(), total_steps=10, steps_per_epoch=5), "mse")
    model.train_on_batch(np.ones((8, 4)), np.zeros((8, 3)))
    before = model.get_weights()
    with averaged_weights(model):
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))


@pytest.mark.parametrize("momentum", [1.0, -0.1, "0.99"])
def test_bad_ema_momentum_is_refused(momentum: object):
    with pytest.raises(ValueError, match="Recipe.ema"):
        Recipe(ema=momentum)


def test_ema_training_saves_the_averaged_weights_and_resumes_from_the_raw_ones(
    synthetic_dir: Path, tmp_path: Path
):
    once = run_training(synthetic_dir, tmp_path, tmp_path / "once", epochs=2, recipe=EMA, max_images=120)
    split = tmp_path / "split"
    first = run_training(synthetic_dir, tmp_path, split, epochs=1, recipe=EMA, max_images=120)
    # after epoch 1, best.keras is the averaged model; the backup holds the raw weights and the averages
    model = compiled_model("cpu_light_efficient_cnn", 32, 1e-3, EMA, epochs=2, steps_per_epoch=6)
    model.load_weights(split / "backup" / "epoch-0001" / "state.weights.h5")
    best = load_model(first.best_model_path).get_weights()
    assert not same_weights(model.get_weights(), best)
    with averaged_weights(model):
        assert same_weights(model.get_weights(), best)
    # the logged validation scores are those of the averaged weights, i.e. of best.keras
    val = prepare_data(synthetic_dir, seed=42, max_images=120, verbose=False).query("split == 'val'")
    images = load_images(val["path"].tolist(), 32, cache=tmp_path / "cache", progress=False)
    probs = load_model(first.best_model_path).predict(images.astype("float32"), verbose=0)
    logged = first.history.iloc[0]
    for key, value in validation_scores(val["dx"].map(CLASS_TO_INDEX).to_numpy(), probs).items():
        assert logged[key] == pytest.approx(value, rel=1e-4), key
    resumed = run_training(synthetic_dir, tmp_path, split, epochs=2, recipe=EMA, max_images=120)
    assert resumed.history["val_loss"].tolist() == once.history["val_loss"].tolist()
    assert same_weights(
        load_model(resumed.best_model_path).get_weights(), load_model(once.best_model_path).get_weights()
    )
