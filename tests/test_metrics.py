"""helpers.metrics (scores, bootstrap, calibration, tables), files.write_json and helpers.plots.evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from helpers import files
from helpers import metrics as ev
from helpers.classes import CLASS_NAMES
from helpers.plots import evaluation as plots

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAM_METADATA = SHARED_DATA / "ham10000" / "HAM10000_metadata.csv"
MEL = CLASS_NAMES.index("mel")


@pytest.fixture(scope="module")
def random_predictions() -> tuple[np.ndarray, np.ndarray]:
    """Seeded, imbalanced 7-class predictions with some signal (every class present)."""
    rng = np.random.default_rng(7)
    n = 600
    y = rng.choice(7, size=n, p=[0.05, 0.07, 0.12, 0.03, 0.12, 0.58, 0.03])
    logits = rng.normal(size=(n, 7))
    logits[np.arange(n), y] += 1.8
    return y, softmax(logits, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def hand_case() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """3 classes, confusion matrix [[2,1,0],[0,1,1],[1,0,4]]; 0.8 on the predicted class, 0.1 elsewhere."""
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 2])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), pred] = 0.8
    return y, probs, ("a", "b", "mel")


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_match_sklearn(random_predictions):
    y, probs = random_predictions
    pred = probs.argmax(axis=1)
    m = ev.compute_metrics(y, probs, n_bootstrap=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(y, probs / probs.sum(1, keepdims=True)), rel=1e-6)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(7))
    table = ev.metrics_table(m)
    assert list(table.index) == list(CLASS_NAMES)
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["sensitivity"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)
    for k, name in enumerate(CLASS_NAMES):
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        negatives = y != k
        assert m["per_class"][name]["specificity"] == pytest.approx(np.mean(pred[negatives] != k))
    assert m["mel_sensitivity"] == pytest.approx(recall[MEL])
    assert m["confusion_matrix"][MEL][MEL] == int(np.sum((y == MEL) & (pred == MEL)))


def test_hand_built_case(hand_case):
    y, probs, names = hand_case
    m = ev.compute_metrics(y, probs, class_names=names, n_bootstrap=0)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)  # precision == recall per class
    assert m["weighted_f1"] == pytest.approx(0.7)
    specificity = [m["per_class"][n]["specificity"] for n in names]
    assert specificity == pytest.approx([6 / 7, 7 / 8, 4 / 5])  # TN / (TN + FP) from the matrix
    assert m["mel_sensitivity"] == pytest.approx(0.8)
    assert m["mel_specificity"] == pytest.approx(0.8)
    assert m["per_class"]["mel"]["auc"] == pytest.approx(0.8)  # 20 of 25 pairs, ties counted 1/2
    assert m["ece"] == pytest.approx(0.1)  # every confidence 0.8, accuracy 0.7
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 4]]
    baseline = m["baseline"]  # always "mel" (5 of 10)
    assert baseline["majority_class"] == "mel"
    assert baseline["accuracy"] == pytest.approx(0.5)
    assert baseline["balanced_accuracy"] == pytest.approx(1 / 3)
    assert baseline["macro_f1"] == pytest.approx((2 / 3) / 3)
    assert baseline["weighted_f1"] == pytest.approx(1 / 3)
    assert (baseline["mel_sensitivity"], baseline["mel_specificity"]) == (1.0, 0.0)


def test_absent_class_is_none_and_excluded_from_macro_averages(random_predictions):
    y, probs = random_predictions
    pred = probs.argmax(axis=1)
    keep = (y != CLASS_NAMES.index("df")) & (pred != CLASS_NAMES.index("df"))  # neither true nor predicted
    m = ev.compute_metrics(y[keep], probs[keep], n_bootstrap=50)
    assert m["macro_f1"] == pytest.approx(f1_score(y[keep], pred[keep], average="macro"))  # over 6 classes
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[keep], pred[keep]))
    assert m["per_class"]["df"]["precision"] is None and m["per_class"]["df"]["f1"] is None
    assert m["per_class"]["df"]["sensitivity"] is None
    assert m["per_class"]["df"]["auc"] is None
    assert m["per_class"]["df"]["support"] == 0
    assert "df" not in m["auc_classes"] and len(m["auc_classes"]) == 6
    expected = np.mean([roc_auc_score(y[keep] == k, probs[keep, k]) for k in range(7) if k != 3])
    assert m["macro_auc"] == pytest.approx(expected)
    json.dumps(m, allow_nan=False)  # strict JSON: no NaN anywhere


def test_string_labels_equal_ids(hand_case):
    y, probs, names = hand_case
    by_name = ev.compute_metrics([names[i] for i in y], probs, class_names=names, n_bootstrap=0)
    assert by_name == ev.compute_metrics(y, probs, class_names=names, n_bootstrap=0)


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_contains_estimate_and_is_deterministic(random_predictions):
    y, probs = random_predictions
    m = ev.compute_metrics(y, probs, n_bootstrap=300, seed=3)
    assert set(m["ci95"]) == set(ev.BOOTSTRAP_METRICS)
    for name, (low, high) in m["ci95"].items():
        assert low < m[name] < high, name
        assert high - low < 0.25, name
    again = ev.bootstrap_ci(y, probs, n_bootstrap=300, seed=3)
    assert again == m["ci95"]
    assert ev.bootstrap_ci(y, probs, n_bootstrap=300, seed=4) != again


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("absent", ["none", "df from y_true", "df from y_true and predictions"])
def test_vectorised_bootstrap_matches_sklearn_on_resamples(random_predictions, absent):
    y, probs = random_predictions
    df = CLASS_NAMES.index("df")
    keep = np.ones(len(y), bool) if absent == "none" else y != df
    if absent.endswith("predictions"):
        keep &= probs.argmax(axis=1) != df
    y, p = y[keep], probs[keep].astype(np.float64)
    rng = np.random.default_rng(11)
    draws = rng.integers(0, len(y), size=(4, len(y)))
    weights = np.stack([np.bincount(d, minlength=len(y)) for d in draws], axis=1).astype(float)
    fast = ev._weighted_headline(y, p, weights, MEL)
    for b, idx in enumerate(draws):
        yb, pb = y[idx], p[idx]
        pred = pb.argmax(axis=1)
        aucs = [roc_auc_score(yb == k, pb[:, k]) for k in np.unique(yb)]
        assert fast["accuracy"][b] == pytest.approx(accuracy_score(yb, pred))
        assert fast["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yb, pred))
        assert fast["macro_f1"][b] == pytest.approx(f1_score(yb, pred, average="macro"))
        assert fast["macro_auc"][b] == pytest.approx(np.mean(aucs))
        assert fast["mel_sensitivity"][b] == pytest.approx(np.mean(pred[yb == MEL] == MEL))
    assert np.any(p.argmax(axis=1) == df) == (absent != "df from y_true and predictions")


def test_weighted_auc_handles_ties():
    scores = np.array([0.1, 0.1, 0.8, 0.8, 0.8, 0.3])
    positive = np.array([False, True, True, False, True, False])
    weights = np.array([[1.0], [2.0], [1.0], [1.0], [0.0], [3.0]])
    expanded = np.repeat(np.arange(6), weights[:, 0].astype(int))
    expected = roc_auc_score(positive[expanded], scores[expanded])
    assert ev._weighted_auc(scores, positive, weights)[0] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ calibration
def test_ece_zero_when_perfectly_calibrated():
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)  # 80% right at confidence 0.8
    assert ev.expected_calibration_error(y, probs) == pytest.approx(0.0, abs=1e-12)
    assert ev.expected_calibration_error([0, 1], np.eye(2)) == 0.0


def test_ece_two_bin_hand_computed():
    probs = np.array([[0.4, 0.3, 0.3], [0.45, 0.35, 0.2], [0.9, 0.05, 0.05], [0.1, 0.7, 0.2]])
    y = np.array([0, 1, 0, 2])
    # bin (0, .5]: conf .425, acc .5 -> gap .075; bin (.5, 1]: conf .8, acc .5 -> gap .3; each half the images
    assert ev.expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.5 * 0.075 + 0.5 * 0.3)
    bins = ev.reliability_bins(y, probs, n_bins=2)
    assert bins["count"].tolist() == [2, 2]
    assert bins["confidence"].tolist() == pytest.approx([0.425, 0.8])
    edge = ev.reliability_bins([0, 0], [[0.5, 0.5], [1.0, 0.0]], n_bins=2)  # bins are (lo, hi]
    assert edge["count"].tolist() == [1, 1]


@pytest.fixture(scope="module")
def calibrated_logits() -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (labels sampled from it)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=1.5, size=(4000, 7))
    probs = softmax(logits, axis=1)
    y = (probs.cumsum(axis=1) < rng.random((4000, 1))).sum(axis=1)
    return logits, y


def test_temperature_scaling_fixes_overconfidence(calibrated_logits):
    logits, y = calibrated_logits
    overconfident = softmax(3.0 * logits, axis=1)
    t = ev.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert ev.fit_temperature(3.0 * logits, y) == pytest.approx(t, rel=1e-3)  # logits or probs alike
    scaled = ev.apply_temperature(overconfident, t)
    assert log_loss(y, scaled) < log_loss(y, overconfident) - 0.1
    assert ev.expected_calibration_error(y, scaled) < ev.expected_calibration_error(y, overconfident)


def test_temperature_near_one_for_calibrated_data(calibrated_logits):
    logits, y = calibrated_logits
    probs = softmax(logits, axis=1)
    assert ev.fit_temperature(probs, y) == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(ev.apply_temperature(probs, 1.0), probs, atol=1e-9)


# ------------------------------------------------------------------------------------------ baseline
@pytest.mark.skipif(not HAM_METADATA.exists(), reason="shared HAM10000 metadata not available")
def test_majority_baseline_on_real_metadata():
    dx = pd.read_csv(HAM_METADATA)["dx"]
    baseline = ev.majority_baseline(dx)
    assert baseline["majority_class"] == "nv"
    assert round(baseline["accuracy"], 3) == 0.669
    assert round(baseline["weighted_f1"], 3) == 0.537
    assert baseline["balanced_accuracy"] == pytest.approx(1 / 7)
    assert ev.majority_baseline(dx, majority_class="nv") == baseline


def test_majority_baseline_with_given_class():
    y = np.array([0, 0, 0, 1, 4])
    baseline = ev.majority_baseline(y, majority_class="mel")
    assert baseline["accuracy"] == pytest.approx(0.2)
    assert baseline["mel_sensitivity"] == 1.0
    assert ev.majority_baseline(y)["majority_class"] == "akiec"


# ------------------------------------------------------------------------------------------ tables, JSON
def test_predictions_frame(hand_case):
    y, probs, names = hand_case
    frame = ev.predictions_frame([f"ISIC_{i}" for i in range(10)], y, probs, class_names=names)
    assert list(frame.columns) == ["image_id", "true", "predicted", "p_a", "p_b", "p_mel"]
    assert frame["true"].tolist()[:4] == ["a", "a", "a", "b"]
    assert frame["predicted"].tolist()[2] == "b"
    np.testing.assert_allclose(frame[["p_a", "p_b", "p_mel"]].to_numpy(), probs)


def test_summary_table_side_by_side(random_predictions):
    y, probs = random_predictions
    m = ev.compute_metrics(y, probs, n_bootstrap=100)
    table = ev.summary_table({"model": m, "majority baseline": m["baseline"]})
    assert list(table.index) == ["model", "majority baseline"]
    assert list(table.columns) == list(ev.HEADLINE_METRICS)
    assert table.loc["model", "accuracy"] == pytest.approx(m["accuracy"])
    assert np.isnan(table.loc["majority baseline", "macro_auc"])
    text = ev.summary_table({"model": m}, with_ci=True)
    low, high = m["ci95"]["accuracy"]
    assert text.loc["model", "accuracy"] == f"{m['accuracy']:.3f} [{low:.3f}, {high:.3f}]"
    assert text.loc["model", "weighted_f1"] == f"{m['weighted_f1']:.3f}"


def test_write_json_atomic_and_strict(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    files.write_json({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3), "p": Path("x")}, path)
    files.write_json({"a": 1}, path)  # overwrite in place
    assert json.loads(path.read_text()) == {"a": 1}
    files.write_json({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3), "p": Path("x")}, path)
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": [0, 1, 2], "p": "x"}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp files left


def test_write_json_failure_keeps_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json({"ok": True}, path)
    with pytest.raises(TypeError):
        files.write_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"ok": True}
    assert len(list(tmp_path.iterdir())) == 1


# ------------------------------------------------------------------------------------------ bad input
GOOD_Y = np.array([0, 1, 2, 5])
GOOD_P = np.full((4, 7), 1 / 7)


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        (GOOD_Y[:3], GOOD_P, "4 rows but y_true has 3"),
        (GOOD_Y, GOOD_P[:, :5], "5 columns but there are 7 classes"),
        (GOOD_Y, GOOD_P[0], "must be 2-D"),
        (np.array([0, 1, 2, 7]), GOOD_P, "outside 0..6"),
        (np.array([0, -1, 2, 5]), GOOD_P, "outside 0..6"),
        (np.array([0.0, 1.5, 2.0, 5.0]), GOOD_P, "integer label ids"),
        (np.array(["nv", "mel", "foo", "nv"]), GOOD_P, "unknown class names"),
        (np.array([], dtype=int), np.empty((0, 7)), "empty"),
        (GOOD_Y, np.where(np.eye(4, 7) > 0, np.nan, 1 / 7), "NaN or infinite"),
        (GOOD_Y, GOOD_P * 2, "summing to 1"),
        (GOOD_Y.reshape(2, 2), GOOD_P, "1-D"),
    ],
)
def test_bad_predictions_raise(y, probs, message):
    with pytest.raises(ValueError, match=message):
        ev.compute_metrics(y, probs, n_bootstrap=0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ev.expected_calibration_error(GOOD_Y, GOOD_P, n_bins=0), "n_bins"),
        (lambda: ev.compute_metrics(GOOD_Y, GOOD_P, n_bootstrap=-5), "n_bootstrap"),
        (lambda: ev.bootstrap_ci(GOOD_Y, GOOD_P, level=1.5), "level"),
        (lambda: ev.apply_temperature(GOOD_P, 0.0), "temperature must be positive"),
        (lambda: ev.fit_temperature(GOOD_P, GOOD_Y[:2]), "rows but y_true"),
        (lambda: ev.majority_baseline(GOOD_Y, majority_class="foo"), "unknown class names"),
        (lambda: ev.predictions_frame(["a"], GOOD_Y, GOOD_P), "image_ids has 1"),
        (lambda: ev.summary_table({}), "metrics_by_name is empty"),
        (lambda: plots.plot_confusion_matrix(GOOD_Y, GOOD_Y[:2]), "must match"),
        (lambda: plots.plot_confusion_matrix(GOOD_Y, GOOD_Y, normalize="all"), "normalize"),
        (lambda: plots.plot_roc_curves(np.zeros(4, int), GOOD_P), "both positive and negative"),
        (lambda: plots.plot_training_history(pd.DataFrame({"epoch": [0]})), "none of the columns"),
        (lambda: plots.plot_training_history(pd.DataFrame(columns=["loss"])), "history_df is empty"),
        (lambda: plots.plot_gradcam_grid([np.zeros((8, 8, 3))], []), "counts must match"),
        (lambda: plots.plot_gradcam_grid([np.zeros((8, 8, 3))], [np.zeros(8)]), "heatmap must be 2-D"),
        (lambda: plots.plot_gradcam_grid([], []), "images is empty"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------ plots
def _assert_png(fig: Figure, path: Path) -> None:
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_and_roc_plots(random_predictions, tmp_path):
    y, probs = random_predictions
    pred = probs.argmax(axis=1)
    fig = plots.plot_confusion_matrix(y, pred, save_path=tmp_path / "cm.png")
    _assert_png(fig, tmp_path / "cm.png")
    assert len(fig.axes) == 2
    assert len(plots.plot_confusion_matrix(y, pred, normalize="true").axes) == 1
    fig = plots.plot_roc_curves(y, probs, save_path=tmp_path / "roc.png")
    _assert_png(fig, tmp_path / "roc.png")
    assert len(fig.axes[0].get_legend().get_texts()) == 8  # 7 classes + macro


def test_reliability_plot_before_after(calibrated_logits, tmp_path):
    logits, y = calibrated_logits
    over = softmax(3.0 * logits, axis=1)
    after = ev.apply_temperature(over, ev.fit_temperature(over, y))
    fig = plots.plot_reliability_diagram(y, over, calibrated_probs=after, save_path=tmp_path / "rel.png")
    _assert_png(fig, tmp_path / "rel.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("Before") and f"ECE {ev.expected_calibration_error(y, over):.3f}" in titles[0]
    assert titles[1].startswith("After")


def test_training_history_plot_uses_present_columns(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "loss": [1.2, 0.9, 0.8],
            "val_loss": [1.3, 1.0, 1.1],
            "accuracy": [0.5, 0.6, 0.7],
            "val_balanced_accuracy": [0.3, 0.45, 0.4],
            "lr": [1e-3, 1e-3, 5e-4],
        }
    )
    fig = plots.plot_training_history(history, save_path=tmp_path / "history.png")
    _assert_png(fig, tmp_path / "history.png")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "balanced accuracy", "lr"]
    assert fig.axes[0].lines[-1].get_xdata()[0] == 1  # best val_balanced_accuracy at epoch 1


def test_gradcam_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), rng.random((32, 32, 3))]
    heatmaps = [rng.random((5, 5)), np.zeros((7, 7))]
    fig = plots.plot_gradcam_grid(images, heatmaps, ["mel 0.91", "nv 0.55"], save_path=tmp_path / "gc.png")
    _assert_png(fig, tmp_path / "gc.png")
    overlay = fig.axes[0].images[1].get_array()
    assert overlay.shape == (40, 50) and overlay.min() >= 0 and overlay.max() <= 1
    assert fig.axes[1].get_title() == "nv 0.55"


def test_majority_metrics_score_always_answering_nv_per_class():
    y = np.array(["nv", "nv", "mel", "bcc", "nv"])
    metrics = ev.majority_metrics(y, "nv")
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["per_class"]["nv"]["sensitivity"] == 1.0
    assert metrics["per_class"]["mel"]["sensitivity"] == 0.0
    assert metrics["mel_sensitivity"] == 0.0


def test_per_class_comparison_puts_predictors_side_by_side():
    y = np.array([0, 1, 2, 3, 4, 5, 6] * 3)
    perfect = np.eye(7)[y]
    table = ev.per_class_comparison(
        {"perfect": ev.compute_metrics(y, perfect, n_bootstrap=0), "nv": ev.majority_metrics(y, "nv")}
    )
    assert list(table.columns) == ["perfect", "nv"]
    assert table.loc["sensitivity: mel", "perfect"] == 1.0 and table.loc["sensitivity: mel", "nv"] == 0.0
    assert table.loc["balanced_accuracy", "nv"] == pytest.approx(1 / 7)
    assert table.loc["f1: nv", "nv"] == pytest.approx(2 * (1 / 7) / (1 + 1 / 7))


def test_prior_shift_weights_divide_out_the_training_prior():
    train = np.array(["nv"] * 6 + ["mel"] * 2 + ["akiec", "bcc", "bkl", "df", "vasc"] * 1)
    prior = np.array([1, 1, 1, 1, 2, 6, 1]) / 13  # CLASS_NAMES order: akiec bcc bkl df mel nv vasc
    np.testing.assert_allclose(ev.prior_shift_weights(train, 0.0), np.ones(7))
    np.testing.assert_allclose(ev.prior_shift_weights(train, 1.0), 1 / prior)
    np.testing.assert_allclose(ev.prior_shift_weights(train, 0.5), prior**-0.5)
    with pytest.raises(ValueError, match=r"class\(es\) \['vasc'\]"):
        ev.prior_shift_weights(train[train != "vasc"], 0.5)


def test_fit_prior_shift_picks_the_tau_that_recovers_rare_classes():
    train = np.array([5] * 90 + [0, 1, 2, 3, 4, 6] * 2)
    y = np.array([5] * 10 + [4] * 10)
    probs = np.full((20, 7), 0.01)
    probs[:10, 5] = 0.9  # nv images: confidently nv
    probs[10:, 5], probs[10:, 4] = 0.6, 0.3  # mel images: nv by a small margin, which the prior explains
    assert ev.fit_prior_shift(y, probs, train, taus=(0.0,)) == 0.0
    tau = ev.fit_prior_shift(y, probs, train)
    shifted = probs * ev.prior_shift_weights(train, tau)
    assert tau > 0 and (shifted.argmax(1) == y).all()
