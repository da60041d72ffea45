"""Training: class-weighted fit, checkpoint selection on validation balanced accuracy, crash-safe resume.

A run lives in one folder (``models/<run_name>/`` by default)::

    best.keras      the model of the epoch with the highest validation balanced accuracy
    history.csv     one row per completed epoch (each epoch exactly once)
    manifest.json   parameters, library versions, data fingerprint and excluded images, class weights,
                    git commit, times, epochs completed, best epoch and value
    backup/epoch-NNNN/  the last completed epoch: weights + optimizer state, random-generator state, the
                    state of model selection / early stopping and of the learning-rate schedule, history and
                    best model

The best epoch is the one with the highest validation balanced accuracy; ties (frequent on small validation
sets, where the score moves in steps) go to the lower validation loss. Early stopping uses the same rule: it
ends the run after ``patience`` epochs without a new best epoch.

After every epoch the backup is written into a temporary folder and committed with one atomic rename, then
``best.keras``, ``history.csv`` and ``manifest.json`` are published from it (hard link + ``os.replace``). A
process killed at any moment (SIGKILL included) therefore leaves either the previous or the new epoch's
complete state, and calling :func:`train` again with the same ``run_dir`` continues from the last completed
epoch. On resume the data pipeline's shuffling/augmentation streams are advanced to that epoch, so on a CPU a
resumed run ends with exactly the weights of an uninterrupted one.

Run from the command line: ``python -m helpers.train --data-dir auto --epochs 15 --run-dir models/my_run``.

Modules, each importing only those before it: ``determinism`` (does a training step repeat bit for bit
in this process), ``recipes`` (how the weights are optimised), ``selection``
(validation scores, best epoch, early stopping), ``run`` (run name, manifest), ``checkpoint`` (crash-safe
snapshots and resume), ``workers`` (several machines), ``loop`` (:func:`train`) and ``cli`` (the command
line).
"""

from helpers.train.checkpoint import BACKUP_DIR, CrashSafeCheckpoint, read_backup_state, resume_summary
from helpers.train.cli import main
from helpers.train.loop import TrainResult, prepare_data, train
from helpers.train.recipes import (
    RECIPES,
    SCHEDULES,
    Recipe,
    averaged_weights,
    load_recipe,
    resolve_recipe,
    save_recipe,
)
from helpers.train.run import MIN_FREE_BYTES, architecture_signature, default_run_name, list_run_files
from helpers.train.selection import SELECTION_METRIC, BalancedSelection, ValidationMetrics, validation_scores

__all__ = [
    "BACKUP_DIR",
    "MIN_FREE_BYTES",
    "RECIPES",
    "SCHEDULES",
    "SELECTION_METRIC",
    "BalancedSelection",
    "CrashSafeCheckpoint",
    "Recipe",
    "TrainResult",
    "ValidationMetrics",
    "architecture_signature",
    "averaged_weights",
    "default_run_name",
    "list_run_files",
    "load_recipe",
    "main",
    "prepare_data",
    "read_backup_state",
    "resolve_recipe",
    "resume_summary",
    "save_recipe",
    "train",
    "validation_scores",
]
