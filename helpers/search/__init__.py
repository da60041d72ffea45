"""Hyperparameter search with Optuna: trials of :func:`helpers.train.train`, pruned early, kept in a database.

Each trial trains ``dermsep_net`` with :data:`RECIPES["tuned"] <helpers.train.RECIPES>` changed by the trial's
settings (the default :data:`SPACE`: learning rate, weight decay, label smoothing, dropout, augmentation
strength, Mixup/CutMix alpha, batch size and the network's width within :data:`PARAM_BUDGET` parameters;
with a ``teacher``, the distillation alpha and temperature too) for a fixed number of epochs. After every
epoch it reports the best validation balanced accuracy so far, so the pruner (median by default, or
Hyperband) stops a bad trial early; a finished trial's value is its best epoch's validation balanced
accuracy, the figure ``train`` selects ``best.keras`` on. The first trial is today's tuned recipe itself, so
the search starts from it.

The study lives in an Optuna RDB storage (SQLite by default: ``models/search/study.db``), each trial's run
in ``models/search/<study>/trial-NNNN/``. ``n_trials`` is the study's total: running the same search again
runs only the missing trials, so a killed search resumes where it stopped; a finished trial is never run
again. A trial that was running when its process died is marked failed and retried once, with the same
settings, in the same run folder (the training resumes from its last completed epoch). A dead process is
seen at once on the same machine (its process id is gone) and, on another, when its heartbeat stops
(:data:`GRACE_SECONDS`). Several processes, on one machine or several sharing a PostgreSQL database
(``storage="postgresql://user:password@host/db"``), share one study: each runs trials until the study has
its total, and no trial is run twice. Each trial's settings are drawn by TPE seeded with the search's seed
and the trial's number, so a search repeats, whichever process runs which trial.

Outputs, in ``models/search/<study>/``: ``trials.csv`` (:func:`trials_table`), Optuna's
``optimization_history.png`` and ``param_importances.png``, and ``best_recipe.json`` (the best trial as a
recipe: ``train(recipe="…/best_recipe.json", **train_args)`` with the ``train_args`` of
:func:`helpers.train.load_recipe`).

    python -m helpers.search --data-dir auto --study my-search --trials 30 --epochs 8 --img-size 64

Modules, each importing only those before it: ``space`` (the settings searched, their limits, a trial's
recipe), ``storage`` (the storage and study, sampler and pruner, dead trials), ``objective`` (one trial),
``run`` (:func:`run_search`, the outputs, :func:`load_search`) and ``cli`` (the command line).
"""

from helpers.search.cli import main, parse_setting
from helpers.search.objective import PruningReporter
from helpers.search.run import (
    SearchResult,
    finish_search,
    load_search,
    run_search,
    save_plots,
    study_name_for,
    trials_table,
)
from helpers.search.space import (
    BASE_AUGMENT,
    BASE_RECIPE,
    BASE_WIDTHS,
    BASELINE,
    DISTILL_SPACE,
    LIMITS,
    MODEL_NAME,
    PARAM_BUDGET,
    SPACE,
    Dimension,
    SearchError,
    as_dimension,
    check_space,
    trial_settings,
    widest_within_budget,
    width_channels,
    width_params,
)
from helpers.search.storage import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    PRUNERS,
    SQLITE_TIMEOUT_SECONDS,
    TrialSeededTPE,
    default_storage,
    make_pruner,
    open_storage,
    open_study,
    recover_dead_trials,
    retry_once,
)

__all__ = [
    "BASELINE",
    "BASE_AUGMENT",
    "BASE_RECIPE",
    "BASE_WIDTHS",
    "DISTILL_SPACE",
    "GRACE_SECONDS",
    "HEARTBEAT_SECONDS",
    "LIMITS",
    "MODEL_NAME",
    "PARAM_BUDGET",
    "PRUNERS",
    "SPACE",
    "SQLITE_TIMEOUT_SECONDS",
    "Dimension",
    "PruningReporter",
    "SearchError",
    "SearchResult",
    "TrialSeededTPE",
    "as_dimension",
    "check_space",
    "default_storage",
    "finish_search",
    "load_search",
    "main",
    "make_pruner",
    "open_storage",
    "open_study",
    "parse_setting",
    "recover_dead_trials",
    "retry_once",
    "run_search",
    "save_plots",
    "study_name_for",
    "trial_settings",
    "trials_table",
    "widest_within_budget",
    "width_channels",
    "width_params",
]
