"""Hyperparameter search benchmark on DermaMNIST (real HAM10000 images at 28 px): does Optuna, through
:mod:`helpers.search`, find a recipe that beats today's tuned one?

1. Pilot: the study's first ``--pilot`` trials (trial 0 is today's tuned recipe, then TPE's random start-up
   draws), ``--search-epochs`` epochs each, not pruned; ``--workers`` search processes side by side share
   the SQLite study (``python -m helpers.search``, one thread each: on 2 cores two one-thread trainings get
   through ~1.7x the images of one two-thread training, ``benchmarks/ham10000.py``).
2. Pruner: the median and the Hyperband pruner (as :func:`helpers.search.make_pruner` builds them) replayed
   on the pilot's learning curves, in trial order: the epochs each would have trained and whether each keeps
   the pilot's best trial. The chosen one keeps the best trial with fewer epochs.
3. Search: the study continued to ``--trials`` trials with that pruner, the same processes side by side.
4. Final: today's tuned recipe (``recipe="tuned"``, learning rate 2e-3, batch 64, the default network) and
   the best trial's recipe file with its ``train_args`` trained at the same budget (``--final-epochs``, the
   tuned recipe's 45; seed ``--seed``; side by side), each scored on val. When the best trial is trial 0 (the
   tuned recipe itself: the search found nothing better), the best trial's recipe *is* the tuned one (a
   difference of 0 by construction), and the other final run is the search's own best find instead, the best
   trial the sampler drew (``found_recipe.json``), to see whether the ranking at the search's budget holds at
   the full one.

DermaMNIST's official test split is withheld (``../shared/data/README.md``): the choice and every figure here
are on the val split (1,003 images), which the search also chose on, so the best trial's own search value is
optimistic; the final runs are fresh trainings at another budget than the search's. No test figure is
reported; the withheld test split is scored elsewhere. The same command again resumes a killed run (the
study and the final runs continue where they stopped; the minutes are summed over the sessions in
``out_dir/minutes.json``).

    nice -n 10 .venv/bin/python benchmarks/search.py      # ~50 min on an idle 2-core CPU
    .venv/bin/python benchmarks/search.py --pilot 2 --trials 3 --search-epochs 2 --final-epochs 2 \\
        --max-images 400 --out-dir /tmp/search-smoke --results /tmp/search-smoke.json   # smoke run

Prints a table and writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import machine_info  # noqa: E402  (benchmarks/throughput.py)

from helpers.classes import CLASS_TO_INDEX  # noqa: E402
from helpers.files import write_json  # noqa: E402
from helpers.metrics import compute_metrics  # noqa: E402
from helpers.modelio import load_keras_model, predict_images  # noqa: E402
from helpers.paths import MODELS_DIR, PROJECT_ROOT  # noqa: E402
from helpers.pipeline import load_images  # noqa: E402
from helpers.search import (  # noqa: E402
    BASELINE,
    SPACE,
    default_storage,
    finish_search,
    load_search,
    make_pruner,
    trial_settings,
)
from helpers.train import load_recipe, prepare_data, save_recipe, train  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "dermamnist"
RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
OUT_DIR = MODELS_DIR / "search_benchmark"
IMG_SIZE = 28
GOAL = 0.02
"""The search's goal: the best trial's recipe at least this much above the tuned recipe's val balanced
accuracy, at the same training budget."""
SIDE_BY_SIDE_ENV = {"TF_NUM_INTRAOP_THREADS": "1"}
HEADLINE = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auc", "mel_sensitivity")
JOBS = ("tuned", "found")
"""The final runs: today's tuned recipe, and the best trial the sampler drew (the best trial, unless that is
trial 0, the tuned recipe itself)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--study", default="dermamnist-28")
    parser.add_argument("--pilot", type=int, default=8, help="trials of the unpruned pilot (incl. trial 0)")
    parser.add_argument("--trials", type=int, default=22, help="the study's total number of trials")
    parser.add_argument("--search-epochs", type=int, default=12, help="epochs of each trial")
    parser.add_argument("--final-epochs", type=int, default=45, help="epochs of the two final runs")
    parser.add_argument("--workers", type=int, default=2, help="search processes side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-images", type=int, default=None, help="a stratified subset (smoke runs)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)  # one final run (a child process)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def search_command(args, n_trials: int, pruner: str) -> list[str]:
    """One search process of the study (``python -m helpers.search``)."""
    command = [sys.executable, "-m", "helpers.search", "--study", args.study, "--trials", str(n_trials)]
    command += ["--storage", default_storage(args.out_dir), "--out-dir", str(args.out_dir)]
    command += ["--data-dir", str(args.data_dir), "--img-size", str(IMG_SIZE)]
    command += ["--epochs", str(args.search_epochs), "--seed", str(args.seed), "--pruner", pruner]
    return command + (["--max-images", str(args.max_images)] if args.max_images else [])


def side_by_side(args, commands: dict[str, list[str]]) -> None:
    """Run ``commands`` at once, one thread each, their output in ``out_dir/logs/<name>.log``; SystemExit
    naming the failed ones with their logs' tails."""
    logs = args.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SIDE_BY_SIDE_ENV}
    running = {}
    for name, command in commands.items():
        with (logs / f"{name}.log").open("a") as log:
            running[name] = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
    failed = [name for name, process in running.items() if process.wait() != 0]
    if failed:
        tails = "\n".join(
            f"--- {logs / f'{n}.log'}:\n{(logs / f'{n}.log').read_text()[-2000:]}" for n in failed
        )
        raise SystemExit(f"The side-by-side run(s) {', '.join(failed)} failed:\n{tails}")


def run_search_phase(args, name: str, n_trials: int, pruner: str) -> float:
    """The study continued to ``n_trials`` by ``--workers`` processes (none when it has them); minutes."""
    if study_done(args, n_trials):
        print(f"{name}: the study already has its {n_trials} trials", flush=True)
        return 0.0
    start = time.perf_counter()
    commands = {f"{name}-{i}": search_command(args, n_trials, pruner) for i in range(args.workers)}
    print(f"{name}: {n_trials} trials in all, pruner {pruner}, {args.workers} processes ...", flush=True)
    side_by_side(args, commands)
    minutes = (time.perf_counter() - start) / 60
    print(f"  {name}: {minutes:.1f} min", flush=True)
    return minutes


def study_done(args, n_trials: int) -> bool:
    """Whether the study exists with ``n_trials`` finished trials (retries and surplus ones not counted)."""
    if not (args.out_dir / "study.db").is_file():
        return False
    try:
        trials = load_search(args.study, default_storage(args.out_dir), args.out_dir).get_trials()
    except ValueError:
        return False
    finished = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("surplus")]
    placed = [t for t in finished if "failed_trial" not in t.system_attrs]
    return len(placed) >= n_trials and len(finished) == len(trials)


def add_minutes(args, phase: str, minutes: float) -> dict:
    """Add this session's ``minutes`` of ``phase`` to ``out_dir/minutes.json`` (a resumed benchmark sums its
    sessions); the sums."""
    path = args.out_dir / "minutes.json"
    sums = json.loads(path.read_text()) if path.is_file() else {}
    sums[phase] = sums.get(phase, 0.0) + minutes
    write_json(sums, path)
    return sums


def replay(pruner: optuna.pruners.BasePruner, study_name: str, curves: list[list[float]]) -> list[int]:
    """The epochs each of ``curves`` (one trial's reported values per epoch, in trial order) would have
    trained under ``pruner``."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name=study_name)
    spent = []
    for curve in curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if epoch < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
        spent.append(epoch)
    return spent


def choose_pruner(args, study: optuna.Study) -> dict:
    """Replay the median and the Hyperband pruner on the pilot's complete trials; the cheaper of those that
    keep the pilot's best trial (else the one whose kept trials come closest to it)."""
    pilot = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.number < args.pilot]
    curves = [[t.intermediate_values[e] for e in sorted(t.intermediate_values)] for t in pilot]
    best = max(range(len(pilot)), key=lambda i: pilot[i].value)
    replays = {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("median", "hyperband"):
        spent = replay(make_pruner(name, args.search_epochs), args.study, curves)
        kept = [i for i, n in enumerate(spent) if n == len(curves[i])]
        replays[name] = {
            "epochs_per_trial": spent,
            "epochs": sum(spent),
            "pruned": len(curves) - len(kept),
            "keeps_best": best in kept,
            "best_kept_value": max(pilot[i].value for i in kept),
        }
    unpruned = sum(map(len, curves))
    keeping = [n for n in replays if replays[n]["keeps_best"]]
    if keeping:
        chosen = min(keeping, key=lambda n: (replays[n]["epochs"], n != "median"))
        why = f"keeps the pilot's best trial with {replays[chosen]['epochs']} of {unpruned} epochs"
    else:
        chosen = max(replays, key=lambda n: (replays[n]["best_kept_value"], -replays[n]["epochs"]))
        why = "neither keeps the pilot's best trial; this one's kept trials come closest to it"
    others = [f"{n}: {r['epochs']} epochs, keeps best {r['keeps_best']}" for n, r in replays.items()]
    print(f"pruner: {chosen} ({why}; {'; '.join(others)})", flush=True)
    return {
        "chosen": chosen,
        "why": why,
        "pilot_trials": [t.number for t in pilot],
        "pilot_best_trial": pilot[best].number,
        "unpruned_epochs": unpruned,
        "replay": replays,
    }


def final_settings(args, job: str) -> dict:
    """``train()`` arguments of a final run: today's tuned recipe, or the recipe file of the best trial the
    sampler drew (written by :func:`write_found_recipe`)."""
    common = {
        "img_size": IMG_SIZE,
        "epochs": args.final_epochs,
        "seed": args.seed,
        "patience": args.final_epochs,
    }
    if job == "tuned":
        return {
            **common,
            "recipe": "tuned",
            "model_name": "dermsep_net",
            "learning_rate": 2e-3,
            "batch_size": 64,
        }
    path = args.out_dir / args.study / "found_recipe.json"
    _, train_args = load_recipe(path)
    return {**common, "recipe": str(path), **train_args}


def write_found_recipe(args, study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Save the best complete trial other than trial 0 (the sampler's best find) as ``found_recipe.json``."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    found = max((t for t in complete if t.number != 0), key=lambda t: (t.value, -t.number))
    recipe, train_args = trial_settings(found.params)
    save_recipe(recipe, args.out_dir / args.study / "found_recipe.json", train_args)
    return found


def run_job(args) -> None:
    """One final run (a child process of :func:`side_by_side`)."""
    df = prepare_data(args.data_dir, seed=args.seed, max_images=args.max_images, verbose=False)
    start = time.perf_counter()
    train(df=df, run_dir=args.out_dir / "final" / args.job, verbose=2, **final_settings(args, args.job))
    print(f"{args.job}: {(time.perf_counter() - start) / 60:.1f} min", flush=True)


def final_scores(args) -> dict:
    """Val scores of the final runs' best.keras (each run's selected epoch)."""
    df = prepare_data(args.data_dir, seed=args.seed, max_images=args.max_images, verbose=False)
    val = df[df["split"] == "val"]
    images = load_images(val["path"].tolist(), IMG_SIZE, progress=False)
    labels = val["dx"].map(CLASS_TO_INDEX).to_numpy()
    scores = {}
    for job in JOBS:
        run_dir = args.out_dir / "final" / job
        probs = predict_images(load_keras_model(run_dir / "best.keras"), images)
        metrics = compute_metrics(labels, probs, n_bootstrap=0)
        history = pd.read_csv(run_dir / "history.csv")
        scores[job] = {k: float(metrics[k]) for k in HEADLINE}
        scores[job] |= {
            "best_epoch": int(history["val_balanced_accuracy"].idxmax()) + 1,
            "epochs": len(history),
        }
        scores[job]["train_min"] = float(history["seconds"].sum() / 60)
        scores[job]["settings"] = {k: v for k, v in final_settings(args, job).items() if k != "recipe"}
    return scores


def run(args) -> dict:
    loads = {"start": os.getloadavg()}
    add_minutes(args, "pilot", run_search_phase(args, "pilot", args.pilot, "none"))
    loads["after_pilot"] = os.getloadavg()
    study = load_search(args.study, default_storage(args.out_dir), args.out_dir)
    pruner = choose_pruner(args, study)
    add_minutes(args, "search", run_search_phase(args, "search", args.trials, pruner["chosen"]))
    loads["after_search"] = os.getloadavg()
    result = finish_search(study, args.out_dir / args.study, verbose=0)
    found = write_found_recipe(args, study)
    start = time.perf_counter()
    budget = f"{args.final_epochs} epochs, side by side"
    print(f"final: the tuned recipe and trial {found.number}'s, {budget} ...", flush=True)
    job = [sys.executable, __file__, *args.argv, "--job"]
    side_by_side(args, {f"final-{name}": [*job, name] for name in JOBS})
    minutes = add_minutes(args, "final", (time.perf_counter() - start) / 60)
    loads["end"] = os.getloadavg()
    final = final_scores(args)
    found_delta = final["found"]["balanced_accuracy"] - final["tuned"]["balanced_accuracy"]
    best_is_tuned = result.best_trial == 0
    delta = 0.0 if best_is_tuned else found_delta
    table = result.table.reset_index()
    recipe, train_args = load_recipe(result.recipe_path)
    return {
        "what": "Optuna search (helpers.search) on DermaMNIST 28 px train/val; the best trial's recipe "
        "against today's tuned recipe at the same training budget, on val",
        "machine": machine_info(),
        "command": "nice -n 10 .venv/bin/python benchmarks/search.py " + " ".join(args.argv),
        "date": datetime.date.today().isoformat(),
        "note": "a shared 2-core machine: run under nice -n 10 beside other work (load averages of this "
        "session below), so the minutes are longer than on an idle machine; minutes are summed over the "
        "benchmark's sessions (out_dir/minutes.json)",
        "load_average_1_5_15": loads,
        "settings": {
            "img_size": IMG_SIZE,
            "pilot_trials": args.pilot,
            "trials": args.trials,
            "search_epochs": args.search_epochs,
            "final_epochs": args.final_epochs,
            "workers": args.workers,
            "seed": args.seed,
            "max_images": args.max_images,
            "space": {name: dim.to_json() for name, dim in SPACE.items()},
            "trial_0": BASELINE,
        },
        "minutes": dict(minutes),
        "pruner": pruner,
        "trials": table.astype(object).where(table.notna(), None).to_dict("records"),
        "curves": {
            t.number: [t.intermediate_values[e] for e in sorted(t.intermediate_values)] for t in study.trials
        },
        "best_trial": {
            "number": result.best_trial,
            "search_value": result.best_value,
            "params": result.best_params,
            "train_args": train_args,
            "recipe": recipe.settings(),
            "is_the_tuned_recipe": best_is_tuned,
        },
        "found_trial": {"number": found.number, "search_value": found.value, "params": found.params},
        "search_budget": {
            "tuned_trial_0": _value(study, 0),
            "best_trial": result.best_value,
            "found_trial": found.value,
            "note": f"values of the search itself ({args.search_epochs} epochs; the best is chosen on them)",
        },
        "final": final,
        "delta_balanced_accuracy": delta,
        "delta_found_vs_tuned": found_delta,
        "goal": f"best trial's recipe - tuned >= +{GOAL} val balanced accuracy at the same budget",
        "goal_met": bool(delta >= GOAL),
        "test": "DermaMNIST's test split is withheld here (../shared/data/README.md): no test figure; the "
        "choice and all figures are on val",
    }


def _value(study: optuna.Study, number: int) -> float | None:
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return trial.value if trial is not None else None


def print_table(result: dict) -> None:
    pd.set_option("display.width", 200)
    trials = pd.DataFrame(result["trials"]).set_index("trial")
    print(trials.round(4).to_string())
    found = result["found_trial"]["number"]
    names = {"tuned": "tuned recipe", "found": f"trial {found}'s recipe"}
    rows = {f"{names[job]} ({result['final'][job]['epochs']} epochs)": result["final"][job] for job in JOBS}
    print("\nFinal runs, val:")
    print(pd.DataFrame(rows).T[[*HEADLINE, "best_epoch", "train_min"]].round(4).to_string())
    met = "met" if result["goal_met"] else "NOT met"
    if result["best_trial"]["is_the_tuned_recipe"]:
        print(
            "\nThe best trial is trial 0, the tuned recipe: best - tuned = 0 by construction (goal NOT met);"
        )
        print(f"the search's best find, trial {found}: {result['delta_found_vs_tuned']:+.4f} against it.")
    else:
        delta = result["delta_balanced_accuracy"]
        print(f"\nbest - tuned: {delta:+.4f} balanced accuracy (goal +{GOAL}: {met})")
    print(f"pruner: {result['pruner']['chosen']} ({result['pruner']['why']})")
    print(f"minutes: {', '.join(f'{k} {v:.1f}' for k, v in result['minutes'].items())}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data_dir / "metadata.csv").is_file():
        print(f"error: DermaMNIST folder {args.data_dir} not found; pass --data-dir.", file=sys.stderr)
        return 2
    if args.job:
        run_job(args)
        return 0
    result = run(args)
    result["minutes"]["total"] = sum(result["minutes"].values())
    write_json(result, args.results)
    print_table(result)
    print(f"\nWrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
