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
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import sklearn
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score, f1_score

from helpers.classes import CLASS_NAMES, CLASS_TO_INDEX, NUM_CLASSES
from helpers.data import class_weights, load_metadata, split_by_lesion, subsample
from helpers.evaluate import write_json
from helpers.files import free_bytes, fsync_files, fsync_folder, megabytes
from helpers.models import DEFAULT_MODEL, MIN_IMG_SIZE, MODEL_NAMES, build_model, count_params
from helpers.paths import MODELS_DIR, PROJECT_ROOT, VISUALIZATIONS_DIR
from helpers.pipeline import make_dataset
from helpers.plots.evaluation import plot_training_history

__all__ = [
    "SELECTION_METRIC",
    "TrainResult",
    "BalancedSelection",
    "CrashSafeCheckpoint",
    "RECIPES",
    "Recipe",
    "ValidationMetrics",
    "architecture_signature",
    "averaged_weights",
    "data_fingerprint",
    "default_run_name",
    "list_run_files",
    "main",
    "prepare_data",
    "read_backup_state",
    "resolve_recipe",
    "resume_summary",
    "train",
    "validation_scores",
]

SELECTION_METRIC = "val_balanced_accuracy"
"""The logged value that selects ``best.keras`` and drives early stopping (higher is better; ties go to the
lower ``val_loss``)."""

BACKUP_DIR = "backup"
_SNAPSHOT_PREFIX = "epoch-"
_TMP_PREFIX = ".tmp-"
_STATE_FORMAT = 2
_RUN_FILES = ("best.keras", "history.csv", "manifest.json")
_IDENTITY_KEYS = (
    "model_name",
    "img_size",
    "batch_size",
    "seed",
    "data_fingerprint",
    "architecture",
    "recipe",
    "optimiser",
)
_REDUCE_LR_STATE = ("wait", "best", "cooldown_counter")
_TIE = 1e-12
MIN_FREE_BYTES = 64 * 2**20
"""Free space a run folder's disk needs before training starts: two snapshots and the published files (a
few MB for the models here), with room to spare."""


SCHEDULES = ("plateau", "cosine")


@dataclass(frozen=True)
class Recipe:
    """How the weights are optimised (the defaults are the plain recipe of :func:`train`'s docstring).

    ``schedule``: ``"plateau"`` (Adam at ``learning_rate``, halved by ReduceLROnPlateau on ``val_loss``) or
    ``"cosine"`` (linear warm-up over ``warmup_epochs``, then cosine decay to 1% over the run's ``epochs``;
    ReduceLROnPlateau is off). ``weight_decay`` > 0 uses AdamW (decoupled weight decay).
    ``label_smoothing`` mixes that fraction of a uniform distribution into the targets.
    ``class_weight_power`` raises the balanced class weights to this power: 1 is fully balanced, 0 is no
    weighting, 0.5 is in between (rare classes count more, but less than fully).
    ``ema`` > 0 keeps an exponential moving average of the weights with that momentum (e.g. 0.995, an
    average over the last ~200 steps); validation, model selection and ``best.keras`` then use the averaged
    weights, which move less from epoch to epoch than the last step's. Training itself (and a resume)
    continues from the raw weights. (On DermaMNIST it did not help; see ``benchmarks/dermamnist.py``.)
    """

    schedule: str = "plateau"
    warmup_epochs: int = 2
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    class_weight_power: float = 1.0
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Recipe.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        checks = (
            ("warmup_epochs", self.warmup_epochs, _is_int(self.warmup_epochs) and self.warmup_epochs >= 0),
            ("weight_decay", self.weight_decay, _is_number(self.weight_decay) and self.weight_decay >= 0),
            (
                "label_smoothing",
                self.label_smoothing,
                _is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            ),
            (
                "class_weight_power",
                self.class_weight_power,
                _is_number(self.class_weight_power) and self.class_weight_power >= 0,
            ),
            ("ema", self.ema, _is_number(self.ema) and 0 <= self.ema < 1),
        )
        for name, value, ok in checks:
            if not ok:
                raise ValueError(
                    f"Recipe.{name} got {value!r}; see help(helpers.train.Recipe) for valid values."
                )

    def weights(self, balanced: dict[int, float]) -> dict[int, float]:
        """The class weights to train with: the balanced ones raised to ``class_weight_power``."""
        return {k: float(v**self.class_weight_power) for k, v in balanced.items()}


@dataclass
class TrainResult:
    """What :func:`train` produced. Epoch numbers are 1-based, as in ``history.csv``."""

    run_dir: Path
    best_model_path: Path
    history: pd.DataFrame
    best_epoch: int | None
    best_value: float | None
    epochs_completed: int
    start_epoch: int
    stopped_early: bool
    figure_path: Path | None
    model: keras.Model = field(repr=False)

    def summary(self) -> str:
        """One readable line."""
        best = f"{self.best_value:.4f} at epoch {self.best_epoch}" if self.best_epoch else "none yet"
        stop = ", stopped early" if self.stopped_early else ""
        return (
            f"{self.epochs_completed} epochs completed ({self.epochs_completed - self.start_epoch} in this "
            f"call{stop}); best {SELECTION_METRIC} {best}; best model: {self.best_model_path}"
        )


# ------------------------------------------------------------------------------------------ parameters
def resolve_recipe(recipe: Recipe | str | None) -> Recipe:
    """The :class:`Recipe` for ``recipe``: itself, the named one in :data:`RECIPES`, or the plain one for
    None; ValueError naming the choices otherwise."""
    if recipe is None:
        return Recipe()
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    if not isinstance(recipe, Recipe):
        raise ValueError(
            f"recipe must be None, a helpers.train.Recipe or one of {sorted(RECIPES)}, got {recipe!r}."
        )
    return recipe


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


RECIPES: dict[str, Recipe] = {
    "plain": Recipe(),
    "tuned": Recipe(schedule="cosine", weight_decay=1e-4, label_smoothing=0.1, class_weight_power=0.5),
}
"""Named recipes (``train(recipe="tuned")``): "tuned" is what ``benchmarks/dermamnist.py`` measured best on
DermaMNIST's validation split; use it with more epochs (45) and a higher ``learning_rate`` (2e-3). Weight
averaging (``ema``) is left out: the benchmark measured it and it did not help there."""


def _check_params(
    img_size: object,
    model_name: object,
    epochs: object,
    batch_size: object,
    learning_rate: object,
    max_images: object,
    patience: object,
    lr_patience: object,
    lr_factor: object,
    min_lr: object,
) -> None:
    """Raise ValueError naming the first bad parameter, before any work is done."""
    if not _is_int(img_size) or img_size < MIN_IMG_SIZE:
        raise ValueError(
            f"img_size must be a positive int >= {MIN_IMG_SIZE} (pixels per side), got {img_size!r}."
        )
    names = ("default", *MODEL_NAMES)
    if model_name not in names:
        raise ValueError(f"Unknown model_name {model_name!r}; choose one of {', '.join(names)}.")
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(
            f"epochs must be an int >= 1 (the total number of epochs of the run), got {epochs!r}."
        )
    if not _is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    if max_images is not None and (not _is_int(max_images) or max_images < 1):
        raise ValueError(f"max_images must be None (all images) or a positive int, got {max_images!r}.")
    for name, value in (("patience", patience), ("lr_patience", lr_patience)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if not _is_number(lr_factor) or not 0 < lr_factor < 1:
        raise ValueError(f"lr_factor must be a number between 0 and 1 (exclusive), got {lr_factor!r}.")
    if not _is_number(min_lr) or not 0 <= min_lr < float("inf"):
        raise ValueError(f"min_lr must be a number >= 0, got {min_lr!r}.")


def _ensure_writable(run_dir: Path) -> None:
    """Create ``run_dir``, prove a file can be written there and that its disk has :data:`MIN_FREE_BYTES`
    free; PermissionError or OSError (ENOSPC) with advice otherwise, before any work is done."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"run_dir {str(run_dir)!r} cannot be written ({err.strerror or err}); pass a run_dir in a folder "
            "you can write to (e.g. models/<name>)."
        ) from err
    free = free_bytes(run_dir)
    if free < MIN_FREE_BYTES:
        raise OSError(
            errno.ENOSPC,
            f"run_dir {str(run_dir)!r} is on a disk with only {megabytes(free)} free; training needs at "
            f"least {megabytes(MIN_FREE_BYTES)} for its checkpoints. Free disk space or pass a run_dir on "
            "another disk.",
        )


# ------------------------------------------------------------------------------------------ data
def prepare_data(
    data_dir: str | Path = "auto",
    df: pd.DataFrame | None = None,
    seed: int = 42,
    max_images: int | None = None,
    verbose: bool = True,
    metadata_csv: str | Path | None = None,
) -> pd.DataFrame:
    """The metadata of the images to use, with a ``split`` column.

    ``df`` (from :func:`helpers.data.load_metadata`, split or not) is used instead of loading ``data_dir``
    (with ``metadata_csv``, or the CSV found there). A
    missing split is made by :func:`helpers.data.split_by_lesion` with ``seed``; the split is computed on all
    images before ``max_images`` subsets them (:func:`helpers.data.subsample`), so an image keeps its split.
    """
    if df is None:
        df = load_metadata(data_dir, metadata_csv, verbose=verbose)
    elif not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame from helpers.data.load_metadata, got {type(df)}.")
    missing = [c for c in ("image_id", "dx", "path") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks column(s) {missing}; pass the DataFrame returned by load_metadata.")
    if "split" not in df.columns or df["split"].isna().any():
        df = split_by_lesion(df, seed=seed)
    subset = subsample(df, max_images, seed)
    subset.attrs = dict(df.attrs)
    for split in ("train", "val"):
        if not (subset["split"] == split).any():
            raise ValueError(
                f"The data has no '{split}' images ({len(subset)} images in all); training needs train and "
                "val splits. Use more images (raise max_images) or fix the 'split' column."
            )
    return subset.reset_index(drop=True)


def data_fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 of the sorted (image_id, dx, split) rows of the train and val images: identifies exactly what
    training fitted and selected on. Test rows do not enter it, so adding a held-out test split to the data
    (as for DermaMNIST's withheld one) neither starts a new run nor makes evaluation doubt that split."""
    used = df[df["split"].isin(("train", "val"))]
    rows = sorted(
        zip(used["image_id"].astype(str), used["dx"].astype(str), used["split"].astype(str), strict=True)
    )
    return hashlib.sha256("\n".join(",".join(r) for r in rows).encode()).hexdigest()


def default_run_name(model_name: str, img_size: int, seed: int, fingerprint: str, settings: dict) -> str:
    """``<model>_<size>px_data-<fingerprint[:8]>_seed<seed>_cfg-<hash>``: the same settings find the same
    run again. ``settings`` (JSON values: batch size, optimiser, recipe) are hashed into the last part, so
    changing any of them starts a new run instead of colliding with the old one."""
    key = DEFAULT_MODEL if model_name == "default" else model_name
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{key}_{img_size}px_data-{fingerprint[:8]}_seed{seed}_cfg-{digest[:6]}"


# ------------------------------------------------------------------------------------------ validation
def validation_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``val_loss`` (mean cross-entropy), ``val_accuracy``, ``val_balanced_accuracy`` and ``val_macro_f1``."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(labels, pred)
    return {
        "val_loss": float(-np.log(picked).mean()),
        "val_accuracy": float((pred == labels).mean()),
        "val_balanced_accuracy": float(balanced),
        "val_macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


class ValidationMetrics(keras.callbacks.Callback):
    """Scores the whole validation set after each epoch and adds :func:`validation_scores` (and the current
    learning rate) to the logs. With a weight-averaging recipe it scores the averaged weights.

    Put it first in the callback list so that model selection, early stopping, the learning-rate schedule
    and the checkpoint all see ``val_balanced_accuracy``. (Keras' own validation is not used: it would
    predict the validation set a second time.)
    """

    def __init__(self, dataset: tf.data.Dataset, labels: np.ndarray):
        super().__init__()
        self.dataset = dataset
        self.labels = np.asarray(labels)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with averaged_weights(self.model):
            probs = self.model.predict(self.dataset, verbose=0)
        if logs is not None:
            logs.update(validation_scores(self.labels, probs))
            # the rate of the next step, logged for every schedule (ReduceLROnPlateau logs the same value)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


# ------------------------------------------------------------------------------------------ backups
def _snapshots(run_dir: Path) -> list[Path]:
    """Committed snapshot folders, newest first."""
    folder = run_dir / BACKUP_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_SNAPSHOT_PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _latest_snapshot(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest committed snapshot that reads back completely, with its state."""
    for snapshot in _snapshots(run_dir):
        try:
            state = json.loads((snapshot / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("format") == _STATE_FORMAT and all(
            (snapshot / name).is_file() for name in ("state.weights.h5", "rng.npz", *_RUN_FILES)
        ):
            return snapshot, state
    return None


def read_backup_state(run_dir: str | Path) -> dict | None:
    """The resume state saved after the last completed epoch of ``run_dir`` (None when there is none).

    Keys: ``epoch`` (completed epochs), ``learning_rate`` (of the next epoch), ``selection`` (best
    ``value`` of :data:`SELECTION_METRIC`, its ``val_loss`` and ``epoch``, ``wait``: epochs since then,
    ``stopped_early``), ``reduce_lr`` (the learning-rate schedule's counters), ``identity`` (settings a
    resume must match) and ``manifest``.
    """
    found = _latest_snapshot(Path(run_dir))
    return found[1] if found else None


def resume_summary(run_dir: str | Path) -> pd.Series:
    """What resuming ``run_dir`` would restore, as a readable table (empty when there is no backup)."""
    state = read_backup_state(run_dir)
    if state is None:
        return pd.Series(dtype=object, name="no backup yet")
    best = state["selection"]
    return pd.Series(
        {
            "completed epochs": state["epoch"],
            "learning rate of the next epoch": state["learning_rate"],
            f"best {SELECTION_METRIC}": f"{best['value']:.4f} (epoch {best['epoch']})",
            "early stopping: epochs since the best epoch": best["wait"],
            "LR schedule: epochs since its best val_loss": (state["reduce_lr"] or {}).get(
                "wait", "n/a (cosine)"
            ),
            "stopped early": best["stopped_early"],
        },
        name="restored on resume",
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _publish(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s content atomically (never a half-written ``dst``)."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already the same file (renaming a hard link onto itself would leave the link behind)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        _link_or_copy(src, tmp)
        os.replace(tmp, dst)
        fsync_folder(dst.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files and folders a killed process can leave (``.*.tmp``, ``backup/.tmp-*``)."""
    for path in [*run_dir.glob(".*.tmp"), *run_dir.glob(".write-test-*")]:
        path.unlink(missing_ok=True)
    for path in (run_dir / BACKUP_DIR).glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _seed_states(model: keras.Model) -> list:
    """The models' random-generator state variables (e.g. dropout), in a stable order."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _clear_run(run_dir: Path) -> None:
    """Remove a previous run's files (resume=False)."""
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


class BalancedSelection(keras.callbacks.Callback):
    """Picks the best epoch and stops training early; its state is part of every backup.

    An epoch is a new best when its :data:`SELECTION_METRIC` is higher than the best so far, or equal with a
    lower ``val_loss``. After ``patience`` epochs without a new best, training stops (as Keras'
    ``EarlyStopping``, but with the same rule as the checkpoint). ``restored``: a backup's ``selection``.
    """

    def __init__(self, patience: int, restored: dict | None = None):
        super().__init__()
        saved = restored or {}
        self.patience = patience
        self.best_value: float | None = saved.get("value")
        self.best_loss: float | None = saved.get("val_loss")
        self.best_epoch: int | None = saved.get("epoch")
        self.wait: int = saved.get("wait", 0)
        self.stopped_early: bool = saved.get("stopped_early", False)
        self.improved = False

    def is_better(self, value: float, loss: float) -> bool:
        """Whether (``value``, ``loss``) beats the best epoch so far."""
        if self.best_value is None:
            return True
        tie = abs(value - self.best_value) <= _TIE
        return value > self.best_value + _TIE or (tie and loss < self.best_loss)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value, loss = float(logs[SELECTION_METRIC]), float(logs["val_loss"])
        self.improved = self.is_better(value, loss)
        if self.improved:
            self.best_value, self.best_loss, self.best_epoch, self.wait = value, loss, epoch + 1, 0
        else:
            self.wait += 1
        self.stopped_early = not self.improved and self.wait >= self.patience
        if self.stopped_early:
            self.model.stop_training = True

    def state(self) -> dict:
        """What a resume needs (JSON)."""
        return {
            "metric": SELECTION_METRIC,
            "value": self.best_value,
            "val_loss": self.best_loss,
            "epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_early": self.stopped_early,
        }


class CrashSafeCheckpoint(keras.callbacks.Callback):
    """Keeps ``best.keras`` (the selection's best epoch), ``history.csv``, ``manifest.json`` and the backup.

    Put it after ``selection`` and ``reduce_lr`` so that each snapshot holds their state at the end of the
    epoch. ``restored`` is a backup's state; its learning-rate schedule counters are put back into
    ``reduce_lr`` when training starts (Keras resets them there).
    """

    def __init__(
        self,
        run_dir: Path,
        selection: BalancedSelection,
        reduce_lr: keras.callbacks.ReduceLROnPlateau | None,
        identity: dict,
        manifest: dict,
        restored: dict | None = None,
        history: pd.DataFrame | None = None,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.selection = selection
        self.reduce_lr = reduce_lr
        self.identity = identity
        self.manifest = manifest
        self.restored = restored
        self.rows = [] if history is None else history.to_dict("records")
        self._epoch_start = 0.0

    # -- Keras hooks
    def on_train_begin(self, logs: dict | None = None) -> None:
        saved = (self.restored or {}).get("reduce_lr")
        if saved and self.reduce_lr is not None:
            for attr in _REDUCE_LR_STATE:
                setattr(self.reduce_lr, attr, saved[attr])

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        if SELECTION_METRIC not in logs:
            raise RuntimeError(f"{SELECTION_METRIC} is not in the logs: put ValidationMetrics first.")
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        row["seconds"] = round(time.perf_counter() - self._epoch_start, 3)
        self.rows.append(row)
        self._commit(epoch + 1, self.selection.improved)
        self.publish()

    # -- saving
    def state(self, epoch: int) -> dict:
        """The JSON part of a snapshot (``learning_rate``: the one the next epoch uses)."""
        reduce_lr = None
        if self.reduce_lr is not None:
            reduce_lr = {a: getattr(self.reduce_lr, a) for a in _REDUCE_LR_STATE}
            reduce_lr["best"] = _float_or_none(reduce_lr["best"])
        return {
            "format": _STATE_FORMAT,
            "epoch": epoch,
            "identity": self.identity,
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "selection": self.selection.state(),
            "reduce_lr": reduce_lr,
            "manifest": self.manifest,
        }

    def _commit(self, epoch: int, improved: bool) -> None:
        """Write the epoch's snapshot into a temporary folder, then commit it with one atomic rename.

        A failing write (disk full, permissions) removes the partial folder and raises an OSError that says
        which completed epoch is safe and how to continue from it.
        """
        backup = self.run_dir / BACKUP_DIR
        previous = _latest_snapshot(self.run_dir)
        tmp = backup / f"{_TMP_PREFIX}{epoch:04d}-{os.getpid()}"
        target = backup / f"{_SNAPSHOT_PREFIX}{epoch:04d}"
        try:
            self._write_snapshot(tmp, epoch, improved, previous)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
            fsync_folder(backup)  # the new snapshot is on disk before the previous one is deleted
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(
                err.errno,
                f"Could not save the checkpoint of epoch {epoch} in {backup} ({err.strerror or err}). "
                + _what_is_safe(previous),
            ) from err
        for old in backup.iterdir():
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def _write_snapshot(
        self, tmp: Path, epoch: int, improved: bool, previous: tuple[Path, dict] | None
    ) -> None:
        """Every file of the epoch's snapshot, ``state.json`` last (it marks the folder complete)."""
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_weights(tmp / "state.weights.h5")
        np.savez(tmp / "rng.npz", *[np.asarray(v.numpy()) for v in _seed_states(self.model)])
        if improved or previous is None:
            with averaged_weights(self.model):
                self.model.save(tmp / "best.keras")
        else:
            _link_or_copy(previous[0] / "best.keras", tmp / "best.keras")
        pd.DataFrame(self.rows).to_csv(tmp / "history.csv", index=False)
        self.manifest.update(
            epochs_completed=epoch,
            best_epoch=self.selection.best_epoch,
            best_value=self.selection.best_value,
            stopped_early=self.selection.stopped_early,
            updated_at=_now(),
        )
        self.manifest["sessions"][-1]["end_epoch"] = epoch
        write_json(self.manifest, tmp / "manifest.json")
        fsync_files(tmp)  # everything is on disk before state.json marks the snapshot complete
        write_json(self.state(epoch), tmp / "state.json")

    def publish(self) -> None:
        """Copy the newest snapshot's best model, history and manifest into the run folder (atomically)."""
        latest = _latest_snapshot(self.run_dir)
        if latest is None:
            return
        try:
            for name in _RUN_FILES:
                _publish(latest[0] / name, self.run_dir / name)
        except OSError as err:
            raise OSError(
                err.errno,
                f"Could not copy {name} into {self.run_dir} ({err.strerror or err}). "
                + _what_is_safe(latest),
            ) from err


def _what_is_safe(snapshot: tuple[Path, dict] | None) -> str:
    """What a failed write leaves and how to go on (for error messages)."""
    if snapshot is None:
        return (
            "No epoch had completed yet. Free disk space (or fix permissions) and call train again with the "
            "same run_dir."
        )
    epoch = snapshot[1]["epoch"]
    return (
        f"No completed epoch is lost: epochs 1-{epoch} are saved in {snapshot[0]}. Free disk space (or fix "
        f"permissions) and call train again with the same run_dir to continue after epoch {epoch}."
    )


def _restore(model: keras.Model, snapshot: Path, strategy: tf.distribute.Strategy | None = None) -> None:
    """Load weights, optimizer state (step counter and learning rate included) and random-generator state."""
    with np.load(snapshot / "rng.npz") as saved:
        states = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = _seed_states(model)
    if len(states) != len(variables):
        raise ValueError(f"{snapshot} does not match this model (random-generator state differs).")
    with strategy.scope() if strategy else contextlib.nullcontext():
        model.load_weights(snapshot / "state.weights.h5")
        for variable, value in zip(variables, states, strict=True):
            variable.assign(value)


class EpochSummary(keras.callbacks.Callback):
    """Prints one line per epoch (after Keras' progress bar) with the selection metric and its best so far."""

    def __init__(self, epochs: int, selection: BalancedSelection):
        super().__init__()
        self.epochs = epochs
        self.selection = selection

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        best = self.selection
        stop = " - early stopping" if best.stopped_early else ""
        print(
            f"Epoch {epoch + 1}/{self.epochs}: {SELECTION_METRIC} {logs[SELECTION_METRIC]:.4f} "
            f"(best {best.best_value:.4f} at epoch {best.best_epoch}), "
            f"val_accuracy {logs['val_accuracy']:.4f}, val_loss {logs['val_loss']:.4f}, "
            f"lr {logs['learning_rate']:.2e} - backup saved{stop}",
            flush=True,
        )


# ------------------------------------------------------------------------------------------ manifest
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


def _new_manifest(parameters: dict, df: pd.DataFrame, identity: dict, weights: dict[int, float]) -> dict:
    counts = pd.crosstab(df["dx"], df["split"]).reindex(index=list(CLASS_NAMES), fill_value=0)
    validation = df.attrs.get("validation", {})
    return {
        "parameters": parameters,
        "identity": identity,
        "selection_metric": SELECTION_METRIC,
        "data": {
            "fingerprint": identity["data_fingerprint"],
            "source": validation.get("image_root"),
            "excluded_images": {
                "missing": validation.get("missing_images", []),
                "unreadable": [
                    {"image_id": c["image_id"], "reason": c["reason"]}
                    for c in validation.get("corrupt_images", [])
                ],
            },
            "images": {s: int((df["split"] == s).sum()) for s in ("train", "val", "test")},
            "class_counts": {s: counts[s].to_dict() for s in counts.columns},
        },
        "class_weights": {CLASS_NAMES[k]: round(v, 6) for k, v in weights.items()},
        "seed": identity["seed"],
        "versions": _versions(),
        "git_commit": _git_commit(),
        "started_at": _now(),
        "finished_at": None,
        "status": "running",
        "epochs_completed": 0,
        "best_epoch": None,
        "best_value": None,
        "stopped_early": False,
        "sessions": [],
    }


# ------------------------------------------------------------------------------------------ train
def train(
    data_dir: str | Path = "auto",
    img_size: int = 128,
    model_name: str = "default",
    epochs: int = 15,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 42,
    run_dir: str | Path | None = None,
    resume: bool = True,
    max_images: int | None = None,
    df: pd.DataFrame | None = None,
    strategy: tf.distribute.Strategy | None = None,
    patience: int = 5,
    lr_patience: int = 2,
    lr_factor: float = 0.5,
    min_lr: float = 1e-6,
    recipe: Recipe | str | None = None,
    figures_dir: str | Path | None = None,
    cache: bool | str | Path = True,
    verbose: int = 1,
) -> TrainResult:
    """Train ``model_name`` on the train split, select on the validation split, and return the result.

    ``epochs`` is the run's total: calling again with the same ``run_dir`` resumes after the last completed
    epoch (``resume=True``), or continues a finished run when ``epochs`` is raised. ``resume=False`` deletes
    the run's previous state and starts fresh. Resuming with another ``model_name``, ``img_size``,
    ``batch_size``, ``seed``, architecture (:func:`architecture_signature`) or data (:func:`data_fingerprint`)
    is refused.

    Adam (``learning_rate``), balanced class weights from the train split, ReduceLROnPlateau on ``val_loss``
    (``lr_factor``, ``lr_patience``, ``min_lr``), the best epoch by :data:`SELECTION_METRIC` (ties: lower
    ``val_loss``) saved as ``best.keras``, and early stopping after ``patience`` epochs without a new best
    epoch. ``recipe`` (a :class:`Recipe` or a name in :data:`RECIPES`) changes the optimisation: a cosine
    schedule, weight decay, label smoothing, softer class weights, weight averaging. The test split is never
    used. ``run_dir`` defaults to ``models/<default_run_name>``, ``figures_dir`` to
    ``visualizations/<run_dir name>``. ``strategy`` (a ``tf.distribute`` strategy) builds and trains the model
    in its scope; ``batch_size`` is then the global batch. Seeds Python, NumPy and
    TensorFlow and turns on TensorFlow op determinism (process-wide), so the same seed and data give the
    same weights on CPU.
    """
    arguments = dict(locals())  # the first statement: exactly the call's arguments
    _check_params(
        img_size,
        model_name,
        epochs,
        batch_size,
        learning_rate,
        max_images,
        patience,
        lr_patience,
        lr_factor,
        min_lr,
    )
    recipe = resolve_recipe(recipe)
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser().resolve()
    _ensure_writable(MODELS_DIR if run_dir is None else run_dir)  # before any data is read
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()

    data = prepare_data(data_dir, df, seed, max_images, verbose=verbose > 0)
    fingerprint = data_fingerprint(data)
    key = DEFAULT_MODEL if model_name == "default" else model_name
    optimiser = {
        "learning_rate": float(learning_rate),
        "lr_factor": float(lr_factor),
        "lr_patience": int(lr_patience),
        "min_lr": float(min_lr),
    }
    settings = {"batch_size": batch_size, "optimiser": optimiser, "recipe": asdict(recipe)}
    if run_dir is None:
        run_dir = MODELS_DIR / default_run_name(key, img_size, seed, fingerprint, settings)
        _ensure_writable(run_dir)
    parameters = _recorded_parameters(arguments, run_dir)
    train_df, val_df = data[data["split"] == "train"], data[data["split"] == "val"]
    steps = max(1, len(train_df) // batch_size)
    model = _compiled_model(model_name, img_size, learning_rate, strategy, recipe, steps * epochs, steps)
    identity = {
        "model_name": key,
        "img_size": img_size,
        "batch_size": batch_size,
        "seed": seed,
        "data_fingerprint": fingerprint,
        "architecture": architecture_signature(model),
        **settings,
    }
    snapshot, restored = _resume_point(run_dir, identity, resume)
    if snapshot is not None:
        _restore(model, snapshot, strategy)

    weights = recipe.weights(class_weights(train_df["dx"]))
    manifest = restored["manifest"] if restored else _new_manifest(parameters, data, identity, weights)
    start_epoch = restored["epoch"] if restored else 0
    _open_session(manifest, parameters, start_epoch, strategy)
    reduce_lr = None
    if recipe.schedule == "plateau":
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", mode="min", factor=lr_factor, patience=lr_patience, min_lr=min_lr
        )
    selection = BalancedSelection(patience, restored["selection"] if restored else None)
    history = pd.read_csv(snapshot / "history.csv") if snapshot is not None else None
    checkpoint = CrashSafeCheckpoint(run_dir, selection, reduce_lr, identity, manifest, restored, history)
    _remove_temporaries(run_dir)  # left by a process killed while writing
    checkpoint.publish()  # repairs a kill between a snapshot's commit and its publication
    if verbose:
        _describe_start(model, run_dir, train_df, val_df, start_epoch, epochs)
    if not _nothing_to_do(restored, start_epoch, epochs, patience, verbose):
        data_args = {"img_size": img_size, "batch_size": batch_size, "seed": seed, "cache": cache}
        _fit(model, train_df, val_df, weights, checkpoint, start_epoch, epochs, data_args, verbose)
    result = _finish(model, run_dir, checkpoint, start_epoch, figures_dir)
    if verbose:
        print(result.summary())
    return result


def _fit(
    model: keras.Model,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    weights: dict[int, float],
    checkpoint: CrashSafeCheckpoint,
    start_epoch: int,
    epochs: int,
    data_args: dict,
    verbose: int,
) -> None:
    """Fit from ``start_epoch`` to ``epochs`` with the validation scorer first and the checkpoint last."""
    train_ds = make_dataset(train_df, training=True, progress=verbose > 0, **data_args)
    val_ds = make_dataset(val_df, training=False, progress=verbose > 0, **data_args)
    for _ in range(start_epoch):  # advance the shuffle/augmentation seeds to the resumed epoch
        iter(train_ds)
    callbacks = [ValidationMetrics(val_ds, val_df["dx"].map(CLASS_TO_INDEX).to_numpy())]
    callbacks += [c for c in (checkpoint.selection, checkpoint.reduce_lr, checkpoint) if c is not None]
    callbacks += [keras.callbacks.ProgbarLogger()]
    callbacks += [EpochSummary(epochs, checkpoint.selection)] if verbose else []
    model.fit(
        train_ds.repeat(),  # one iterator for the whole fit: epoch k draws the k-th shuffle/augmentation
        steps_per_epoch=int(train_ds.cardinality()),
        epochs=epochs,
        initial_epoch=start_epoch,
        class_weight=weights,
        shuffle=False,  # make_dataset shuffles (seeded) itself
        callbacks=callbacks,
        verbose=verbose,
    )


def _recorded_parameters(arguments: dict, run_dir: Path) -> dict:
    """The call's arguments as JSON values for the manifest (a DataFrame or strategy by description)."""
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}
    recorded.update(
        run_dir=str(run_dir),
        df=None if arguments["df"] is None else f"DataFrame with {len(arguments['df'])} rows",
        strategy=type(arguments["strategy"]).__name__ if arguments["strategy"] else None,
        recipe=asdict(resolve_recipe(arguments["recipe"])),
    )
    return recorded


def _open_session(manifest: dict, parameters: dict, start_epoch: int, strategy) -> None:
    """Record this call of :func:`train` in the manifest."""
    manifest.update(status="running", finished_at=None, parameters=parameters)
    manifest["sessions"].append(
        {
            "started_at": _now(),
            "start_epoch": start_epoch,
            "end_epoch": start_epoch,
            "strategy": type(strategy).__name__ if strategy else None,
            "replicas": strategy.num_replicas_in_sync if strategy else 1,
        }
    )


def _compiled_model(
    model_name: str,
    img_size: int,
    learning_rate: float,
    strategy: tf.distribute.Strategy | None,
    recipe: Recipe,
    total_steps: int,
    steps_per_epoch: int,
) -> keras.Model:
    """Build and compile the model (in ``strategy``'s scope) with a built optimizer, ready to be restored."""
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(model_name, img_size, NUM_CLASSES)
        model.compile(
            optimizer=_optimizer(learning_rate, recipe, total_steps, steps_per_epoch),
            loss=SmoothedSparseCrossentropy(recipe.label_smoothing),
            metrics=["accuracy"],
        )
        model.optimizer.build(model.trainable_variables)  # so its state can be loaded before fit
    return model


def _optimizer(
    learning_rate: float, recipe: Recipe, total_steps: int, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if recipe.schedule == "cosine":
        warmup = min(recipe.warmup_epochs * steps_per_epoch, total_steps - 1)
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else learning_rate,
            decay_steps=total_steps - warmup,
            alpha=0.01,
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    ema = {"use_ema": True, "ema_momentum": recipe.ema} if recipe.ema else {}
    if recipe.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=recipe.weight_decay, **ema)
    return keras.optimizers.Adam(rate, **ema)


@contextlib.contextmanager
def averaged_weights(model: keras.Model) -> Iterator[None]:
    """Inside the block, ``model``'s trainable weights are the optimizer's moving averages (a recipe with
    ``ema`` > 0); on leaving, the raw weights are put back. Does nothing for an optimizer without EMA."""
    averages = getattr(getattr(model, "optimizer", None), "_model_variables_moving_average", None)
    if not averages:  # Keras creates the averages only for an optimizer built with use_ema=True
        yield
        return
    raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    for variable, average in zip(model.trainable_variables, averages, strict=True):
        variable.assign(average)
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, raw, strict=True):
            variable.assign(value)


@keras.saving.register_keras_serializable(package="helpers")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of softmax outputs against integer labels smoothed by ``label_smoothing``."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        target = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)), classes)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def architecture_signature(model: keras.Model) -> str:
    """A short hash of the model's weight shapes: changes when the architecture behind a name changes."""
    shapes = [[type(model).__name__, len(model.layers)], *[list(w.shape) for w in model.weights]]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def list_run_files(run_dir: str | Path) -> pd.DataFrame:
    """Every file of a run folder: relative path, size in kB and modification time."""
    run_dir = Path(run_dir)
    rows = [
        {
            "file": str(p.relative_to(run_dir)),
            "kB": round(p.stat().st_size / 1024, 1),
            "modified": datetime.fromtimestamp(p.stat().st_mtime).isoformat(sep=" ", timespec="seconds"),
        }
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    ]
    return pd.DataFrame(rows, columns=["file", "kB", "modified"])


def _resume_point(run_dir: Path, identity: dict, resume: bool) -> tuple[Path | None, dict | None]:
    """The snapshot to resume from (checked against ``identity``), or (None, None) for a fresh start."""
    if not resume:
        _clear_run(run_dir)
        return None, None
    found = _latest_snapshot(run_dir)
    if found is None:
        _clear_run(run_dir)  # files of a run killed before its first epoch completed
        return None, None
    snapshot, state = found
    saved = state.get("identity", {})
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {identity[k]!r}"
        for k in _IDENTITY_KEYS
        if saved.get(k) != identity[k] and (k in saved or k != "optimiser")  # runs saved before it was kept
    ]
    if diffs:
        raise ValueError(
            f"run_dir {str(run_dir)!r} holds a run ({state['epoch']} epochs) with different settings - "
            + "; ".join(diffs)
            + ". Resuming would mix two trainings. Pass a new run_dir (or run_dir=None for an automatic "
            "name), or resume=False to delete that run and start fresh."
        )
    return snapshot, state


def _nothing_to_do(restored: dict | None, start_epoch: int, epochs: int, patience: int, verbose: int) -> bool:
    if restored is None:
        return False
    message = None
    if start_epoch >= epochs:
        message = f"The run already has {start_epoch} of {epochs} epochs; raise epochs to continue training."
    elif restored["selection"]["stopped_early"] and restored["selection"]["wait"] >= patience:
        message = (
            f"The run stopped early at epoch {start_epoch} (no new best epoch for {patience} epochs); "
            "raise patience to continue, or pass resume=False to start again."
        )
    if message and verbose:
        print(message)
    return message is not None


def _describe_start(
    model: keras.Model, run_dir: Path, train_df, val_df, start_epoch: int, epochs: int
) -> None:
    where = f"resuming after epoch {start_epoch}" if start_epoch else "starting fresh"
    print(
        f"Training {model.name} ({count_params(model):,} parameters) on {len(train_df)} train / "
        f"{len(val_df)} val images for {epochs} epochs ({where}); run_dir: {run_dir}",
        flush=True,
    )


def _finish(
    model: keras.Model,
    run_dir: Path,
    checkpoint: CrashSafeCheckpoint,
    start_epoch: int,
    figures_dir: str | Path | None,
) -> TrainResult:
    """Mark the run finished in its manifest, draw the history figure and build the result."""
    history = pd.DataFrame(checkpoint.rows)
    manifest = checkpoint.manifest
    selection = checkpoint.selection
    manifest.update(finished_at=_now(), status="stopped_early" if selection.stopped_early else "completed")
    manifest["sessions"][-1]["finished_at"] = manifest["finished_at"]
    write_json(manifest, run_dir / "manifest.json")
    figure_path = None
    if len(history):
        figures = Path(figures_dir) if figures_dir is not None else VISUALIZATIONS_DIR / run_dir.name
        figure_path = figures / "training_history.png"
        plot_training_history(history, save_path=figure_path)
    return TrainResult(
        run_dir=run_dir,
        best_model_path=run_dir / "best.keras",
        history=history,
        best_epoch=selection.best_epoch,
        best_value=selection.best_value,
        epochs_completed=len(history),
        start_epoch=start_epoch,
        stopped_early=selection.stopped_early,
        figure_path=figure_path,
        model=model,
    )


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m helpers.train --data-dir DIR --run-dir DIR --epochs N ...``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="auto", help="dataset folder, or 'auto' (default)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: models/<automatic name>)")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--model-name", default="default", choices=("default", *MODEL_NAMES))
    parser.add_argument("--epochs", type=int, default=15, help="total epochs of the run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-images", type=int, default=None, help="stratified subset for quick runs")
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    parser.add_argument("--lr-patience", type=int, default=2, help="epochs before the learning rate is cut")
    parser.add_argument("--schedule", default="plateau", choices=SCHEDULES, help="learning-rate schedule")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0: Adam)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--class-weight-power", type=float, default=1.0, help="1 balanced, 0 unweighted")
    parser.add_argument("--ema", type=float, default=0.0, help="weight-average momentum, e.g. 0.995 (0: off)")
    parser.add_argument("--figures-dir", default=None)
    parser.add_argument("--no-resume", action="store_true", help="delete the run's previous state first")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras verbosity")
    args = parser.parse_args(argv)
    try:
        recipe = Recipe(
            schedule=args.schedule,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            class_weight_power=args.class_weight_power,
            ema=args.ema,
        )
        result = train(
            data_dir=args.data_dir,
            img_size=args.img_size,
            model_name=args.model_name,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            run_dir=args.run_dir,
            resume=not args.no_resume,
            max_images=args.max_images,
            patience=args.patience,
            lr_patience=args.lr_patience,
            recipe=recipe,
            figures_dir=args.figures_dir,
            verbose=args.verbose,
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.verbose:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
