"""Active learning (helpers.active): query strategies on crafted pools, the simulation's bookkeeping, labels
to reach a target, the frozen-feature cache, and the next batch to label from a folder of images."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import active
from helpers.classes import CLASS_NAMES, NUM_CLASSES
from helpers.models import build_model
from helpers.plots.active import plot_learning_curves

NV, MEL = CLASS_NAMES.index("nv"), CLASS_NAMES.index("mel")


def confident(cls: int, p: float = 0.94) -> np.ndarray:
    row = np.full(NUM_CLASSES, (1 - p) / (NUM_CLASSES - 1))
    row[cls] = p
    return row


def two_way(first: int, second: int, p_first: float, p_second: float) -> np.ndarray:
    row = np.full(NUM_CLASSES, (1 - p_first - p_second) / (NUM_CLASSES - 2))
    row[[first, second]] = p_first, p_second
    return row


@pytest.fixture()
def crafted_pool() -> tuple[np.ndarray, list[int]]:
    """40 confident rows and 4 known-uncertain ones (rows 7, 13, 22, 31), the most uncertain first."""
    probs = np.array([confident(i % NUM_CLASSES) for i in range(40)])
    uncertain = [22, 7, 31, 13]
    for row, p in zip(uncertain, (0.30, 0.35, 0.40, 0.45), strict=True):
        probs[row] = two_way(NV, MEL, p, p - 0.05)
    return probs, uncertain


# ------------------------------------------------------------------------------------ query strategies
@pytest.mark.parametrize("strategy", ["entropy", "margin"])
def test_uncertainty_picks_are_the_uncertain_rows_most_uncertain_first(crafted_pool, strategy):
    probs, uncertain = crafted_pool
    picks = active.query(probs, 4, strategy, seed=0)
    assert picks.tolist() == uncertain if strategy == "entropy" else set(picks) == set(uncertain)
    random_picks = active.query(probs, 4, "random", seed=0)
    assert set(random_picks) != set(uncertain)
    assert len(set(random_picks)) == 4


def test_entropy_and_margin_differ_as_defined():
    """A 50/50 row has the smallest margin; a row spread over four classes has the highest entropy."""
    probs = np.array([confident(0), two_way(NV, MEL, 0.5, 0.5), [0.4, 0.2, 0.2, 0.2, 0, 0, 0], confident(1)])
    assert active.query(probs, 1, "margin").tolist() == [1]
    assert active.query(probs, 1, "entropy").tolist() == [2]
    assert active.uncertainty(probs[1:2], "entropy")[0] == pytest.approx(math.log(2))
    assert active.uncertainty(probs[1:2], "margin")[0] == pytest.approx(1.0)  # 1 - margin (scikit-activeml)


def test_labelled_rows_are_never_picked(crafted_pool):
    probs, uncertain = crafted_pool
    for strategy in active.STRATEGIES:
        picks = active.query(probs, 10, strategy, labelled=uncertain, seed=1)
        assert not set(picks) & set(uncertain), strategy
        assert len(set(picks)) == 10


@pytest.fixture()
def skewed_pool() -> np.ndarray:
    """180 rows predicted nv, all more uncertain than the 20 rows predicted one of five other classes."""
    rng = np.random.default_rng(0)
    nv = [two_way(NV, MEL, p, 0.3) for p in rng.uniform(0.4, 0.5, 180)]
    others = [confident(c, p) for c, p in zip([0, 1, 2, 3, 6] * 4, rng.uniform(0.6, 0.8, 20), strict=True)]
    return np.array(nv + others)


def test_balanced_entropy_spreads_picks_over_predicted_classes(skewed_pool):
    entropy = active.query(skewed_pool, 6, "entropy")
    balanced = active.query(skewed_pool, 6, "balanced_entropy")
    predicted = skewed_pool.argmax(axis=1)
    assert set(predicted[entropy]) == {NV}
    assert set(predicted[balanced]) == {0, 1, 2, 3, 6, NV}
    scores = active.uncertainty(skewed_pool, "entropy")
    for pick in balanced:  # within its class, each pick is the most uncertain image
        same = predicted == predicted[pick]
        assert scores[pick] == scores[same].max()


def test_a_class_that_runs_out_leaves_its_share_to_the_others(skewed_pool):
    balanced = active.query(skewed_pool, 30, "balanced_entropy")
    counts = pd.Series(skewed_pool.argmax(axis=1)[balanced]).value_counts()
    assert counts.drop(NV).tolist() == [4] * 5  # each of the five rare classes has only 4 images
    assert counts[NV] == 10


def test_stratified_is_random_within_the_predicted_classes(skewed_pool):
    predicted = skewed_pool.argmax(axis=1)
    first, second = (active.query(skewed_pool, 6, "stratified", seed=s) for s in (0, 1))
    assert set(predicted[first]) == set(predicted[second]) == {0, 1, 2, 3, 6, NV}
    assert set(first) != set(second)
    nv_picks = set()
    for seed in range(8):
        picks = active.query(skewed_pool, 6, "stratified", seed=seed)
        nv_picks |= set(picks[predicted[picks] == NV])
    assert len(nv_picks) > 4, "not always the same (most uncertain) nv image"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be an int from 1"),
        ({"n": 41}, "the 40 unlabelled images"),
        ({"n": 2, "strategy": "least_confident"}, "Unknown strategy 'least_confident'"),
    ],
)
def test_query_rejects_bad_arguments(kwargs, message):
    probs = np.array([confident(i % NUM_CLASSES) for i in range(40)])
    with pytest.raises(ValueError, match=message):
        active.query(probs, **kwargs)


def test_query_rejects_rows_that_are_not_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        active.query(np.ones((3, NUM_CLASSES)), 1)
    with pytest.raises(ValueError, match="shape"):
        active.query(np.full((3, 3), 1 / 3), 1)


# ------------------------------------------------------------------------------------ the simulation
def clusters(n_per_class: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (NUM_CLASSES, 16))
    y = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    return centres[y] + rng.normal(0, 1.5, (len(y), 16)), y


@pytest.fixture(scope="module")
def pool_and_val():
    x, y = clusters([30, 30, 60, 20, 60, 380, 20], seed=0)
    x_val, y_val = clusters([20] * NUM_CLASSES, seed=1)
    return x, y, x_val, y_val


def test_simulate_grows_by_the_batch_and_never_picks_a_labelled_image_twice(pool_and_val, monkeypatch):
    x, y, x_val, y_val = pool_and_val
    calls = []
    real_query = active.query

    def spy(probs, n, strategy, labelled, seed):
        picks = real_query(probs, n, strategy, labelled=labelled, seed=seed)
        calls.append((strategy, seed, np.array(labelled), picks))
        return picks

    monkeypatch.setattr(active, "query", spy)
    curve = active.simulate(
        x, y, x_val, y_val, seeds=(0, 1), start=50, batch_size=25, budget=140, progress=False
    )
    assert len(curve) == 5 * 2 * 5
    for (_strategy, _seed), run in curve.groupby(["strategy", "seed"]):
        assert run["labels"].tolist() == [50, 75, 100, 125, 140]
    for _strategy, _seed, labelled, picks in calls:
        assert len(set(labelled)) == len(labelled), "a labelled image was labelled twice"
        assert not set(picks) & set(labelled)
    followed = 0
    for (strategy, seed, labelled, picks), (next_strategy, next_seed, next_labelled, _) in zip(
        calls, calls[1:], strict=False
    ):
        if next_strategy == strategy and next_seed == seed + 1:  # the next round of the same run
            assert sorted(next_labelled) == sorted([*labelled, *picks])
            followed += 1
    assert followed == 5 * 2 * 3
    first_rounds = curve[curve["round"] == 0].groupby("seed")["balanced_accuracy"].nunique()
    assert (first_rounds == 1).all(), "every strategy starts from the same labelled images"
    assert (curve.groupby("strategy")["balanced_accuracy"].last() > 0.8).all()


def test_full_data_score_is_the_last_round_with_every_label(pool_and_val):
    x, y, x_val, y_val = pool_and_val
    curve = active.simulate(
        x, y, x_val, y_val, ["random"], seeds=(0,), start=len(y), budget=len(y), progress=False
    )
    assert curve["balanced_accuracy"].item() == pytest.approx(active.full_data_score(x, y, x_val, y_val))


def test_learner_gives_zero_probability_to_classes_never_labelled():
    x, y = clusters([10, 10, 0, 10, 10, 10, 0], seed=0)
    probs = active.learner_probs(active.fit_learner(x, y), x)
    assert probs.shape == (len(x), NUM_CLASSES)
    assert (probs[:, [2, 6]] == 0).all()
    assert np.allclose(probs.sum(axis=1), 1)


def test_labels_to_reach_uses_the_mean_over_seeds():
    rows = [
        # a: seed 0 reaches 0.6 at 200 but the mean only at 300; b never does; c already at the start
        *[("a", 0, n, s) for n, s in ((100, 0.3), (200, 0.6), (300, 0.7))],
        *[("a", 1, n, s) for n, s in ((100, 0.3), (200, 0.4), (300, 0.5))],
        *[("b", 0, n, s) for n, s in ((100, 0.3), (200, 0.4), (300, 0.5))],
        *[("c", 0, n, s) for n, s in ((100, 0.61), (200, 0.55), (300, 0.7))],
    ]
    curve = pd.DataFrame(rows, columns=["strategy", "seed", "labels", "balanced_accuracy"])
    reached = active.labels_to_reach(curve, 0.6)
    assert reached["a"] == 300 and reached["c"] == 100
    assert np.isnan(reached["b"])


def test_learning_curve_figure_draws_each_strategy_and_the_target(tmp_path):
    curve = pd.DataFrame(
        [
            (s, seed, n, 0.3 + n / 1000 + seed / 100)
            for s in ("entropy", "random")
            for seed in range(3)
            for n in (250, 500, 750)
        ],
        columns=["strategy", "seed", "labels", "balanced_accuracy"],
    )
    fig = plot_learning_curves(
        curve, full_data=0.8, reached={"entropy": 500, "random": None}, save_path=tmp_path / "curve.png"
    )
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "entropy (3 seeds): target at 500 labels" in labels
    assert "random (3 seeds): target not reached" in labels
    target = [
        line for line in ax.get_lines() if line.get_linestyle() == "--" and line.get_color() == "tab:red"
    ]
    assert target[0].get_ydata()[0] == pytest.approx(0.76)
    assert np.allclose(ax.get_lines()[0].get_ydata(), [0.56, 0.81, 1.06])  # the mean over the three seeds
    assert (tmp_path / "curve.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="lacks"):
        plot_learning_curves(curve.drop(columns="seed"))


# ------------------------------------------------------------------------------------ frozen features
def test_image_features_are_cached_and_kept_in_order(synthetic_dir: Path, tmp_path: Path, monkeypatch):
    paths = sorted((synthetic_dir).rglob("*.jpg"))[:5]
    features = active.image_features(paths, img_size=32, cache=tmp_path, progress=False)
    assert features.shape == (5, 1280) and features.dtype == np.float32
    assert active.features_file(paths, 32, tmp_path).is_file()

    def no_model(*args, **kwargs):
        raise AssertionError("the cached features should have been read")

    monkeypatch.setattr(active, "feature_extractor", no_model)
    order = [3, 0, 1, 4, 2, 3]  # the same files in another order, one twice: the same cache
    again = active.image_features([paths[i] for i in order], img_size=32, cache=tmp_path, progress=False)
    np.testing.assert_array_equal(again, features[order])


# ------------------------------------------------------------------------------------ the next batch
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("active_model") / "tiny.keras"
    build_model("dermsep_net", 32).save(path)
    return path


@pytest.fixture()
def image_folder(synthetic_dir: Path, tmp_path: Path) -> Path:
    """12 synthetic images, some in a subfolder, and a lesion mask that must not be ranked."""
    folder = tmp_path / "unlabelled"
    (folder / "sub").mkdir(parents=True)
    for i, src in enumerate(sorted(synthetic_dir.rglob("*.jpg"))[:12]):
        (folder / ("sub" if i % 3 == 0 else "") / src.name).write_bytes(src.read_bytes())
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "ISIC_0000001_segmentation.png")
    return folder


def test_next_batch_is_the_most_uncertain_images_with_reasons(
    tiny_model, image_folder, tmp_path, monkeypatch
):
    out = tmp_path / "next.csv"
    monkeypatch.chdir(image_folder.parent)
    frame = active.next_batch_to_label(tiny_model, image_folder.name, 4, out_csv=out)  # a relative folder
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])
    assert frame["rank"].tolist() == [1, 2, 3, 4]
    assert len(set(frame["path"])) == 4
    assert not frame["image_id"].str.endswith("_segmentation").any()
    pd.testing.assert_frame_equal(pd.read_csv(out), frame, check_dtype=False)
    everything = active.next_batch_to_label(tiny_model, image_folder, 12)
    assert len(everything) == 12, "every image but the mask, subfolders included"
    assert frame["path"].tolist() == everything["path"].tolist()[:4]
    assert everything["score"].is_monotonic_decreasing
    for row in frame.itertuples():
        assert row.reason.startswith(f"entropy {row.entropy:.2f} of max 1.95: unsure between ")
        assert f"{row.predicted} ({row.p_predicted:.2f}) and {row.second} ({row.p_second:.2f})" in row.reason
        assert row.p_predicted >= row.p_second


def test_every_strategy_gives_a_batch_with_reasons(tiny_model, image_folder):
    model = keras.models.load_model(tiny_model, compile=False)  # a model object: predicted without reloading
    words = {"margin": "margin 0.", "balanced_entropy": "classes take turns", "random": "random pick"}
    words["stratified"] = "random pick among those predicted"
    for strategy, word in words.items():
        frame = active.next_batch_to_label(model, image_folder, 3, strategy=strategy)
        assert len(frame) == 3 and (frame["strategy"] == strategy).all()
        for row in frame.itertuples():
            assert word in row.reason and row.predicted in row.reason and row.second in row.reason
    margin = active.next_batch_to_label(model, image_folder, 12, strategy="margin")
    assert margin["margin"].is_monotonic_increasing, "the smallest margin first"


def test_unreadable_images_are_skipped_and_named(tiny_model, image_folder):
    broken = image_folder / "sub" / "ISIC_9999999.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning) as caught:
        frame = active.next_batch_to_label(tiny_model, image_folder, 20)
    messages = [str(w.message) for w in caught]
    assert any(
        re.search(r"Skipping 1 unreadable image.*ISIC_9999999\.jpg \(cannot be decoded", m) for m in messages
    )
    assert any(m.startswith(f"Only 12 images in {image_folder}; ranking all of them") for m in messages)
    assert len(frame) == 12 and str(broken) not in set(frame["path"])


def test_next_batch_bad_inputs_get_clear_errors(tiny_model, image_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Image folder {tmp_path / 'nowhere'} does not exist"):
        active.next_batch_to_label(tiny_model, tmp_path / "nowhere", 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"No images found in {empty}"):
        active.next_batch_to_label(tiny_model, empty, 3)
    for bad_n in (0, -2, True, 2.5):
        with pytest.raises(ValueError, match="n must be a whole number of images >= 1"):
            active.next_batch_to_label(tiny_model, image_folder, bad_n)
    with pytest.raises(ValueError, match=r"Unknown strategy 'uncertain'; choose one of \['entropy'"):
        active.next_batch_to_label(tiny_model, image_folder, 3, strategy="uncertain")
    with pytest.raises(FileNotFoundError, match="Model file .*missing.keras not found"):
        active.next_batch_to_label(tmp_path / "missing.keras", image_folder, 3)


def test_a_model_for_other_classes_or_without_softmax_is_refused(image_folder, tmp_path):
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    three = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    three.save(tmp_path / "three.keras")
    with pytest.raises(ValueError, match=r"three\.keras has output shape \(None, 3\).*7 classes"):
        active.next_batch_to_label(tmp_path / "three.keras", image_folder, 3)
    logits = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(pooled), name="logits")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="'logits'.*not probabilities"):
        active.next_batch_to_label(logits, image_folder, 3)


# ------------------------------------------------------------------------------------ the benchmark script
@pytest.fixture(scope="module")
def benchmark():
    """benchmarks/active.py as a module (its folder on sys.path for its sibling imports)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("active_benchmark", folder / "active.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_benchmark_goal_compares_each_uncertainty_strategy_with_random(benchmark):
    reached = pd.Series({"entropy": 2000.0, "margin": 1500.0, "balanced_entropy": np.nan, "random": 3500.0})
    goal = benchmark.goal(reached)
    assert goal["ratio_to_random"] == pytest.approx({"entropy": 2000 / 3500, "margin": 1500 / 3500})
    assert goal["best_strategy"] == "margin" and goal["met"] is True
    assert benchmark.goal(reached.replace(1500.0, 1800.0))["met"] is False  # 1800 / 3500 > 0.5
    assert benchmark.goal(reached.replace(3500.0, np.nan))["met"] is False  # random never got there


def test_benchmark_names_a_folder_without_metadata(benchmark, tmp_path, capsys):
    assert benchmark.main(["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"HAM10000 folder {tmp_path} not found" in err and "--data-dir" in err
