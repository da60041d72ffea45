"""Classifier re-training: the refitted last layer is exactly the logistic regression, weights steer it to the
rare classes, the network itself is untouched, and bad input is refused by name."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from helpers import classifier
from helpers.classes import CLASS_NAMES
from helpers.classifier import (
    CLASS_WEIGHT_POWERS,
    CONSTANT_FEATURE_STD,
    feature_model,
    finalize_predictor,
    fit_classifier,
    multi_scale_layers,
    prior_shifted_predictor,
    retrain_classifier,
    tta_score,
    view_features,
    view_probs,
)
from helpers.data import load_metadata
from helpers.metrics import (
    PRIOR_SHIFT_TAUS,
    fit_prior_shift,
    label_ids,
    prior_shift_weights,
    selection_score,
)
from helpers.models import PriorShift, build_model, count_params, predictor, predictor_members
from helpers.pipeline import load_images
from helpers.splits import split_by_lesion

SIZE = 8
COLOURS = np.random.default_rng(0).uniform(40, 215, (len(CLASS_NAMES), 3))


def _images(counts: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``counts[c]`` noisy images of class ``c``'s colour (so mean colour separates the classes)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = COLOURS[labels][:, None, None, :] + rng.normal(0, 25, (len(labels), SIZE, SIZE, 3))
    return np.clip(images, 0, 255).astype(np.float32), labels


def _colour_model() -> keras.Model:
    """Features: mean colour and a few random channels; an untrained softmax head."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(6, 1, activation="relu", name="conv")(x)
    x = keras.layers.Concatenate()([keras.layers.Rescaling(1 / 255)(inputs), x])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="colour_model")


@pytest.fixture(scope="module")
def data() -> dict:
    train_x, train_y = _images([20, 20, 20, 6, 20, 120, 6], seed=1)
    val_x, val_y = _images([10] * len(CLASS_NAMES), seed=2)
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


def test_refitted_layer_is_the_logistic_regression_on_raw_features(data):
    model = _colour_model()
    before = [w.copy() for w in model.get_weights()]
    features = view_features(feature_model(model), data["train_x"], views=2)
    assert features.shape == (2, len(data["train_y"]), 9)
    refit = retrain_classifier(model, features, data["train_y"], class_weight_power=0.0, inverse_l2=0.5)

    flat = features.reshape(-1, 9)
    spread = flat.std(0)  # (nearly) constant features are left out
    level = np.maximum(spread.max(), np.abs(flat.mean(0)))
    keep = spread > CONSTANT_FEATURE_STD * level
    mean, scale = flat[:, keep].mean(0), flat[:, keep].std(0)
    reference = LogisticRegression(C=0.5, max_iter=2000).fit(
        (flat[:, keep] - mean) / scale, np.tile(data["train_y"], 2)
    )
    val_features = feature_model(model).predict(data["val_x"], verbose=0)[:, keep]
    expected = reference.predict_proba((val_features - mean) / scale)
    np.testing.assert_allclose(refit.predict(data["val_x"], verbose=0), expected, atol=1e-4)

    assert count_params(refit) == count_params(model) and refit.name == model.name
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True)), (
        "input untouched"
    )
    assert (refit.predict(data["val_x"], verbose=0).argmax(1) == data["val_y"]).mean() > 0.9


@pytest.mark.parametrize(
    "level, spread",
    [(3.0, 1e-7), (50.0, 0.05)],  # tiny spread; a spread fine beside the others but 0.1% of its own level
    ids=["tiny_spread", "tiny_relative_to_its_mean"],
)
def test_a_nearly_constant_feature_gets_no_weight(data, level: float, spread: float):
    """Dividing by a near-zero spread gave layer weights of ~1e4-1e6, cancelled by as large a bias, that a
    float16 or int8 export cannot hold."""
    model = _colour_model()
    features = view_features(feature_model(model), data["train_x"], views=1)
    assert spread > CONSTANT_FEATURE_STD * features.std(axis=(0, 1)).max() or spread < 1e-6
    noise = np.random.default_rng(0).normal(0, spread, features.shape[:2])
    features[..., 0] = level + noise  # a channel that hardly ever changes
    refit = retrain_classifier(model, features, data["train_y"], class_weight_power=0.0)
    kernel = refit.layers[-1].get_weights()[0]
    assert np.all(kernel[0] == 0)
    assert np.abs(kernel).max() < 1000  # float16 holds up to 65504; before, ~1e6


def test_class_weights_raise_sensitivity_of_the_rare_classes(data):
    model = _colour_model()
    train_x, train_y = _images([2, 2, 2, 2, 2, 200, 2], seed=3)  # nearly all nv, colours overlap a little
    features = view_features(feature_model(model), train_x, views=1)
    rare = data["val_y"] != CLASS_NAMES.index("nv")

    def rare_sensitivity(power: float) -> float:
        refit = retrain_classifier(model, features, train_y, class_weight_power=power, inverse_l2=0.01)
        pred = refit.predict(data["val_x"], verbose=0).argmax(1)
        return float((pred[rare] == data["val_y"][rare]).mean())

    assert rare_sensitivity(1.0) > rare_sensitivity(0.0) + 0.1


def test_fit_classifier_picks_the_power_with_the_best_validation_score(data):
    model = _colour_model()
    args = (data["train_x"], data["train_y"], data["val_x"], data["val_y"])
    refit, power = fit_classifier(model, *args, powers=(0.0, 1.0), views=2)
    assert power in (0.0, 1.0)
    features = view_features(feature_model(model), data["train_x"], views=2)
    scores = {
        p: selection_score(
            data["val_y"],
            predictor(retrain_classifier(model, features, data["train_y"], p), 2).predict(
                data["val_x"], verbose=0
            ),
        )
        for p in (0.0, 1.0)
    }
    assert scores[power] == max(scores.values())
    chosen = retrain_classifier(model, features, data["train_y"], power)
    np.testing.assert_allclose(
        refit.predict(data["val_x"], verbose=0), chosen.predict(data["val_x"], verbose=0), atol=1e-3
    )


def test_each_power_starts_from_the_previous_fit_and_reaches_the_same_classifier(data):
    """retrain_classifiers warm-starts each power's fit from the previous one's weights (fewer L-BFGS
    iterations): every classifier matches a fit from scratch, and the weighting still takes effect."""
    model = _colour_model()
    features = view_features(feature_model(model), data["train_x"], views=2)
    chained = classifier.retrain_classifiers(model, features, data["train_y"], (0.0, 1.0))
    for power, warm in zip((0.0, 1.0), chained, strict=True):
        cold = retrain_classifier(model, features, data["train_y"], power)
        np.testing.assert_allclose(
            warm.predict(data["val_x"], verbose=0), cold.predict(data["val_x"], verbose=0), atol=1e-3
        )
    kernels = [refit.layers[-1].get_weights()[0] for refit in chained]
    assert np.abs(kernels[1] - kernels[0]).max() > 0.05


def test_pooled_layers_add_their_average_pooled_maps_to_the_features(data, tmp_path):
    model = _colour_model()
    features = feature_model(model, pooled=("conv",))
    conv = keras.Model(model.inputs, model.get_layer("conv").output).predict(data["val_x"], verbose=0)
    got = features.predict(data["val_x"], verbose=0)
    np.testing.assert_allclose(got[:, :9], feature_model(model).predict(data["val_x"], verbose=0), atol=1e-6)
    np.testing.assert_allclose(got[:, 9:], conv.mean(axis=(1, 2)), atol=1e-5)

    train_f = view_features(features, data["train_x"], views=2)
    refit = retrain_classifier(model, train_f, data["train_y"], pooled=("conv",))
    assert count_params(refit) == count_params(model) + 6 * len(CLASS_NAMES)  # 6 more features
    refit.save(tmp_path / "refit.keras")
    reloaded = keras.saving.load_model(tmp_path / "refit.keras")
    np.testing.assert_allclose(
        reloaded.predict(data["val_x"], verbose=0), refit.predict(data["val_x"], verbose=0), atol=1e-6
    )


def test_an_unknown_pooled_layer_is_named_with_the_choices():
    with pytest.raises(ValueError, match="has no layer 'stage9' with a feature map to pool.*'conv'"):
        feature_model(_colour_model(), pooled=("stage9",))


def test_features_computed_without_the_pooled_layers_are_refused(data):
    model = _colour_model()
    features = view_features(feature_model(model), data["train_x"], views=1)
    with pytest.raises(ValueError, match="train_features have 9 features but .* gives 15"):
        retrain_classifier(model, features, data["train_y"], pooled=("conv",))


def test_selection_score_is_the_mean_of_accuracy_balanced_accuracy_and_macro_f1():
    probs = np.eye(len(CLASS_NAMES))[[0, 1, 1]]  # true 0, 0, 1: one image of class 0 missed
    # accuracy 2/3; balanced (0.5 + 1) / 2; macro-F1 (2/3 + 2/3) / 7 classes
    expected = (2 / 3 + 0.75 + (4 / 3) / 7) / 3
    assert selection_score([0, 0, 1], probs) == pytest.approx(expected)


def test_a_class_without_training_images_is_named(data):
    model = _colour_model()
    keep = data["train_y"] != CLASS_NAMES.index("df")
    features = view_features(feature_model(model), data["train_x"][keep], views=1)
    with pytest.raises(ValueError, match="no training images of df; every class needs at least one"):
        retrain_classifier(model, features, data["train_y"][keep])


def test_features_that_do_not_match_the_labels_are_refused(data):
    model = _colour_model()
    features = view_features(feature_model(model), data["train_x"], views=1)
    with pytest.raises(ValueError, match=r"train_features must have shape \(views, 10, d\) for 10 labels"):
        retrain_classifier(model, features, data["train_y"][:10])


def test_a_predictor_wrapper_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="is not a softmax Dense classifier.*unwrap_predictor"):
        feature_model(predictor(_colour_model(), 2))


def test_finalize_predictor_is_the_benchmark_chain_on_train_and_val_only(synthetic_dir: Path, monkeypatch):
    df = split_by_lesion(load_metadata(synthetic_dir, verbose=False), seed=0)
    missing = df[df["split"] == "test"].assign(path="/nonexistent/never_read.jpg")
    df = pd.concat([df[df["split"] != "test"], missing], ignore_index=True)  # reading test would fail
    keras.utils.set_random_seed(0)
    model = build_model("fast", 16)
    tried = []  # the pooled layers of every re-training finalize_predictor runs (the real fitting)
    real = classifier.classifier_from_features
    monkeypatch.setattr(
        classifier, "classifier_from_features", lambda *a, **k: tried.append(k["pooled"]) or real(*a, **k)
    )
    final, choices = finalize_predictor(model, df, 16, views=4)

    assert tried == [(), multi_scale_layers(model)], "both the single- and the multi-scale re-training"

    # the chosen re-training is the single- or multi-scale one whose 4-view val predictions score best
    x = {
        s: load_images(df.loc[df["split"] == s, "path"].tolist(), 16, progress=False)
        for s in ("train", "val")
    }
    y = {s: df.loc[df["split"] == s, "dx"] for s in ("train", "val")}
    val_scores = [
        tta_score(
            fit_classifier(model, x["train"], y["train"], x["val"], y["val"], views=4, pooled=p)[0],
            x["val"],
            y["val"],
            4,
        )
        for p in ((), multi_scale_layers(model))
    ]
    assert val_scores[0] != val_scores[1], "the two re-trainings should differ, or the choice proves nothing"
    assert choices["pooled"] == ([] if val_scores[0] >= val_scores[1] else list(multi_scale_layers(model)))
    assert choices["class_weight_power"] in CLASS_WEIGHT_POWERS and choices["tau"] in PRIOR_SHIFT_TAUS
    assert final.get_layer("tta_views").views == 4 and len(predictor_members(final)) == 1
    shift = [layer for layer in final.layers if isinstance(layer, PriorShift)][0]
    expected = prior_shift_weights(df.loc[df["split"] == "train", "dx"], choices["tau"])
    np.testing.assert_allclose(shift.class_weights, expected, rtol=1e-6)
    extra = 7 * sum(model.get_layer(name).output.shape[-1] for name in choices["pooled"])
    assert count_params(final) == count_params(model) + extra
    assert predictor_members(final)[0].get_layer("predictions").get_weights()[0].tolist() != (
        model.get_layer("predictions").get_weights()[0].tolist()
    ), "the last layer was refitted"

    # both on val, so the caller can keep whichever is better: the network's and the predictor's own figures
    truth = label_ids(y["val"])
    on_val = choices["val_balanced_accuracy"]
    network_pred, final_pred = (m.predict(x["val"], verbose=0).argmax(axis=1) for m in (model, final))
    assert on_val["network"] == pytest.approx(balanced_accuracy_score(truth, network_pred))
    assert on_val["predictor"] == pytest.approx(balanced_accuracy_score(truth, final_pred))
    assert (network_pred != final_pred).any(), "the finished predictor should answer differently"
    assert choices["better"] == max(on_val, key=on_val.get), "the one val prefers (ties: the network)"


def test_finalize_predictor_refuses_a_split_without_val_rows(synthetic_dir: Path):
    df = split_by_lesion(load_metadata(synthetic_dir, verbose=False), seed=0)
    with pytest.raises(ValueError, match="no val rows"):
        finalize_predictor(build_model("fast", 16), df[df["split"] == "train"], 16)
    with pytest.raises(ValueError, match="'split' columns"):
        finalize_predictor(build_model("fast", 16), df.drop(columns="split"), 16)


def test_prior_shifted_predictor_chooses_tau_on_the_ensembles_val_predictions(data):
    first = fit_classifier(_colour_model(), data["train_x"], data["train_y"], data["val_x"], data["val_y"])[0]
    second = _colour_model()  # untrained head: the ensemble differs from either member
    final, tau = prior_shifted_predictor([first, second], data["val_x"], data["val_y"], data["train_y"], 2)

    members = [predictor(m, 2).predict(data["val_x"], verbose=0) for m in (first, second)]
    tta = np.mean(members, axis=0)
    assert tau == fit_prior_shift(data["val_y"], tta, data["train_y"])
    expected = tta * prior_shift_weights(data["train_y"], tau)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(final.predict(data["val_x"], verbose=0), expected, atol=1e-5)
    assert len(predictor_members(final)) == 2 and final.get_layer("tta_views").views == 2


def test_multi_scale_layers_are_the_stage_outputs_but_the_last():
    assert multi_scale_layers(build_model("fast", 28)) == (
        "stage1_res_out",
        "stage2_res_out",
        "stage3_res_out",
    )
    assert multi_scale_layers(build_model("cpu_light_efficient_cnn", 28)) == ()


def test_the_networks_own_features_lead_the_multi_scale_ones_and_view_probs_is_tta():
    """What re-training from one set of features relies on: the single-scale features are the first columns
    of the multi-scale ones, and the last layer on the view features gives the TTA predictor's output."""
    keras.utils.set_random_seed(0)
    model = build_model("fast", 16)
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3)).astype("float32")
    single = view_features(feature_model(model), images, views=4)
    multi = view_features(feature_model(model, multi_scale_layers(model)), images, views=4)
    assert multi.shape[-1] > single.shape[-1]
    np.testing.assert_allclose(multi[..., : single.shape[-1]], single, rtol=1e-5, atol=1e-6)
    expected = keras.ops.convert_to_numpy(predictor(model, 4)(images))
    np.testing.assert_allclose(view_probs(model, single).mean(axis=0), expected, rtol=1e-4, atol=1e-6)


def test_finalize_predictor_of_a_model_without_stages_stays_single_scale(synthetic_dir: Path):
    df = split_by_lesion(load_metadata(synthetic_dir, verbose=False), seed=0)
    keras.utils.set_random_seed(0)
    model = build_model("cpu_light_efficient_cnn", 16)
    final, choices = finalize_predictor(model, df, 16, views=2)
    assert choices["pooled"] == [] and count_params(final) == count_params(model)
