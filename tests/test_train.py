"""helpers.train: run files, selection on balanced accuracy, exact crash-safe resume, determinism, scale-out.

Tiny settings throughout (tests/train_utils.py: synthetic data, 32 px, the light model, 2-3 epochs), so the
weights of runs can be compared exactly. Kills, failing writes and bad parameters: test_robustness_*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from train_utils import run_training, same_weights

from helpers.classes import CLASS_TO_INDEX
from helpers.metrics import compute_metrics
from helpers.pipeline import make_dataset
from helpers.splits import data_fingerprint, subsample
from helpers.train import (
    SELECTION_METRIC,
    BalancedSelection,
    CrashSafeCheckpoint,
    default_run_name,
    main,
    prepare_data,
    read_backup_state,
)
from helpers.train.loop import compiled_model

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ bad input
def test_split_without_val_images_is_refused(synthetic_dir: Path):
    df = prepare_data(synthetic_dir, seed=1, verbose=False)
    df = df[df["split"] != "val"]
    with pytest.raises(ValueError, match="no 'val' images"):
        prepare_data(df=df, verbose=False)


# ------------------------------------------------------------------------------------------ data
def test_stratified_subset_keeps_every_split_and_class(synthetic_dir: Path):
    df = prepare_data(synthetic_dir, seed=3, verbose=False)
    small = subsample(df, 40, seed=3)
    assert len(small) == 40
    groups = df.groupby(["split", "dx"]).size()
    kept = small.groupby(["split", "dx"]).size().reindex(groups.index, fill_value=0)
    assert (kept >= 1).all(), "every split x class group keeps an image"
    assert small.equals(subsample(df, 40, seed=3)), "seeded"
    assert not small.equals(subsample(df, 40, seed=4))
    assert data_fingerprint(small) != data_fingerprint(df)
    assert subsample(df, None) is df


def test_fingerprint_is_of_the_train_and_val_rows(synthetic_dir: Path):
    df = prepare_data(synthetic_dir, seed=3, verbose=False)
    assert (df["split"] == "test").any()
    fingerprint = data_fingerprint(df)
    assert data_fingerprint(df[df["split"] != "test"]) == fingerprint, "a test split added later: same run"
    test_row, val_row, train_row = (df.index[df["split"] == s][0] for s in ("test", "val", "train"))

    def relabelled(row: int) -> pd.DataFrame:  # ``row`` given another class than its own
        return df.assign(dx=df["dx"].mask(df.index == row, "df" if df.at[row, "dx"] != "df" else "nv"))

    assert data_fingerprint(relabelled(test_row)) == fingerprint
    moved = df.assign(split=df["split"].mask(df.index == val_row, "train"))
    assert data_fingerprint(moved) != fingerprint
    assert data_fingerprint(relabelled(train_row)) != fingerprint
    leaked = df.assign(split=df["split"].mask(df.index == test_row, "train"))
    assert data_fingerprint(leaked) != fingerprint, "a test image used in training"


# ------------------------------------------------------------------------------------------ a run
def test_run_writes_its_files(two_epochs, workdir: Path):
    run = two_epochs
    assert {p.name for p in run.run_dir.iterdir()} >= {"best.keras", "history.csv", "manifest.json", "backup"}
    assert [p.name for p in (run.run_dir / "backup").iterdir()] == ["epoch-0002"]
    assert not [p.name for p in run.run_dir.rglob(".*")], "no temporary files left behind"
    assert run.figure_path == workdir / "figures" / "two" / "training_history.png"
    assert run.figure_path.stat().st_size > 1000
    history = pd.read_csv(run.run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and run.epochs_completed == 2 and run.start_epoch == 0
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", SELECTION_METRIC, "val_macro_f1"):
        assert history[column].notna().all(), column
    assert history["learning_rate"].tolist() == pytest.approx([1e-3, 1e-3])
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["epochs_completed"] == 2
    assert manifest["best_epoch"] == run.best_epoch and manifest["best_value"] == pytest.approx(
        run.best_value
    )
    assert manifest["seed"] == 42 and manifest["identity"]["model_name"] == "cpu_light_efficient_cnn"
    assert set(manifest["class_weights"]) == set(CLASS_TO_INDEX)
    assert manifest["class_weights"]["nv"] < 1 < manifest["class_weights"]["df"]
    assert manifest["versions"]["tensorflow"] and manifest["started_at"] <= manifest["finished_at"]
    assert len(manifest["data"]["fingerprint"]) == 64 and manifest["data"]["images"]["test"] > 0
    assert manifest["data"]["excluded_images"] == {"missing": [], "unreadable": []}
    assert "git_commit" in manifest


def test_first_training_step_creates_no_variables(synthetic_dir: Path):
    """The compiled metrics exist (at zero) before fit, so the traced step creates no variable and is not
    traced a second time."""
    df = prepare_data(synthetic_dir, seed=1, verbose=False)
    model = compiled_model("cpu_light_efficient_cnn", 32, 1e-3, "plain", 2, 1)
    metric_values = [float(v.numpy()) for m in model.metrics for v in m.variables]
    assert len(metric_values) >= 4 and not any(metric_values), "built and zeroed"
    train_ds = make_dataset(df[df["split"] == "train"].head(16), 32, 8, training=True, progress=False)
    created = []

    def creator(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        history = model.fit(train_ds, epochs=1, shuffle=False, verbose=0)
    assert created == []
    assert 0 <= history.history["accuracy"][0] <= 1


def test_manifest_names_the_images_left_out(synthetic_dir: Path, workdir: Path, tmp_path: Path):
    data = shutil.copytree(synthetic_dir, tmp_path / "ham")
    images = sorted(data.rglob("*.jpg"))
    images[0].unlink()
    images[1].write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning) as warned:
        run = run_training(data, workdir, tmp_path / "run", epochs=1)
    messages = " ".join(str(w.message) for w in warned)
    assert "1 of 120 images listed" in messages and "Excluded 1 unreadable image file" in messages
    excluded = json.loads((run.run_dir / "manifest.json").read_text())["data"]["excluded_images"]
    assert excluded["missing"] == [images[0].stem]
    assert [c["image_id"] for c in excluded["unreadable"]] == [images[1].stem]
    assert "cannot be decoded" in excluded["unreadable"][0]["reason"]
    assert sum(json.loads((run.run_dir / "manifest.json").read_text())["data"]["images"].values()) == 118


def _best_row(history: pd.DataFrame) -> pd.Series:
    """The first epoch with the highest val_balanced_accuracy, ties going to the lower val_loss."""
    order = history.assign(neg=-history[SELECTION_METRIC]).sort_values(["neg", "val_loss", "epoch"])
    return order.iloc[0]


def test_best_model_is_the_epoch_with_highest_val_balanced_accuracy(two_epochs, synthetic_dir: Path, workdir):
    best_row = _best_row(two_epochs.history)
    assert two_epochs.best_epoch == best_row["epoch"]
    val = prepare_data(synthetic_dir, seed=42, verbose=False).query("split == 'val'")
    ds = make_dataset(val, 32, 16, training=False, cache=workdir / "cache", progress=False)
    probs = keras.models.load_model(two_epochs.best_model_path).predict(ds, verbose=0)
    metrics = compute_metrics(val["dx"].to_numpy(), probs, n_bootstrap=0)
    assert metrics["balanced_accuracy"] == pytest.approx(best_row[SELECTION_METRIC], abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(best_row["val_accuracy"], abs=1e-9)


def test_selection_uses_balanced_accuracy_then_val_loss_and_stops_early(tmp_path: Path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(7, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    selection = BalancedSelection(patience=2)
    checkpoint = CrashSafeCheckpoint(tmp_path, selection, None, identity={}, manifest={"sessions": [{}]})
    for callback in (selection, checkpoint):
        callback.set_model(model)
    checkpoint.on_train_begin()
    # (val_accuracy, val_balanced_accuracy, val_loss): epoch 2 beats epochs 1 and 3 on balanced accuracy
    # although they have the higher accuracy; epoch 4 ties with it at a lower loss, epoch 5 at a higher loss;
    # epoch 6 is the second epoch without a new best.
    scores = [
        (0.9, 0.2, 1.0),
        (0.5, 0.6, 1.2),
        (0.95, 0.4, 0.5),
        (0.6, 0.6, 1.1),
        (0.7, 0.6, 1.15),
        (0.8, 0.5, 0.9),
    ]
    for epoch, (accuracy, balanced, loss) in enumerate(scores):
        model.layers[0].kernel.assign(np.full((3, 7), float(epoch + 1)))  # mark the weights with the epoch
        logs = {"loss": 1.0, "val_accuracy": accuracy, SELECTION_METRIC: balanced, "val_loss": loss}
        checkpoint.on_epoch_begin(epoch)
        selection.on_epoch_end(epoch, logs)
        checkpoint.on_epoch_end(epoch, logs)
        assert model.stop_training == (epoch == 5), "stops after patience=2 epochs without a new best"
    best = keras.models.load_model(tmp_path / "best.keras")
    assert np.all(best.layers[0].kernel.numpy() == 4.0)
    state = read_backup_state(tmp_path)["selection"]
    assert state == {
        "metric": SELECTION_METRIC,
        "value": 0.6,
        "val_loss": 1.1,
        "epoch": 4,
        "wait": 2,
        "stopped_early": True,
    }
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------ resume
def test_continuing_a_finished_run_trains_only_the_extra_epoch(two_epochs, continued):
    assert continued.start_epoch == 2 and continued.epochs_completed == 3
    history = pd.read_csv(continued.run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3], "the planted row 3 is replaced, not duplicated"
    pd.testing.assert_frame_equal(history.iloc[:2], pd.read_csv(two_epochs.run_dir / "history.csv"))
    steps = int(two_epochs.model.optimizer.iterations.numpy()) // 2
    assert int(continued.model.optimizer.iterations.numpy()) == 3 * steps, "optimizer state continues"
    before = read_backup_state(two_epochs.run_dir)
    assert history["learning_rate"].iloc[2] == pytest.approx(before["learning_rate"]), "LR state restored"
    after = read_backup_state(continued.run_dir)
    assert after["epoch"] == 3
    assert [p.name for p in (continued.run_dir / "backup").iterdir()] == ["epoch-0003"]
    assert not [p.name for p in continued.run_dir.rglob(".*")], "no temporary files left behind"
    selection, best_row = after["selection"], _best_row(history)
    assert selection["epoch"] == best_row["epoch"] == continued.best_epoch, "selection kept its best"
    assert selection["wait"] == 3 - best_row["epoch"], "early-stopping counter continued"
    manifest = json.loads((continued.run_dir / "manifest.json").read_text())
    assert [s["start_epoch"] for s in manifest["sessions"]] == [0, 2]
    assert manifest["epochs_completed"] == 3
    keras.models.load_model(continued.best_model_path)


def test_rerun_of_a_finished_run_trains_nothing(synthetic_dir: Path, workdir: Path, continued):
    again = run_training(synthetic_dir, workdir, continued.run_dir, epochs=3)
    assert again.start_epoch == again.epochs_completed == 3
    assert again.best_epoch == continued.best_epoch
    assert same_weights(again.model.get_weights(), continued.model.get_weights())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"img_size": 48}, "img_size: saved 32, now 48"),
        ({"model_name": "fast"}, "model_name"),
        ({"max_images": 60}, "data_fingerprint"),
        ({"batch_size": 8}, "batch_size"),
        ({"learning_rate": 0.5}, "optimiser: saved .*'learning_rate': 0.001.*now .*'learning_rate': 0.5"),
        ({"recipe": "tuned"}, "recipe"),
    ],
)
def test_resume_with_other_settings_is_refused(synthetic_dir, workdir, two_epochs, change: dict, named: str):
    with pytest.raises(ValueError, match=rf"{named}.*new run_dir.*resume=False"):
        run_training(synthetic_dir, workdir, two_epochs.run_dir, epochs=3, **change)
    assert read_backup_state(two_epochs.run_dir)["epoch"] == 2, "the refused run is untouched"


def test_default_run_name_is_the_same_for_the_same_settings_only():
    settings = {"batch_size": 32, "optimiser": {"learning_rate": 1e-3}, "recipe": {"schedule": "plateau"}}
    name = default_run_name("fast", 128, 42, "ab" * 32, settings)
    assert name.startswith("dermsep_net_128px_data-abababab_seed42_cfg-")
    assert default_run_name("default", 128, 42, "ab" * 32, settings).startswith("efficientnet_lite0_128px")
    assert name == default_run_name("dermsep_net", 128, 42, "ab" * 32, json.loads(json.dumps(settings)))
    for changed in (
        {"batch_size": 16},
        {"optimiser": {"learning_rate": 2e-3}},
        {"recipe": {"schedule": "cosine"}},
    ):
        assert default_run_name("fast", 128, 42, "ab" * 32, {**settings, **changed}) != name


def test_resume_false_starts_fresh_and_same_seed_repeats_the_run_exactly(
    synthetic_dir, workdir, two_epochs, continued
):
    run_dir = workdir / "fresh"
    shutil.copytree(two_epochs.run_dir, run_dir)  # a 2-epoch run to discard (resuming it would start at 2)
    fresh = run_training(synthetic_dir, workdir, run_dir, epochs=3, resume=False)
    assert fresh.start_epoch == 0 and pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [1, 2, 3]
    assert [p.name for p in (run_dir / "backup").iterdir()] == ["epoch-0003"]
    # Same seed and data: the first two epochs repeat the 2-epoch run bit for bit (losses and val metrics)...
    pd.testing.assert_frame_equal(
        fresh.history.drop(columns="seconds").iloc[:2], two_epochs.history.drop(columns="seconds")
    )
    # ...and 3 uninterrupted epochs end with exactly the weights of 2 epochs + 1 resumed epoch.
    assert same_weights(fresh.model.get_weights(), continued.model.get_weights())
    pd.testing.assert_frame_equal(
        fresh.history.drop(columns="seconds"), continued.history.drop(columns="seconds")
    )


def test_split_seed_fixes_the_split_while_seed_changes_the_training(synthetic_dir, workdir, two_epochs):
    split_42 = json.loads((two_epochs.run_dir / "manifest.json").read_text())["identity"]["data_fingerprint"]
    own_split = data_fingerprint(prepare_data(synthetic_dir, seed=7, verbose=False))
    assert own_split != split_42, "seed 7 alone splits otherwise"
    run = run_training(synthetic_dir, workdir, workdir / "split-seed", epochs=2, seed=7, split_seed=42)
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["identity"]["data_fingerprint"] == split_42
    assert manifest["seed"] == 7 and manifest["parameters"]["split_seed"] == 42
    assert not same_weights(run.model.get_weights(), two_epochs.model.get_weights()), "trained with seed 7"


def test_cli_reports_bad_parameters_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["--epochs", "0", "--run-dir", str(tmp_path / "run")]) == 2
    assert "error: epochs must be an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ scale-out
MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from helpers.train import train
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data_dir, run_dir, cache = sys.argv[1:4]
    kw = dict(img_size=32, batch_size=16, model_name="cpu_light_efficient_cnn", run_dir=run_dir,
              figures_dir=run_dir + "-fig", cache=cache, verbose=0, strategy=strategy)
    result = train(data_dir, epochs=2, **kw)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "epochs": result.history["epoch"].tolist(),
                      "iterations": int(result.model.optimizer.iterations.numpy())}))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(synthetic_dir: Path, workdir: Path):
    run_dir = workdir / "mirrored"
    command = [
        sys.executable,
        "-c",
        MIRRORED_SCRIPT,
        str(synthetic_dir),
        str(run_dir),
        str(workdir / "cache"),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["epochs"] == [1, 2]
    train_images = (prepare_data(synthetic_dir, verbose=False)["split"] == "train").sum()
    assert report["iterations"] == 2 * (train_images // 16), "global batch 16 split over the two replicas"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (
        manifest["sessions"][0]["replicas"] == 2 and manifest["sessions"][0]["strategy"] == "MirroredStrategy"
    )
    keras.models.load_model(run_dir / "best.keras")
