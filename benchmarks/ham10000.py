"""HAM10000 benchmark: all 10,015 real images at 128 px, the toolkit's lesion-aware split, and a clinic the
model has never seen.

Data: ``../shared/data/ham10000_200x150`` (every HAM10000 image at 200x150 with the Dataverse metadata and the
lesion masks), split by :func:`helpers.splits.split_by_lesion` (70/15/15, seed 42). Every choice (best
epoch, class-weight strength, single- or multi-scale re-training, prior shift) is made on val; the test split
is scored once, at the end, for the rows kept (bootstrap 95% CIs, per-class sensitivity).

Rows, each adding one thing to the one above it:

1. the majority class (always ``nv``);
2. the default ``dermsep_net`` with the plain recipe (Adam 1e-3, batch 32, balanced class weights, 15 epochs);
3. the tuned recipe (:data:`helpers.train.RECIPES` ``"tuned"``, 25 epochs, batch 64, 2e-3);
4. + classifier re-training (single- or multi-scale, chosen on val), 5. + 8-view TTA, 6. + prior shift:
   the final predictor, saved as ``models/ham10000/best.keras`` with its TFLite exports (int8 included);

and the original ``cpu_light_efficient_cnn`` with the original recipe (Adam 1e-3, batch 32, balanced class
weights, best epoch by balanced accuracy) given the same wall-clock training budget as the final row.

The held-out-clinic check trains the plain and the tuned recipe again on every source but
``rosendahl`` (:func:`helpers.splits.split_by_source`: its lesions go with it), selects and finishes on that
val, and scores all 2,259 ``rosendahl`` images: balanced accuracy over the six classes it has at least 30
images of (all but ``vasc``) and macro AUC. ``--held-out-all`` adds the original model (its budgeted epochs).

For the final predictor also: the shift suite (:func:`helpers.evaluate.shift_report`) and, against the lesion
masks, Grad-CAM's pointing game and energy inside the lesion (:func:`helpers.evaluate.explanation_report`).
``--with-metadata`` adds the metadata rows of issue #20: the tuned recipe with age, sex and body site as a
second input (its predictor saved as ``models/ham10000/best_metadata.keras``), and that model with every
field missing.

Trainings whose time sets no budget run two at a time (:func:`side_by_side`), each in its own process with one
thread for its ops: the plain run beside the held-out plain run, and the original's epochs after its first
(measured alone, it sets how many epochs the budget buys) beside the held-out final run. The lesion-split
tuned run trains alone: its time is the original's budget, and notebook 04 repeats it bit for bit.

    .venv/bin/python benchmarks/ham10000.py                    # ~61 min on a 2-core CPU (budget: 75)
    .venv/bin/python benchmarks/ham10000.py --with-metadata    # + the metadata rows (~40 min more)
    .venv/bin/python benchmarks/ham10000.py --metadata-only    # the metadata rows, added to the JSON
    .venv/bin/python benchmarks/ham10000.py --smoke            # minutes: 2 epochs, 600 images (a check)

Prints a table and writes ``benchmarks/results/ham10000.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import machine_info  # noqa: E402  (benchmarks/throughput.py)

from helpers.classes import CLASS_NAMES  # noqa: E402
from helpers.classifier import finalize_predictor, prior_shifted_from_probs, retrained_network  # noqa: E402
from helpers.clinical import encode_metadata, missing_vector  # noqa: E402
from helpers.data import load_metadata  # noqa: E402
from helpers.evaluate import explanation_report, shift_report  # noqa: E402
from helpers.export import export_report, representative_sample  # noqa: E402
from helpers.files import write_json  # noqa: E402
from helpers.metrics import (  # noqa: E402
    compute_metrics,
    label_ids,
    majority_metrics,
    majority_probs,
    prior_shift_weights,
)
from helpers.modelio import load_keras_model, predict_images, save_keras_model  # noqa: E402
from helpers.models import (  # noqa: E402
    IMAGE_INPUT,
    METADATA_INPUT,
    count_params,
    unwrap_predictor,
    uses_metadata,
)
from helpers.paths import MODELS_DIR, PROJECT_ROOT  # noqa: E402
from helpers.pipeline import load_images  # noqa: E402
from helpers.plots.results import METRIC_LABELS  # noqa: E402
from helpers.splits import split_by_lesion, split_by_source, subsample  # noqa: E402
from helpers.train import RECIPES, Recipe, train  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "ham10000_200x150"
RESULTS = Path(__file__).resolve().parent / "results" / "ham10000.json"
OUT_DIR = MODELS_DIR / "ham10000"
HELD_OUT = "rosendahl"
MIN_HELD_OUT_IMAGES = 30
"""Balanced accuracy on the held-out clinic averages the classes it has at least this many images of."""

PLAIN, TUNED = RECIPES["plain"], RECIPES["tuned"]
ORIGINAL = dict(model_name="cpu_light_efficient_cnn", recipe=PLAIN, lr=1e-3, batch=32)
"""The original recipe, as :func:`fit`'s settings (all but the epochs); its run is ``runs/<ORIGINAL_RUN>``."""
ORIGINAL_RUN = "cpu_light_efficient_cnn-plain"
JOBS = ("plain", "held-out-plain", "original", "held-out-final")
"""Trainings that run two at a time (:func:`side_by_side`)."""
SIDE_BY_SIDE_ENV = {"TF_NUM_INTRAOP_THREADS": "1"}
"""Each of two trainings side by side gets one thread for its ops: on 2 cores the pair gets through ~1.7x the
images of one two-thread training (the plain pair: 12.2 min, against 20.6 one after the other, 2026-12-03)."""
HEADLINE = tuple(METRIC_LABELS)
GOALS = {
    "balanced_accuracy": 0.70,
    "macro_auc": 0.96,
    "mel_sensitivity": 0.70,
    "accuracy": 0.82,
    "macro_f1": 0.68,
}
HELD_OUT_GOALS = {"balanced_accuracy_6": 0.55, "macro_auc": 0.88}
DEVICE_AUGMENT = dataclasses.replace(
    TUNED.augment, scale=(0.75, 1.3), gains=0.15, hue=0.1, gamma=0.25, blur=0.5, vignette=0.3
)
"""The lever ``--device-augment-only`` tries: the tuned recipe's augmentation plus what a change of device
does (the shift suite's kinds: zoom, white balance, hue, gamma, defocus, a dermoscope frame), drawn per
image."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--plain-epochs", type=int, default=15)
    parser.add_argument("--tuned-epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the lesion-aware split")
    parser.add_argument("--held-out-all", action="store_true", help="the held-out-clinic check for every row")
    parser.add_argument("--with-metadata", action="store_true", help="also the metadata rows (issue #20)")
    parser.add_argument(
        "--metadata-only",
        action="store_true",
        help="only the metadata rows, added to an existing --results JSON (its image-only rows kept)",
    )
    parser.add_argument(
        "--device-augment-only",
        action="store_true",
        help="only the held-out-clinic check of the tuned recipe with device augmentation (a tried lever), "
        "added to an existing --results JSON",
    )
    parser.add_argument(
        "--report-images", type=int, default=600, help="test images for the shift and Grad-CAM reports"
    )
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 600 images: checks the script runs")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)  # one training, in a child process
    parser.add_argument("--job-epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.plain_epochs = args.tuned_epochs = 2
    return args


# ------------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class Split:
    """One split's rows, images (and encoded metadata) and labels."""

    frame: pd.DataFrame
    images: np.ndarray
    metadata: np.ndarray
    labels: np.ndarray

    def inputs(self, model, missing: bool = False):
        """What ``model`` takes: the images, or with its metadata (every field missing: ``missing``)."""
        if not uses_metadata(model):
            return self.images
        metadata = np.repeat(missing_vector(1), len(self.images), 0) if missing else self.metadata
        return {IMAGE_INPUT: self.images, METADATA_INPUT: metadata}


def splits_of(df: pd.DataFrame, size: int) -> dict[str, Split]:
    parts = {name: df[df["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}
    return {
        name: Split(
            part,
            load_images(part["path"].tolist(), size, progress=False),
            encode_metadata(part),
            label_ids(part["dx"]),
        )
        for name, part in parts.items()
        if len(part)
    }


# ------------------------------------------------------------------------------------------------- scores
def scores(labels: np.ndarray, probs: np.ndarray, n_bootstrap: int = 0) -> dict:
    metrics = compute_metrics(labels, probs, n_bootstrap=n_bootstrap)
    out = {k: metrics[k] for k in HEADLINE}
    out["sensitivity"] = {c: metrics["per_class"][c]["sensitivity"] for c in CLASS_NAMES}
    if n_bootstrap:
        out["ci95"] = metrics["ci95"]
    return out


def held_out_scores(test: Split, probs: np.ndarray) -> dict:
    """Balanced accuracy over the classes the held-out clinic has at least MIN_HELD_OUT_IMAGES images of,
    macro AUC (classes present), accuracy and melanoma sensitivity, on its own images only."""
    mine = (test.frame["dataset"] == HELD_OUT).to_numpy()
    y, p = test.labels[mine], probs[mine]
    metrics = compute_metrics(y, p, n_bootstrap=0)
    counts = np.bincount(y, minlength=len(CLASS_NAMES))
    classes = [c for c, n in zip(CLASS_NAMES, counts, strict=True) if n >= MIN_HELD_OUT_IMAGES]
    sensitivity = {c: metrics["per_class"][c]["sensitivity"] for c in CLASS_NAMES}
    return {
        "n_images": int(mine.sum()),
        "classes": classes,
        "balanced_accuracy_6": float(np.mean([sensitivity[c] for c in classes])),
        "macro_auc": metrics["macro_auc"],
        "accuracy": metrics["accuracy"],
        "mel_sensitivity": metrics["mel_sensitivity"],
        "sensitivity": sensitivity,
    }


def predict(model, split: Split, missing: bool = False) -> np.ndarray:
    return predict_images(model, split.inputs(model, missing))


# ------------------------------------------------------------------------------------------------- training
def fit(args, df, name: str, model_name: str, recipe: Recipe, epochs: int, lr: float, batch: int, **extra):
    """Train one run into ``out_dir/runs/<name>`` (an interrupted benchmark resumes it; a finished one is
    reused); returns (best network, training seconds summed over its epochs in ``history.csv``, result)."""
    result = train(
        df=df,
        img_size=args.img_size,
        model_name=model_name,
        epochs=epochs,
        batch_size=batch,
        learning_rate=lr,
        seed=args.seed,
        run_dir=args.out_dir / "runs" / name,
        resume=True,
        patience=epochs,  # train the whole budget; the best epoch is still selected on val
        recipe=recipe,
        verbose=0,
        **extra,
    )
    seconds = float(result.history["seconds"].sum())
    print(f"  {name}: {seconds / 60:.1f} min, best epoch {result.best_epoch} of {epochs}", flush=True)
    return load_keras_model(result.run_dir / "best.keras"), seconds, result


def steady_seconds(result) -> float:
    """Training time at the machine's own pace: the fastest epoch times the number of epochs (epoch times
    vary with whatever else the machine runs; the fastest is the least disturbed)."""
    return float(result.history["seconds"].min() * len(result.history))


def budgeted_epochs(args, df, budget_s: float) -> tuple[int, float]:
    """How many epochs of the original recipe ``budget_s`` seconds of training buy at its own pace: its first
    epoch, trained alone, measured; returns (epochs, that epoch's seconds)."""
    _, per_epoch, _ = fit(args, df, ORIGINAL_RUN, epochs=1, **ORIGINAL)
    return max(1, int(budget_s // per_epoch)), per_epoch


def side_by_side(args, jobs: dict[str, int | None]) -> None:
    """Run the trainings ``jobs`` (names in :data:`JOBS`, with ``--job-epochs``) at once, each in a child
    process of this script with :data:`SIDE_BY_SIDE_ENV`; each writes its run folder, which :func:`fit` then
    reuses. Their output goes to ``out_dir/logs/<job>.log``."""
    logs = args.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SIDE_BY_SIDE_ENV}
    running = {}
    for job, epochs in jobs.items():
        command = [sys.executable, __file__, *args.argv, "--job", job]
        command += ["--job-epochs", str(epochs)] if epochs else []
        with (logs / f"{job}.log").open("w") as log:
            running[job] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    failed = [job for job, process in running.items() if process.wait() != 0]
    if failed:
        tails = "\n".join(
            f"--- {logs / f'{j}.log'}:\n{(logs / f'{j}.log').read_text()[-2000:]}" for j in failed
        )
        raise SystemExit(f"The side-by-side training(s) {', '.join(failed)} failed:\n{tails}")


def run_job(args) -> None:
    """One of :data:`JOBS` (a child process of :func:`side_by_side`)."""
    lesion, held = splits(args)
    name, df, settings = {
        "plain": ("dermsep_net-plain", lesion, plain_settings(args)),
        "held-out-plain": (f"dermsep_net-plain-without-{HELD_OUT}", held, plain_settings(args)),
        "original": (ORIGINAL_RUN, lesion, {**ORIGINAL, "epochs": args.job_epochs}),
        "held-out-final": (f"dermsep_net-tuned-without-{HELD_OUT}", held, tuned_settings(args)),
    }[args.job]
    fit(args, df, name, **settings)


def finishing_rows(network, data: dict[str, Split], seconds: float) -> tuple[list[dict], object, dict]:
    """The re-trained classifier (single- or multi-scale, chosen on val), 8-view TTA and prior shift, one row
    each (val scores, from the val view features the re-training computed); returns the rows, the final
    predictor and its choices."""
    start = time.perf_counter()
    train, val = data["train"], data["val"]
    refit, choices, val_probs = retrained_network(
        network, train.inputs(network), train.labels, val.inputs(network), val.labels
    )
    tta = val_probs.mean(axis=0)
    final, tau = prior_shifted_from_probs(refit, tta, val.labels, train.labels)
    shifted = tta * prior_shift_weights(train.labels, tau)
    choices["tau"] = tau
    minutes = (seconds + time.perf_counter() - start) / 60
    scale = "multi-scale" if choices["pooled"] else "single-scale"
    steps = (
        (
            "+ classifier re-trained",
            val_probs[0],
            f"{scale} (chosen on val), class weights^{choices['class_weight_power']}",
        ),
        ("+ 8-view TTA", tta, "mean over the 8 flips/rotations"),
        (
            "+ prior shift",
            shifted / shifted.sum(axis=1, keepdims=True),
            f"probabilities x prior^-{tau} (tau chosen on val)",
        ),
    )
    rows = [row(name, scores(val.labels, probs), refit, minutes, what) for name, probs, what in steps]
    return rows, final, choices


def row(name: str, val: dict, model, minutes: float | None, what: str, kept: bool = True) -> dict:
    params = count_params(unwrap_predictor(model)) if model is not None else 0
    return {"predictor": name, "val": val, "params": params, "train_min": minutes, "kept": kept, "what": what}


def held_out(args, df_held: pd.DataFrame, name: str, settings: dict, finish: bool) -> dict:
    """Train ``settings`` without the held-out clinic, select (and finish) on its val, score the clinic."""
    network, seconds, _ = fit(args, df_held, f"{name}-without-{HELD_OUT}", **settings)
    data = splits_of(df_held, args.img_size)
    out = {
        "network": held_out_scores(data["test"], predict(network, data["test"])),
        "train_min": seconds / 60,
    }
    if finish:
        rows, final, choices = finishing_rows(network, data, seconds)
        out["predictor"] = held_out_scores(data["test"], predict(final, data["test"]))
        out["predictor_val"] = rows[-1]["val"]  # its own val: the other clinics' lesions
        out["choices"] = choices
    return out


def device_augment_check(args, held: pd.DataFrame) -> dict:
    """The held-out-clinic check of the tuned recipe with :data:`DEVICE_AUGMENT` (a lever tried against the
    benchmark's own ``held_out.final``): its finished predictor on the held-out clinic and on its val."""
    recipe = dataclasses.replace(TUNED, augment=DEVICE_AUGMENT)
    out = held_out(args, held, "dermsep_net-tuned-device", {**tuned_settings(args), "recipe": recipe}, True)
    return {**out, "augment": dataclasses.asdict(DEVICE_AUGMENT), "tuned_epochs": args.tuned_epochs}


# ------------------------------------------------------------------------------------------------- run
def splits(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The lesion-aware split and the held-out-clinic split of the data."""
    df = load_metadata(args.data_dir, verbose=False)
    lesion = split_by_lesion(df, seed=args.split_seed)
    held = split_by_source(df, HELD_OUT, seed=args.split_seed)
    if args.smoke:
        lesion, held = subsample(lesion, 600, args.split_seed), subsample(held, 900, args.split_seed)
    return lesion, held


def tuned_settings(args: argparse.Namespace) -> dict:
    return dict(model_name="dermsep_net", recipe=TUNED, epochs=args.tuned_epochs, lr=2e-3, batch=64)


def plain_settings(args: argparse.Namespace) -> dict:
    return dict(model_name="dermsep_net", recipe=PLAIN, epochs=args.plain_epochs, lr=1e-3, batch=32)


class Laps:
    """Wall-clock minutes of the benchmark's parts, in order: where its time budget goes."""

    def __init__(self) -> None:
        self.minutes: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        self.minutes[part] = (now - self.last) / 60
        self.last = now
        print(f"  [{part}: {self.minutes[part]:.1f} min]", flush=True)


def run(args: argparse.Namespace) -> dict:
    lap = Laps()
    lesion, held = splits(args)
    data = splits_of(lesion, args.img_size)
    lap("loading images")
    val = data["val"]
    base = majority_metrics(val.labels, "nv")
    rows = [row("majority class (nv)", {k: base[k] for k in HEADLINE}, None, None, "always predicts nv")]
    nets = {}

    print("Training (this is the long part) ...", flush=True)
    print("  the plain recipe on both splits, side by side ...", flush=True)
    side_by_side(args, {"plain": None, "held-out-plain": None})
    lap("plain and held-out plain, side by side")
    plain, tuned = plain_settings(args), tuned_settings(args)
    for key, name, settings, what in (
        (
            "plain",
            "dermsep_net, plain recipe",
            plain,
            f"Adam 1e-3, batch 32, balanced class weights, {args.plain_epochs} epochs (side by side with "
            "the held-out plain run: its time is at the shared pace)",
        ),
        (
            "tuned",
            "+ tuned recipe",
            tuned,
            f"AdamW + cosine 2e-3, label smoothing 0.1, class weights^0.5, {args.tuned_epochs} epochs",
        ),
    ):
        network, seconds, result = fit(args, lesion, f"dermsep_net-{key}", **settings)
        nets[key] = (network, seconds, result)
        rows.append(row(name, scores(val.labels, predict(network, val)), network, seconds / 60, what))
        lap(f"{key} recipe")
    finish, final, choices = finishing_rows(nets["tuned"][0], data, nets["tuned"][1])
    lap("finishing")
    rows += finish
    finishing_s = (finish[-1]["train_min"] * 60) - nets["tuned"][1]
    budget_s = steady_seconds(nets["tuned"][2]) + finishing_s

    epochs, per_epoch = budgeted_epochs(args, lesion, budget_s)
    print(f"  original: {epochs} epochs of {per_epoch / 60:.1f} min (budget {budget_s / 60:.1f})", flush=True)
    lap("original, first epoch")
    if epochs > 1:
        side_by_side(args, {"original": epochs, "held-out-final": None})
        lap("original and held-out final, side by side")
    original = fit(args, lesion, ORIGINAL_RUN, epochs=epochs, **ORIGINAL)[0]
    rows.insert(
        1,
        row(
            "cpu_light_efficient_cnn (original)",
            scores(val.labels, predict(original, val)),
            original,
            per_epoch * epochs / 60,
            f"original recipe, {epochs} epochs: the final row's training time ({budget_s / 60:.1f} min) at "
            "its own pace (its first epoch, trained alone, times the epochs; the others ran side by side "
            "with the held-out final run)",
        ),
    )

    print("Held-out clinic ...", flush=True)
    checks = {"plain": held_out(args, held, "dermsep_net-plain", plain, finish=False)}
    lap("held-out plain")
    checks["final"] = held_out(args, held, "dermsep_net-tuned", tuned, finish=True)
    lap("held-out final")
    if args.held_out_all:
        original_settings = {**ORIGINAL, "epochs": epochs}
        checks["original"] = held_out(args, held, "cpu_light_efficient_cnn", original_settings, False)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    best_path = args.out_dir / "best.keras"
    save_keras_model(final, best_path)
    # the test split, once, for the rows kept
    test = data["test"]
    predictors = {
        "majority class (nv)": None,
        "cpu_light_efficient_cnn (original)": original,
        "dermsep_net, plain recipe": nets["plain"][0],
        "+ tuned recipe": nets["tuned"][0],
        "+ prior shift": final,
    }
    for r in rows:
        if r["predictor"] in predictors:
            model = predictors[r["predictor"]]
            probs = predict(model, test) if model is not None else majority_probs(len(test.labels))
            r["test"] = scores(test.labels, probs, n_bootstrap=1000)
    lap("test scores")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        shifts = shift_report(final, lesion, split="test", max_images=args.report_images, verbose=False)
        lap("shift report")
        explanations = explanation_report(
            final, lesion, split="test", max_images=args.report_images, verbose=False
        )
        lap("explanations")
    calibration = representative_sample(lesion, args.img_size, seed=args.seed)
    export = export_report(best_path, val.inputs(final), val.labels, args.out_dir, calibration)
    lap("export")
    result = {
        "machine": machine_info(),
        "data": str(args.data_dir),
        "split_sizes": {k: len(v.labels) for k, v in data.items()},
        "held_out_sizes": held["split"].value_counts().to_dict(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "final_recipe": dataclasses.asdict(TUNED),
        "choices": choices,
        "original_epochs": epochs,
        "original_budget_min": budget_s / 60,
        "rows": rows,
        "held_out": checks,
        "shift_report": shifts.to_dict("records"),
        "explanations": explanations.reset_index().to_dict("records"),
        "explanations_skipped": explanations.attrs["skipped"],
        "goals": GOALS,
        "held_out_goals": HELD_OUT_GOALS,
        "best_model": str(best_path),
        "export": export.to_dict("records"),
        "part_min": lap.minutes,
    }
    if args.with_metadata:
        result["metadata"] = metadata_rows(args, lesion, held, data, tuned)
    return result


def metadata_rows(
    args, lesion: pd.DataFrame, held: pd.DataFrame, data: dict[str, Split], settings: dict
) -> dict:
    """The final recipe with metadata: its network and finished predictor on val and test (and with every
    field missing), and the held-out clinic; saves best_metadata.keras and its exports."""
    network, seconds, _ = fit(args, lesion, "dermsep_net-final-metadata", metadata=True, **settings)
    final, choices = finalize_predictor(network, lesion, args.img_size)
    path = args.out_dir / "best_metadata.keras"
    save_keras_model(final, path)
    val, test = data["val"], data["test"]
    out = {
        "train_min": seconds / 60,
        "tuned_epochs": args.tuned_epochs,
        "choices": choices,
        "params": count_params(unwrap_predictor(final)),
    }
    for name, model in (("network", network), ("predictor", final)):
        out[name] = {
            "val": scores(val.labels, predict(model, val)),
            "test": scores(test.labels, predict(model, test), n_bootstrap=1000),
            "test_all_missing": scores(test.labels, predict(model, test, missing=True), n_bootstrap=1000),
        }
    out["held_out"] = held_out(args, held, "dermsep_net-final-metadata", {**settings, "metadata": True}, True)
    calibration = representative_sample(lesion, args.img_size, seed=args.seed, metadata=True)
    out["export"] = export_report(
        path, val.inputs(final), val.labels, args.out_dir / "metadata", calibration
    ).to_dict("records")
    return out


# ------------------------------------------------------------------------------------------------- report
def print_table(result: dict) -> None:
    pd.set_option("display.width", 220)
    table = pd.DataFrame(
        [
            {
                "predictor": r["predictor"],
                **{k: r["val"][k] for k in HEADLINE},
                "params": r["params"],
                "train_min": r["train_min"],
                "kept": r["kept"],
            }
            for r in result["rows"]
        ]
    ).set_index("predictor")
    print("Validation split (every choice is made here):")
    print(table.round(3).to_string())
    tested = [r for r in result["rows"] if "test" in r]
    print("\nTest split (scored once, rows kept), with bootstrap 95% CIs:")
    for r in tested:
        cells = ", ".join(
            f"{k} {r['test'][k]:.3f} [{r['test']['ci95'][k][0]:.3f}, {r['test']['ci95'][k][1]:.3f}]"
            for k in HEADLINE
            if r["test"].get("ci95", {}).get(k) and None not in r["test"]["ci95"][k]
        )
        print(f"  {r['predictor']}: {cells}")
    final = tested[-1]["test"]
    print(
        "\nGoals (test, final predictor):",
        ", ".join(f"{k} {final[k]:.3f} {'>=' if final[k] >= v else '<'} {v}" for k, v in GOALS.items()),
    )
    classes = result["held_out"]["final"]["network"]["classes"]
    print(f"\nHeld-out clinic ({HELD_OUT}): balanced accuracy over {classes}")
    checks = dict(result["held_out"])
    if "tried_device_augment" in result:
        checks["tuned + device augmentation (tried)"] = result["tried_device_augment"]
    for name, check in checks.items():
        for stage in ("network", "predictor"):
            if stage in check:
                s = check[stage]
                print(
                    f"  {name} {stage}: bal6 {s['balanced_accuracy_6']:.3f}, macro AUC {s['macro_auc']:.3f}, "
                    f"accuracy {s['accuracy']:.3f}, mel sens {s['mel_sensitivity']:.3f}"
                )
    shift = pd.DataFrame(result["shift_report"])
    print(
        f"\nShift suite: mean balanced accuracy {shift.iloc[-1]['relative_balanced_accuracy']:.1%} of clean"
    )
    overall = next(r for r in result["explanations"] if r["class"] == "overall")
    print(
        f"Grad-CAM vs lesion masks: pointing game {overall['pointing_game']:.3f} "
        f"(baseline {overall['baseline_pointing_game']:.3f}), energy inside {overall['energy_inside']:.3f} "
        f"(baseline {overall['baseline_energy_inside']:.3f})"
    )
    print(f"Benchmark wall-clock: {result['benchmark_min']:.1f} min")
    if "metadata" in result:
        print_metadata(result)
    print("\nTFLite export of best.keras, agreement with Keras on val:")
    print(pd.DataFrame(result["export"]).drop(columns="path").round(4).to_string(index=False))


def print_metadata(result: dict) -> None:
    """Image-only final predictor against the same recipe with age, sex and site (and with all missing)."""
    meta = result["metadata"]
    image_only = next(r for r in result["rows"] if r["predictor"] == "+ prior shift")
    lines = {
        "image only (best.keras)": image_only["test"],
        "with metadata (best_metadata.keras)": meta["predictor"]["test"],
        "with metadata, every field missing": meta["predictor"]["test_all_missing"],
    }
    print("\nMetadata (test split, final predictors):")
    for name, s in lines.items():
        print(f"  {name}: " + ", ".join(f"{k} {s[k]:.3f}" for k in HEADLINE))
    for name, check in (("image only", result["held_out"]["final"]), ("with metadata", meta["held_out"])):
        s = check["predictor"]
        print(f"  held-out {HELD_OUT}, {name}: bal6 {s['balanced_accuracy_6']:.3f}, AUC {s['macro_auc']:.3f}")


def keep_earlier_rows(result: dict, path: Path) -> None:
    """A run keeps the metadata rows (without ``--with-metadata``) and the tried device-augmentation check of
    the JSON it replaces, marked with the tuned epochs they were trained with and ``carried_over`` (they are
    not re-run)."""
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    for key in ("metadata", "metadata_tried_field_dropout_only", "tried_device_augment"):
        if key in previous and key not in result:
            epochs = previous[key].get("tuned_epochs", previous["args"]["tuned_epochs"])
            result[key] = {**previous[key], "tuned_epochs": epochs, "carried_over": True}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data_dir / "HAM10000_metadata.csv").is_file():
        print(
            f"error: HAM10000 folder {args.data_dir} not found (HAM10000_metadata.csv); pass --data-dir.",
            file=sys.stderr,
        )
        return 2
    if args.job:
        run_job(args)
        return 0
    start = time.perf_counter()
    if args.metadata_only:
        result = json.loads(args.results.read_text())
        lesion, held = splits(args)
        data = splits_of(lesion, args.img_size)
        result["metadata"] = metadata_rows(args, lesion, held, data, tuned_settings(args))
        result["metadata"]["benchmark_min"] = (time.perf_counter() - start) / 60
    elif args.device_augment_only:
        result = json.loads(args.results.read_text())
        _, held = splits(args)
        result["tried_device_augment"] = device_augment_check(args, held)
        result["tried_device_augment"]["benchmark_min"] = (time.perf_counter() - start) / 60
    else:
        result = run(args)
        result["benchmark_min"] = (time.perf_counter() - start) / 60
        keep_earlier_rows(result, args.results)
    write_json(result, args.results)
    print_table(result)
    print(f"\nWrote {args.results}; best predictor: {result['best_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
