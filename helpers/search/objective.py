"""One trial: train its settings, report each epoch's best value so far to the pruner, and resume a retried
trial in its original's run folder."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from helpers.search.space import PARAM_BUDGET, Dimension, trial_settings, width_params
from helpers.search.storage import _counts_as_slot, _is_retry, _process_record
from helpers.train import SELECTION_METRIC, train


class PruningReporter(keras.callbacks.Callback):
    """After each epoch, reports the best validation balanced accuracy so far to the Optuna ``trial`` (step
    = epoch, 1-based) and stops the training when its pruner says so (``pruned_at`` is then that epoch).
    ``history`` (a resumed run's rows) is reported first."""

    def __init__(self, trial: optuna.Trial, history: pd.DataFrame | None = None):
        super().__init__()
        self.trial, self.best, self.pruned_at = trial, -math.inf, None
        self._reported: set[int] = set()
        rows = [] if history is None else history[["epoch", SELECTION_METRIC]].itertuples(index=False)
        for epoch, value in rows:
            self._report(int(epoch), float(value))

    def _report(self, epoch: int, value: float) -> None:
        self.best = max(self.best, value)
        if epoch not in self._reported:
            self.trial.report(self.best, epoch)
            self._reported.add(epoch)
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(SELECTION_METRIC)
        if value is not None:
            self._report(epoch + 1, float(value))
            if self.pruned_at is not None:
                self.model.stop_training = True


class _NamedCallbacks(str):
    """Callbacks for ``train(callbacks=...)`` that its manifest records by name. Workaround: ``train`` writes
    its arguments as JSON and a Keras callback is not JSON; iterating gives the callbacks."""

    callbacks: list

    def __new__(cls, callbacks: list) -> _NamedCallbacks:
        named = super().__new__(cls, ", ".join(type(c).__name__ for c in callbacks))
        named.callbacks = list(callbacks)
        return named

    def __iter__(self) -> Iterator:
        return iter(self.callbacks)


class _Surplus(Exception):
    """A trial created when the study already had its total (two processes asked at once)."""


@dataclass
class _Context:
    df: pd.DataFrame
    space: dict[str, Dimension]
    study_dir: Path
    n_trials: int
    img_size: int
    epochs: int
    seed: int
    teacher: str | None
    cache: bool | str | Path
    verbose: int
    number: int | None = None  # the trial being run


def _objective(trial: optuna.Trial, ctx: _Context) -> float:
    """Train one trial; its best epoch's validation balanced accuracy (TrialPruned when pruned)."""
    ctx.number = trial.number
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    _check_surplus(trial, frozen, ctx.n_trials)
    trial.set_user_attr("process", _process_record(trial.number))
    params = {name: dim.suggest(trial, name) for name, dim in ctx.space.items()}
    recipe, train_args = trial_settings(params, ctx.teacher)
    origin = frozen.system_attrs.get("failed_trial", trial.number)
    run_dir = ctx.study_dir / f"trial-{origin:04d}"
    n_params = width_params(float(params["width"]), ctx.img_size)
    trial.set_user_attr("n_params", n_params)
    if n_params > PARAM_BUDGET:  # check_space keeps the range within it: a guard only
        raise optuna.TrialPruned(f"{n_params:,} parameters, over the budget of {PARAM_BUDGET:,}")
    resume = _is_retry(frozen)
    history = _read_history(run_dir) if resume else None
    reporter = PruningReporter(trial, history)
    start = time.perf_counter()
    if reporter.pruned_at is None:
        keras.backend.clear_session()
        result = train(
            df=ctx.df,
            img_size=ctx.img_size,
            epochs=ctx.epochs,
            seed=ctx.seed,
            run_dir=run_dir,
            resume=resume,
            patience=ctx.epochs,  # the pruner stops bad trials, not early stopping
            recipe=recipe,
            callbacks=_NamedCallbacks([reporter]),
            figures_dir=run_dir,
            cache=ctx.cache,
            verbose=0,
            **train_args,
        )
        history = result.history
        trial.set_user_attr("resumed_from_epoch", result.start_epoch)
    trial.set_user_attr("epochs", int(len(history)))
    trial.set_user_attr("minutes", round((time.perf_counter() - start) / 60, 3))
    if reporter.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
    return float(history[SELECTION_METRIC].max())


def _check_surplus(trial: optuna.Trial, frozen: FrozenTrial, n_trials: int) -> None:
    if _is_retry(frozen):
        return
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    if sum(map(_counts_as_slot, earlier)) >= n_trials:
        trial.set_user_attr("surplus", True)
        raise _Surplus(f"trial {trial.number}: the study already has its {n_trials} trials")


def _read_history(run_dir: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(run_dir / "history.csv")
    except (OSError, ValueError):
        return None
