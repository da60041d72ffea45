"""Hyperparameter search with Optuna: trials of :func:`helpers.train.train`, pruned early, kept in a database.

The command line (:func:`main`): ``python -m helpers.search --study NAME --trials N [--storage URL] ...``.
"""

from __future__ import annotations

import argparse
import re
import sys

import pandas as pd

from helpers.search.run import run_search
from helpers.search.space import SearchError
from helpers.search.storage import PRUNERS


def parse_setting(text: str) -> tuple[str, object]:
    """``NAME=LOW:HIGH`` (a range; ``NAME=LOW:HIGH:log`` on a log scale), ``NAME=A,B,C`` (choices) or
    ``NAME=VALUE`` (fixed) as ``(name, spec)`` for ``run_search(space=...)``."""
    name, _, value = text.partition("=")
    try:
        if ":" in value:
            parts = value.split(":")
            log = parts[-1] == "log"
            low, high = (float(v) for v in (parts[:-1] if log else parts))
            return name, (low, high, "log") if log else (low, high)
        values = [_number(v) for v in value.split(",")]
        return name, values if len(values) > 1 else values[0]
    except ValueError:
        raise SearchError(
            f"--set {text!r}: write NAME=LOW:HIGH, NAME=LOW:HIGH:log, NAME=A,B,C or NAME=VALUE."
        ) from None


def _number(text: str) -> int | float:
    return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else float(text)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m helpers.search --study NAME --trials N [--storage URL] ...``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.search", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--study",
        default=None,
        help="study name, also its folder under --out-dir (default: from the settings)",
    )
    parser.add_argument("--trials", type=int, default=20, help="the study's total number of trials")
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default sqlite:///<out-dir>/study.db); postgresql://user:pass@host/db "
        "shares one study between machines",
    )
    parser.add_argument("--data-dir", default="auto")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each trial")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument(
        "--teacher", default=None, help="a .keras teacher: distillation alpha and T are searched"
    )
    parser.add_argument("--pruner", default="median", choices=PRUNERS)
    parser.add_argument("--no-baseline", action="store_true", help="do not make the tuned recipe trial 0")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="change the space: NAME=LOW:HIGH, NAME=LOW:HIGH:log, NAME=A,B,C or NAME=VALUE (fixed)",
    )
    parser.add_argument("--out-dir", default=None, help="default models/search")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    try:
        space = dict(parse_setting(text) for text in args.set)
        result = run_search(
            study=args.study,
            n_trials=args.trials,
            storage=args.storage,
            data_dir=args.data_dir,
            img_size=args.img_size,
            epochs=args.epochs,
            seed=args.seed,
            max_images=args.max_images,
            space=space,
            teacher=args.teacher,
            pruner=args.pruner,
            baseline=not args.no_baseline,
            out_dir=args.out_dir,
            verbose=args.verbose,
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the search", file=sys.stderr)
        return 130
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(result.table.round(4).to_string())
    return 0
