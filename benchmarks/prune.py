"""Pruning to the int8 size goal (issue #32): each model at <= 60% of its unpruned int8 TFLite size, at the
same validation balanced accuracy (within 0.01).

For each model: the uniform channel ``keep`` whose pruned model's int8 TFLite file is at most ``--fraction``
of the unpruned one's (:func:`helpers.prune.prune_to_size`, by bisection), a fine-tune on the train split
selected on val balanced accuracy (:func:`helpers.prune.fine_tune`), then before/after: parameters, int8 file
size, int8 TFLite single-image latency (median of ``--latency-runs`` invokes, best of 3 alternating rounds, as
``benchmarks/throughput.py``), balanced accuracy of the Keras model and of its int8 file on val and, once at
the end, on test. Data: ``../shared/data/ham10000_200x150``, lesion-aware split with ``--split-seed`` 42.

Models: ``--model PATH`` (a trained ``.keras``, repeatable; default: ``models/prune_base_dermsep/best.keras``,
plus ``models/transfer/runs/lite0/best.keras``, ``transfer.py``'s network, when it exists; fine-tune it with
``--recipe transfer --learning-rate 3e-4 --batch-size 32``) and ``--imagenet-lite0``, an ImageNet-initialised
efficientnet_lite0 with an untrained classifier, pruned without fine-tuning and without accuracy figures (it
checks the code path and measures sizes; ``--size-only`` does the same for any model).

Usage (from the repo root): ``python benchmarks/prune.py [--model PATH ...] [--imagenet-lite0]``.
Prints a table and writes ``benchmarks/results/prune.json`` (one entry per model, earlier entries kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import machine_info  # noqa: E402  (benchmarks/throughput.py)

from helpers.backbones import efficientnet_lite0  # noqa: E402
from helpers.export import export_tflite, representative_sample, tflite_latency, tflite_predict  # noqa: E402
from helpers.files import write_json  # noqa: E402
from helpers.metrics import label_ids  # noqa: E402
from helpers.modelio import load_keras_model, model_input_size, predict_images, save_keras_model  # noqa: E402
from helpers.models import count_params, unwrap_predictor  # noqa: E402
from helpers.paths import MODELS_DIR, PROJECT_ROOT  # noqa: E402
from helpers.pipeline import load_images  # noqa: E402
from helpers.prune import fine_tune, int8_size, prunable_units, prune, prune_to_size  # noqa: E402
from helpers.train import prepare_data, validation_scores  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "ham10000_200x150"
RESULTS = Path(__file__).resolve().parent / "results" / "prune.json"
OUT_DIR = MODELS_DIR / "prune"
DEFAULT_MODELS = (
    MODELS_DIR / "prune_base_dermsep" / "best.keras",
    MODELS_DIR / "transfer" / "runs" / "lite0" / "best.keras",  # benchmarks/transfer.py's fine-tuned network
)
ACCURACY_TOLERANCE = 0.01
LATENCY_ROUNDS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the lesion-aware split")
    parser.add_argument("--model", type=Path, action="append", help="a trained .keras (repeatable)")
    parser.add_argument("--imagenet-lite0", action="store_true", help="also an ImageNet-initialised lite0")
    parser.add_argument("--img-size", type=int, default=128, help="input size of --imagenet-lite0")
    parser.add_argument("--fraction", type=float, default=0.6, help="int8 size goal, of the unpruned size")
    parser.add_argument("--steps", type=int, default=7, help="bisection steps of the uniform keep")
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--recipe",
        default="tuned",
        help="fine-tuning recipe: tuned (dermsep_net), transfer (lite0: BatchNorm frozen)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed")
    parser.add_argument(
        "--distill", action="store_true", help="also distil the unpruned model when fine-tuning"
    )
    parser.add_argument("--size-only", action="store_true", help="no fine-tuning, no accuracy figures")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.model is None:
        args.model = [path for path in DEFAULT_MODELS if path.is_file()] if not args.imagenet_lite0 else []
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, said with what to do; None when there is none."""
    if not (args.data_dir / "HAM10000_metadata.csv").is_file():
        return f"HAM10000 folder {args.data_dir} not found (HAM10000_metadata.csv); pass --data-dir."
    if not args.model and not args.imagenet_lite0:
        return (
            f"no model to prune: none of {[str(p) for p in DEFAULT_MODELS]} exists; train one (see the "
            "docstring) or pass --model PATH or --imagenet-lite0."
        )
    missing = [str(path) for path in args.model if not path.is_file()]
    if missing:
        return f"--model {missing[0]} is not a file; pass the best.keras of a training run."
    if not 0 < args.fraction <= 1:
        return f"--fraction must be in (0, 1], got {args.fraction}."
    return None


# ------------------------------------------------------------------------------------------------- figures
def balanced(labels: np.ndarray, probs: np.ndarray) -> float:
    return validation_scores(labels, probs)["val_balanced_accuracy"]


def figures(model, tflite: Path, data: dict, splits: tuple[str, ...]) -> dict:
    """Parameters, int8 size and the balanced accuracy of the Keras model and its int8 file on ``splits``."""
    out = {"params": count_params(unwrap_predictor(model)), "int8_kb": tflite.stat().st_size / 1024}
    for split in splits:
        images, labels = data[split]
        out[f"{split}_balanced_accuracy"] = balanced(labels, predict_images(model, images))
        out[f"{split}_balanced_accuracy_int8"] = balanced(labels, tflite_predict(tflite, images))
    return out


def latencies(paths: list[Path], runs: int) -> list[float]:
    """Median int8 TFLite latency (ms) of each file, best of :data:`LATENCY_ROUNDS` alternating rounds."""
    rounds = [[tflite_latency(path, runs) for path in paths] for _ in range(LATENCY_ROUNDS)]
    return [float(min(times)) for times in zip(*rounds, strict=True)]


def prune_one(args, label: str, model, df: pd.DataFrame, data: dict, size_only: bool) -> dict:
    """Prune ``model`` to the size goal, fine-tune it (unless ``size_only``) and measure before and after;
    the "control" is the unpruned model fine-tuned the same way (what the extra training alone gives)."""
    start = time.perf_counter()
    out = args.out_dir / label.replace(" ", "_").replace("/", "_")
    calibration = representative_sample(df, model_input_size(model))
    models = {"before": model}
    paths = {"before": export_tflite(model, out / "before_int8.tflite", "int8", calibration)}
    models["after"], keep = prune_to_size(model, args.fraction, steps=args.steps)
    print(f"  {label}: keep {keep:.4f} meets {args.fraction:.0%} of the int8 size", flush=True)
    entry = {
        "keep": keep,
        "units_before": prunable_units(model),
        "units_after": prunable_units(models["after"]),
        "size_search_calibration_free": paths["before"].stat().st_size == int8_size(model),
    }
    if size_only:
        save_keras_model(models["after"], out / "after.keras")
    else:
        images, labels = data["val"]
        entry["val_balanced_accuracy_before_fine_tune"] = balanced(
            labels, predict_images(models["after"], images)
        )
        models["control"] = prune(model, 1.0)  # an exact copy
        entry["fine_tune"] = {
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "recipe": args.recipe,
        }
        entry["fine_tune"] |= {"distilled_from_unpruned": args.distill}
        for part in ("after", "control"):
            tuned = fine_tune(
                models[part],
                df,
                epochs=args.epochs,
                learning_rate=args.learning_rate,
                recipe=args.recipe,
                batch_size=args.batch_size,
                seed=args.seed,
                save_path=out / f"{part}.keras",
                teacher=model if args.distill else None,
                verbose=2,
            )
            entry["fine_tune"][part] = {
                "best_epoch": tuned.best_epoch,
                "val_balanced_accuracy_per_epoch": [
                    round(v, 4) for v in tuned.history["val_balanced_accuracy"]
                ],
                "minutes": round(tuned.minutes, 2),
            }
    for part in models:
        paths.setdefault(part, export_tflite(models[part], out / f"{part}_int8.tflite", "int8", calibration))
        entry[part] = figures(models[part], paths[part], data, () if size_only else ("val",))
    for part, ms in zip(
        ("before", "after"), latencies([paths["before"], paths["after"]], args.latency_runs), strict=True
    ):
        entry[part]["int8_latency_ms"] = ms
    entry["files"] = {part: _label(path) for part, path in paths.items()}
    entry["minutes"] = (time.perf_counter() - start) / 60
    entry["_models"] = (models, paths)
    return entry


def goal(entry: dict, fraction: float, size_only: bool) -> dict:
    before, after = entry["before"], entry["after"]
    ratio = after["int8_kb"] / before["int8_kb"]
    out = {"int8_size_ratio": ratio, "size_met": ratio <= fraction}
    if size_only:
        return out | {"accuracy_met": None, "met": None}  # not measured
    drop = before["val_balanced_accuracy"] - after["val_balanced_accuracy"]
    met = drop <= ACCURACY_TOLERANCE
    return out | {"val_drop": drop, "accuracy_met": met, "met": met and out["size_met"]}


def score_test(entry: dict, data: dict) -> None:
    """The test split, scored once at the end for the models with accuracy figures."""
    models, paths = entry["_models"]
    for part, model in models.items():
        entry[part] |= {k: v for k, v in figures(model, paths[part], data, ("test",)).items() if "test" in k}


# ------------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    df = prepare_data(data_dir=args.data_dir, split_seed=args.split_seed, verbose=False)
    done = []
    jobs = [(_label(path), load_prunable(path), args.size_only) for path in args.model]
    if args.imagenet_lite0:
        lite0 = efficientnet_lite0(args.img_size)
        jobs.append(("efficientnet_lite0 (ImageNet weights, untrained classifier)", lite0, True))
    images: dict[int, dict] = {}
    for label, model, size_only in jobs:
        size = model_input_size(model)
        if size not in images:
            parts = {s: df[df["split"] == s] for s in ("val", "test")}
            images[size] = {
                s: (load_images(p["path"].tolist(), size, progress=False), label_ids(p["dx"]))
                for s, p in parts.items()
            }
        print(f"Pruning {label} ({count_params(unwrap_predictor(model)):,} params, {size} px)", flush=True)
        entry = prune_one(args, label, model, df, images[size], size_only)
        entry["goal"] = goal(entry, args.fraction, size_only)
        done.append((label, entry, size_only, size))
    for _, entry, size_only, size in done:
        if not size_only:
            score_test(entry, images[size])
        del entry["_models"]
    return {label: entry for label, entry, *_ in done}


def load_prunable(path: Path):
    """The model in ``path``; SystemExit saying why when it is not a model this script can prune."""
    try:
        model = load_keras_model(path)
        prunable_units(model)
    except ValueError as err:
        raise SystemExit(f"error: --model {path}: {err}") from None
    return model


def _label(path: Path) -> str:
    """``path`` relative to the project when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def print_table(entries: dict) -> None:
    pd.set_option("display.width", 220)
    rows = []
    for label, entry in entries.items():
        for part in [p for p in ("before", "after", "control") if p in entry]:
            figures_ = entry[part]
            rows.append(
                {
                    "model": f"{Path(label).parent.name or label} {part}",
                    "params": figures_["params"],
                    "int8 KB": round(figures_["int8_kb"], 1),
                    "int8 ms": round(figures_.get("int8_latency_ms", np.nan), 3),
                    **{
                        k.replace("_balanced_accuracy", " bal.acc"): round(v, 4)
                        for k, v in figures_.items()
                        if "balanced_accuracy" in k
                    },
                }
            )
    print(pd.DataFrame(rows).set_index("model").to_string())
    for label, entry in entries.items():
        print(f"{label}: keep {entry['keep']:.4f}, goal {entry['goal']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    entries = run(args)
    command = "python benchmarks/prune.py " + " ".join(args.argv)
    stamp = {"command": command.strip(), "date": datetime.date.today().isoformat()}
    for entry in entries.values():
        entry |= stamp
    result = json.loads(args.results.read_text()) if args.results.is_file() else {"models": {}}
    result["models"].update(entries)
    result |= {
        "goal": f"int8 TFLite size <= {args.fraction:.0%} of the unpruned model's, val balanced accuracy "
        f"within {ACCURACY_TOLERANCE}",
        "machine": machine_info(),
        "note": "timings from a shared 2-core machine (run under nice -n 10 beside other work)",
        "last_run_minutes": (time.perf_counter() - start) / 60,
    }
    write_json(result, args.results)
    print_table(entries)
    print(f"\nWrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
