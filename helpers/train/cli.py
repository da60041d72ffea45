"""Command line: ``python -m helpers.train --data-dir DIR --run-dir DIR --epochs N ...``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from helpers.models import FUSIONS, MODEL_NAMES
from helpers.train.loop import train
from helpers.train.recipes import SCHEDULES, resolve_recipe
from helpers.train.workers import cluster_strategy

RECIPE_OPTIONS = (
    "schedule",
    "weight_decay",
    "label_smoothing",
    "class_weight_power",
    "ema",
    "mixup_alpha",
    "cutmix_alpha",
)
"""Recipe fields the command line can change (``--weight-decay`` ...)."""


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m helpers.train --data-dir DIR --run-dir DIR --epochs N ...``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="auto", help="dataset folder, or 'auto' (default)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: models/<automatic name>)")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--model-name", default="default", choices=("default", "fast", *MODEL_NAMES))
    parser.add_argument("--epochs", type=int, default=15, help="total epochs of the run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--split-seed", type=int, default=None, help="seed of the split and subset (default: --seed)"
    )
    parser.add_argument("--max-images", type=int, default=None, help="stratified subset for quick runs")
    parser.add_argument(
        "--held-out-source", default=None, help="test on this source only, e.g. rosendahl (column 'dataset')"
    )
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    parser.add_argument("--lr-patience", type=int, default=2, help="epochs before the learning rate is cut")
    parser.add_argument(
        "--recipe",
        default=None,
        help="plain, tuned, transfer or a recipe .json (default: the model's own); the options below edit it",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (0: Adam)")
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--class-weight-power", type=float, help="1 balanced, 0 unweighted")
    parser.add_argument("--ema", type=float, help="weight-average momentum, e.g. 0.995 (0: off)")
    parser.add_argument("--mixup-alpha", type=float, help="Mixup's Beta parameter, e.g. 0.2 (0: off)")
    parser.add_argument("--cutmix-alpha", type=float, help="CutMix's Beta parameter, e.g. 1.0 (0: off)")
    parser.add_argument("--teacher", default=None, help="a .keras model to distil into this one")
    parser.add_argument(
        "--metadata", action="store_true", help="also feed age, sex and body site (a two-input model)"
    )
    parser.add_argument(
        "--fusion", default="concat", choices=FUSIONS, help="how --metadata joins the image features"
    )
    parser.add_argument("--figures-dir", default=None)
    parser.add_argument(
        "--multi-worker",
        action="store_true",
        help="one worker of a cluster described by TF_CONFIG (MultiWorkerMirroredStrategy); only the chief "
        "writes --run-dir",
    )
    parser.add_argument("--no-resume", action="store_true", help="delete the run's previous state first")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras verbosity")
    args = parser.parse_args(argv)
    try:
        strategy = cluster_strategy() if args.multi_worker else None
        changes = {name: getattr(args, name) for name in RECIPE_OPTIONS if getattr(args, name) is not None}
        recipe = dataclasses.replace(resolve_recipe(args.recipe, args.model_name), **changes)
        result = train(
            data_dir=args.data_dir,
            img_size=args.img_size,
            model_name=args.model_name,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            split_seed=args.split_seed,
            run_dir=args.run_dir,
            resume=not args.no_resume,
            max_images=args.max_images,
            held_out_source=args.held_out_source,
            metadata=args.metadata,
            fusion=args.fusion,
            patience=args.patience,
            lr_patience=args.lr_patience,
            recipe=recipe,
            teacher=args.teacher,
            figures_dir=args.figures_dir,
            strategy=strategy,
            verbose=args.verbose,
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.verbose:
        print(result.summary())
    return 0
