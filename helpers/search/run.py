"""The search: :func:`run_search` runs the trials a study still lacks, :func:`finish_search` writes its table
(:func:`trials_table`), plots (:func:`save_plots`) and best recipe, :func:`load_search` opens a study to look
at."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from helpers.files import atomic_write, json_ready
from helpers.models import MIN_IMG_SIZE
from helpers.paths import MODELS_DIR
from helpers.plots.common import save_figure
from helpers.search.objective import _Context, _objective, _Surplus
from helpers.search.space import (
    BASE_RECIPE,
    BASELINE,
    MODEL_NAME,
    Dimension,
    SearchError,
    check_space,
    trial_settings,
)
from helpers.search.storage import (
    _check_study_name,
    _is_retry,
    _quiet_optuna,
    _work_left,
    default_storage,
    make_pruner,
    open_storage,
    open_study,
    recover_dead_trials,
    retry_once,
)
from helpers.splits import data_fingerprint
from helpers.train import prepare_data, save_recipe
from helpers.train.distill import load_teacher


@dataclass
class SearchResult:
    """What :func:`run_search` left: the study, its table, the best trial and the files written."""

    study: optuna.Study
    study_dir: Path
    table: pd.DataFrame
    ran: list[int]
    best_trial: int | None
    best_value: float | None
    best_params: dict | None
    recipe_path: Path | None
    figures: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """One readable line."""
        counts = self.table["state"].value_counts().to_dict() if len(self.table) else {}
        states = ", ".join(f"{n} {s}" for s, n in counts.items())
        best = "no completed trial yet"
        if self.best_trial is not None:
            best = f"best trial {self.best_trial}: val balanced accuracy {self.best_value:.4f}"
        name, ran = self.study.study_name, len(self.ran)
        return f"Study {name!r}: {len(self.table)} trials ({states}); this call ran {ran}; {best}"


def run_search(
    study: str | None = None,
    n_trials: int = 20,
    storage: str | None = None,
    data_dir: str | Path = "auto",
    df: pd.DataFrame | None = None,
    img_size: int = 64,
    epochs: int = 8,
    seed: int = 42,
    max_images: int | None = None,
    space: dict | None = None,
    teacher: str | Path | None = None,
    pruner: str | optuna.pruners.BasePruner = "median",
    baseline: bool = True,
    out_dir: str | Path | None = None,
    cache: bool | str | Path = True,
    verbose: int = 1,
) -> SearchResult:
    """Run the trials the study ``study`` still lacks of its ``n_trials``, then write its table, plots and
    best recipe into ``out_dir/<study>/`` (``out_dir``: ``models/search``). ``study=None`` names the study
    after its settings (:func:`study_name_for`): the same settings find the same study again.

    ``storage``: an Optuna RDB URL (default :func:`default_storage`, SQLite in ``out_dir``); processes
    given the same ``storage`` and ``study`` share the trials. Each trial trains ``epochs`` epochs at
    ``img_size`` px on the train split of ``data_dir`` (or ``df``; ``max_images``: a stratified subset) with
    seed ``seed``, and is scored on val. ``space`` changes settings of :data:`SPACE`
    (:func:`as_dimension`), ``teacher`` (a ``.keras`` path) adds distillation, ``pruner`` is one of
    :data:`PRUNERS`, ``baseline`` makes the first trial today's tuned recipe. SearchError (a ValueError)
    for a bad input, before any training.
    """
    _check_counts(n_trials, epochs, img_size, seed, verbose)
    if study is not None:
        _check_study_name(study)
    make_pruner(pruner, epochs)
    teacher_record = _teacher_record(teacher)
    dimensions = check_space(space, teacher is not None, img_size)
    folder = Path(out_dir or MODELS_DIR / "search").expanduser().absolute()
    _check_writable(folder)
    backend = open_storage(storage or default_storage(out_dir))
    data = prepare_data(data_dir, df, seed, max_images, verbose=verbose > 1)
    config = _config(dimensions, data, img_size, epochs, seed, max_images, teacher_record, baseline)
    name = study or study_name_for(config)
    study_dir = folder / name
    _check_writable(study_dir)
    first = _baseline(dimensions) if baseline else None
    the_study = open_study(name, backend, config, seed, pruner, first)
    teacher_path = None if teacher is None else str(teacher)
    ctx = _Context(
        data, dimensions, study_dir, n_trials, img_size, epochs, seed, teacher_path, cache, verbose
    )
    ran = _run_trials(the_study, ctx)
    return finish_search(the_study, study_dir, ran, teacher=ctx.teacher, verbose=verbose)


def _check_counts(n_trials: object, epochs: object, img_size: object, seed: object, verbose: object) -> None:
    checks = {"n_trials": (n_trials, 1), "epochs": (epochs, 1), "img_size": (img_size, MIN_IMG_SIZE)}
    checks.update(seed=(seed, 0), verbose=(verbose, 0))
    for name, (value, low) in checks.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SearchError(f"{name} must be an int >= {low}, got {value!r}.")


def _teacher_record(teacher: str | Path | None) -> dict | None:
    if teacher is None:
        return None
    if not isinstance(teacher, str | Path):
        raise SearchError("teacher must be the path of a .keras model (it is recorded in the best recipe).")
    return {"weights_sha256": load_teacher(teacher)[1]["weights_sha256"]}


def _check_writable(folder: Path) -> None:
    probe = folder / f".write-test-{os.getpid()}"  # one per process: several may share the folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SearchError(
            f"Cannot write the study folder {folder} ({err.strerror or err}); pass out_dir (--out-dir) in a "
            "folder you can write to."
        ) from None


def _config(dimensions, data, img_size, epochs, seed, max_images, teacher, baseline) -> dict:
    """What makes trials comparable: stored with the study, checked when it is run again."""
    return {
        "space": {name: dim.to_json() for name, dim in dimensions.items()},
        "model_name": MODEL_NAME,
        "base_recipe": BASE_RECIPE.settings(),
        "img_size": img_size,
        "epochs": epochs,
        "seed": seed,
        "max_images": max_images,
        "data_fingerprint": data_fingerprint(data),
        "teacher": teacher,
        "baseline": baseline,
    }


def study_name_for(config: dict) -> str:
    """``search_<size>px_<epochs>ep_seed<seed>_cfg-<hash>``: a study's name from its settings (``config``,
    as stored with it), so the same settings find the same study."""
    digest = hashlib.sha256(json.dumps(json_ready(config), sort_keys=True).encode()).hexdigest()[:8]
    return f"search_{config['img_size']}px_{config['epochs']}ep_seed{config['seed']}_cfg-{digest}"


def _baseline(dimensions: dict[str, Dimension]) -> dict | None:
    """Today's tuned recipe in the space (a fixed setting's own value), or None when outside it."""
    params = {
        n: d.choices[0] if d.choices and len(d.choices) == 1 else BASELINE[n] for n, d in dimensions.items()
    }
    return params if all(d.contains(params[n]) for n, d in dimensions.items()) else None


def _run_trials(study: optuna.Study, ctx: _Context) -> list[int]:
    """Run trials until the study has its total; the numbers of those run here."""
    ran: list[int] = []
    while True:
        for number in recover_dead_trials(study):
            _say(ctx, f"trial {number}: its process died; marked failed, queued once again")
        if not _work_left(study, ctx.n_trials):
            return ran
        ctx.number = None
        try:
            with _quiet_optuna():
                study.optimize(functools.partial(_objective, ctx=ctx), n_trials=1, catch=(_Surplus,))
        except KeyboardInterrupt:
            _fail_and_retry(study, ctx.number)
            raise
        except Exception as err:
            _fail_and_retry(study, ctx.number)
            raise SearchError(
                f"Trial {ctx.number} failed: {err} (it is queued once again: fix the cause and run the "
                "search again)."
            ) from err
        if ctx.number is not None and _report_trial(study, ctx):
            ran.append(ctx.number)


def _fail_and_retry(study: optuna.Study, number: int | None) -> None:
    if number is not None:
        with contextlib.suppress(Exception):
            retry_once(study, number)


def _report_trial(study: optuna.Study, ctx: _Context) -> bool:
    """Print the trial just run; False for a surplus trial (not trained)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == ctx.number)
    if trial.user_attrs.get("surplus"):
        return False
    value = "" if trial.value is None else f" val balanced accuracy {trial.value:.4f},"
    retry = f" (retry of trial {trial.system_attrs['failed_trial']})" if _is_retry(trial) else ""
    epochs, minutes = trial.user_attrs.get("epochs"), trial.user_attrs.get("minutes", 0.0)
    state = trial.state.name.lower()
    trained = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    _say(ctx, f"trial {trial.number}{retry}: {state},{value} {trained}, {minutes:.1f} min")
    return True


def _say(ctx: _Context, text: str) -> None:
    if ctx.verbose:
        print(text, flush=True)


def finish_search(
    study: optuna.Study,
    study_dir: Path,
    ran: list[int] | None = None,
    teacher: str | None = None,
    verbose: int = 1,
) -> SearchResult:
    """Write ``trials.csv``, the two plots and ``best_recipe.json`` into ``study_dir``; the result."""
    table = trials_table(study)
    with atomic_write(study_dir / "trials.csv", "w") as handle:
        table.to_csv(handle)
    figures = save_plots(study, study_dir)
    best = _best_trial(study)
    recipe_path = None
    if best is not None:
        recipe, train_args = trial_settings(best.params, teacher)
        recipe_path = save_recipe(recipe, study_dir / "best_recipe.json", train_args)
    result = SearchResult(
        study=study,
        study_dir=study_dir,
        table=table,
        ran=list(ran or []),
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else None,
        recipe_path=recipe_path,
        figures=figures,
    )
    if verbose:
        print(result.summary(), flush=True)
    return result


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (surplus ones left out): state, value (a pruned trial's: its best at pruning),
    epochs trained, minutes, the trial it retries, its settings and parameter count."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "epochs": t.user_attrs.get("epochs"),
                "minutes": t.user_attrs.get("minutes"),
                "retry_of": t.system_attrs.get("failed_trial"),
                **t.params,
                "n_params": t.user_attrs.get("n_params"),
            }
        )
    columns = ["trial", "state", "value", "epochs", "minutes", "retry_of"]
    return pd.DataFrame(rows, columns=None if rows else columns).set_index("trial")


def save_plots(study: optuna.Study, folder: Path) -> dict[str, Path]:
    """Optuna's optimisation history and parameter importances (when there are enough finished trials to
    draw them) as PNG files in ``folder``."""
    figures = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {
        "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
        "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    }
    for name, plot in plots.items():
        if len(complete) < (1 if name == "optimization_history" else 2):
            continue
        try:
            with _quiet_optuna():
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. importances when no setting varied
        save_figure(axes.figure, folder / f"{name}.png")
        plt.close(axes.figure)
        figures[name] = folder / f"{name}.png"
    return figures


def load_search(study: str, storage: str | None = None, out_dir: str | Path | None = None) -> optuna.Study:
    """The study ``study`` of ``storage`` (default :func:`default_storage`) to look at, e.g. in a notebook."""
    backend = open_storage(storage or default_storage(out_dir))
    try:
        with _quiet_optuna():
            return optuna.load_study(study_name=_check_study_name(study), storage=backend)
    except KeyError:
        raise SearchError(f"No study {study!r} in {storage or default_storage(out_dir)}.") from None
