"""DermaMNIST benchmark: real HAM10000 images at 28x28, MedMNIST's official split, scored on its val split.

Trains the original architecture (``cpu_light_efficient_cnn``) and the default (``dermsep_net``) with
:func:`helpers.train.train`, then adds one trick at a time to the default and keeps each row's figures, so
the table shows what every step added:

1. ``cpu_light_efficient_cnn``, plain recipe (Adam, balanced class weights, ReduceLROnPlateau);
2. ``dermsep_net``, the same plain recipe;
3. ``dermsep_net`` with the tuned recipe (``helpers.train.RECIPES["tuned"]``: AdamW, cosine schedule, label
   smoothing, softer class weights, more epochs);
4. + classifier re-training (:func:`helpers.classifier.fit_classifier`: the last layer refitted on the frozen
   features of the training images, class-weight strength chosen on val);
5. + multi-scale features: the same, with the average-pooled outputs of stages 1-3 added to the features
   (kept only if its 8-view predictions score better on val than row 4's);
6. + test-time augmentation over the 8 flips / rotations;
7. + a class-prior shift (:class:`helpers.models.PriorShift`, strength ``tau`` chosen on val).

With ``--with-ema`` it also trains the tuned recipe with a moving average of the weights
(``Recipe(ema=0.995)``) and reports it, alone and with TTA, in rows marked ``kept=False``: tried and measured,
but left out of the chain because it did not help on val (off by default: it doubles the long part).
``--with-ensemble`` likewise trains a second default network (seed + 1, same recipe and re-training) and
reports the two averaged (:func:`helpers.models.predictor` with a list of models), with TTA and a prior shift:
an ensemble of two is over the 250k-parameter budget, so it is measured, not kept.

Model selection (best epoch, ``tau``) uses only train and val; the test split is never read. The last kept
row's predictor is saved as one Keras model, ``models/dermamnist/best.keras``, with its TFLite exports (int8
included) beside it, so notebook 05 with ``model_path=models/dermamnist/best.keras`` evaluates exactly it.

    .venv/bin/python benchmarks/dermamnist.py                 # ~38 min on a 2-core CPU
    .venv/bin/python benchmarks/dermamnist.py --tuned-epochs 3 --plain-epochs 2   # smoke run

Prints a table and writes ``benchmarks/results/dermamnist.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import machine_info  # noqa: E402  (benchmarks/throughput.py)

from helpers.classes import CLASS_TO_INDEX  # noqa: E402
from helpers.classifier import (  # noqa: E402
    fit_classifier,
    multi_scale_layers,
    prior_shifted_predictor,
    tta_score,
)
from helpers.data import load_metadata  # noqa: E402
from helpers.export import export_report, representative_sample  # noqa: E402
from helpers.files import write_json  # noqa: E402
from helpers.metrics import compute_metrics, majority_metrics  # noqa: E402
from helpers.modelio import load_keras_model, predict_images, save_keras_model  # noqa: E402
from helpers.models import count_params, predictor  # noqa: E402
from helpers.paths import MODELS_DIR, PROJECT_ROOT  # noqa: E402
from helpers.pipeline import load_images  # noqa: E402
from helpers.train import RECIPES, Recipe, train  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "dermamnist"
RESULTS = Path(__file__).resolve().parent / "results" / "dermamnist.json"
OUT_DIR = MODELS_DIR / "dermamnist"
IMG_SIZE = 28
PLAIN, TUNED = RECIPES["plain"], RECIPES["tuned"]
EMA = dataclasses.replace(TUNED, ema=0.995)
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "mel_sensitivity")
GOALS = {
    "accuracy": 0.82,
    "macro_auc": 0.95,
    "balanced_accuracy": 0.62,
    "macro_f1": 0.60,
    "mel_sensitivity": 0.55,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--plain-epochs", type=int, default=15, help="epochs of the plain-recipe runs")
    parser.add_argument("--tuned-epochs", type=int, default=45, help="epochs of the tuned default run")
    parser.add_argument("--with-ema", action="store_true", help="also measure the tuned recipe with EMA")
    parser.add_argument(
        "--with-ensemble",
        action="store_true",
        help="also measure a 2-seed ensemble of the re-trained default (over the 250k-parameter budget)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate (tuned)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def fit(
    args: argparse.Namespace,
    df: pd.DataFrame,
    model_name: str,
    recipe: Recipe,
    epochs: int,
    lr: float,
    seed: int | None = None,
):
    """Train one run from scratch into ``out_dir/runs/<name>``; returns (best model, seconds)."""
    seed = args.seed if seed is None else seed
    name = f"{model_name}-{recipe.schedule}" + ("-ema" if recipe.ema else "")
    if seed != args.seed:
        name += f"-seed{seed}"
    start = time.perf_counter()
    result = train(
        df=df,
        img_size=IMG_SIZE,
        model_name=model_name,
        epochs=epochs,
        batch_size=args.batch_size,
        learning_rate=lr,
        seed=seed,
        run_dir=args.out_dir / "runs" / name,
        resume=False,
        patience=epochs,  # train the whole budget; the best epoch is still selected on val
        recipe=recipe,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    print(f"  {name}: {seconds / 60:.1f} min, best epoch {result.best_epoch}", flush=True)
    return load_keras_model(result.run_dir / "best.keras"), seconds


def scores(y: np.ndarray, probs: np.ndarray) -> dict:
    metrics = compute_metrics(y, probs, n_bootstrap=0)
    return {k: metrics[k] for k in HEADLINE}


def row(name: str, s: dict, params: int | None, seconds: float | None, note: str, kept: bool = True) -> dict:
    """One table row; ``kept=False`` marks a trick that was measured but left out of the chain."""
    minutes = seconds and seconds / 60
    return {"predictor": name, **s, "params": params, "train_min": minutes, "kept": kept, "what": note}


def run(args: argparse.Namespace) -> dict:
    df = load_metadata(args.data_dir, verbose=False)
    df = df[df["split"].isin(["train", "val"])].reset_index(drop=True)  # the test split is never read
    train_df, val_df = df[df["split"] == "train"], df[df["split"] == "val"]
    train_y = train_df["dx"].map(CLASS_TO_INDEX).to_numpy()
    val_y = val_df["dx"].map(CLASS_TO_INDEX).to_numpy()
    val_x = load_images(val_df["path"].tolist(), IMG_SIZE, progress=False)
    base = majority_metrics(val_y, "nv")  # macro AUC 0.5: a constant score ranks no image above another
    rows = [row("majority class (nv)", {k: base[k] for k in HEADLINE}, 0, None, "always predicts nv")]

    print("Training (this is the long part) ...", flush=True)
    original, t_orig = fit(args, df, "cpu_light_efficient_cnn", PLAIN, args.plain_epochs, 1e-3)
    plain, t_plain = fit(args, df, "dermsep_net", PLAIN, args.plain_epochs, 1e-3)
    tuned, t_tuned = fit(args, df, "dermsep_net", TUNED, args.tuned_epochs, args.learning_rate)
    n_params = count_params(tuned)

    def probs(model, views: int = 1) -> np.ndarray:
        """Val probabilities of ``model``, or of its ``views``-view TTA predictor when ``views`` > 1."""
        wrapped = predictor(model, views) if views > 1 else model
        return predict_images(wrapped, val_x)

    rows.append(
        row(
            "cpu_light_efficient_cnn (original)",
            scores(val_y, probs(original)),
            count_params(original),
            t_orig,
            f"plain recipe, {args.plain_epochs} epochs",
        )
    )
    rows.append(
        row(
            "dermsep_net",
            scores(val_y, probs(plain)),
            count_params(plain),
            t_plain,
            f"plain recipe, {args.plain_epochs} epochs",
        )
    )
    rows.append(
        row(
            "+ tuned recipe",
            scores(val_y, probs(tuned)),
            n_params,
            t_tuned,
            f"AdamW + cosine, label smoothing 0.1, class weights^0.5, {args.tuned_epochs} epochs",
        )
    )
    start = time.perf_counter()
    train_x = load_images(train_df["path"].tolist(), IMG_SIZE, progress=False)
    multi_scale = multi_scale_layers(tuned)  # the outputs of stages 1-3 (stage 4's are the features)
    candidates = {}  # pooled layers -> (re-trained network, class-weight power, its table row)
    for pooled, name, what in (
        ((), "+ classifier re-trained", "last layer refitted on frozen features of the 8 views of train"),
        (multi_scale, "+ multi-scale features", "the same, on features plus the pooled maps of stages 1-3"),
    ):
        model, power = fit_classifier(tuned, train_x, train_y, val_x, val_y, pooled=pooled)
        t_refit = t_tuned + time.perf_counter() - start
        print(f"  {name}: {(t_refit - t_tuned) / 60:.1f} min so far, class weights^{power}", flush=True)
        note = f"{what}, class weights^{power} (chosen on val)"
        rows.append(row(name, scores(val_y, probs(model)), count_params(model), t_refit, note))
        candidates[pooled] = (model, power, rows[-1])
    # the multi-scale head is kept only if its 8-view predictions score better on val (ties: single-scale)
    pooled = max(candidates, key=lambda p: tta_score(candidates[p][0], val_x, val_y, 8))
    refit, power, _ = candidates[pooled]
    candidates[multi_scale][2]["kept"] = pooled == multi_scale
    n_params = count_params(refit)
    tta = probs(refit, 8)
    rows.append(row("+ 8-view TTA", scores(val_y, tta), n_params, t_refit, "mean over the 8 flips/rotations"))
    best, tau = prior_shifted_predictor(refit, val_x, val_y, train_y, 8)
    rows.append(
        row(
            "+ prior shift",
            scores(val_y, probs(best)),
            n_params,
            t_refit,
            f"probabilities x prior^-{tau} (tau chosen on val)",
        )
    )

    if args.with_ema:
        averaged, t_averaged = fit(args, df, "dermsep_net", EMA, args.tuned_epochs, args.learning_rate)
        for views, name in ((1, "tried: tuned recipe + EMA of the weights"), (8, "tried: ... + 8-view TTA")):
            note = f"Recipe(ema={EMA.ema}); compare with the rows without EMA"
            rows.append(
                row(
                    name,
                    scores(val_y, probs(averaged, views)),
                    count_params(averaged),
                    t_averaged,
                    note,
                    kept=False,
                )
            )

    if args.with_ensemble:
        rows += ensemble_rows(args, df, refit, pooled, (train_x, train_y), (val_x, val_y), t_refit)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    best_path = args.out_dir / "best.keras"
    save_keras_model(best, best_path)
    calibration = representative_sample(train_df, IMG_SIZE, seed=args.seed)
    export = export_report(best_path, val_x, val_y, args.out_dir, calibration)
    single = export_report(refit, val_x, val_y, args.out_dir / "single_view", calibration)
    return {
        "machine": machine_info(),
        "data": str(args.data_dir),
        "split_sizes": {"train": len(train_df), "val": len(val_df)},
        "args": {k: str(v) for k, v in vars(args).items()},
        "tau": tau,
        "class_weight_power": power,
        "pooled": list(pooled),
        "rows": rows,
        "goals": GOALS,
        "best_model": str(best_path),
        "export": export.to_dict("records"),
        "export_single_view": single.to_dict("records"),
    }


def ensemble_rows(args, df, refit, pooled, train_xy, val_xy, t_refit: float) -> list[dict]:
    """Tried rows: ``refit`` averaged with a second network (seed + 1, same recipe and re-training)."""
    (train_x, train_y), (val_x, val_y) = train_xy, val_xy
    second, seconds = fit(
        args, df, "dermsep_net", TUNED, args.tuned_epochs, args.learning_rate, args.seed + 1
    )
    start = time.perf_counter()
    second, _ = fit_classifier(second, train_x, train_y, val_x, val_y, pooled=pooled)
    seconds += t_refit + time.perf_counter() - start
    tta = predict_images(predictor([refit, second], 8), val_x)
    ensemble, _ = prior_shifted_predictor([refit, second], val_x, val_y, train_y, 8)
    shifted = predict_images(ensemble, val_x)
    n_params = count_params(refit) + count_params(second)
    note = "2 seeds, each re-trained as above; over the 250k-parameter budget, so not kept"
    return [
        row("tried: 2-seed ensemble + 8-view TTA", scores(val_y, tta), n_params, seconds, note, kept=False),
        row("tried: ... + prior shift", scores(val_y, shifted), n_params, seconds, note, kept=False),
    ]


def print_table(result: dict) -> None:
    table = pd.DataFrame(result["rows"]).set_index("predictor")
    pd.set_option("display.width", 200)
    print(table.drop(columns="what").round(3).to_string())
    final = [r for r in result["rows"] if r["kept"]][-1]
    print(
        "\nGoals (val), last kept row:",
        ", ".join(f"{k} {final[k]:.3f} {'>=' if final[k] >= v else '<'} {v}" for k, v in GOALS.items()),
    )
    print(f"Benchmark wall-clock: {result['benchmark_min']:.1f} min")
    for key, title in (
        ("export", "best.keras (the whole predictor)"),
        ("export_single_view", "network alone (re-trained classifier, no TTA)"),
    ):
        print(f"\nTFLite export of {title}, agreement with Keras on val:")
        print(pd.DataFrame(result[key]).drop(columns="path").round(4).to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"error: DermaMNIST folder {args.data_dir} not found; pass --data-dir.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = run(args)
    result["benchmark_min"] = (time.perf_counter() - start) / 60
    write_json(result, args.results)
    print_table(result)
    print(f"\nWrote {args.results}; best predictor: {result['best_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
