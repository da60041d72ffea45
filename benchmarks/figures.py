"""The README's figure, drawn from a benchmark's committed JSON (no training): the final predictor beside the
original architecture and the majority-class baseline on the headline scores (the test split where the
benchmark scored one, else validation); for HAM10000 also ``transfer.json``'s ``best.keras`` (the pretrained
default) and ``small.keras`` (the distilled small model), on the same test split.

    .venv/bin/python benchmarks/figures.py                          # HAM10000: writes docs/results.png
    .venv/bin/python benchmarks/figures.py --benchmark dermamnist --out docs/dermamnist.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.paths import PROJECT_ROOT  # noqa: E402
from helpers.plots.results import plot_predictor_comparison  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARK = "ham10000"
TITLES = {
    "dermamnist": "DermaMNIST (real HAM10000 images at 28 px), validation split",
    "ham10000": "HAM10000 at 128 px, lesion-aware test split (1,505 images)",
}


def headline_rows(rows: list[dict]) -> list[dict]:
    """The majority baseline (first row), the original architecture and the last kept row (the final
    predictor), renamed for a legend; a row's ``test`` scores when it has them (HAM10000), else the row."""
    scored = [r for r in rows if r.get("kept", True) and ("test" in r or "val" not in r)]
    original = next(r for r in scored if "cpu_light_efficient_cnn" in r["predictor"])
    names = ("majority class (always nv)", "original (same training minutes)", "dermsep_net from scratch")
    return [
        {**r.get("test", r), "predictor": name}
        for r, name in zip((scored[0], original, scored[-1]), names, strict=True)
    ]


def saved_model_rows(transfer: dict) -> list[dict]:
    """``best.keras`` and ``small.keras`` as ``transfer.py`` saved them (each its network or its finished
    predictor, whichever val preferred), with their test scores (a network's under ``"<run> network"`` or
    ``"<run>"``, a predictor's under ``"<run> predictor"``)."""
    saved = (
        (transfer["kept"]["lite0"], transfer["default"]["kept"], "best.keras: pretrained Lite0"),
        (transfer["small"]["run"], transfer["small"]["kept"], "small.keras: distilled dermsep_net"),
    )
    rows = []
    for run, kept, name in saved:
        keys = [f"{run} predictor"] if kept == "predictor" else [f"{run} network", run]
        scores = next(transfer["test"][key] for key in keys if key in transfer["test"])
        rows.append({**scores, "predictor": name})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default=BENCHMARK, choices=sorted(TITLES))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "results.png")
    args = parser.parse_args(argv)
    result = json.loads((RESULTS / f"{args.benchmark}.json").read_text())
    rows = headline_rows(result["rows"])
    if args.benchmark == "ham10000":
        rows += saved_model_rows(json.loads((RESULTS / "transfer.json").read_text()))
    plot_predictor_comparison(rows, TITLES[args.benchmark], save_path=args.out)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
