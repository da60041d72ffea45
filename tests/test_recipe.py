"""helpers.train.Recipe: the cosine schedule, weight decay, label smoothing and softer class weights."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from train_utils import run_training

from helpers.train import RECIPES, Recipe, SmoothedSparseCrossentropy, _optimizer

TUNED = Recipe(
    schedule="cosine", warmup_epochs=1, weight_decay=1e-4, label_smoothing=0.1, class_weight_power=0.5
)


def test_plain_recipe_is_adam_at_a_constant_rate():
    opt = _optimizer(1e-3, Recipe(), total_steps=100, steps_per_epoch=10)
    assert type(opt) is keras.optimizers.Adam
    assert float(opt.learning_rate) == pytest.approx(1e-3)


def test_cosine_schedule_warms_up_peaks_and_decays_to_one_percent():
    opt = _optimizer(2e-3, TUNED, total_steps=100, steps_per_epoch=10)
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
    with pytest.raises(ValueError, match=r"one of \['plain', 'tuned'\], got 'fancy'"):
        run_training(synthetic_dir, tmp_path, tmp_path / "run", epochs=1, recipe="fancy")
