"""Generalisation levers on real HAM10000 (issue #19): one recipe change at a time against the tuned recipe.

Each lever is the tuned recipe of ``benchmarks/ham10000.py`` with one change, trained as that benchmark trains
(30 epochs at 128 px, batch 64, learning rate 2e-3, seed 0) twice: on the lesion-aware split (scored on val,
never on test) and without the clinic ``rosendahl`` (scored on its 2,259 images). Each network is also run
through the shift suite (600 val images). The tuned recipe's own runs are those of ``benchmarks/ham10000.py``
(reused from ``models/ham10000/runs``, trained there when missing).

    .venv/bin/python benchmarks/ham10000_levers.py --lever device_augment

Prints a table and writes ``benchmarks/results/ham10000_levers.json`` (levers already there are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ham10000 import (  # noqa: E402  (benchmarks/ham10000.py)
    HELD_OUT,
    TUNED,
    fit,
    held_out_scores,
    parse_args,
    predict,
    scores,
    splits,
    splits_of,
    tuned_settings,
)
from throughput import machine_info  # noqa: E402

from helpers.augment import AugmentConfig  # noqa: E402
from helpers.evaluate import shift_report  # noqa: E402
from helpers.files import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ham10000_levers.json"
LEVERS = {
    "tuned": TUNED,
    "device_augment": dataclasses.replace(
        TUNED,
        augment=AugmentConfig(
            rotation_degrees=30.0,
            brightness=0.15,
            scale=(0.75, 1.15),
            aspect=0.15,
            gains=0.15,
            hue=0.08,
            gamma=0.25,
            blur=0.5,
            vignette=0.3,
        ),
    ),
    "class_sampling": dataclasses.replace(TUNED, class_sampling=0.5, class_weight_power=0.0),
}
"""``device_augment``: random resized crops, rotations, white balance, hue, gamma, blur and the dermoscope's
dark frame (what a change of clinic or device changes). ``class_sampling``: square-root class-balanced
batches instead of class weights."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lever", action="append", choices=sorted(LEVERS), required=True)
    parser.add_argument("--results", type=Path, default=RESULTS)
    own, rest = parser.parse_known_args(argv)
    args = parse_args(rest)
    out = json.loads(own.results.read_text()) if own.results.is_file() else {"levers": {}}
    out["machine"] = machine_info()
    lesion, held = splits(args)
    val = splits_of(lesion, args.img_size)["val"]
    clinic = splits_of(held, args.img_size)["test"]
    for lever in ["tuned", *own.lever]:
        start = time.perf_counter()
        settings = {**tuned_settings(args), "recipe": LEVERS[lever]}
        name = "dermsep_net-tuned" if lever == "tuned" else f"dermsep_net-{lever}"
        network, seconds, result = fit(args, lesion, name, **settings)
        held_network, held_seconds, _ = fit(args, held, f"{name}-without-{HELD_OUT}", **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            shifts = shift_report(network, lesion, split="val", max_images=600, verbose=False)
        out["levers"][lever] = {
            "recipe": dataclasses.asdict(LEVERS[lever]),
            "val": scores(val.labels, predict(network, val)),
            "best_epoch": int(result.best_epoch),
            "held_out": held_out_scores(clinic, predict(held_network, clinic)),
            "shift_mean_relative": float(shifts["relative_balanced_accuracy"].iloc[-1]),
            "train_min": (seconds + held_seconds) / 60,
            "minutes": (time.perf_counter() - start) / 60,
        }
        write_json(out, own.results)
    print_table(out["levers"])
    return 0


def print_table(levers: dict) -> None:
    head = f"{'lever':<16} {'val bal':>8} {'val AUC':>8} {'mel':>6} {HELD_OUT + ' bal6':>15} {'AUC':>6}"
    print(f"\n{head} {'shifts':>7}")
    for name, r in levers.items():
        v, h = r["val"], r["held_out"]
        print(
            f"{name:<16} {v['balanced_accuracy']:>8.3f} {v['macro_auc']:>8.3f} {v['mel_sensitivity']:>6.3f} "
            f"{h['balanced_accuracy_6']:>15.3f} {h['macro_auc']:>6.3f} {r['shift_mean_relative']:>7.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
