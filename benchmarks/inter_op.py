"""One op at a time or several: what ``TF_NUM_INTEROP_THREADS=1`` (set by ``import helpers``) costs and buys.

For each setting, in a fresh Python process (TensorFlow reads the variable once, when it starts):

- repeats: how many of ``REPS`` (30) identical gradient steps of the default network (batch 128, 64 px)
  differ from the first in any bit (:func:`helpers.train.determinism.differing_steps`; 0: training repeats);
- epoch seconds: the tuned recipe on the real HAM10000 images (``../shared/data/ham10000_200x150``, 128 px,
  batch 64, 2 epochs; the first epoch includes building the graph and loading the image cache);
- small trainings: three trainings of 2 epochs on 120 synthetic images at 32 px, batch 16, as the test suite
  runs them (their time is mostly start-up, not steps).

Settings run in alternating rounds. Usage (from the repo root):
``.venv/bin/python benchmarks/inter_op.py [--rounds 1]``. Prints a table and writes
``benchmarks/results/inter_op.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "inter_op.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ham10000_200x150"
SETTINGS = {"one op at a time": "1", "TensorFlow's default": "0"}
REPS = 30  # identical gradient steps; the last REPS - 1 are compared with the first


def measure(data_dir: Path, work: Path) -> dict:
    """The three measurements of the module's docstring, in this process."""
    sys.path.insert(0, str(ROOT))
    import helpers  # noqa: F401  (before TensorFlow starts: helpers.runtime)
    from helpers.runtime import ops_run_serially
    from helpers.synthetic import make_synthetic_dataset
    from helpers.train import train
    from helpers.train.determinism import differing_steps

    differ = differing_steps(reps=REPS)
    real = train(
        data_dir=data_dir,
        img_size=128,
        recipe="tuned",
        epochs=2,
        batch_size=64,
        learning_rate=2e-3,
        seed=0,
        split_seed=42,
        run_dir=work / "real",
        verbose=0,
    )
    synthetic = make_synthetic_dataset(work / "synthetic" / "ham", n_images=120, seed=1)
    start = time.perf_counter()
    for i in range(3):
        train(data_dir=synthetic, img_size=32, epochs=2, batch_size=16, run_dir=work / f"small{i}", verbose=0)
    return {
        "serial_ops": ops_run_serially(),
        "differing_steps": differ,
        "compared_steps": REPS - 1,
        "epoch_seconds": [float(s) for s in real.history["seconds"]],
        "small_trainings_seconds": time.perf_counter() - start,
    }


def run_setting(value: str, data_dir: Path) -> dict:
    """:func:`measure` in a fresh process with ``TF_NUM_INTEROP_THREADS=value``."""
    env = {**os.environ, "TF_NUM_INTEROP_THREADS": value, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="inter-op-") as work:
        done = subprocess.run(
            [sys.executable, __file__, "--measure", str(data_dir), work],
            env=env,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise SystemExit(
            f"The measurement with TF_NUM_INTEROP_THREADS={value} failed:\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the settings")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure", nargs=2, metavar=("DATA_DIR", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]))))
        return {}
    if not (args.data_dir / "HAM10000_metadata.csv").is_file():
        raise SystemExit(
            f"{args.data_dir} holds no HAM10000_metadata.csv: pass --data-dir with the real images."
        )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pandas as pd
    from throughput import machine_info

    start = time.perf_counter()
    rows = []
    for round_ in range(1, args.rounds + 1):
        for name, value in SETTINGS.items():
            print(f"round {round_}: {name} (TF_NUM_INTEROP_THREADS={value}) ...", flush=True)
            rows.append({"round": round_, "setting": name, "TF_NUM_INTEROP_THREADS": value})
            rows[-1].update(run_setting(value, args.data_dir))
    table = pd.DataFrame(
        {
            "setting": [r["setting"] for r in rows],
            "differing steps": [f"{r['differing_steps']} of {r['compared_steps']}" for r in rows],
            "epoch 1 s": [r["epoch_seconds"][0] for r in rows],
            "epoch 2 s": [r["epoch_seconds"][1] for r in rows],
            "3 small trainings s": [r["small_trainings_seconds"] for r in rows],
        }
    )
    print("\n" + table.to_string(index=False, float_format="{:.1f}".format))
    info = {k: v for k, v in machine_info().items() if k != "serial_ops"}  # each row says its own
    result = {"machine": info, "rows": rows, "seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nTook {result['seconds'] / 60:.1f} min. Wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
