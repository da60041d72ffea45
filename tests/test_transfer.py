"""Transfer learning (helpers.train.transfer) and distillation (helpers.train.distill): the phases freeze what
they say, a run killed at the phase boundary resumes to the weights of an uninterrupted one, and a teacher is
recorded, checked and never swapped on resume."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from train_utils import run_training, same_weights

from helpers.backbones import backbone_layers, lite0_weights
from helpers.models import build_model
from helpers.train.recipes import RECIPES, Recipe
from helpers.train.transfer import Phase, phase_at, plan_phases, set_trainable

TRANSFER = {"model_name": "efficientnet_lite0", "max_images": 60, "recipe": "transfer"}
STUDENT = {"model_name": "dermsep_net", "max_images": 60}


def test_the_transfer_recipe_warms_up_the_head_then_fine_tunes_at_a_lower_rate():
    phases = plan_phases(RECIPES["transfer"], epochs=6, learning_rate=1e-3)
    assert phases == [
        Phase("head", 0, 1, 1e-3, constant_rate=True),
        Phase("fine_tune", 1, 6, pytest.approx(3e-4)),
    ]
    assert plan_phases(RECIPES["transfer"], 1, 1e-3) == [Phase("head", 0, 1, 1e-3, constant_rate=True)]
    assert plan_phases(Recipe(), 6, 1e-3) == [Phase("all", 0, 6, 1e-3)]
    assert phase_at(phases, 0).name == "head" and phase_at(phases, 1).name == "fine_tune"
    assert phase_at(phases, 6).name == "fine_tune"


def test_phases_freeze_the_backbone_then_every_batchnorm_then_below_a_chosen_block():
    model = build_model("efficientnet_lite0", 32, pretrained=False)
    recipe = RECIPES["transfer"]
    head, fine = plan_phases(recipe, 3, 1e-3)
    set_trainable(model, recipe, head)
    assert not any(layer.trainable for layer in backbone_layers(model))
    assert [w.path for w in model.trainable_weights] == ["predictions/kernel", "predictions/bias"]
    set_trainable(model, recipe, fine)
    batchnorms = [la for la in backbone_layers(model) if isinstance(la, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    assert model.get_layer("stem").trainable and model.get_layer("block15_dw").trainable
    from_block10 = Recipe(schedule="cosine", head_epochs=1, fine_tune_from="block10")
    set_trainable(model, from_block10, fine)
    assert not model.get_layer("block9_project").trainable and model.get_layer("block10_expand").trainable
    assert model.get_layer("block10_expand_bn").trainable  # BatchNorm is frozen only when asked


def test_a_fine_tune_start_that_names_no_layer_lists_the_names():
    model = build_model("efficientnet_lite0", 32, pretrained=False)
    recipe = Recipe(schedule="cosine", head_epochs=1, fine_tune_from="stage7")
    with pytest.raises(ValueError, match="fine_tune_from='stage7' matches no layer.*block0"):
        set_trainable(model, recipe, plan_phases(recipe, 3, 1e-3)[1])


def test_a_warm_up_phase_needs_the_cosine_schedule():
    with pytest.raises(ValueError, match="Recipe.head_epochs got 1 .*needs schedule='cosine'"):
        Recipe(head_epochs=1)


def test_transfer_recipe_on_a_from_scratch_model_is_refused(synthetic_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="dermsep_net is trained from scratch; use recipe='tuned'"):
        run_training(synthetic_dir, tmp_path, tmp_path / "run", epochs=2, **{**STUDENT, "recipe": "transfer"})
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.fixture(scope="module")
def transfer_runs(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 2-epoch transfer run (head, then fine-tune), and the same run killed after the head phase and
    resumed; trained once for the module."""
    folder = tmp_path_factory.mktemp("transfer")
    whole = run_training(synthetic_dir, folder, folder / "whole", epochs=2, **TRANSFER)
    head = run_training(synthetic_dir, folder, folder / "split", epochs=1, **TRANSFER)
    head_weights = keras.models.load_model(head.best_model_path).get_weights()
    resumed = run_training(synthetic_dir, folder, folder / "split", epochs=2, **TRANSFER)
    return {"folder": folder, "whole": whole, "head_weights": head_weights, "resumed": resumed}


@pytest.mark.slow
def test_a_run_resumed_at_the_phase_boundary_ends_as_the_uninterrupted_one(transfer_runs):
    whole, resumed = transfer_runs["whole"], transfer_runs["resumed"]
    assert resumed.start_epoch == 1 and resumed.epochs_completed == 2
    assert resumed.history["val_loss"].tolist() == whole.history["val_loss"].tolist()
    assert same_weights(resumed.model.get_weights(), whole.model.get_weights())
    assert whole.history["learning_rate"].iloc[0] == pytest.approx(1e-3)  # the head phase, constant
    manifest = json.loads((whole.run_dir / "manifest.json").read_text())
    assert manifest["parameters"]["recipe"]["head_epochs"] == 1


@pytest.mark.slow
def test_the_head_phase_leaves_the_imagenet_backbone_untouched(transfer_runs):
    model = build_model("efficientnet_lite0", 32, pretrained=False)
    model.set_weights(transfer_runs["head_weights"])
    imagenet = lite0_weights()
    for name in ("stem", "block7_dw", "top_conv", "top_conv_bn"):
        assert same_weights(model.get_layer(name).get_weights(), imagenet[name]), name
    tuned = transfer_runs["resumed"].model
    assert not same_weights(tuned.get_layer("block7_dw").get_weights(), imagenet["block7_dw"])
    assert same_weights(tuned.get_layer("top_conv_bn").get_weights(), imagenet["top_conv_bn"])  # frozen


@pytest.mark.slow
def test_a_distilled_student_records_its_teacher_and_refuses_another(
    synthetic_dir: Path, transfer_runs, tmp_path: Path
):
    teacher = transfer_runs["whole"].best_model_path
    recipe = Recipe(mixup_alpha=0.4, distill_alpha=0.5, distill_temperature=2.0)
    student = run_training(
        synthetic_dir, tmp_path, tmp_path / "student", 1, teacher=teacher, recipe=recipe, **STUDENT
    )
    record = json.loads((student.run_dir / "manifest.json").read_text())["teacher"]
    assert record["path"] == str(teacher.resolve()) and len(record["sha256"]) == 64
    assert record["img_size"] == 32 and not record["predictor_unwrapped"]
    assert np.isfinite(student.history["loss"]).all()
    other = tmp_path / "other_teacher.keras"
    build_model("dermsep_net", 32).save(other)
    with pytest.raises(ValueError, match="different settings - teacher: saved"):
        run_training(
            synthetic_dir, tmp_path, tmp_path / "student", 2, teacher=other, recipe=recipe, **STUDENT
        )


@pytest.mark.parametrize(
    "builder, message",
    [
        (lambda: build_model("dermsep_net", 32, num_classes=3), "predicts 3 classes"),
        (lambda: build_model("dermsep_net", 32, metadata=True), "takes a metadata input"),
    ],
)
def test_a_teacher_that_cannot_teach_is_refused_before_training(
    synthetic_dir: Path, tmp_path: Path, builder, message: str
):
    path = tmp_path / "teacher.keras"
    builder().save(path)
    with pytest.raises(ValueError, match=message):
        run_training(synthetic_dir, tmp_path, tmp_path / "run", 1, teacher=path, **STUDENT)
    with pytest.raises(FileNotFoundError, match="Teacher model not found"):
        run_training(synthetic_dir, tmp_path, tmp_path / "run", 1, teacher=tmp_path / "nope.keras", **STUDENT)
