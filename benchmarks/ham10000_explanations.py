"""Where does the HAM10000 model look when Grad-CAM misses the lesion? (issue #21)

Runs Grad-CAM (:func:`helpers.evaluate.explain_split`) of ``models/ham10000/best.keras`` (saved by
``benchmarks/ham10000.py``) on the same lesion-aware test images as that benchmark's explanation report, and
sorts every image whose heatmap maximum misses the lesion mask by where the maximum lies instead:

- ``no heatmap``: Grad-CAM is zero everywhere (no positive evidence for the predicted class in the feature
  map), so its "maximum" is the first pixel, a miss by definition;
- ``next to the lesion``, ``dark frame``, ``image border``, ``skin``: see
  :func:`helpers.explain.miss_place` ("next to": within one Grad-CAM cell, the image side over the map side).

Draws the two images of each class (with a heatmap) with the least of its mass on the lesion (heatmap, mask
outline) to ``visualizations/ham10000/gradcam_worst.png`` (real patients' images: not committed), prints a
table and writes ``benchmarks/results/ham10000_explanations.json``.

    .venv/bin/python benchmarks/ham10000_explanations.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ham10000 import DEFAULT_DATA, OUT_DIR  # noqa: E402  (benchmarks/ham10000.py)
from throughput import machine_info  # noqa: E402

from helpers.classes import CLASS_NAMES  # noqa: E402
from helpers.data import load_metadata  # noqa: E402
from helpers.evaluate import (  # noqa: E402
    POINTING_TOLERANCE,
    Explanations,
    explain_split,
    explanation_table,
)
from helpers.explain import (  # noqa: E402
    MISS_PLACES,
    energy_inside,
    gradcam_layer,
    miss_place,
    pointing_hit,
)
from helpers.files import write_json  # noqa: E402
from helpers.modelio import load_classifier  # noqa: E402
from helpers.models import unwrap_predictor  # noqa: E402
from helpers.paths import VISUALIZATIONS_DIR  # noqa: E402
from helpers.plots.evaluation import plot_gradcam_grid  # noqa: E402
from helpers.splits import split_by_lesion  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ham10000_explanations.json"
FIGURE = VISUALIZATIONS_DIR / "ham10000" / "gradcam_worst.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=OUT_DIR / "best.keras")
    parser.add_argument("--split-seed", type=int, default=42, help="as benchmarks/ham10000.py")
    parser.add_argument("--images", type=int, default=600, help="as its --report-images")
    parser.add_argument("--per-class", type=int, default=2, help="worst cases drawn per class")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    return parser.parse_args(argv)


def places(explained: Explanations, hits: np.ndarray, cell_px: float) -> pd.DataFrame:
    """Per class and overall: how many misses lie where (shares of the class's misses)."""
    found = [
        miss_place(image, heatmap, mask, cell_px) if not hit else "hit"
        for image, heatmap, mask, hit in zip(
            explained.images, explained.heatmaps, explained.masks, hits, strict=True
        )
    ]
    frame = pd.DataFrame({"dx": explained.frame["dx"].to_numpy(), "place": found})
    misses = frame[frame["place"] != "hit"]
    groups = {name: misses[misses["dx"] == name] for name in CLASS_NAMES} | {"overall": misses}
    table = pd.DataFrame(
        {
            "misses": [len(g) for g in groups.values()],
            **{
                p: [(g["place"] == p).mean() if len(g) else np.nan for g in groups.values()]
                for p in MISS_PLACES
            },
        },
        index=list(groups),
    )
    table.index.name = "class"
    return table


def worst_per_class(explained: Explanations, energy: np.ndarray, per_class: int) -> list[int]:
    """Indices of the ``per_class`` images of each class with the least heatmap mass on the lesion (images
    whose heatmap is zero everywhere left out: nothing to see)."""
    chosen = []
    for name in CLASS_NAMES:
        rows = np.flatnonzero((explained.frame["dx"].to_numpy() == name) & np.isfinite(energy))
        chosen += rows[np.argsort(energy[rows], kind="stable")[:per_class]].tolist()
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        print(f"error: {args.model} not found; run benchmarks/ham10000.py first.", file=sys.stderr)
        return 2
    model = load_classifier(args.model)
    lesion = split_by_lesion(load_metadata(args.data_dir, verbose=False), seed=args.split_seed)
    explained = explain_split(model, lesion, "test", max_images=args.images)
    table = explanation_table(explained)
    side = explained.masks.shape[1]
    cell_px = side / gradcam_layer(unwrap_predictor(model)).output.shape[1]
    tolerance_px = POINTING_TOLERANCE * side
    pairs = list(zip(explained.heatmaps, explained.masks, strict=True))
    hits = np.array([pointing_hit(h, m, tolerance_px) for h, m in pairs])
    energy = np.array([energy_inside(h, m) for h, m in pairs])
    where = places(explained, hits, cell_px)

    chosen = worst_per_class(explained, energy, args.per_class)
    titles = [
        f"true {explained.frame.at[i, 'dx']}, predicted {CLASS_NAMES[explained.predicted[i]]}\n"
        f"inside {energy[i]:.2f}"
        for i in chosen
    ]
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    plot_gradcam_grid(
        explained.images[chosen],
        explained.heatmaps[chosen],
        titles,
        masks=explained.masks[chosen],
        ncols=2 * args.per_class,
        save_path=args.figure,
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(table[["pointing_game", "energy_inside", "background_ratio", "n_images"]])
        print(f"\nWhere the heatmap maximum lies when it misses the lesion (one cell = {cell_px:.0f} px):")
        print(where)
    print(f"\nworst cases: {args.figure}")
    write_json(
        {
            "machine": machine_info(),
            "model": str(args.model),
            "images": len(explained.frame),
            "cell_px": cell_px,
            "tolerance_px": tolerance_px,
            "explanations": table.reset_index().to_dict("records"),
            "miss_places": where.reset_index().to_dict("records"),
            "worst_cases": [explained.frame.at[i, "image_id"] for i in chosen],
        },
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
