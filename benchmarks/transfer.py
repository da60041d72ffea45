"""Pretrained transfer benchmark (issue #31; the Mixup/CutMix part of #32): EfficientNet-Lite0 with ImageNet
weights fine-tuned on all 10,015 HAM10000 images at 128 px, Mixup and CutMix on it, a clinic it never saw,
and distillation into the small ``dermsep_net``.

Data and split as ``benchmarks/ham10000.py``: ``../shared/data/ham10000_200x150``, lesion-aware 70/15/15
(seed 42), training seed 0; every choice on val, the test split scored once at the end for the rows kept
(bootstrap 95% CIs). The held-out clinic: trained without ``rosendahl``, scored on its 2,259 images.

Runs (each resumable under ``models/transfer/runs/<name>``; a finished one is reused):

- ``lite0``: the "transfer" recipe (1 epoch of the new classifier on the frozen backbone at 1e-3, then every
  layer at 3e-4 with warm-up and cosine decay, BatchNorm frozen, balanced class weights), ``--epochs``;
- ``lite0-mixup`` / ``lite0-cutmix`` (stage ``levers``, only when asked for): the same with Mixup (alpha 0.2)
  / CutMix (alpha 1.0); kept if val says;
- ``dermsep-tuned`` (not run by default: ``ham10000.py``'s tuned row is the same run): the students' baseline;
- ``student`` (and ``student-wide``, ``-mixup``, ``-long``: ``--students``): ``dermsep_net`` distilled from
  the kept ``lite0`` network (online: the teacher sees each augmented and mixed batch), alpha 0.5, T 2, plus
  :data:`STUDENTS`;
- ``lite0-held`` and ``<kept student>-held``: the same without ``rosendahl`` (the student taught by
  ``lite0-held``).

The kept transfer network is finished as ``ham10000.py``'s (re-trained classifier, 8-view TTA, prior shift,
chosen on val) and saved as ``models/ham10000/best.keras``, the default; the best small run on val (tuned or
distilled, <= 250k parameters) as ``models/ham10000/small.keras``; each with its TFLite exports (``small/``).

    .venv/bin/python benchmarks/transfer.py                  # the default stages (82 min on 2 idle cores)
    .venv/bin/python benchmarks/transfer.py --stages levers  # Mixup and CutMix (about 25 min more)
    .venv/bin/python benchmarks/transfer.py --stages lite0   # one stage; the JSON keeps the others'
    .venv/bin/python benchmarks/transfer.py --smoke          # minutes: 2 epochs, 600 images (a check)

Independent trainings asked for together run side by side (one thread each, as ``ham10000.py``). Prints a
table and writes ``benchmarks/results/transfer.json``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from ham10000 import (  # noqa: E402  (benchmarks/ham10000.py)
    DEFAULT_DATA,
    HELD_OUT,
    TUNED,
    finishing_rows,
    held_out_scores,
    predict,
    scores,
    splits,
    splits_of,
)
from throughput import machine_info  # noqa: E402

from helpers.evaluate import explanation_report  # noqa: E402
from helpers.export import export_report, representative_sample  # noqa: E402
from helpers.files import write_json  # noqa: E402
from helpers.modelio import load_keras_model, save_keras_model  # noqa: E402
from helpers.models import count_macs, count_params  # noqa: E402
from helpers.paths import MODELS_DIR  # noqa: E402
from helpers.train import RECIPES, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "transfer.json"
OUT_DIR = MODELS_DIR / "transfer"
MODEL_DIR = MODELS_DIR / "ham10000"
TRANSFER = RECIPES["transfer"]
LEVERS = {"mixup": {"mixup_alpha": 0.2}, "cutmix": {"cutmix_alpha": 1.0}}
"""Mixup / CutMix settings tried on the transfer recipe (alphas common for fine-tuning)."""
DISTILL = {"distill_alpha": 0.5, "distill_temperature": 2.0}
STUDENTS = {
    "student": {},
    "student-wide": {"model_options": {"widths": [32, 64, 128, 256]}},  # 241k parameters (budget: 250k)
    "student-mixup": {"recipe": {"mixup_alpha": 0.2}},  # the teacher sees the same mixed image
    "student-long": {"epochs": 32},  # 27.3 min on 2 idle cores (budget: 30)
}
"""Distilled students: ``train()`` settings on top of the tuned recipe + :data:`DISTILL` (``recipe``: its
changes; ``epochs``: instead of ``--student-epochs``). Finished, the narrow one scores best on val (0.636;
Mixup 0.634, 32 epochs 0.624, the wide one 0.599), so ``--students`` is ``student`` alone by default;
``--students student student-wide student-mixup student-long`` compares them (two at a time, side by side)."""
STAGES = ("lite0", "levers", "students", "held-out", "finish")
DEFAULT_STAGES = ("lite0", "students", "held-out", "finish")
"""``levers`` (Mixup, CutMix: two more fine-tunings, measured and off) runs only when asked for."""
SIDE_BY_SIDE_ENV = {"TF_NUM_INTRAOP_THREADS": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the transfer runs")
    parser.add_argument("--student-epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(DEFAULT_STAGES))
    parser.add_argument(
        "--students", nargs="+", choices=STUDENTS, default=["student"], help="the distilled students"
    )
    parser.add_argument("--report-images", type=int, default=600, help="test images for the Grad-CAM report")
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 600 images: checks the script runs")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="the runs and their logs")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="where best.keras, small.keras go")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one training, in a child process
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.epochs = args.student_epochs = 2
    return args


# ------------------------------------------------------------------------------------------------ runs
def run_settings(args, name: str, result: dict) -> tuple[str, dict]:
    """(split, train() keyword arguments) of the run ``name``."""
    lever = name.split("-")[1] if name.startswith("lite0-") and name.split("-")[1] in LEVERS else None
    if name.startswith("lite0"):
        recipe = dataclasses.replace(TRANSFER, **LEVERS.get(lever, {}))
        settings = dict(
            model_name="efficientnet_lite0", recipe=recipe, epochs=args.epochs, learning_rate=1e-3
        )
        return ("held" if name.endswith("-held") else "lesion"), {**settings, "batch_size": 32}
    tuned = dict(model_name="dermsep_net", learning_rate=2e-3, batch_size=64, epochs=args.student_epochs)
    if name == "dermsep-tuned":
        return "lesion", {**tuned, "recipe": TUNED}
    held = name.endswith("-held")
    changes = dict(STUDENTS[name.removesuffix("-held")])
    if args.smoke:
        changes.pop("epochs", None)
    recipe = dataclasses.replace(TUNED, **DISTILL, **changes.pop("recipe", {}))
    teacher = args.out_dir / "runs" / (result["kept"]["lite0"] + ("-held" if held else "")) / "best.keras"
    return ("held" if held else "lesion"), {**tuned, "recipe": recipe, "teacher": teacher, **changes}


def fit(args, name: str, result: dict) -> dict:
    """Train (or reuse) run ``name``; its val scores, minutes and seconds per epoch."""
    split, settings = run_settings(args, name, result)
    lesion, held = splits(args)
    run = train(
        df=lesion if split == "lesion" else held,
        img_size=args.img_size,
        seed=args.seed,
        run_dir=args.out_dir / "runs" / name,
        patience=settings["epochs"],  # the whole budget; the best epoch is still selected on val
        verbose=0,
        **settings,
    )
    seconds = run.history["seconds"]
    print(f"  {name}: {seconds.sum() / 60:.1f} min, best epoch {run.best_epoch}", flush=True)
    return {
        "val_balanced_accuracy": run.best_value,
        "best_epoch": run.best_epoch,
        "epochs": len(run.history),
        "train_min": float(seconds.sum() / 60),
        "epoch_s_median": float(seconds.median()),
        "params": count_params(run.model),
    }


def side_by_side(args, names: list[str]) -> None:
    """Train ``names`` at once, each in a child process with one thread for its ops (logs in ``logs/``)."""
    logs = args.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SIDE_BY_SIDE_ENV}
    running = {}
    for name in names:
        with (logs / f"{name}.log").open("w") as log:
            command = [sys.executable, __file__, *args.argv, "--job", name]
            running[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    failed = [name for name, process in running.items() if process.wait() != 0]
    if failed:
        tails = "\n".join(
            f"--- {logs / f'{n}.log'}:\n{(logs / f'{n}.log').read_text()[-2000:]}" for n in failed
        )
        raise SystemExit(f"The side-by-side training(s) {', '.join(failed)} failed:\n{tails}")


def finished(run_dir: Path) -> bool:
    manifest = run_dir / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text())["status"] in ("completed", "stopped_early")


def trained(args, names: list[str], result: dict) -> None:
    """Train ``names`` (two at a time) and record each run's figures in ``result["runs"]``."""
    todo = [n for n in names if not finished(args.out_dir / "runs" / n)]
    for i in range(0, len(todo), 2):
        pair = todo[i : i + 2]
        if len(pair) == 2:
            side_by_side(args, pair)
    for name in names:
        result["runs"][name] = fit(args, name, result)


# ------------------------------------------------------------------------------------------------ stages
def stage_levers(args, result: dict) -> None:
    """Mixup and CutMix on the transfer recipe; the kept run is the best on val."""
    trained(args, [f"lite0-{lever}" for lever in LEVERS], result)
    candidates = ["lite0", *(f"lite0-{lever}" for lever in LEVERS)]
    best = max(candidates, key=lambda n: result["runs"][n]["val_balanced_accuracy"])
    result["kept"]["lite0"] = best


def stage_held_out(args, result: dict) -> None:
    """The kept transfer run and the kept student without the held-out clinic (the student taught by the
    held-out teacher), each as a network and as a finished predictor (kept: whichever val prefers); and the
    better lever's (on val) when its run folder exists (scored at the epochs it completed)."""
    kept, student = result["kept"]["lite0"], result["kept"].get("student")
    trained(args, [f"{kept}-held"], result)
    finished_too = [f"{kept}-held"]
    if student:
        trained(args, [f"{student}-held"], result)  # after its teacher
        finished_too.append(f"{student}-held")
    levers = [f"lite0-{lever}" for lever in LEVERS if f"lite0-{lever}" in result["runs"]]
    lever = max(levers, key=lambda n: result["runs"][n]["val_balanced_accuracy"], default=None)
    names = list(finished_too)
    if lever and (args.out_dir / "runs" / f"{lever}-held").is_dir():
        names.append(f"{lever}-held")
    _, held = splits(args)
    data = splits_of(held, args.img_size)
    for name in names:
        network = load_keras_model(args.out_dir / "runs" / name / "best.keras")
        epochs = len(pd.read_csv(args.out_dir / "runs" / name / "history.csv"))
        out = {"network": held_out_scores(data["test"], predict(network, data["test"])), "epochs": epochs}
        if name in finished_too:
            rows, final, out["choices"] = finishing_rows(network, data, 0.0)
            out["predictor"] = held_out_scores(data["test"], predict(final, data["test"]))
            out["val_balanced_accuracy"] = on_val(result["runs"][name], rows)
            out["kept"] = max(out["val_balanced_accuracy"], key=out["val_balanced_accuracy"].get)
        result["held_out"][name] = out


def stage_students(args, result: dict) -> None:
    """The distilled students; the kept one is the best on val as ``small.keras`` would be (its network or its
    finished predictor, whichever val prefers). The undistilled baseline is ``ham10000.py``'s tuned run (the
    same split, recipe, seed and epochs: val 0.569 there)."""
    trained(args, args.students, result)
    lesion, _ = splits(args)
    data = splits_of(lesion, args.img_size)
    scores_on_val = {}
    for name in args.students:
        network = load_keras_model(args.out_dir / "runs" / name / "best.keras")
        rows, _, _ = finishing_rows(network, data, 0.0)
        scores_on_val[name] = on_val(result["runs"][name], rows)
        result["runs"][name]["finished_val_balanced_accuracy"] = scores_on_val[name]["predictor"]
    result["kept"]["student"] = max(args.students, key=lambda n: max(scores_on_val[n].values()))


def stage_finish(args, result: dict) -> None:
    """Finish the kept transfer network, score test once (CIs) with the students; export and Grad-CAM the
    default (``best.keras``: the network or its finished predictor, whichever val prefers) and the kept small
    model (``small.keras``)."""
    lesion, _ = splits(args)
    data = splits_of(lesion, args.img_size)
    kept = result["kept"]["lite0"]
    network = load_keras_model(args.out_dir / "runs" / kept / "best.keras")
    args.model_dir.mkdir(parents=True, exist_ok=True)
    final, rows, result["default"] = network_or_predictor(
        network, data, result["runs"][kept], args.model_dir / "best.keras"
    )
    test = data["test"]
    result["finishing"] = {"rows": rows, "choices": result["default"].pop("choices")}
    result["test"] = {
        f"{kept} network": scores(test.labels, predict(network, test), 1000),
        f"{kept} predictor": scores(test.labels, predict(final, test), 1000),
    }
    for name in dict.fromkeys(("dermsep-tuned", *args.students)):
        if (args.out_dir / "runs" / name / "best.keras").is_file():
            student = load_keras_model(args.out_dir / "runs" / name / "best.keras")
            result["test"][name] = scores(test.labels, predict(student, test), 1000)
    finish_small(args, result, data)
    result["cost"] = {"params": count_params(network), "macs": count_macs(network)}
    sample = representative_sample(lesion, args.img_size, seed=args.seed)
    val = data["val"]
    result["export"], result["gradcam"] = {}, {}
    for file, out_dir in (("best.keras", args.model_dir), ("small.keras", args.model_dir / "small")):
        model = load_keras_model(args.model_dir / file)
        report = export_report(args.model_dir / file, val.images, val.labels, out_dir, sample)
        result["export"][file] = report.to_dict("records")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cam = explanation_report(model, lesion, max_images=args.report_images, verbose=False)
        result["gradcam"][file] = cam.reset_index().to_dict("records")


def network_or_predictor(network, data: dict, run: dict, path: Path) -> tuple[object, list[dict], dict]:
    """Finish ``network`` (``finishing_rows``) and save it, or the network itself, whichever scores better
    on val, as ``path``; returns the finished predictor, the finishing rows and the choice."""
    rows, final, choices = finishing_rows(network, data, 60 * run["train_min"])
    both = on_val(run, rows)
    kept = max(both, key=both.get)
    save_keras_model(final if kept == "predictor" else network, path)
    return final, rows, {"val_balanced_accuracy": both, "kept": kept, "choices": choices}


def on_val(run: dict, rows: list[dict]) -> dict[str, float]:
    """Val balanced accuracy of a run's network and of its finished predictor (``finishing_rows``' rows)."""
    return {"network": run["val_balanced_accuracy"], "predictor": rows[-1]["val"]["balanced_accuracy"]}


def finish_small(args, result: dict, data: dict) -> None:
    """``small.keras``: the kept student's network or its finished predictor, whichever val prefers; both
    scored on test."""
    small = result["kept"].get("student", "dermsep-tuned")
    network = load_keras_model(args.out_dir / "runs" / small / "best.keras")
    final, _, chosen = network_or_predictor(
        network, data, result["runs"][small], args.model_dir / "small.keras"
    )
    result["small"] = {"run": small, **chosen}
    test = data["test"]
    result.setdefault("test", {})[f"{small} predictor"] = scores(test.labels, predict(final, test), 1000)


def run(args, result: dict) -> dict:
    result.setdefault("runs", {})
    result.setdefault("kept", {"lite0": "lite0"})
    result.setdefault("held_out", {})
    for stage in args.stages:
        start = time.perf_counter()
        print(f"Stage {stage} ...", flush=True)
        if stage == "lite0":
            trained(args, ["lite0"], result)
        else:
            {"levers": stage_levers, "held-out": stage_held_out, "students": stage_students}.get(
                stage, stage_finish
            )(args, result)
        result.setdefault("stage_min", {})[stage] = (time.perf_counter() - start) / 60
        write_json(result, args.results)  # after every stage: a later failure keeps what was measured
    return result


def print_table(result: dict) -> None:
    print(
        f"\n{'run':<22} {'val bal. acc.':>13} {'best ep.':>8} {'train min':>9} {'s/epoch':>8} {'params':>10}"
    )
    for name, r in result["runs"].items():
        print(
            f"{name:<22} {r['val_balanced_accuracy']:>13.3f} {r['best_epoch']:>5}/{r['epochs']:<2} "
            f"{r['train_min']:>9.1f} {r['epoch_s_median']:>8.0f} {r['params']:>10,}"
        )
    for name, out in result.get("held_out", {}).items():
        for kind in ("network", "predictor"):
            if kind in out:
                s, mark = out[kind], " (kept on val)" if out.get("kept") == kind else ""
                print(
                    f"held-out {HELD_OUT} {name} {kind}{mark}: bal. acc. (6) {s['balanced_accuracy_6']:.3f}, "
                    f"AUC {s['macro_auc']:.3f}"
                )
    for file, rows in result.get("export", {}).items():
        for r in rows:
            print(
                f"{file} {r['format']}: {r['size_kb']:,.0f} KB, {r['latency_ms']:.2f} ms, agreement "
                f"{r['top1_agreement']:.3f}"
            )
    for file, rows in result.get("gradcam", {}).items():
        r = rows[-1]  # overall
        print(
            f"{file} Grad-CAM: pointing {r['pointing_game']:.3f}, energy inside {r['energy_inside']:.3f} "
            f"(centred blob {r['baseline_pointing_game']:.3f} / {r['baseline_energy_inside']:.3f})"
        )
    for name, s in result.get("test", {}).items():
        print(
            f"test {name}: acc {s['accuracy']:.3f}, bal. acc. {s['balanced_accuracy']:.3f}, macro-F1 "
            f"{s['macro_f1']:.3f}, AUC {s['macro_auc']:.3f}, mel sens. {s['mel_sensitivity']:.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data_dir / "HAM10000_metadata.csv").is_file():
        print(
            f"error: HAM10000 folder {args.data_dir} not found (HAM10000_metadata.csv); pass --data-dir.",
            file=sys.stderr,
        )
        return 2
    previous = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if args.job:
        fit(args, args.job, previous or {"kept": {"lite0": "lite0"}})
        return 0
    start = time.perf_counter()
    result = run(args, {**previous, "args": {k: str(v) for k, v in vars(args).items() if k != "argv"}})
    result.update(machine=machine_info(), benchmark_min=(time.perf_counter() - start) / 60)
    write_json(result, args.results)
    print_table(result)
    print(f"\nWrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
