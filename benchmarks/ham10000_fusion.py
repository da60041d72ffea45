"""How to join age, sex and body site to the image (issue #20): concatenation against FiLM on real HAM10000.

Both fusions of :func:`helpers.models.add_metadata_input` train the tuned recipe of ``benchmarks/ham10000.py``
on its lesion-aware split with the same seed, at a smaller, cheaper setting than that benchmark (64 px, 15
epochs by default), and are scored on val only (the network, no finishing steps), with the real metadata and
with every field missing. The fusion with the better val balanced accuracy is the one to keep.

    .venv/bin/python benchmarks/ham10000_fusion.py

Prints a table and writes ``benchmarks/results/ham10000_fusion.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ham10000 import TUNED, fit, parse_args, predict, scores, splits, splits_of  # noqa: E402
from throughput import machine_info  # noqa: E402

from helpers.files import write_json  # noqa: E402
from helpers.models import FUSIONS, count_params  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ham10000_fusion.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(["--img-size", "64", "--tuned-epochs", "15", *(argv or sys.argv[1:])])
    lesion, _ = splits(args)
    val = splits_of(lesion, args.img_size)["val"]
    out = {"machine": machine_info(), "img_size": args.img_size, "epochs": args.tuned_epochs, "fusions": {}}
    for fusion in FUSIONS:
        start = time.perf_counter()
        network, seconds, result = fit(
            args,
            lesion,
            f"fusion-{fusion}-{args.img_size}px",
            model_name="dermsep_net",
            recipe=TUNED,
            epochs=args.tuned_epochs,
            lr=2e-3,
            batch=64,
            metadata=True,
            fusion=fusion,
        )
        out["fusions"][fusion] = {
            "val": scores(val.labels, predict(network, val)),
            "val_all_missing": scores(val.labels, predict(network, val, missing=True)),
            "params": count_params(network),
            "best_epoch": int(result.best_epoch),
            "train_min": seconds / 60,
            "minutes": (time.perf_counter() - start) / 60,
        }
    write_json(out, RESULTS)
    print(f"\nval, {args.img_size} px, {args.tuned_epochs} epochs, tuned recipe with metadata:")
    for fusion, r in out["fusions"].items():
        v, m = r["val"], r["val_all_missing"]
        print(
            f"  {fusion:<7} balanced accuracy {v['balanced_accuracy']:.3f} (every field missing "
            f"{m['balanced_accuracy']:.3f}), macro AUC {v['macro_auc']:.3f}, mel {v['mel_sensitivity']:.3f}, "
            f"{r['params']:,} params"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
