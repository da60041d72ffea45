"""Throughput benchmark: the original CPU_Light_Efficient_CNN vs the fast and the default model, and the input
pipeline.

For each model and image size: training images/s (``model.fit`` on in-memory random uint8 batches of 32,
after warm-up), batched inference images/s, single-image latency (compiled ``tf.function``, and the TFLite
interpreter when ``helpers.export`` is available), parameters and MACs. Models are measured in alternating
rounds and the best round is kept, so a busy neighbour on the CPU hurts both models alike. Then pipeline
images/s over the real full-resolution images in ``../shared/data/ham10000`` (first pass decodes, second
reads the cache, third augments).

Usage (from the repo root): ``python benchmarks/throughput.py [--sizes 64 128] [--rounds 2] [--seconds 6]``.
Prints a table and writes ``benchmarks/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import models  # noqa: E402
from helpers.paths import PROJECT_ROOT  # noqa: E402
from helpers.runtime import ops_run_serially  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
HAM_DIR = PROJECT_ROOT.parent / "shared" / "data" / "ham10000"
BATCH = 32
COMPARED = ("cpu_light_efficient_cnn", models.FAST_MODEL, models.DEFAULT_MODEL)
"""The original first: the others are compared with it."""


def machine_info() -> dict:
    """CPU model, core count, library versions, whether TensorFlow runs one op at a time (helpers.runtime)."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "serial_ops": ops_run_serially(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_batch(img_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (BATCH, img_size, img_size, 3), dtype=np.uint8), rng.integers(0, 7, BATCH)


def train_images_per_s(model: keras.Model, img_size: int, seconds: float) -> float:
    """Images/s of ``model.fit`` on one in-memory uint8 batch repeated, timed for about ``seconds``."""
    if not model.compiled:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ds = tf.data.Dataset.from_tensors(_random_batch(img_size)).repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace + warm-up
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
    steps = int(np.clip(seconds / (time.perf_counter() - start), 2, 200))
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * BATCH / (time.perf_counter() - start)


def inference_images_per_s(model: keras.Model, img_size: int, seconds: float) -> float:
    """Images/s of a compiled inference call on batches of 32, timed for about ``seconds``."""
    x = tf.constant(_random_batch(img_size)[0], tf.float32)
    fn = tf.function(lambda t: model(t, training=False), input_signature=[tf.TensorSpec(x.shape, tf.float32)])
    fn(x).numpy()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        fn(x).numpy()
        n += 1
    return n * BATCH / (time.perf_counter() - start)


def tflite_latency_ms(model: keras.Model, runs: int) -> float | None:
    """Median single-image latency of the float32 TFLite export, or None if helpers.export is unavailable."""
    try:
        from helpers.export import export_tflite, tflite_latency
    except ImportError as err:
        print(f"  (TFLite latency skipped: {err})")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return tflite_latency(export_tflite(model, Path(tmp) / "m.tflite"), runs=runs)


def measure_model(name: str, img_size: int, seconds: float, runs: int, tflite: bool) -> dict:
    """One round of every model measurement for ``name`` at ``img_size``."""
    keras.utils.set_random_seed(0)
    model = models.build_model(name, img_size)
    row = {
        "model": name,
        "img_size": img_size,
        "params": models.count_params(model),
        "macs": models.count_macs(model),
        "train_img_s": train_images_per_s(model, img_size, seconds),
        "infer_img_s": inference_images_per_s(model, img_size, seconds / 2),
        "latency_ms": models.measure_latency(model, runs=runs)["median_ms"],
    }
    row["tflite_latency_ms"] = tflite_latency_ms(model, runs) if tflite else None
    keras.backend.clear_session()
    return row


def best_of(rounds: list[dict]) -> dict:
    """Merge rounds of one model/size: highest throughputs, lowest latencies."""
    best = dict(rounds[0])
    for key in ("train_img_s", "infer_img_s"):
        best[key] = max(r[key] for r in rounds)
    for key in ("latency_ms", "tflite_latency_ms"):
        values = [r[key] for r in rounds if r[key] is not None]
        best[key] = min(values) if values else None
    return best


def model_section(sizes: list[int], rounds: int, seconds: float, runs: int, tflite: bool) -> pd.DataFrame:
    """Measure every model at every size, alternating models within each round."""
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for size in sizes:
            for name in COMPARED:
                print(f"  round {r + 1}/{rounds}: {name} @ {size}px ...", flush=True)
                row = measure_model(name, size, seconds, runs, tflite and r == 0)
                results.setdefault((name, size), []).append(row)
    return pd.DataFrame([best_of(rows) for rows in results.values()])


def speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Each model relative to the original at each size; the fast model's goals (10x faster training, a third
    of the latency, at most twice the parameters) checked."""
    rows = []
    for (size, name), new in table.set_index(["img_size", "model"]).iterrows():
        if name == COMPARED[0]:
            continue
        orig = table.set_index(["img_size", "model"]).loc[(size, COMPARED[0])]
        row = {
            "img_size": int(size),
            "model": name,
            "train_speedup": new["train_img_s"] / orig["train_img_s"],
            "infer_speedup": new["infer_img_s"] / orig["infer_img_s"],
            "latency_ratio": new["latency_ms"] / orig["latency_ms"],
            "params_ratio": new["params"] / orig["params"],
            "macs_ratio": new["macs"] / orig["macs"],
        }
        if pd.notna(new["tflite_latency_ms"]) and pd.notna(orig["tflite_latency_ms"]):
            row["tflite_latency_ratio"] = new["tflite_latency_ms"] / orig["tflite_latency_ms"]
        row["goals_met"] = name != models.FAST_MODEL or bool(
            row["train_speedup"] >= 10 and row["latency_ratio"] <= 1 / 3 and row["params_ratio"] <= 2
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _timed_pass(ds: tf.data.Dataset) -> tuple[int, float]:
    start = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in ds)
    return n, time.perf_counter() - start


def pipeline_section(sizes: list[int]) -> pd.DataFrame | None:
    """Images/s of make_dataset over the real images: decode pass, cached pass, augmented training epoch."""
    try:
        from helpers.data import load_metadata
        from helpers.pipeline import make_dataset
    except ImportError as err:
        print(f"Pipeline section skipped: helpers.data / helpers.pipeline not importable yet ({err}).")
        return None
    if not HAM_DIR.is_dir():
        print(f"Pipeline section skipped: no real data at {HAM_DIR}.")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample lists 10,015 images but holds 175: expected
        df = load_metadata(HAM_DIR, verbose=False)
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as cache:
            for label in ("decode", "cached"):  # build the dataset (decode or read cache) + one pass
                start = time.perf_counter()
                ds = make_dataset(df, size, BATCH, training=False, seed=0, cache=cache, progress=False)
                n, _ = _timed_pass(ds)
                rows.append(
                    {"img_size": size, "pass": label, "images": n, "img_s": n / (time.perf_counter() - start)}
                )
            ds = make_dataset(df, size, BATCH, training=True, seed=0, cache=cache, progress=False)
            _timed_pass(ds)  # first epoch traces the augmentation
            n, seconds = _timed_pass(ds)
            rows.append({"img_size": size, "pass": "augment (2nd epoch)", "images": n, "img_s": n / seconds})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds (best kept)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per training measurement")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite latency")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    info = machine_info()
    print(f"{info['cpu']} | {info['cores']} cores | TF {info['tensorflow']} | Keras {info['keras']}")
    table = model_section(args.sizes, args.rounds, args.seconds, args.latency_runs, not args.no_tflite)
    ratios = speedups(table)
    rss_models = peak_rss_mb()
    pipeline = None if args.skip_pipeline else pipeline_section(args.sizes)

    with pd.option_context("display.width", 160, "display.float_format", "{:,.2f}".format):
        print("\nModels (best of rounds)\n" + table.to_string(index=False))
        print("\nAgainst the original\n" + ratios.to_string(index=False))
        if pipeline is not None:
            print("\nPipeline over the real images\n" + pipeline.to_string(index=False))
    result = {
        "machine": info,
        "settings": {**vars(args), "out": args.out.name, "batch_size": BATCH},
        "models": table.replace({np.nan: None}).to_dict(orient="records"),
        "vs_original": ratios.replace({np.nan: None}).to_dict(orient="records"),
        "pipeline": None if pipeline is None else pipeline.to_dict(orient="records"),
        "peak_rss_mb": {"after_models": rss_models, "total": peak_rss_mb()},
        "seconds": time.perf_counter() - start,
    }
    print(f"\nPeak RSS {result['peak_rss_mb']['total']:.0f} MB; took {result['seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"Wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
